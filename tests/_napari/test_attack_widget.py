"""The "Attack" widget docked as napari docks it: visible layers, replacement, attack-all, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._picks import set_picks_layer
from napari_cryoguard._napari._probe import canvas_coverage
from napari_cryoguard._napari.attack_widget import FLIPPED_RGBA, HELD_RGBA
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    model = build_model("autoencoder", 5, cube=24, **tiny_params("autoencoder"))
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_checkpoint(path, model, {"class_names": ["1bxn", "3j9i", "6pxm", "1u6g", "1qvr"]})
    return path


@pytest.fixture
def setup(docked, small_sim, ae_ckpt):
    viewer = docked.viewer
    image = viewer.add_image(small_sim.volume, name="tomo", scale=(small_sim.voxel_size,) * 3)
    picks = small_sim.to_picks()
    set_picks_layer(viewer, picks, image)
    widget = docked.dock("Attack")
    widget.image.value = image
    widget.picker.set_checkpoint(ae_ckpt)
    widget.device.value = "cpu"
    return docked, widget


def test_attack_one_particle_layers_visible_beside_it(setup, small_sim):
    docked, widget = setup
    viewer = docked.viewer
    widget.attack.value = "fgsm"
    assert "eps" in widget.attack_params()  # the form follows the attack's dataclass
    widget.form.eps.value = 0.05
    # clicking a point of 'picks' chooses the particle, whatever layer was active before
    viewer.layers.selection.active = viewer.layers["tomo"]
    viewer.layers["picks"].selected_data = {2}
    assert widget.index.value == 2
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    names = [lay.name for lay in viewer.layers]
    shown = ["particle 2", "adversarial 2", "perturbation 2 x50", "reconstruction 2",
             "adversarial reconstruction 2"]
    for expected in shown:
        assert expected in names, (names, widget.status.value)
    x = viewer.layers["particle 2"].data
    adv = viewer.layers["adversarial 2"].data
    pert = viewer.layers["perturbation 2 x50"]
    np.testing.assert_allclose(pert.data, (adv - x) * 50, atol=1e-4)
    assert np.abs(adv - x).max() <= 0.05 + 1e-6
    lo, hi = pert.contrast_limits
    assert lo == pytest.approx(-hi)
    assert "L-inf" in widget.result.value and "1 step" in widget.result.value
    assert "ae.safetensors" in widget.result.value  # the model actually used is named
    # against the simulation's class of the pick, and says where that label came from
    assert "true class" in widget.result.value and "'class'" in widget.result.value

    # at the tomogram's scale, in a row right of the particle, on its slice, in view
    vs = small_sim.voxel_size
    p = viewer.layers["picks"].data[2]
    for name in shown:
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, (vs,) * 3)
        z_mid = layer.translate[0] + (layer.data.shape[0] - 1) / 2 * vs
        assert z_mid == pytest.approx(p[0] * vs, abs=vs)
        assert layer.translate[2] > p[2] * vs  # to the right of the particle
    # a grid: particle | adversarial | perturbation, reconstructions under the first two
    pos = {n: tuple(np.round(viewer.layers[n].translate[1:], 3)) for n in shown}
    assert len(set(pos.values())) == len(shown)  # nothing stacked on anything else
    top = [pos[n] for n in shown[:3]]
    assert len({y for y, _ in top}) == 1 and [x for _, x in top] == sorted(x for _, x in top)
    assert pos["reconstruction 2"][1] == pos["particle 2"][1]
    assert pos["adversarial reconstruction 2"][1] == pos["adversarial 2"][1]
    assert pos["reconstruction 2"][0] > pos["particle 2"][0]
    assert viewer.dims.point[0] == pytest.approx(p[0] * vs, abs=vs)
    coverage = canvas_coverage(viewer, shown)
    assert coverage > 0.10, coverage

    # again with another magnification: updated in place, not piled up
    before = viewer.layers["particle 2"]
    widget.magnify.value = 10
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    names = [lay.name for lay in viewer.layers]
    assert "perturbation 2 x10" in names and "perturbation 2 x50" not in names
    assert names.count("particle 2") == 1 and names.count("adversarial 2") == 1
    assert viewer.layers["particle 2"] is before

    # another particle: the same layers follow it (renamed, moved, updated in place)
    n_layers = len(viewer.layers)
    widget.index.value = 3
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    assert "particle 3" in viewer.layers and "particle 2" not in viewer.layers
    assert viewer.layers["particle 3"] is before and len(viewer.layers) == n_layers
    p3 = viewer.layers["picks"].data[3]
    assert viewer.dims.point[0] == pytest.approx(p3[0] * vs, abs=vs)


def test_attack_all_picks_features(setup):
    docked, widget = setup
    viewer = docked.viewer
    widget.attack.value = "pgd"
    widget.form.eps.value = 0.5
    widget.form.steps.value = 20
    widget.form.step_size.value = "0.05"
    docked.click(widget, "Attack all picks")
    docked.wait_idle(widget)
    feats = viewer.layers["picks"].features
    assert {"flipped", "adv_class", "adv_norm"} <= set(feats.columns), widget.status.value
    attacked = ~np.isnan(feats["adv_norm"].to_numpy())
    assert attacked.sum() == len(feats)
    colors = np.asarray(viewer.layers["picks"].face_color)
    flipped = feats["flipped"].to_numpy()
    np.testing.assert_allclose(colors[flipped], np.tile(FLIPPED_RGBA, (flipped.sum(), 1)))
    np.testing.assert_allclose(colors[~flipped], np.tile(HELD_RGBA, ((~flipped).sum(), 1)))
    assert np.all(feats["adv_norm"].to_numpy() <= 0.5 + 1e-5)
    # the numbers are against the picks' labels, and the status says so
    assert "accuracy against the picks' 'class' feature" in widget.status.value


def test_attack_all_without_labels_says_agreement(setup):
    docked, widget = setup
    widget.attack.value = "fgsm"
    widget.labels.combo.value = "none"
    docked.click(widget, "Attack all picks")
    docked.wait_idle(widget)
    status = widget.status.value
    assert "agreement with the model's own predictions" in status, status
    assert "accuracy" not in status


def test_cancel_leaves_layers_consistent(setup):
    docked, widget = setup
    viewer = docked.viewer
    widget.attack.value = "pgd"
    widget.form.steps.value = 100
    widget.batch_size.value = 2  # several batches: Cancel acts between them
    before = viewer.layers["picks"].features.copy()
    layer_names = [lay.name for lay in viewer.layers]
    docked.click(widget, "Attack all picks")
    docked.qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=120_000)
    docked.click(widget, "Cancel")
    docked.wait_idle(widget)
    assert widget.status.value.startswith("cancelled")
    assert list(viewer.layers["picks"].features.columns) == list(before.columns)
    assert [lay.name for lay in viewer.layers] == layer_names


def test_bad_model_is_a_notification(setup, tmp_path):
    docked, widget = setup
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    widget.picker.set_checkpoint(bad)
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    assert widget.status.value.startswith("error")
    assert widget.run_button.enabled


def test_attack_all_uses_only_the_picks_of_the_image(setup, small_sim):
    """Picks of two tomograms: only the rows named like the image layer are attacked, and
    the result line says so and warns that the model's training voxel size is unknown."""
    from napari_cryoguard.io import Picks

    docked, widget = setup
    viewer = docked.viewer
    n = len(small_sim.coords)
    coords = np.concatenate([small_sim.coords, small_sim.coords])
    set_picks_layer(viewer, Picks(coords=coords, features={
        "tomo_name": np.array(["other"] * n + ["tomo"] * n)}), viewer.layers["tomo"])
    widget.attack.value = "fgsm"
    widget.labels.combo.value = "none"
    docked.click(widget, "Attack all picks")
    docked.wait_idle(widget)
    feats = viewer.layers["picks"].features
    attacked = ~np.isnan(feats["adv_norm"].to_numpy())
    np.testing.assert_array_equal(attacked, [False] * n + [True] * n)
    status = widget.status.value
    assert f"{n}/{n} picks" in status or f"/{n} picks flipped" in status, status
    assert f"{n} of {2 * n} picks" in status
    assert "model's training voxel size unknown" in status


