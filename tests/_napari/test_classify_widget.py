"""The "Classify" widget in a real viewer: features, colours, table, reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._common import set_picks_layer
from napari_cryoguard._napari.classify_widget import FILE_CHOICE, ClassifyWidget
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("autoencoder", 5, cube=24, **tiny_params("autoencoder"))
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_checkpoint(path, model, {"class_names": ["1bxn", "3j9i", "6pxm", "1u6g", "1qvr"]})
    return path


def _wait(qtbot, widget):
    """Wait until the worker has finished (the button is enabled again in `finished`)."""
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    qtbot.wait(20)


@pytest.fixture
def setup(make_napari_viewer, small_sim, ae_ckpt):
    viewer = make_napari_viewer()
    image = viewer.add_image(small_sim.volume, name="tomo", scale=(small_sim.voxel_size,) * 3,
                             metadata={"voxel_size": small_sim.voxel_size})
    set_picks_layer(viewer, small_sim.to_picks(), image)
    widget = ClassifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget.image.value = image
    widget.set_checkpoint(ae_ckpt)
    assert widget.model.value == FILE_CHOICE
    return viewer, widget


def test_classify_picks_on_the_fly(qtbot, setup, small_sim):
    viewer, widget = setup
    widget.source.value = "picks of tomogram"
    widget.device.value = "cpu"
    widget.run_button.clicked()
    _wait(qtbot, widget)
    picks = viewer.layers["picks"]
    feats = picks.features
    pcols = [c for c in feats.columns if c.startswith("p_")]
    assert len(pcols) == 5
    done = ~np.isnan(feats[pcols].to_numpy()).any(axis=1)
    assert done.sum() >= len(small_sim.coords) - 2  # all but border-skipped picks
    np.testing.assert_allclose(feats[pcols].to_numpy()[done].sum(1), 1.0, rtol=1e-5)
    # the class feature is the argmax and the colour follows the class
    argmax = feats[pcols].to_numpy()[done].argmax(1)
    assert list(feats["class"][done]) == [pcols[i][2:] for i in argmax]
    fc = np.asarray(picks.border_color)[done]
    same = argmax[:, None] == argmax[None, :]
    np.testing.assert_array_equal(np.all(fc[:, None] == fc[None, :], axis=-1), same)
    assert "1bxn" in widget.legend.value
    # selecting a point fills the probability table
    first = int(np.flatnonzero(done)[0])
    picks.selected_data = {first}
    widget._on_select()
    assert widget.index.value == first
    table = widget.table.value["data"]
    assert len(table) == 5
    assert float(table[int(argmax[0])][1]) == pytest.approx(feats[pcols].to_numpy()[first].max(), abs=1e-3)

    widget.run_reconstruct()
    assert f"particle {first}" in viewer.layers and f"reconstruction {first}" in viewer.layers
    assert viewer.layers[f"reconstruction {first}"].data.shape == (24, 24, 24)
    widget.run_reconstruct()  # replaced, not piled up
    assert [lay.name for lay in viewer.layers].count(f"particle {first}") == 1


def test_wrong_cube_notifies_without_crash(qtbot, setup):
    viewer, widget = setup
    viewer.add_image(np.zeros((3, 28, 28, 28), np.float32), name="subtomograms",
                     metadata={"index": np.arange(3), "normalized": True})
    widget.source.value = "subtomograms layer"
    widget.run_button.clicked()
    _wait(qtbot, widget)
    assert widget.status.value.startswith("error")
    assert "24^3" in widget.status.value
    assert widget.run_button.enabled
