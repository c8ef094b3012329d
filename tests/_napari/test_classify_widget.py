"""The "Classify" widget docked as napari docks it: features, colours, table, reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._picks import set_picks_layer
from napari_cryoguard._napari._probe import canvas_coverage
from napari_cryoguard._napari.classify_widget import FILE_CHOICE
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("autoencoder", 5, cube=24, **tiny_params("autoencoder"))
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_checkpoint(path, model, {"class_names": ["1bxn", "3j9i", "6pxm", "1u6g", "1qvr"]})
    return path


@pytest.fixture
def setup(docked, small_sim, ae_ckpt):
    viewer = docked.viewer
    image = viewer.add_image(small_sim.volume, name="tomo", scale=(small_sim.voxel_size,) * 3,
                             metadata={"voxel_size": small_sim.voxel_size})
    picks = small_sim.to_picks()
    set_picks_layer(viewer, picks, image)
    widget = docked.dock("Classify")
    widget.image.value = image
    widget.picker.set_checkpoint(ae_ckpt)
    # a checkpoint chosen once is listed by name in the model choices of the viewer
    assert widget.model.value == str(ae_ckpt)
    assert widget.picker.spec() == str(ae_ckpt)
    return docked, widget


def test_classify_picks_on_the_fly(setup, small_sim):
    docked, widget = setup
    viewer = docked.viewer
    widget.source.value = "picks of tomogram"
    widget.device.value = "cpu"
    # the picks' 'class' came from the simulation's truth, not from a model
    widget.labels.combo.reset_choices()
    assert widget.labels.combo.value == "picks: class"
    docked.click(widget, "Classify")
    docked.wait_idle(widget)
    assert widget.status.value.startswith("classified"), widget.status.value
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
    # the model is named; the file's classes were kept and used as the comparison
    assert "ae.safetensors" in widget.status.value
    assert "accuracy" in widget.status.value and "'class'" in widget.status.value
    truth = np.asarray(small_sim.class_names)[small_sim.labels]
    assert list(feats["file_class"]) == list(truth)
    # after classifying, 'class' is the model's own predictions: never the default label
    widget.labels.combo.reset_choices()
    assert widget.labels.combo.value == "picks: file_class"
    assert widget.labels.combo.choices[-1].endswith("(the model's own predictions)")

    # selecting a point (whatever layer was active) fills the probability table
    first = int(np.flatnonzero(done)[0])
    viewer.layers.selection.active = viewer.layers["tomo"]
    picks.selected_data = {first}
    assert widget.index.value == first
    table = widget.table.value["data"]
    assert len(table) == 5
    assert float(table[int(argmax[0])][1]) == pytest.approx(feats[pcols].to_numpy()[first].max(), abs=1e-3)
    # the whole table is in view: no row numbers, no horizontal scrolling to the bars
    docked.qtbot.wait(50)
    qtable = widget.table.native
    assert not qtable.verticalHeader().isVisible()
    assert qtable.horizontalScrollBar().maximum() == 0

    docked.click(widget, "Reconstruct")
    docked.wait_idle(widget)
    assert f"particle {first}" in viewer.layers and f"reconstruction {first}" in viewer.layers
    rec = viewer.layers[f"reconstruction {first}"]
    assert rec.data.shape == (24, 24, 24)
    # at the tomogram's scale, beside the particle, in the slice the view moved to
    np.testing.assert_allclose(rec.scale, (small_sim.voxel_size,) * 3)
    z_world = picks.data[first][0] * small_sim.voxel_size
    assert viewer.dims.point[0] == pytest.approx(z_world, abs=small_sim.voxel_size)
    assert canvas_coverage(viewer, [f"particle {first}", f"reconstruction {first}"]) > 0.05
    layer_before = viewer.layers[f"particle {first}"]
    docked.click(widget, "Reconstruct")  # updated in place, not piled up
    docked.wait_idle(widget)
    assert [lay.name for lay in viewer.layers].count(f"particle {first}") == 1
    assert viewer.layers[f"particle {first}"] is layer_before


def test_wrong_cube_notifies_without_crash(setup):
    docked, widget = setup
    docked.viewer.add_image(np.zeros((3, 28, 28, 28), np.float32), name="subtomograms",
                            metadata={"index": np.arange(3), "normalized": True})
    widget.source.value = "subtomograms layer"
    docked.click(widget, "Classify")
    docked.wait_idle(widget)
    assert widget.status.value.startswith("error")
    assert "24^3" in widget.status.value
    assert widget.run_button.enabled


def test_empty_checkpoint_field_says_choose(setup):
    docked, widget = setup
    widget.picker.select(FILE_CHOICE)
    widget.checkpoint.value = ""
    docked.click(widget, "Classify")
    assert "choose a checkpoint file" in widget.status.value
    assert "/" not in widget.status.value.split("choose")[0]  # no working directory named


def _classify(docked, widget):
    widget.source.value = "picks of tomogram"
    widget.device.value = "cpu"
    docked.click(widget, "Classify")
    docked.wait_idle(widget)
    assert widget.status.value.startswith("classified"), widget.status.value
    feats = docked.viewer.layers["picks"].features
    return feats[[c for c in feats.columns if c.startswith("p_")]].to_numpy()


def test_classify_uses_only_the_picks_of_the_image_and_converts_voxels(setup, small_sim):
    """Picks of two tomograms: only the rows named like the image layer are classified;
    picks at half the voxel size (coordinates x 2) give the same probabilities."""
    from napari_cryoguard.io import Picks

    docked, widget = setup
    viewer = docked.viewer
    image = viewer.layers["tomo"]
    base = _classify(docked, widget)
    assert "model's training voxel size unknown" in widget.status.value
    n = len(small_sim.coords)
    coords = np.concatenate([small_sim.coords, small_sim.coords + 1.0])
    names = np.array(["tomo"] * n + ["other"] * n)
    set_picks_layer(viewer, Picks(coords=coords, features={"tomo_name": names},
                                  voxel_size=small_sim.voxel_size), image)
    probs = _classify(docked, widget)
    assert np.isnan(probs[n:]).all()
    np.testing.assert_allclose(probs[:n], base, rtol=1e-5, atol=1e-6)
    assert f"{n} of {2 * n} picks" in widget.status.value
    # picks made at half the voxel size: coordinates twice as large, same particles
    layer = viewer.layers["picks"]
    set_picks_layer(viewer, Picks(coords=small_sim.coords * 2), image)
    layer.metadata = {**layer.metadata, "voxel_size": small_sim.voxel_size / 2}
    probs = _classify(docked, widget)
    np.testing.assert_allclose(probs, base, rtol=1e-5, atol=1e-6)
    assert "converted" in widget.status.value


def test_classify_picks_of_no_matching_tomogram_notifies(setup, small_sim):
    from napari_cryoguard.io import Picks

    docked, widget = setup
    viewer = docked.viewer
    n = len(small_sim.coords)
    set_picks_layer(viewer, Picks(coords=np.concatenate([small_sim.coords] * 2), features={
        "tomo_name": np.array(["a"] * n + ["b"] * n)}), viewer.layers["tomo"])
    widget.source.value = "picks of tomogram"
    docked.click(widget, "Classify")
    assert widget.status.value.startswith("error:"), widget.status.value
    assert "'a'" in widget.status.value and "'b'" in widget.status.value


def test_particle_for_model_converts_the_pick_and_resamples(small_sim, tmp_path):
    """A pick at picks-layer voxels x 2 (half the voxel size) is cut at the same place;
    a 10 A model on a 20 A image gets a resampled 24^3 cube and a note."""
    from napari_cryoguard.classify import load_model, zscore
    from napari_cryoguard.layerdata import particle_for_model

    torch.manual_seed(0)
    model = build_model("cb3d", 3, cube=24, **tiny_params("cb3d"))
    vs = float(small_sim.voxel_size)
    same = load_model(save_checkpoint(tmp_path / "m.safetensors", model, {"voxel_size": vs}))
    c = np.round(small_sim.coords[0])
    src = {"index": 0, "stack": None, "volume": small_sim.volume, "center": c}
    ref = particle_for_model({**src, "scale": 1.0, "voxel_size": vs}, same)
    notes: list[str] = []
    got = particle_for_model({**src, "center": c * 2, "scale": 0.5, "voxel_size": vs}, same,
                             notes)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ref.shape == (24, 24, 24) and "x 0.5" in notes[0]
    finer = load_model(save_checkpoint(tmp_path / "f.safetensors", model,
                                       {"voxel_size": vs / 2}))
    notes = []
    vol = particle_for_model({**src, "scale": 1.0, "voxel_size": vs}, finer, notes)
    assert vol.shape == (24, 24, 24) and notes[0].startswith(f"resampled {vs:g} A -> {vs / 2:g} A")
    np.testing.assert_allclose(vol, zscore(vol[None])[0], atol=1e-4)
