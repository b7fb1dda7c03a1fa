"""The wheel ships the top-level assets/ and configs/, and every package of the source tree."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "embodied").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(ROOT)], check=True)
    return next(out.glob("embodied-*.whl"))


def test_non_editable_install_finds_configs_and_assets(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "embodied/configs/quickstart.yaml" in names
    assert "embodied/assets/base/pick_place_flow/model.safetensors" in names
    assert "embodied/assets/manipulation/gantry.xml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(wheel)], check=True)
    probe = (
        "import embodied, json\n"
        "from embodied.core.paths import ASSETS_DIR, CONFIGS_DIR, resolve_shipped\n"
        "from embodied.policies.policy import ChunkPolicy\n"
        "p = ChunkPolicy.from_pretrained(resolve_shipped('assets/base/pick_place_flow'))\n"
        "print(json.dumps([embodied.__file__, str(CONFIGS_DIR / 'quickstart.yaml'),\n"
        "                  (CONFIGS_DIR / 'quickstart.yaml').exists(), p.config.obs_dim]))\n")
    # Run outside the source tree, with the installed copy first on the path.
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    import json

    module_file, config, config_exists, obs_dim = json.loads(out.strip().splitlines()[-1])
    assert module_file.startswith(str(target))
    assert config.startswith(str(target)) and config_exists
    assert obs_dim == 26


def test_the_old_bridge_name_still_imports_with_a_warning():
    import importlib
    import sys

    sys.modules.pop("embodied.bridge", None)
    with pytest.warns(DeprecationWarning, match="embodied.sim2real"):
        bridge = importlib.import_module("embodied.bridge")
    from embodied.bridge.robot import BridgeRobot

    from embodied.sim2real import make_transport
    from embodied.sim2real.robot import BridgeRobot as NewBridgeRobot

    assert BridgeRobot is NewBridgeRobot  # one module under two names
    assert bridge.make_transport is make_transport
