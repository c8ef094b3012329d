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
# vispy's text measures these for every text's line height (their glyphs are rendered then)
METRIC_CHARS = "ÅÉÑŐjgpqy "
GLYPHS_PER_STEP = 1  # each glyph 5-30 ms under load (rendered on the CPU at 256 pt)


def iter_warm_up(viewer):
    """Draw once, out of sight, the visuals the plugin adds later (a generator of steps).

    Under software OpenGL the first draw of a kind of visual costs 130-350 ms (its
    shaders are built and compiled; the first text also renders its glyphs), on top of
    adding the layer. Here, a small piece per event-loop turn: the captions' glyphs (a
    few at a time), then napari's own vispy layers for a picks-like Points layer (disc
    markers drawn out of slice) and a captioned Shapes layer (the attack frames), built
    for throwaway layers that are never added to the viewer; each part of them (markers,
    mesh, text) is drawn once into a tiny offscreen framebuffer, a part per turn (its GL
    program built without a repaint of the canvas), then the visual is drawn once on the
    canvas far outside the view, and thrown away. No layer is added or removed; the
    layer list, dims and camera are untouched. vispy's parsing of shader code is
    memoised first (:func:`install_shader_parse_cache`).
    """
    canvas = _canvas_of(viewer)
    if canvas is None:
        return
    try:
        install_shader_parse_cache()
        yield from _warm_up_visuals(viewer, canvas)
    finally:
        _WARM_DONE.add(id(viewer))


def _warm_up_visuals(viewer, canvas):
    from napari.layers import Points, Shapes

    from napari_cryoguard._napari._layers import hide_placeholders, iter_draw_offscreen

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
        # napari's own vispy layer for a layer that is never added to the viewer, in the
        # scene but not drawn on the canvas yet
        layer._slice_dims(dims)
        try:
            vispy_layer = create_vispy_layer(layer, font_info=canvas.font_info())
        except TypeError:  # a napari whose create_vispy_layer takes no font
            vispy_layer = create_vispy_layer(layer)
        hide_placeholders(vispy_layer, layer)
        vispy_layer.node._visible = False
        vispy_layer.node.parent = canvas.view.scene
        vispy_layer._on_matrix_change()
        return vispy_layer

    makers = [
        lambda: Points(
            base[None], size=14, symbol="disc", border_color="yellow", name="warm-up",
            face_color="transparent", border_width=0.12, projection_mode="rescale_spherical"),
        lambda: Shapes(
            [rect] * len(WARM_UP_CAPTIONS), shape_type="polygon", edge_color="yellow",
            face_color="transparent", edge_width=0.6, name="warm-up",
            features={"caption": list(WARM_UP_CAPTIONS)},
            text={"string": "{caption}", "anchor": "upper_left", "color": "yellow", "size": 8}),
    ]

    def glyphs():
        # the glyphs, rendered on the CPU a few at a time
        try:
            info = canvas.font_info()
            font = info.font_manager.get_font(info.face)
        except Exception:  # noqa: BLE001 - a napari with another text machinery
            return
        chars = list(METRIC_CHARS) + sorted(set("".join(WARM_UP_CAPTIONS)) - set(METRIC_CHARS))
        for k in range(0, len(chars), GLYPHS_PER_STEP):
            for ch in chars[k:k + GLYPHS_PER_STEP]:
                font[ch]
            yield "glyphs"

    scene_canvas = getattr(canvas, "_scene_canvas", None)
    draws = [0]

    def counted(event=None) -> None:
        draws[0] += 1

    if scene_canvas is not None:
        scene_canvas.events.draw.connect(counted)
    try:
        yield from glyphs()
        for make in makers:
            layer = make()
            yield "layer"
            vispy_layer = layer_visual(layer)
            node = vispy_layer.node
            yield "built"
            for part in getattr(node, "_subvisuals", None) or [node]:
                if part.visible:
                    yield from iter_draw_offscreen(canvas, part)
            seen = draws[0]
            node.visible = True  # drawn on the canvas once, far outside the view
            yield "shown"
            for _ in range(50):  # the canvas draws at its next repaint
                if scene_canvas is None or draws[0] > seen or not canvas.native.isVisible():
                    break
                yield "waiting"
            node.parent = None
            vispy_layer.close()
            yield "drawn"
    finally:
        if scene_canvas is not None:
            scene_canvas.events.draw.disconnect(counted)


_PARSED: dict = {}  # shader code -> the variables vispy parsed from it
_PARSED_MAX = 512


def install_shader_parse_cache() -> bool:
    """Memoise vispy's parsing of a GL program's code for its variables (once per process;
    returns whether it was installed now).

    vispy parses the code of every new GL program with a regular expression that strips
    comments (``(.*)(//.*)``, quadratic in a line's length): 10-25 ms per program under
    load, 45 ms for a markers and a text program, on the Qt thread at the first draw of
    every new visual. The variables found depend on the code only, and napari's visuals
    of one kind share their code, so the second and later programs with the same code
    reuse the first one's variables (a copy); the rest is vispy's own code.
    """
    try:
        from vispy.gloo.program import Program
    except ImportError:
        return False
    original = Program._parse_variables_from_code
    if getattr(original, "_cryoguard_memo", False):
        return False

    def parse(self, update_variables=True):
        try:
            key = tuple(shader.code for shader in self._shaders)
            found = _PARSED.get(key)
            if found is None:
                original(self, update_variables=False)
                if len(_PARSED) >= _PARSED_MAX:
                    _PARSED.pop(next(iter(_PARSED)))
                _PARSED[key] = dict(self._code_variables)
            else:
                self._code_variables = dict(found)
        except Exception:  # another vispy's internals: its own parser, unmemoised
            return original(self, update_variables=update_variables)
        if update_variables:
            self._process_pending_variables()

    parse._cryoguard_memo = True
    parse.__wrapped__ = original
    Program._parse_variables_from_code = parse
    return True
