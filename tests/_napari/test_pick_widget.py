"""The "Pick particles" widget docked through the manifest, on the sample data (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard._napari import _probe
from napari_cryoguard._napari._picks import connect_pick_selection
from napari_cryoguard._napari._state import state_for
from napari_cryoguard.picking import match_picks, sigma_from_diameter

pytestmark = pytest.mark.gui


def _notifications():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


@pytest.fixture
def picker(docked):
    """The sample data and the Pick particles widget docked, tomogram chosen."""
    tomo = docked.sample()
    widget = docked.dock("Pick particles")
    widget.image.value = tomo
    return docked, tomo, widget


def _truth(viewer):
    return np.asarray(viewer.layers["truth"].data)


def test_diameter_gives_sigma_and_sigma_can_be_set(picker):
    _, tomo, w = picker
    assert w.polarity.value == "auto"
    assert not w.advanced.expanded  # k, threshold, ... are folded away
    w.diameter.value = 170.0
    assert w.sigma_voxels() == pytest.approx(170.0 / (2 * np.sqrt(3) * 10.0))
    assert "4.91 voxels" in w.sigma_info.value and "170 Å" in w.sigma_info.value
    assert w.pick_parameters()["sigma1"] == pytest.approx(4.907, abs=1e-3)
    w.sigma1.value = 7.0  # the override wins over the diameter
    assert w.pick_parameters()["sigma1"] == 7.0
    assert "7.00 voxels" in w.sigma_info.value and "advanced" in w.sigma_info.value
    w.sigma1.value = 0.0
    w.diameter.value = 220.0
    assert w.pick_parameters()["sigma1"] == pytest.approx(sigma_from_diameter(220.0, 10.0))


def test_pick_on_sample_finds_the_truth_and_draws_picks_out_of_slice(picker):
    docked, tomo, w = picker
    viewer = docked.viewer
    w.diameter.value = 170.0
    docked.click(w, "Pick")
    assert not w.pick_button.enabled  # busy while the worker runs
    docked.wait_idle(w)
    picks = viewer.layers["picks"]
    precision, recall = match_picks(picks.data, _truth(viewer), tolerance=4.0)
    assert recall >= 0.9 and precision >= 0.9
    assert "score" in picks.features
    assert tuple(picks.scale) == (10.0, 10.0, 10.0)
    # out of slice, as large as the particle (size in voxels, drawn times the 10 A scale)
    assert picks.projection_mode == "rescale_spherical"  # napari 0.9's out-of-slice display
    assert viewer.dims.thickness[0] >= 170.0  # a slice one particle thick
    np.testing.assert_allclose(picks.size, 17.0)
    assert picks.metadata["diameter"] == 170.0
    assert w.progress.value == 100
    assert "auto chose protein white" in w.status.value
    assert state_for(viewer).tomogram == "simulated tomogram"

    # picks show on a slice that holds no pick centre: only out-of-slice drawing does that
    z = np.asarray(picks.data)[:, 0]
    free = next(s for s in range(20, 44) if np.all(np.abs(z - s) > 0.6) and np.any(np.abs(z - s) < 6))
    viewer.dims.set_point(0, free * 10.0)
    assert _probe.canvas_coverage(viewer, ["picks"]) > 0.001

    # picking again updates the same layer (its listeners stay) instead of piling up
    w.diameter.value = 200.0
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert [lay.name for lay in viewer.layers].count("picks") == 1
    assert viewer.layers["picks"] is picks
    np.testing.assert_allclose(picks.size, 20.0)


def _pick_negated(picker):
    """The sample with protein black (as raw tomograms), picked with polarity auto."""
    docked, tomo, w = picker
    neg = docked.viewer.add_image(-np.asarray(tomo.data), name="negated", scale=tomo.scale,
                                  metadata={"voxel_size": 10.0})
    w.reset_choices()
    w.image.value = neg
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert "auto chose protein black" in w.status.value
    return neg


def test_auto_polarity_on_the_negated_sample_chooses_dark(picker):
    docked, tomo, w = picker
    viewer = docked.viewer
    _pick_negated(picker)
    precision, recall = match_picks(viewer.layers["picks"].data, _truth(viewer), tolerance=4.0)
    assert recall >= 0.9 and precision >= 0.9
    # told the wrong sign, the picker finds far fewer of them
    w.polarity.value = "bright"
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert "protein white" in w.status.value and "auto" not in w.status.value
    _, recall = match_picks(viewer.layers["picks"].data, _truth(viewer), tolerance=4.0)
    assert recall < 0.5


def test_preview_says_which_sign_and_extraction(picker):
    docked, tomo, w = picker
    viewer = docked.viewer
    docked.click(w, "Preview DoG")
    docked.wait_idle(w)
    dog = viewer.layers["simulated tomogram DoG"]
    assert dog.metadata["polarity"] == "bright"
    assert "bright = what is picked" in w.status.value and "protein white" in w.status.value
    b = dog.metadata["bin_factor"]
    np.testing.assert_allclose(dog.scale, [10.0 * b] * 3)
    # the negated preview with "protein black" is the same picture
    w.polarity.value = "dark"
    first = np.array(dog.data)
    neg = viewer.add_image(-np.asarray(tomo.data), name="neg", scale=tomo.scale)
    w.reset_choices()
    w.image.value = neg
    docked.click(w, "Preview DoG")
    docked.wait_idle(w)
    assert "protein black" in w.status.value
    np.testing.assert_allclose(viewer.layers["neg DoG"].data, first, atol=1e-5)

    w.image.value = tomo
    docked.click(w, "Pick")
    docked.wait_idle(w)
    n = len(viewer.layers["picks"].data)
    w.cube.value = 24
    docked.click(w, "Extract subtomograms")
    docked.wait_idle(w)
    sub = viewer.layers["subtomograms"]
    assert sub.data.ndim == 4 and sub.data.shape[1:] == (24, 24, 24)
    assert sub.data.shape[0] + sub.metadata["n_skipped"] == n
    np.testing.assert_allclose(sub.data.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert f"{sub.data.shape[0]} subtomograms of 24^3" in w.status.value
    # a second extraction updates the layer in place
    w.cube.value = 20
    docked.click(w, "Extract subtomograms")
    docked.wait_idle(w)
    assert viewer.layers["subtomograms"] is sub and sub.data.shape[1:] == (20, 20, 20)


def test_click_to_select_whatever_was_active_first(docked):
    viewer = docked.viewer
    seen = []
    # connected before any picks layer exists, with the tomogram active
    connect_pick_selection(viewer, lambda index: seen.append(index))
    tomo = docked.sample()
    w = docked.dock("Pick particles")
    w.image.value = tomo
    viewer.layers.selection.active = tomo
    docked.click(w, "Pick")
    docked.wait_idle(w)
    picks = viewer.layers["picks"]
    viewer.layers.selection.active = tomo  # the picks layer is not the active one
    picks.selected_data = {3}
    assert seen[-1] == 3
    assert w.selection.value.startswith("pick 3, score")
    # after picking again (the layer is updated in place) and after it was replaced
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert viewer.layers["picks"] is picks
    picks.selected_data = {1}
    assert seen[-1] == 1 and w.selection.value.startswith("pick 1")
    viewer.layers.remove("picks")
    docked.click(w, "Pick")
    docked.wait_idle(w)
    viewer.layers["picks"].selected_data = {2}
    assert seen[-1] == 2 and w.selection.value.startswith("pick 2")
    # other Points layers do not reach the callback
    count = len(seen)
    viewer.layers["truth"].selected_data = {0}
    assert len(seen) == count


def test_bad_input_is_a_notification(docked):
    viewer = docked.viewer
    w = docked.dock("Pick particles")
    before = len(_notifications())
    docked.click(w, "Pick")  # no image layer at all
    assert w.image.value is None
    assert "open a tomogram first" in w.status.value
    assert any("open a tomogram first" in m for m in _notifications()[before:])

    flat = viewer.add_image(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32),
                            name="flat")
    w.reset_choices()
    w.image.value = flat
    before = len(_notifications())
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert "3D" in w.status.value and w.status.value.startswith("error")
    assert any("3D" in m for m in _notifications()[before:])
    assert "picks" not in viewer.layers
    assert w.pick_button.enabled

    bad = np.ones((40, 64, 64), np.float32)
    bad[5, 5, 5] = np.nan
    w.image.value = viewer.add_image(bad, name="bad", scale=(10.0, 10.0, 10.0))
    w.polarity.value = "bright"
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert "non-finite" in w.status.value and "picks" not in viewer.layers
    docked.click(w, "Extract subtomograms")
    assert "pick particles first" in w.status.value


def test_protein_black_tomogram_is_classified_as_well_as_the_original(picker):
    """Protein black (raw tomograms): Pick finds it, and every cube cut from that
    tomogram (Extract, Classify from picks, Attack particle) is inverted to protein white,
    as the bundled models were trained; the lines say so. Without the inversion the
    bundled CB3D classifies these cubes as if they were other particles."""
    docked, tomo, w = picker
    viewer = docked.viewer
    neg = _pick_negated(picker)
    assert neg.metadata["polarity"] == "dark" and "polarity" not in tomo.metadata
    docked.click(w, "Extract subtomograms")
    docked.wait_idle(w)
    stack = viewer.layers["subtomograms"]
    assert stack.metadata["inverted"] is True
    assert "inverted to protein white" in w.status.value
    # the cubes show protein white again: the centre is brighter than the cube's rim
    centre = np.asarray(stack.data)[:, 11:17, 11:17, 11:17].mean()
    assert centre > np.asarray(stack.data).mean() + 0.1

    classify = docked.dock("Classify", tabify=True)
    classify.reset_choices()
    classify.picker.model.value = "cb3d-default"
    classify.labels.combo.reset_choices()
    classify.labels.combo.value = next(c for c in classify.labels.combo.choices
                                       if c.startswith("truth"))
    for source in ("subtomograms layer", "picks of tomogram"):
        classify.source.value = source
        if source != "subtomograms layer":
            classify.image.value = neg
        docked.click(classify, "Classify")
        docked.wait_idle(classify)
        line = classify.status.value
        accuracy = float(line.split("accuracy ")[1].split()[0])
        assert accuracy >= 0.9, line
        if source != "subtomograms layer":
            assert "inverted to protein white" in line, line

    attack = docked.dock("Attack", tabify=True)
    attack.reset_choices()
    attack.image.value = neg
    attack.picker.model.value = "cb3d-default"
    attack.index.value = 0
    docked.click(attack, "Attack particle")
    docked.wait_idle(attack)
    cube = np.asarray(viewer.layers["particle 0"].data)
    assert cube[11:17, 11:17, 11:17].mean() > cube.mean()  # protein white, as the model saw it


def test_a_thin_tomogram_says_the_border_leaves_little(picker):
    """32 slices with the papers' 14-voxel border leave z 14-17 to pick in: the line says
    so and names the control to lower; lowered, it says nothing and finds more."""
    docked, tomo, w = picker
    thin = docked.viewer.add_image(np.asarray(tomo.data)[16:48], name="thin", scale=tomo.scale,
                                   metadata={"voxel_size": 10.0})
    w.reset_choices()
    w.image.value = thin
    w.polarity.value = "bright"
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert "the border of 14 voxels leaves 10 % of the tomogram" in w.status.value
    assert "(z 14-17 of 32)" in w.status.value
    assert "lower 'border' under advanced parameters" in w.status.value
    few = len(docked.viewer.layers["picks"].data)
    w.border.value = 4
    docked.click(w, "Pick")
    docked.wait_idle(w)
    assert "leaves" not in w.status.value
    assert len(docked.viewer.layers["picks"].data) > few
