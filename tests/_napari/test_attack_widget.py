"""The "Attack" widget in a real viewer: layers, replacement, attack-all, cancel, stalls."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._common import set_picks_layer
from napari_cryoguard._napari.attack_widget import FLIPPED_RGBA, HELD_RGBA, AttackWidget
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
def setup(make_napari_viewer, small_sim, ae_ckpt):
    viewer = make_napari_viewer()
    image = viewer.add_image(small_sim.volume, name="tomo", scale=(small_sim.voxel_size,) * 3)
    set_picks_layer(viewer, small_sim.to_picks(), image)
    widget = AttackWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget.image.value = image
    widget.picker.set_checkpoint(ae_ckpt)
    widget.device.value = "cpu"
    return viewer, widget


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.run_button.enabled and not widget.cancel_button.enabled,
                    timeout=timeout)
    qtbot.wait(20)


def test_attack_one_particle_layers(qtbot, setup):
    viewer, widget = setup
    widget.attack.value = "fgsm"
    assert "eps" in widget.attack_params()  # the form follows the attack's dataclass
    widget.form.eps.value = 0.05
    widget.index.value = 2
    widget.run_button.clicked()
    _wait(qtbot, widget)
    names = [lay.name for lay in viewer.layers]
    for expected in ("particle 2", "adversarial 2", "perturbation 2 x50",
                     "reconstruction 2", "adversarial reconstruction 2"):
        assert expected in names, names
    x = viewer.layers["particle 2"].data
    adv = viewer.layers["adversarial 2"].data
    pert = viewer.layers["perturbation 2 x50"]
    np.testing.assert_allclose(pert.data, (adv - x) * 50, atol=1e-4)
    assert np.abs(adv - x).max() <= 0.05 + 1e-6
    lo, hi = pert.contrast_limits
    assert lo == pytest.approx(-hi)
    assert "L-inf" in widget.result.value and "steps" in widget.result.value

    # again with another magnification: replaced, not piled up
    widget.magnify.value = 10
    widget.run_button.clicked()
    _wait(qtbot, widget)
    names = [lay.name for lay in viewer.layers]
    assert "perturbation 2 x10" in names and "perturbation 2 x50" not in names
    assert names.count("particle 2") == 1 and names.count("adversarial 2") == 1


def test_attack_all_picks_features_and_responsiveness(qtbot, setup):
    from qtpy.QtCore import QTimer

    viewer, widget = setup
    widget.attack.value = "pgd"
    widget.form.eps.value = 0.5
    widget.form.steps.value = 20
    widget.form.step_size.value = "0.05"
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    widget.all_button.clicked()
    _wait(qtbot, widget)
    timer.stop()
    feats = viewer.layers["picks"].features
    assert {"flipped", "adv_class", "adv_norm"} <= set(feats.columns)
    attacked = ~np.isnan(feats["adv_norm"].to_numpy())
    assert attacked.sum() == len(feats)
    colors = np.asarray(viewer.layers["picks"].face_color)
    flipped = feats["flipped"].to_numpy()
    np.testing.assert_allclose(colors[flipped], np.tile(FLIPPED_RGBA, (flipped.sum(), 1)))
    np.testing.assert_allclose(colors[~flipped], np.tile(HELD_RGBA, ((~flipped).sum(), 1)))
    assert np.all(feats["adv_norm"].to_numpy() <= 0.5 + 1e-5)
    # the Qt event loop kept running while the attack worked in its thread
    assert len(gaps) > 5
    print(f"longest event-loop stall during 'attack all': {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < 1.0


def test_cancel_leaves_layers_consistent(qtbot, setup):
    viewer, widget = setup
    widget.attack.value = "pgd"
    widget.form.steps.value = 100
    widget.batch_size.value = 2  # several batches: Cancel acts between them
    before = viewer.layers["picks"].features.copy()
    layer_names = [lay.name for lay in viewer.layers]
    widget.all_button.clicked()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=120_000)
    widget.cancel_button.clicked()
    _wait(qtbot, widget)
    assert widget.status.value.startswith("cancelled")
    assert list(viewer.layers["picks"].features.columns) == list(before.columns)
    assert [lay.name for lay in viewer.layers] == layer_names


def test_bad_model_is_a_notification(qtbot, setup, tmp_path):
    viewer, widget = setup
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    widget.picker.set_checkpoint(bad)
    widget.run_button.clicked()
    assert widget.status.value.startswith("error")
    assert widget.run_button.enabled
