"""What keeps the event loop responsive, checked by behaviour (never by timing).

- A second "Attack particle" updates the inspection layers in place: the same layer
  objects, renamed and moved, no layer added or removed (adding a napari layer is the
  costly part on the Qt thread).
- A new layer is added in steps: appended hidden and not active, its visual, its Qt
  controls, then shown, then made active (napari's behaviour for a new layer is kept).
- The first 4-D layer (the subtomograms) gets its dims slider a turn before it is
  appended, and the dims end as napari's own add leaves them; the camera stays.
- Docking the widgets warms up the visuals they will add once per viewer, at idle,
  and leaves no layer behind.
- :func:`quiet_gc` takes what exists out of the collector's full passes, and gives it
  back when a layer is removed (napari layers are freed by the collector).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._layers import iter_add_layer, iter_prepare_dims
from napari_cryoguard._napari._picks import set_picks_layer
from napari_cryoguard._napari._workers import quiet_gc
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

pytestmark = pytest.mark.gui

ROLES = ("particle", "adversarial", "perturbation", "reconstruction",
         "adversarial reconstruction", "frames")


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    model = build_model("autoencoder", 5, cube=24, **tiny_params("autoencoder"))
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_checkpoint(path, model, {"class_names": ["1bxn", "3j9i", "6pxm", "1u6g", "1qvr"]})
    return path


@pytest.fixture
def attack(docked, small_sim, ae_ckpt):
    viewer = docked.viewer
    image = viewer.add_image(small_sim.volume, name="tomo", scale=(small_sim.voxel_size,) * 3)
    set_picks_layer(viewer, small_sim.to_picks(), image)
    widget = docked.dock("Attack")
    widget.image.value = image
    widget.picker.set_checkpoint(ae_ckpt)
    widget.device.value = "cpu"
    return docked, widget


def _inspection(viewer, i: int) -> dict:
    names = {"particle": f"particle {i}", "adversarial": f"adversarial {i}",
             "perturbation": f"perturbation {i} x50", "reconstruction": f"reconstruction {i}",
             "adversarial reconstruction": f"adversarial reconstruction {i}",
             "frames": f"particle {i} frames"}
    return {role: viewer.layers[name] for role, name in names.items()}


def test_second_attack_updates_the_layers_in_place(attack, small_sim):
    docked, widget = attack
    viewer = docked.viewer
    widget.index.value = 2
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    first = _inspection(viewer, 2)
    assert first["frames"].text.visible  # the captions, shown a turn after the frames
    assert list(first["frames"].features["caption"])[0] == "particle"
    frames_data = [np.array(d) for d in first["frames"].data]
    frames_at = np.array(first["frames"].translate)
    added, removed = [], []
    viewer.layers.events.inserted.connect(lambda e: added.append(e.value.name))
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))

    widget.index.value = 3
    docked.click(widget, "Attack particle")
    docked.wait_idle(widget)
    assert added == [] and removed == [], (added, removed)
    second = _inspection(viewer, 3)
    for role in ROLES:
        assert second[role] is first[role], role  # the same object, renamed
        assert second[role].visible
    assert "particle 2" not in viewer.layers
    # the new particle's cube, moved next to pick 3 (same grid, shifted by the picks' offset)
    vs = small_sim.voxel_size
    picks = viewer.layers["picks"].data
    shift = (picks[3] - picks[2]) * vs
    np.testing.assert_allclose(np.array(second["frames"].translate) - frames_at, shift, atol=1e-6)
    # the frames were only moved: their rectangles (relative to the particle) are the same
    assert len(second["frames"].data) == len(frames_data) == 5
    for before, after in zip(frames_data, second["frames"].data, strict=True):
        np.testing.assert_allclose(after, before)
    z_mid = second["particle"].translate[0] + (second["particle"].data.shape[0] - 1) / 2 * vs
    assert z_mid == pytest.approx(picks[3][0] * vs, abs=vs)
    assert viewer.dims.point[0] == pytest.approx(picks[3][0] * vs, abs=vs)


def test_a_new_layer_is_added_hidden_then_shown_then_made_active(docked):
    from napari.layers import Image

    viewer = docked.viewer
    first = viewer.add_image(np.zeros((8, 16, 16), np.float32), name="first")
    assert viewer.layers.selection.active is first
    layer = Image(np.ones((8, 16, 16), np.float32), name="new", contrast_limits=(0, 2))
    steps = iter_add_layer(viewer, layer)
    controls = viewer.window._qt_viewer.controls
    assert next(steps) == "added"
    assert "new" in viewer.layers and not layer.visible
    assert viewer.layers.selection.active is first  # not yet: that restyles the viewer
    canvas = viewer.window._qt_viewer.canvas
    # its vispy visual, then its Qt controls, come at the next turns
    assert layer not in canvas.layer_to_visual and layer not in controls.widgets
    assert next(steps) == "visual" and layer in canvas.layer_to_visual
    assert canvas.layer_to_visual[layer].node.parent is canvas.view.scene
    assert next(steps) == "controls" and layer in controls.widgets
    assert next(steps) == "shown" and layer.visible
    assert next(steps) == "active" and viewer.layers.selection.active is layer
    with pytest.raises(StopIteration):
        next(steps)
    # a layer made hidden stays hidden; activate=False leaves the active layer alone
    hidden = Image(np.ones((8, 16, 16), np.float32), name="hidden", visible=False)
    assert list(iter_add_layer(viewer, hidden, activate=False)) == ["added", "visual", "controls"]
    assert not hidden.visible and viewer.layers.selection.active is layer
    assert hidden in controls.widgets
    # the controls are napari's own: selecting the layer shows them, removing it drops them
    viewer.layers.selection.active = hidden
    assert controls.currentWidget() is controls.widgets[hidden]
    viewer.layers.remove("hidden")
    assert hidden not in controls.widgets and hidden not in canvas.layer_to_visual


def test_first_4d_layer_gets_its_dims_a_turn_before_the_append(docked):
    from napari.layers import Image

    viewer = docked.viewer
    tomo = viewer.add_image(np.zeros((20, 40, 40), np.float32), name="tomo", scale=(10.0,) * 3)
    viewer.scene.camera.zoom = 3.0
    viewer.scene.camera.center = (150.0, 120.0)
    camera = (tuple(viewer.scene.camera.center), viewer.scene.camera.zoom)
    point = tuple(viewer.dims.point)
    layer = Image(np.ones((6, 8, 8, 8), np.float32), name="cubes", scale=(1.0, *tomo.scale))
    steps = iter_prepare_dims(viewer, layer)
    assert next(steps) == "dims"
    assert viewer.dims.ndim == 4 and "cubes" not in viewer.layers
    qt_dims = viewer.window._qt_viewer.dims
    # napari's slider rebuild is held back to turns of its own: first made ...
    assert len(qt_dims.slider_widgets) == 3
    assert next(steps) == "sliders"
    assert len(qt_dims.slider_widgets) == 4
    assert not any(w.isVisible() for w in qt_dims.slider_widgets)
    # ... then laid out: the tomogram's z slider shows, the new axis (one step) does not
    assert next(steps) == "sliders shown"
    assert qt_dims._displayed_sliders == [False, True, False, False]
    assert not qt_dims._displayed_sliders[0]  # ... and shown at the next step
    assert next(steps) == "ranges"
    assert qt_dims._displayed_sliders[0]
    docked.qtbot.wait(50)
    assert [w.isVisible() for w in qt_dims.slider_widgets] == [True, True, False, False]
    with pytest.raises(StopIteration):
        next(steps)
    assert list(iter_add_layer(viewer, layer))[0] == "added"
    # the dims as napari's own add leaves them, the slider at the first cube, view kept
    assert tuple(viewer.dims.range) == tuple(viewer.layers._ranges)
    assert tuple(viewer.dims.point) == (0.0, *point)
    assert (tuple(viewer.scene.camera.center), viewer.scene.camera.zoom) == camera
    # a layer that needs no new axis: nothing to do
    assert list(iter_prepare_dims(viewer, Image(np.ones((6, 8, 8, 8), np.float32)))) == []


def test_docking_warms_up_once_per_viewer_and_leaves_no_layer(docked, sampled, monkeypatch):
    from napari_cryoguard._napari import _warmup

    viewer = docked.viewer
    names = [layer.name for layer in viewer.layers]
    dims = (viewer.dims.ndim, tuple(viewer.dims.point), tuple(viewer.dims.range))
    camera = (tuple(viewer.scene.camera.center), viewer.scene.camera.zoom)
    active = viewer.layers.selection.active
    runs, added, removed = [], [], []
    original = _warmup.iter_warm_up

    def counting(v):
        runs.append(v)
        return original(v)

    monkeypatch.setattr(_warmup, "iter_warm_up", counting)
    viewer.layers.events.inserted.connect(lambda e: added.append(e.value.name))
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    canvas = viewer.window._qt_viewer.canvas
    before = len(canvas.view.scene.children)
    for name in ("Pick particles", "Classify", "Attack"):  # three widgets, one viewer
        docked.dock(name)
    docked.qtbot.waitUntil(lambda: _warmup.warm_up_done(viewer), timeout=30_000)
    docked.qtbot.wait(50)
    assert len(runs) == 1  # once for the viewer, not once per widget
    # it drew: the captions' glyphs are in the canvas's font now
    info = canvas.font_info()
    font = info.font_manager.get_font(info.face)
    assert set("particle adversarial perturbation x50") - {" "} <= set(font._glyphs)
    # and left nothing: no layer added or removed, the scene, dims, camera as they were
    assert added == [] and removed == []
    assert [layer.name for layer in viewer.layers] == names
    assert len(canvas.view.scene.children) == before
    assert (viewer.dims.ndim, tuple(viewer.dims.point), tuple(viewer.dims.range)) == dims
    assert (tuple(viewer.scene.camera.center), viewer.scene.camera.zoom) == camera
    assert viewer.layers.selection.active is active
    # a widget docked later does not start it again
    assert _warmup.schedule_warm_up(viewer) is False


def test_pick_adds_a_visible_active_picks_layer(docked, sampled):
    tomo = sampled.tomogram
    widget = docked.dock("Pick particles")
    widget.image.value = tomo
    docked.click(widget, "Pick")
    docked.wait_idle(widget)
    picks = docked.viewer.layers["picks"]
    assert picks.visible and docked.viewer.layers.selection.active is picks
    assert len(picks.data) > 0 and "picks in simulated tomogram" in widget.status.value
    assert widget.progress.value == 100
    # a second Pick updates the same layer
    docked.click(widget, "Pick")
    docked.wait_idle(widget)
    assert docked.viewer.layers["picks"] is picks


def test_quiet_gc_freezes_until_a_layer_is_removed(docked, monkeypatch):
    from napari_cryoguard._napari import _workers

    class Node:
        pass

    if gc.get_freeze_count():
        gc.unfreeze()
    monkeypatch.setattr(_workers, "_GC_THAWED", False)
    was = gc.isenabled()
    with quiet_gc():
        assert not gc.isenabled()
        with quiet_gc():  # nested (two workers at once): still paused
            assert not gc.isenabled()
        assert not gc.isenabled()
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle: only the collector frees it
        ref = weakref.ref(a)
        del a, b
    assert gc.isenabled() == was
    assert gc.get_freeze_count() > 0  # what existed is out of the full passes...
    gc.collect()
    assert ref() is not None
    # ...until a layer is removed (napari layers are freed by the collector): a picker
    # of the viewer gives everything back, and nothing is frozen again
    viewer = docked.viewer
    docked.dock("Classify")
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="gone")
    viewer.layers.remove("gone")
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None
    with quiet_gc():
        pass
    assert gc.get_freeze_count() == 0
    gc.disable()
    try:
        with quiet_gc():
            pass
        assert not gc.isenabled()  # a collector the user disabled stays disabled
    finally:
        if was:
            gc.enable()


def test_import_quietly_keeps_a_big_import_out_of_full_passes():
    """The plots' first matplotlib import (a render thread) goes through quiet_gc: what
    exists after it is frozen, so a later full pass does not walk it (Evaluate once
    stalled 56-88 ms on one); a second call imports nothing and freezes nothing."""
    import subprocess
    import sys

    code = (
        "import gc, sys\n"
        "from napari_cryoguard._napari._workers import import_quietly\n"
        "assert 'matplotlib.figure' not in sys.modules and gc.get_freeze_count() == 0\n"
        "import_quietly('matplotlib.figure')\n"
        "n = gc.get_freeze_count()\n"
        "assert 'matplotlib.figure' in sys.modules and n > 10000 and gc.isenabled(), n\n"
        "import_quietly('matplotlib.figure')\n"
        "assert gc.get_freeze_count() == n\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
