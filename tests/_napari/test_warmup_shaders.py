"""What keeps first draws and slice moves out of single event-loop turns, by behaviour
(never by timing), on a shown viewer docked as napari does.

- A new Points/Shapes layer gets its parts' GL programs built before it is shown, in
  steps of their own, without a repaint of the canvas (:func:`iter_build_shaders`).
- napari's placeholder parts (the empty text of a layer without text, the Shapes
  highlights while nothing is selected) are hidden until they have something to draw.
- vispy's parsing of a program's variables is memoised by code, and gives what vispy's
  own parser gives.
- Moving the Z slice re-slices the layers over several steps, all of them in the end.
- The first 4-D layer's dims change does not repaint the canvas inside the call.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard._napari._layers import (
    iter_add_layer,
    iter_build_shaders,
    iter_prepare_dims,
    iter_slice_layers,
)
from napari_cryoguard._napari._warmup import install_shader_parse_cache

pytestmark = pytest.mark.gui


def _draws(viewer) -> list:
    """A list that grows by one at every draw of the viewer's canvas."""
    seen: list = []
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(lambda e: seen.append(1))
    return seen


def test_points_layer_programs_are_built_before_it_is_shown(docked):
    from napari.layers import Points

    viewer = docked.viewer
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="tomo")
    docked.qtbot.wait(100)  # the canvas has drawn once: a GL context exists
    canvas = viewer.window._qt_viewer.canvas
    layer = Points(np.array([[4.0, 10.0, 12.0], [4.0, 20.0, 5.0]]), size=3, name="dots")
    steps = iter_add_layer(viewer, layer, activate=False)
    labels = []
    for label in steps:
        labels.append(label)
        if label == "controls":
            break
    node = canvas.layer_to_visual[layer].node
    markers = node.points_markers
    assert markers._program._need_build  # not built yet: it has never been drawn
    draws = _draws(viewer)
    shaders = []
    for label in steps:
        if label != "shaders":
            labels.append(label)
            break
        shaders.append(label)
        assert not layer.visible  # built while the layer is still hidden
    assert shaders, labels  # at least one step of its own
    assert labels[-1] == "shown" and layer.visible
    assert not markers._program._need_build  # built offscreen, before the first repaint
    assert draws == []  # ... which did not need the canvas to draw
    assert list(steps) == []
    # a later repaint draws it as usual
    docked.qtbot.waitUntil(lambda: len(draws) > 0, timeout=5000)
    assert not markers._program._need_build


def test_placeholder_parts_are_hidden_until_used(docked):
    viewer = docked.viewer
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="tomo")
    canvas = viewer.window._qt_viewer.canvas
    from napari.layers import Points, Shapes

    points = Points(np.array([[4.0, 10.0, 12.0]]), size=3, name="dots",
                    features={"label": ["a"]})
    list(iter_add_layer(viewer, points))
    text = canvas.layer_to_visual[points].node.text
    assert not text.visible  # no text: napari's empty placeholder is not drawn
    points.text = "{label}"
    assert text.visible  # the layer has text now: drawn
    points.text.visible = False
    assert not text.visible

    rect = np.array([[4.0, 0.0, 0.0], [4.0, 0.0, 9.0], [4.0, 9.0, 9.0], [4.0, 9.0, 0.0]])
    shapes = Shapes([rect], shape_type="polygon", name="frames")
    list(iter_add_layer(viewer, shapes))
    node = canvas.layer_to_visual[shapes].node
    assert not node.shape_highlights.visible and not node.highlight_vertices.visible
    shapes.mode = "select"
    shapes.selected_data = {0}
    assert node.shape_highlights.visible and node.highlight_vertices.visible
    shapes.selected_data = set()
    assert not node.shape_highlights.visible


def test_a_layer_without_a_canvas_visual_builds_nothing(docked):
    from napari.layers import Image

    viewer = docked.viewer
    layer = Image(np.zeros((8, 16, 16), np.float32), name="im")
    canvas = viewer.window._qt_viewer.canvas
    # an Image is one program, left to its first repaint; a layer with no visual: nothing
    assert list(iter_build_shaders(canvas, layer)) == []
    viewer.add_layer(layer)
    assert list(iter_build_shaders(canvas, layer)) == []


