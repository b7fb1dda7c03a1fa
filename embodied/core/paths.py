"""Where the package keeps its shipped files."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CONFIGS_DIR = PACKAGE_DIR / "configs"


def resolve_shipped(path: str | Path) -> Path:
    """`path` as given if it exists, else a shipped file named from the source tree
    (`embodied/assets/...`), so that configs work from any directory and when installed."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    shipped = PACKAGE_DIR.parent / path
    return shipped if shipped.exists() else path
