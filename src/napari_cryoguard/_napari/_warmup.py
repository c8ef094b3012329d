"""Warm-up at idle: the kinds of visuals the plugin adds are drawn once, out of sight,
before the user asks for them (the first draw of a kind compiles its shaders)."""

from __future__ import annotations

import weakref

import numpy as np

from napari_cryoguard._napari._layers import STEP_GAP_MS

_WARMED: set = set()  # ids of the viewers whose warm-up was scheduled
_WARM_DONE: set = set()  # ... and of those whose warm-up has finished


def warm_up_done(viewer) -> bool:
    """Whether :func:`schedule_warm_up`'s warm-up has finished for ``viewer``."""
    from napari_cryoguard._napari._state import _unwrap

    return id(_unwrap(viewer)) in _WARM_DONE


def schedule_warm_up(viewer, delay_ms: int = 500) -> bool:
    """Once per viewer: when the event loop is idle, draw the kinds of visuals the plugin
    will add (:func:`iter_warm_up`), so that the first Pick or Attack does not pay for it.

    Called by the widgets when they are created (docked); the second and later calls for
    the same viewer do nothing. Returns whether a warm-up was scheduled now.
    """
    from napari_cryoguard._napari._state import _unwrap

    real = _unwrap(viewer)
    key = id(real)
    if key in _WARMED or _canvas_of(real) is None:
        return False
    _WARMED.add(key)
    try:
        weakref.finalize(real, _WARMED.discard, key)
        weakref.finalize(real, _WARM_DONE.discard, key)
    except TypeError:  # not weak-referenceable: stays warmed for the process
        pass
    from qtpy.QtCore import QTimer

    QTimer.singleShot(int(delay_ms), lambda: _run_idle_steps(iter_warm_up(real)))
    return True


def _run_idle_steps(steps) -> None:
    """Run a generator one step per event-loop turn (no widget to mark busy; errors end it
    quietly: a warm-up is an optimisation, never a failure the user should see)."""
    from qtpy.QtCore import QTimer

    def step() -> None:
        try:
            next(steps)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - e.g. the viewer was closed meanwhile
            return
        QTimer.singleShot(STEP_GAP_MS, step)

    QTimer.singleShot(0, step)


def _canvas_of(viewer):
    """napari's vispy canvas of ``viewer``'s window, or ``None`` (private attributes)."""
    try:
        return viewer.window._qt_viewer.canvas
    except Exception:  # noqa: BLE001 - headless, or a napari without these internals
        return None


WARM_UP_CAPTIONS = ("particle", "adversarial", "perturbation x50", "reconstruction",
                    "adv. reconstruction", "0123456789")


def iter_warm_up(viewer):
    """Draw once, out of sight, the visuals the plugin adds later (a generator of steps).

    Under software OpenGL the first draw of a kind of visual costs 130-350 ms (its
    shaders are built and compiled; the first text also renders its glyphs), on top of
    adding the layer. Here napari's own vispy layers for a picks-like Points layer (disc
    markers drawn out of slice) and a captioned Shapes layer (the attack frames, with
    the captions' glyphs, rendered beforehand a few at a time) are built for throwaway layers that are never added to the
    viewer, drawn once far outside the view, and thrown away: no layer is added or
    removed, the layer list, dims and camera are untouched. Steps: build one visual;
    wait for the canvas to draw it; remove it.
    """
    canvas = _canvas_of(viewer)
    if canvas is None:
        return
    try:
        yield from _warm_up_visuals(viewer, canvas)
    finally:
        _WARM_DONE.add(id(viewer))


def _warm_up_visuals(viewer, canvas):
    from napari.layers import Points, Shapes

    dims = viewer.dims
    nd = max(int(dims.ndim), 2)
    point = np.asarray(dims.point, dtype=float)[-nd:]
    far = 1e7  # world units: far outside any view (the GPU clips it; shaders still build)
    base = point.copy()
    base[-2:] = far
    corners = np.zeros((4, nd))
    corners[:, -2:] = [[0, 0], [0, 10], [10, 10], [10, 0]]
    rect = base + corners
    from napari._vispy.utils.visual import create_vispy_layer

    def layer_visual(layer):
        # napari's own vispy layer for a layer that is never added to the viewer
        layer._slice_dims(dims)
        try:
            vispy_layer = create_vispy_layer(layer, font_info=canvas.font_info())
        except TypeError:  # a napari whose create_vispy_layer takes no font
            vispy_layer = create_vispy_layer(layer)
        vispy_layer.node.parent = canvas.view.scene
        vispy_layer._on_matrix_change()
        return vispy_layer.node, vispy_layer.close

    makers = [
        lambda: layer_visual(Points(
            base[None], size=14, symbol="disc", border_color="yellow", name="warm-up",
            face_color="transparent", border_width=0.12, projection_mode="rescale_spherical")),
        lambda: layer_visual(Shapes(
            [rect] * len(WARM_UP_CAPTIONS), shape_type="polygon", edge_color="yellow",
            face_color="transparent", edge_width=0.6, name="warm-up",
            features={"caption": list(WARM_UP_CAPTIONS)},
            text={"string": "{caption}", "anchor": "upper_left", "color": "yellow", "size": 8})),
    ]

    def glyphs():
        # the captions' glyphs, rendered on the CPU a few at a time (6-15 ms each)
        try:
            info = canvas.font_info()
            font = info.font_manager.get_font(info.face)
        except Exception:  # noqa: BLE001 - a napari with another text machinery
            return
        chars = sorted(set("".join(WARM_UP_CAPTIONS)) - {" "})
        for k in range(0, len(chars), 4):
            for ch in chars[k:k + 4]:
                font[ch]
            yield "glyphs"

    scene_canvas = getattr(canvas, "_scene_canvas", None)
    draws = [0]

    def counted(event=None) -> None:
        draws[0] += 1

    if scene_canvas is not None:
        scene_canvas.events.draw.connect(counted)
    try:
        for j, make in enumerate(makers):
            if j == 1:
                yield from glyphs()
            node, close = make()
            seen = draws[0]
            canvas.view.scene.update()
            yield "built"
            for _ in range(50):  # the canvas draws at its next repaint
                if scene_canvas is None or draws[0] > seen or not canvas.native.isVisible():
                    break
                yield "waiting"
            node.parent = None
            close()
            yield "drawn"
    finally:
        if scene_canvas is not None:
            scene_canvas.events.draw.disconnect(counted)
