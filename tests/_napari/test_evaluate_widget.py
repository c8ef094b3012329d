"""The "Evaluate" widget: a background evaluation with plot, table and per-pick features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._common import set_picks_layer
from napari_cryoguard._napari.evaluate_widget import EvaluateWidget
from napari_cryoguard.io import Picks
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params
from napari_cryoguard.simulate import simulate_subtomograms

pytestmark = pytest.mark.gui


@pytest.fixture
def setup(make_napari_viewer, tmp_path):
    torch.manual_seed(0)
    sim = simulate_subtomograms(n_per_class=3, cube=20, snr=1.0, seed=4,
                                classes=("1bxn", "6pxm"))
    model = build_model("cb3d", 2, cube=20, **tiny_params("cb3d"))
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, {"class_names": ["1bxn", "6pxm"]})
    viewer = make_napari_viewer()
    n = len(sim.labels)
    image = viewer.add_image(np.zeros((40, 40, 40 + 10 * n), np.float32), scale=(10, 10, 10))
    coords = np.array([[20.0, 20.0, 20.0 + 10 * i] for i in range(n)])
    layer = set_picks_layer(viewer, Picks(coords=coords, scores=np.ones(n)), image)
    feats = layer.features.copy()
    feats["true_class"] = np.asarray(sim.class_names)[sim.labels]
    layer.features = feats
    viewer.add_image(sim.volumes, name="subtomograms",
                     metadata={"index": np.arange(n), "normalized": True, "voxel_size": 10.0})
    widget = EvaluateWidget(viewer, out_dir=tmp_path / "eval")
    viewer.window.add_dock_widget(widget)
    widget.picker.set_checkpoint(ckpt)
    widget.add_model()
    widget.device.value = "cpu"
    return viewer, widget, sim


def test_evaluate_in_background(qtbot, setup):
    viewer, widget, sim = setup
    assert len(widget.models) == 1
    widget.run_button.clicked()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=300_000)
    qtbot.wait(50)
    assert widget.status.value.startswith("verdict"), widget.status.value
    assert widget.progress.value == 100
    table = widget.table.value["data"]
    assert table and all(0.0 <= float(r[3]) <= 1.0 for r in table)
    assert widget.figure.axes and widget.figure.axes[0].lines
    feats = viewer.layers["picks"].features
    assert "eval_correct" in feats.columns
    assert set(np.unique(feats["eval_correct"].dropna())) <= {0.0, 1.0}
    robust_cols = [c for c in feats.columns if c.startswith("robust_")]
    assert robust_cols
    # robust implies correct on the clean sample
    for c in robust_cols:
        ok = feats[c].to_numpy() == 1
        assert np.all(feats["eval_correct"].to_numpy()[ok] == 1)


def test_missing_labels_notify(qtbot, setup):
    viewer, widget, _ = setup
    viewer.layers.remove("subtomograms")
    widget.run_button.clicked()
    assert widget.status.value.startswith("error")
    assert widget.run_button.enabled
