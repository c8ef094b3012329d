"""The "Train" widget: a real background `cryoguard train` process, followed live."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_cryoguard._napari.classify_widget import ClassifyWidget
from napari_cryoguard._napari.train_widget import TrainWidget
from napari_cryoguard.models import load_checkpoint

pytestmark = pytest.mark.gui


@pytest.fixture
def widgets(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    train = TrainWidget(viewer, runs_dir=tmp_path / "runs")
    classify = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(train)
    viewer.window.add_dock_widget(classify)
    train.source.value = "simulated dataset"
    train.per_class.value = 4
    train.cube.value = 20
    train.model.value = "cb3d"
    train.model_form.conv_widths.value = "[4, 4, 8, 8, 8]"
    train.model_form.fc_widths.value = "[16, 16]"
    train.epochs.value = 2
    train.device.value = "cpu"
    return viewer, train, classify


def test_train_run_live_then_use_model(qtbot, widgets):
    viewer, train, classify = widgets
    train.start_button.clicked()
    run = train.current_run()
    assert run is not None and run.status == "running"
    cmd = json.loads((run.folder / "command.json").read_text())
    assert cmd[:1] == ["train"] and "model.conv_widths=[4, 4, 8, 8, 8]" in cmd
    qtbot.waitUntil(lambda: run.status != "running", timeout=240_000)
    train.refresh()
    assert run.status == "done", run.message
    assert [m["epoch"] for m in run.history] == [1, 2]
    assert train.progress.value == 100
    # the live plot drew the per-epoch curves
    assert len(train.plots.ax_loss.lines) >= 1 and len(train.plots.ax_acc.lines) >= 1
    model, meta = load_checkpoint(run.checkpoint)
    assert meta["arch"] == "cb3d" and meta["cube"] == 20
    train.use_button.clicked()
    assert classify.picker.spec() == str(run.checkpoint)


def test_cancel_run_cleanly(qtbot, widgets):
    viewer, train, _ = widgets
    train.epochs.value = 500
    train.start_button.clicked()
    run = train.current_run()
    qtbot.waitUntil(lambda: run.step > 0 or run.epoch > 0, timeout=120_000)
    train.cancel_button.clicked()
    qtbot.waitUntil(lambda: run.status != "running", timeout=120_000)
    assert run.status == "cancelled"
    assert run.process.wait(timeout=60) == 0
    load_checkpoint(run.checkpoint)  # a loadable checkpoint, not a half-written file
    assert not list(run.folder.glob("*.tmp"))


def test_bad_dataset_file_is_a_notification(qtbot, widgets, tmp_path):
    viewer, train, _ = widgets
    train.source.value = "dataset file"
    train.dataset.value = tmp_path / "missing.npz"
    train.start_button.clicked()
    assert train.info.value.startswith("error")
    assert not train.runs


def test_margins_layer_from_checkpoint(qtbot, widgets, tmp_path):
    """An IMA checkpoint's margins become the `margins` layer and a pick column."""
    import torch

    from napari_cryoguard._napari._common import set_picks_layer
    from napari_cryoguard.data import SubtomogramDataset, save_dataset
    from napari_cryoguard.io import Picks, read_picks
    from napari_cryoguard.models import build_model, save_checkpoint, tiny_params
    from napari_cryoguard.runs import TrainRun

    viewer, train, _ = widgets
    coords = np.array([[10.0, 20, 30], [15, 25, 35], [20, 30, 40]])
    image = viewer.add_image(np.zeros((40, 50, 60), np.float32), scale=(10, 10, 10))
    set_picks_layer(viewer, Picks(coords=coords, scores=np.ones(3)), image)
    ds = save_dataset(tmp_path / "d.npz", SubtomogramDataset(
        volumes=np.zeros((3, 20, 20, 20), np.float32), labels=np.array([0, 1, 0]),
        class_names=["a", "b"], coords=coords, voxel_size=10.0, meta={"pick_index": [0, 1, 2]}))
    run = TrainRun.create(tmp_path / "runs", data=str(ds), model="cb3d", epochs=1,
                          label="ima")
    margins = torch.tensor([0.01, 0.02, 0.04])
    save_checkpoint(run.out_path, build_model("cb3d", 2, cube=20, **tiny_params("cb3d")),
                    {"class_names": ["a", "b"]}, extra_tensors={"defense.margins": margins})
    run.checkpoint = run.out_path
    train.show_margins(run)
    layer = viewer.layers["margins"]
    np.testing.assert_allclose(layer.features["margin"], margins.numpy())
    assert layer.size[2] > layer.size[0]  # size grows with the margin
    np.testing.assert_allclose(viewer.layers["picks"].features["margin"], margins.numpy())
    out = train.write_margins(tmp_path / "m.star")
    np.testing.assert_allclose(read_picks(out).features["margin"], margins.numpy())