def _ink(viewer) -> np.ndarray:
    """The canvas pixels something is drawn on (the background is black)."""
    from napari_cryoguard._napari._probe import pump

    pump(0.05)
    shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]
    return shot.max(axis=-1) > 40


def _box(mask: np.ndarray):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert len(rows) and len(cols), "nothing drawn"
    return rows[0], rows[-1], cols[0], cols[-1]


def test_attack_captions_keep_apart_at_every_zoom(setup):
    """The frames' captions, each rendered alone: their boxes on the screen never overlap,
    at the zoom the view went to, zoomed in, and zoomed far out (where captions of a
    fixed screen size ran into each other); nor do they touch the frames."""
    docked, widget = setup
    viewer = docked.viewer
    widget.attack.value = "fgsm"
    widget.index.value = 2
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    frames = viewer.layers["particle 2 frames"]
    captions = list(frames.features["caption"])
    assert captions == ["particle", "adversarial", "perturbation x50", "reconstruction",
                        "adv. reconstruction"]
    for layer in viewer.layers:
        layer.visible = layer is frames
    edges = frames.edge_color.copy()
    fitted = float(viewer.scene.camera.zoom)
    for factor in (1.0, 2.0, 0.25):
        viewer.scene.camera.zoom = fitted * factor
        frames.edge_color = edges
        frames.text.visible = False
        outline = _ink(viewer)
        frames.text.visible = True
        frames.edge_color = "transparent"  # only the captions are drawn
        boxes, inks = [], []
        for k in range(len(captions)):
            frames.features = {"caption": [c if j == k else "" for j, c in enumerate(captions)]}
            inks.append(_ink(viewer))
            boxes.append(_box(inks[-1]))
        frames.features = {"caption": captions}
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (t0, b0, l0, r0), (t1, b1, l1, r1) = boxes[a], boxes[b]
                apart = b0 < t1 or b1 < t0 or r0 < l1 or r1 < l0
                assert apart, (factor, captions[a], boxes[a], captions[b], boxes[b])
        if factor >= 1.0:  # far out, a caption is a few pixels over its frame's edge
            for caption, ink in zip(captions, inks, strict=True):
                assert not (ink & outline).any(), (factor, caption)
    frames.edge_color = edges
