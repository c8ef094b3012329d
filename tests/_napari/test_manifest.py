"""The npe2 manifest reaches the installed package and validates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_validates():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-cryoguard")
    assert pm.name == "napari-cryoguard"
    ids = {c.id for c in pm.contributions.commands}
    assert {"napari-cryoguard.get_reader", "napari-cryoguard.write_picks",
            "napari-cryoguard.sample_tomogram", "napari-cryoguard.pick_widget"} <= ids
    # every command's python_name must import
    for cmd in pm.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_npe2_validate_cli():
    npe2 = Path(sys.executable).with_name("npe2")
    res = subprocess.run([str(npe2), "validate", "napari_cryoguard"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


@pytest.mark.slow
def test_manifest_in_built_wheel(tmp_path):
    """A built wheel carries napari.yaml (the top-level file, not the symlink) and the templates."""
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("napari_cryoguard-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest = zf.read("napari_cryoguard/napari.yaml").decode()
        eps = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "napari_cryoguard:napari.yaml" in eps
    assert any(n.startswith("napari_cryoguard/data/templates/") and n.endswith(".mrc") for n in names)
    assert "napari_cryoguard/data/templates/LICENSE" in names
