"""`cryoguard demo --headless`: the README's first command, as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_headless_demo_writes_outputs_and_a_real_screenshot(tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.fail("the GUI tests run under Xvfb (make test); DISPLAY is not set")
    out = tmp_path / "demo-output"
    res = subprocess.run([str(Path(sys.executable).with_name("cryoguard")), "demo", "--headless",
                          "--out", str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    report = json.loads((out / "report.json").read_text())
    for key in ("tomogram", "truth", "picks", "subtomograms", "screenshot"):
        assert Path(report[key]).is_file(), key
    assert report["n_picks"] > 0 and report["n_subtomograms"] > 0
    assert report["precision"] >= 0.9 and report["recall"] >= 0.9
    assert summary["screenshot"] == report["screenshot"]
    from PIL import Image

    img = np.asarray(Image.open(report["screenshot"]).convert("RGB")).astype(float)
    assert img.shape[0] > 400 and img.shape[1] > 600
    assert img.std() > 10  # not blank: a drawn window with layers and widgets
    from napari_cryoguard.data import load_dataset
    from napari_cryoguard.io import read_picks

    assert len(read_picks(report["picks"])) == report["n_picks"]
    assert len(load_dataset(report["subtomograms"])) == report["n_subtomograms"]


def test_demo_viewer_shows_what_the_demo_did(viewer, tmp_path):
    """The demo's widgets, docked from the manifest, say what the pipeline did: the
    diameter whose sigma the DoG used, picks drawn that size, Classify in front with room
    for its result and legend, naming the model that classified."""
    from napari_cryoguard._napari.demo import populate_viewer
    from napari_cryoguard.demo import run_pipeline
    from napari_cryoguard.picking import SIMULATED_SIGMA1

    result = run_pipeline(tmp_path / "demo", log=lambda m: None)
    widgets = populate_viewer(viewer, result)
    from napari_cryoguard._napari._probe import pump

    pump(0.5)
    pick, classify = widgets["Pick particles"], widgets["Classify"]
    assert pick.sigma_voxels() == pytest.approx(SIMULATED_SIGMA1, abs=0.01)
    voxel = result.sim.voxel_size
    picks = viewer.layers["picks"]
    assert np.allclose(picks.size, pick.diameter.value / voxel, atol=0.1)
    model = result.summary.get("model", "cb3d-default")
    assert classify.picker.model.value == model
    assert model in classify.status.value and classify.progress.value == 100
    assert classify.native.isVisible()  # in front of its tabs
    # Classify's dock has room for its result and legend in an 800 px window
    assert classify.native.height() >= 380, classify.native.height()
    assert pick.native.height() >= 200, pick.native.height()
