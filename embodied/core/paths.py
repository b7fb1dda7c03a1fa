"""Where the package keeps its shipped files.

The design card puts `assets/` and `configs/` at the repository's top level; the wheel
ships them inside the package (`embodied/assets`, `embodied/configs`, mapped in
pyproject.toml). So: the installed copy if there is one, else the source tree's.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SOURCE_ROOT = PACKAGE_DIR.parent


def _shipped_dir(name: str) -> Path:
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else SOURCE_ROOT / name


ASSETS_DIR = _shipped_dir("assets")
CONFIGS_DIR = _shipped_dir("configs")


def resolve_shipped(path: str | Path) -> Path:
    """`path` as given if it exists, else a shipped file named as in the source tree
    (`assets/base/...`; the old `embodied/assets/...` too), so that configs work from any
    directory and when installed."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts
    if parts[:1] == ("embodied",):
        parts = parts[1:]
    roots = {"assets": ASSETS_DIR, "configs": CONFIGS_DIR}
    if parts and parts[0] in roots:
        shipped = roots[parts[0]].joinpath(*parts[1:])
        if shipped.exists():
            return shipped
    return path