def test_shader_parse_cache_gives_vispys_own_variables(docked):
    from vispy.gloo import Program

    install_shader_parse_cache()
    install_shader_parse_cache()  # once: a second call wraps nothing
    parse = Program._parse_variables_from_code
    assert getattr(parse, "_cryoguard_memo", False)
    assert not getattr(parse.__wrapped__, "_cryoguard_memo", False)
    vert = """
    uniform float u_scale;  // a comment with // twice
    attribute vec2 a_position;
    varying vec4 v_color;
    void main() { gl_Position = vec4(a_position * u_scale, 0.0, 1.0); v_color = vec4(1.0); }
    """
    frag = """
    varying vec4 v_color;
    uniform vec4 u_tint[2];
    void main() { gl_FragColor = v_color * u_tint[0]; }
    """
    first = Program(vert, frag)
    expected = {"u_scale", "a_position", "v_color", "u_tint", "u_tint[0]", "u_tint[1]"}
    assert set(first._code_variables) == expected
    second = Program(vert, frag)  # the same code: the memo
    assert second._code_variables == first._code_variables
    assert second._code_variables is not first._code_variables  # a copy of its own
    own = Program.__new__(Program)
    own.__dict__.update(second.__dict__)
    parse.__wrapped__(own, update_variables=False)  # vispy's own parser on the same code
    assert own._code_variables == second._code_variables
    second["u_scale"] = 2.0  # variables set after the parse still reach the program
    np.testing.assert_allclose(np.asarray(second["u_scale"]).ravel(), [2.0])


def test_slicing_after_a_z_move_ends_with_every_layer_sliced(docked, monkeypatch):
    from napari_cryoguard._napari._particles import _iter_set_point

    viewer = docked.viewer
    layers = [viewer.add_image(np.random.default_rng(k).random((20, 16, 16), np.float32),
                               name=f"im{k}") for k in range(6)]
    layers[0].visible = False
    steps = _iter_set_point(viewer, 0, 12.0)
    assert next(steps) == "slice"
    assert viewer.dims.point[0] == 12.0
    # napari's slicing was held back: no layer is at the new slice yet
    assert all(lay._slice_input.world_slice.point[0] != 12.0 for lay in layers)
    rest = list(steps)
    assert rest and set(rest) == {"sliced"}
    assert all(lay._slice_input.world_slice.point[0] == 12.0 for lay in layers)
    np.testing.assert_array_equal(layers[1]._slice.image.view, layers[1].data[12])
    # a tight budget: one layer a step, visible ones first, the hidden one last
    viewer.dims.events.point.block(viewer._update_layers)
    viewer.dims.events.current_step.block(viewer._update_layers)
    try:
        viewer.dims.set_point(0, 7.0)
    finally:
        viewer.dims.events.point.unblock(viewer._update_layers)
        viewer.dims.events.current_step.unblock(viewer._update_layers)
    order = []
    update = viewer._update_layers

    def recording(*, layers=None):
        order.append([lay.name for lay in layers])
        update(layers=layers)

    monkeypatch.setattr(viewer, "_update_layers", recording)
    steps = list(iter_slice_layers(viewer, budget_ms=0.0))
    assert len(steps) == len(layers)
    assert order == [[name] for name in ("im1", "im2", "im3", "im4", "im5", "im0")]
    assert all(lay._slice_input.world_slice.point[0] == 7.0 for lay in layers)


def test_dims_change_repaints_the_canvas_at_a_later_turn(docked):
    from napari.layers import Image

    viewer = docked.viewer
    viewer.add_image(np.zeros((20, 40, 40), np.float32), name="tomo", scale=(10.0,) * 3)
    docked.qtbot.wait(100)
    draws = _draws(viewer)
    layer = Image(np.ones((6, 8, 8, 8), np.float32), name="cubes", scale=(1.0, 10.0, 10.0, 10.0))
    for label in iter_prepare_dims(viewer, layer):
        assert draws == [], label  # the sliders' rebuild resized the canvas: no draw inside
        docked.qtbot.waitUntil(lambda: len(draws) > 0, timeout=5000)  # one, at a later turn
        draws.clear()
    assert viewer.dims.ndim == 4


def test_controls_of_a_layer_not_made_active_are_built_when_it_becomes_active(docked):
    from napari._qt.layer_controls.qt_image_controls import QtImageControls
    from napari.layers import Image

    viewer = docked.viewer
    first = viewer.add_image(np.zeros((8, 16, 16), np.float32), name="first")
    controls = viewer.window._qt_viewer.controls
    cube = Image(np.ones((8, 16, 16), np.float32), name="cube")
    assert list(iter_add_layer(viewer, cube, activate=False)) == [
        "added", "visual", "controls", "shown"]
    stand_in = controls.widgets[cube]
    assert not isinstance(stand_in, QtImageControls)  # napari's panel is not built yet
    assert viewer.layers.selection.active is first
    viewer.layers.selection.active = cube  # the user selects it: napari's own controls
    real = controls.widgets[cube]
    assert isinstance(real, QtImageControls) and controls.currentWidget() is real
    assert real.layer is cube
    viewer.layers.selection.active = first
    viewer.layers.selection.active = cube
    assert controls.widgets[cube] is real  # built once
    # a layer removed before it was ever selected leaves no controls behind
    other = Image(np.ones((8, 16, 16), np.float32), name="other")
    list(iter_add_layer(viewer, other, activate=False))
    viewer.layers.remove("other")
    assert other not in controls.widgets
    viewer.layers.selection.active = first
    assert controls.currentWidget() is controls.widgets[first]
