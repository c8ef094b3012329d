"""Layers added to the viewer in event-loop-sized steps, and the layer lookups the widgets share.

napari adds a layer in one call on the Qt thread (its controls, its visual, the layer
list row, the active layer): one freeze. :func:`iter_add_layer` spreads that over
turns of the event loop and :func:`apply_stepwise` runs such generators one step per
turn.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

PICKS_LAYER = "picks"
SUBTOMOGRAMS_LAYER = "subtomograms"


def voxel_size_of(layer) -> float:
    """Voxel size in Angstrom of an image layer: its metadata, else its last scale entry."""
    meta = getattr(layer, "metadata", None) or {}
    if "voxel_size" in meta:
        return float(meta["voxel_size"])
    return float(layer.scale[-1])


def run_steps(steps):
    """Run a generator of Qt-thread steps all at once; return its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def iter_add_layer(viewer, layer, *, activate: bool = True):
    """Add a layer object to the viewer in event-loop-sized steps (a generator).

    ``viewer.add_*`` does everything in one call on the Qt thread: the layer's Qt
    controls, its vispy visuals, the layer list row, making it the active layer (which
    restyles the viewer's buttons) and, at the next repaint, compiling its shaders and
    uploading its data: 150-450 ms under software OpenGL, one freeze. Here the layer is
    appended hidden and not made active (one step), shown (the next: slicing, shaders,
    upload), then made active when ``activate`` (napari's own behaviour for a new layer).
    The layer's vispy visual ("visual") and its Qt controls ("controls") are built at
    the turns after the append, each apart.
    """
    visible = bool(layer.visible)
    layer.visible = False
    layers = _raw_layers(viewer)
    flag = getattr(layers, "_activate_on_insert", None)
    if flag is not None:
        layers._activate_on_insert = False
    controls = _layer_controls(viewer)
    add_controls = getattr(controls, "_add", None)
    qt_viewer = _qt_viewer(viewer)
    add_visual = getattr(qt_viewer, "_on_add_layer_change", None)
    if add_visual is not None and not hasattr(qt_viewer, "_add_layer"):
        add_visual = None
    deferred = [cb for cb in (add_visual, add_controls) if cb is not None]
    for cb in deferred:
        # the layer's vispy visual (30-65 ms) and Qt controls (10-45 ms) are built at the
        # next turns, not in the turn that appends it (and updates the dims)
        layers.events.inserted.block(cb)
    try:
        layers.append(layer)
    finally:
        if flag is not None:
            layers._activate_on_insert = flag
        for cb in deferred:
            layers.events.inserted.unblock(cb)
    yield "added"
    canvas = getattr(qt_viewer, "canvas", None)
    if add_visual is not None and layer in layers:
        if layer not in getattr(canvas, "layer_to_visual", {}):
            qt_viewer._add_layer(layer)
            hide_placeholders(canvas.layer_to_visual.get(layer), layer)
            yield "visual"
    if add_controls is not None and layer in layers and layer not in controls.widgets:
        if activate or not _defer_controls(viewer, controls, layer):
            from types import SimpleNamespace

            add_controls(SimpleNamespace(value=layer))
        yield "controls"
    if visible:
        if layer in layers:
            yield from iter_build_shaders(canvas, layer)
        layer.visible = True
        yield "shown"
    if activate and layer in layers:
        layers.selection.active = layer
        yield "active"


_DEFERRED_CONTROLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _defer_controls(viewer, controls, layer) -> bool:
    """Give a layer that is not made active a stand-in for its Qt controls; napari's
    own controls are built when the layer first becomes the active one.

    napari builds a layer's controls (a panel of 10-20 Qt widgets: 30-110 ms on the Qt
    thread under load) when it is added, though they show only for the active layer;
    the inspection layers of Classify and Attack are added without being made active,
    and the user may never select them. The stand-in is an empty widget in napari's
    controls stack (napari shows, re-dims and removes it like the real ones); just
    before napari shows the controls of a newly active layer, a stand-in is replaced by
    the real controls. ``False`` (nothing done) where napari shows dynamic controls.
    """
    from qtpy.QtWidgets import QWidget

    from napari_cryoguard._napari._state import _unwrap

    try:
        from napari.settings import get_settings

        if get_settings().experimental.dynamic_layer_controls:
            return False
    except Exception:  # noqa: BLE001 - a napari without the setting
        pass
    real = _unwrap(viewer)
    pending = _DEFERRED_CONTROLS.get(controls)
    if pending is None:
        pending = _DEFERRED_CONTROLS[controls] = {}
        selection = _unwrap(real.layers).selection

        def build_on_activation(event=None) -> None:
            active = selection.active
            stand_in = pending.pop(active, None) if active is not None else None
            if stand_in is None or controls.widgets.get(active) is not stand_in:
                return
            from types import SimpleNamespace

            shown = controls.currentWidget() is stand_in  # napari was called first
            controls.removeWidget(stand_in)
            stand_in.deleteLater()
            del controls.widgets[active]
            controls._add(SimpleNamespace(value=active))
            if shown and active in controls.widgets:
                controls.setCurrentWidget(controls.widgets[active])

        def forget(event) -> None:
            pending.pop(event.value, None)

        # called before napari's own handlers where the emitter allows it (the real
        # controls exist when napari looks them up), else after (then shown here)
        try:
            selection.events.changed.connect(build_on_activation, position="first")
        except TypeError:  # an emitter without positions
            selection.events.changed.connect(build_on_activation)
        _unwrap(real.layers).events.removed.connect(forget)
    stand_in = QWidget()
    stand_in.ndisplay = int(real.dims.ndisplay)  # napari sets it on every panel
    controls.addWidget(stand_in)
    controls.widgets[layer] = stand_in
    pending[layer] = stand_in
    return True


def iter_build_shaders(canvas, layer):
    """Build the shaders of a new Points or Shapes layer's parts before the layer is
    shown, a small piece per event-loop turn (a generator of Qt-thread steps, "shaders").

    A Points or Shapes visual is several vispy visuals (markers, meshes, lines, text),
    each with its own GL program, built at its first draw: 10-80 ms each under software
    OpenGL (vispy parses the code, Mesa compiles and links it), all in the repaint that
    first shows the layer. Here each part that will draw gets its program built by
    :func:`iter_draw_offscreen` (three turns a part, no repaint of the canvas); the
    repaint that shows the layer then finds them built. A layer of another kind (an
    Image: one program) is left to its first repaint.
    """
    node = getattr((getattr(canvas, "layer_to_visual", None) or {}).get(layer), "node", None)
    parts = getattr(node, "_subvisuals", None)
    if not parts:
        return
    text = getattr(node, "text", None)
    for part in parts:
        if part.visible or (part is text and _has_text_string(layer)):
            yield from iter_draw_offscreen(canvas, part)


_OFFSCREEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # scene canvas -> FBO


def iter_draw_offscreen(canvas, visual):
    """Build one vispy visual's GL program (hidden or not) without a repaint of the
    canvas, in three event-loop turns (a generator of Qt-thread steps, "shaders"):
    vispy prepares the visual's data and writes and parses its program's code (Python),
    then GL compiles and links it (Mesa), then the visual is drawn once into a tiny
    offscreen framebuffer of the canvas's GL context (its first draw: Mesa's code for
    the draw, the data's upload); nothing shows. Nothing happens when the program is
    built already, when the visual has nothing to draw yet, or without a shown canvas
    (no GL context yet); a failure (a napari or vispy without these internals) ends it:
    the first repaint builds it instead."""
    scene_canvas = getattr(canvas, "_scene_canvas", None)
    native = getattr(canvas, "native", None)
    program = getattr(visual, "_program", None)
    if not getattr(program, "_need_build", False) or not hasattr(program, "build_if_needed"):
        return
    if scene_canvas is None or native is None or not native.isVisible():
        return
    try:
        if visual._prepare_draw(view=visual) is False:  # nothing to draw (yet)
            return
        program.build_if_needed()
    except Exception:  # noqa: BLE001 - an optimisation: the repaint does it instead
        return
    yield "shaders"
    try:
        scene_canvas.set_current()
        scene_canvas.context.flush_commands()  # GL: compile and link
    except Exception:  # noqa: BLE001
        return
    yield "shaders"
    if draw_offscreen(canvas, visual):
        yield "shaders"


def draw_offscreen(canvas, visual) -> bool:
    """Draw one vispy visual (hidden or not) into a tiny offscreen framebuffer of the
    canvas's GL context: its GL program is built and drawn once, nothing shows and the
    canvas is not repainted. ``False`` without a shown canvas (no GL context yet) or
    when it failed (a napari or vispy without these internals)."""
    scene_canvas = getattr(canvas, "_scene_canvas", None)
    native = getattr(canvas, "native", None)
    if scene_canvas is None or native is None or not native.isVisible():
        return False
    try:
        from vispy import gloo

        scene_canvas.set_current()
        fbo = _OFFSCREEN.get(scene_canvas)
        if fbo is None:  # one per canvas, kept (GL objects are not freed by Python)
            fbo = _OFFSCREEN[scene_canvas] = gloo.FrameBuffer(
                color=gloo.RenderBuffer((4, 4)), depth=gloo.RenderBuffer((4, 4)))
        was = visual._visible
        visual._visible = True  # the flag only: the setter would ask for a repaint
        scene_canvas.push_fbo(fbo, (0, 0), (4, 4))
        try:
            visual.draw()
        finally:
            scene_canvas.pop_fbo()
            visual._visible = was
            scene_canvas.context.flush_commands()
    except Exception:  # noqa: BLE001 - an optimisation: the repaint does it instead
        return False
    return True


def _has_text_string(layer) -> bool:
    """Whether a Points/Shapes layer has text to draw (visible or not yet): a string
    other than napari's default empty constant."""
    text = getattr(layer, "text", None)
    string = getattr(text, "string", None)
    constant = getattr(string, "constant", None)
    return string is not None and not (constant is not None and constant == "")


def hide_placeholders(vispy_layer, layer) -> None:
    """Hide the parts of a Points or Shapes visual that only draw napari's placeholders,
    until they have something to draw.

    napari gives every Points and Shapes visual a text part (an empty string when the
    layer has no text) and Shapes visuals highlight parts (one degenerate triangle and a
    marker of size 0 when nothing is selected); each is a GL program built and drawn at
    every repaint (the first draw 10-80 ms under software OpenGL) for nothing to see.
    Here the text part is shown only while the layer has visible text, and the Shapes
    highlights only while a shape is selected or hovered (napari's ``highlight`` event).
    """
    node = getattr(vispy_layer, "node", None)
    if node is None or not getattr(node, "_subvisuals", None):
        return
    text = getattr(node, "text", None)
    if text is not None and hasattr(layer, "text") and hasattr(layer.text, "events"):
        def sync_text(event=None) -> None:
            text.visible = bool(layer.text.visible) and _has_text_string(layer)

        layer.text.events.connect(sync_text)
        sync_text()
    parts = [getattr(node, name, None) for name in ("shape_highlights", "highlight_vertices")]
    parts = [p for p in parts if p is not None]
    if parts and hasattr(layer, "selected_data") and hasattr(layer.events, "highlight"):
        def sync_highlight(event=None) -> None:
            value = getattr(layer, "_value", None)
            hovered = isinstance(value, tuple) and len(value) > 0 and value[0] is not None
            shown = bool(len(layer.selected_data)) or hovered or bool(
                getattr(layer, "_is_selecting", False))
            for part in parts:
                if part.visible != shown:
                    part.visible = shown

        layer.events.highlight.connect(sync_highlight)
        sync_highlight()


def _qt_viewer(viewer):
    """napari's QtViewer of ``viewer``'s window, or ``None`` (private attributes)."""
    from napari_cryoguard._napari._state import _unwrap

    try:
        return _unwrap(viewer).window._qt_viewer
    except Exception:  # noqa: BLE001 - headless, or a napari without these internals
        return None


def _layer_controls(viewer):
    """napari's layer-controls container of ``viewer``'s window, or ``None`` (no Qt window,
    or a napari whose container has no per-layer ``_add``/``widgets``)."""
    from napari_cryoguard._napari._state import _unwrap

    try:
        controls = _unwrap(viewer).window._qt_viewer.controls
    except Exception:  # noqa: BLE001 - headless, or a napari without these internals
        return None
    if not (hasattr(controls, "_add") and isinstance(getattr(controls, "widgets", None), dict)):
        return None
    return controls


def _raw_layers(viewer):
    """The viewer's LayerList behind napari's plugin proxy (private attributes allowed)."""
    from napari_cryoguard._napari._state import _unwrap

    return _unwrap(_unwrap(viewer).layers)


STEP_GAP_MS = 12  # between two steps: the repaint a step asked for runs, then the loop ticks


def apply_stepwise(widget, steps, on_done=None) -> None:
    """Run a generator of small Qt-thread updates one step per event-loop turn.

    Each step (one layer updated, ~20-60 ms) is followed by a repaint and whatever else
    the event loop has to do, so the viewer never freezes for the sum of them: the next
    step starts :data:`STEP_GAP_MS` later, so that the repaint one step caused and the
    next step do not run back to back in one turn of the loop. The
    widget counts as busy (``widget._busy``) until the last step ran; ``on_done`` gets the
    generator's return value.
    """
    from qtpy.QtCore import QTimer

    widget._applying = True

    def step() -> None:
        try:
            next(steps)
        except StopIteration as stop:
            widget._applying = False
            if on_done is not None:
                on_done(stop.value)
            return
        except Exception as exc:  # noqa: BLE001 - a layer the user removed meanwhile
            widget._applying = False
            widget.show_failure(exc)
            return
        QTimer.singleShot(STEP_GAP_MS, step)

    QTimer.singleShot(0, step)


SLICE_BUDGET_MS = 20.0  # layers sliced in one turn of the event loop, at most about this long


def iter_slice_layers(viewer, layers=None, budget_ms: float = SLICE_BUDGET_MS):
    """Slice ``layers`` (default: all) again for the viewer's dims, a few per event-loop
    turn (a generator of Qt-thread steps).

    napari slices every layer in one call when the dims change (``_update_layers``):
    with a dozen layers, 40-100 ms, and the repaint comes on top of it in the same
    turn. Here the layers are sliced one at a time, visible ones first, and a step ends
    once ``budget_ms`` is spent, so each turn holds its share and a repaint.
    """
    import time

    from napari_cryoguard._napari._state import _unwrap

    real = _unwrap(viewer)
    update = getattr(real, "_update_layers", None)
    todo = list(real.layers if layers is None else layers)
    if update is None:
        return
    todo.sort(key=lambda lay: not lay.visible)  # what the user sees first
    start = time.perf_counter()
    for k, layer in enumerate(todo):
        if layer not in real.layers:
            continue
        update(layers=[layer])
        if k + 1 < len(todo) and 1000.0 * (time.perf_counter() - start) > budget_ms:
            yield "sliced"
            start = time.perf_counter()
    yield "sliced"


def iter_prepare_dims(viewer, layer):
    """Give the viewer the dimensions ``layer`` will need, a turn before it is appended
    (a generator of Qt-thread steps; nothing when it needs no new axis).

    The first 4-D layer (the subtomograms) makes napari add a dims slider and lay the
    window out again, in the turn that appends the layer, on top of the append itself.
    Here the axes come first, in napari's own order (``dims.ndim``, then ``dims.range``,
    then the cursor's position: what the viewer does when a layer is inserted): one step
    for the new slider ("dims"), and the append finds the dims as it will leave them.
    """
    from napari_cryoguard._napari._state import _unwrap

    real = _unwrap(viewer)
    dims = real.dims
    old = int(dims.ndim)
    new = int(layer.ndim)
    if new <= old or not len(real.layers):
        return
    try:
        extent = layer.extent
        world, step = np.asarray(extent.world, dtype=float), np.asarray(extent.step, dtype=float)
        ranges = [tuple(r) for r in dims.range]
        lead = [(world[0, k], world[1, k], step[k]) for k in range(new - old)]
        tail = []
        for k, (start, stop, size) in enumerate(ranges):
            j = new - old + k
            tail.append((min(start, world[0, j]), max(stop, world[1, j]), min(size, step[j])))
        fit = real.fit_to_view
        order = dims.events.order
    except Exception:  # noqa: BLE001 - a napari without these attributes: the append does it
        return
    point = list(dims.point)
    # a new order refits the camera to the layers' extents, which lack the axis until the
    # layer is in (IndexError): held back, the camera stays where the user left it
    # napari builds all the sliders anew, shown, and hides some after: the slider area
    # grows for a moment, and each change of its height resizes the canvas, which
    # repaints at once, inside this call (20-40 ms each); those paints are held back and
    # the canvas repaints once, at the next turn
    sliders = _SliderRebuild(real)
    order.block(fit)
    try:
        with _canvas_draws_held(real), sliders.held():
            # the new axes first with one step each: their sliders are built hidden ...
            dims.update({"ndim": new, "range": [(r[0], r[0], r[2]) for r in lead] + ranges})
    finally:
        order.unblock(fit)
    position = list(real.cursor.position)
    if len(position) < new:
        real.cursor.position = tuple([0.0] * (new - len(position)) + position)
    yield "dims"
    # napari's slider rebuild (all sliders made anew, then shown and laid out: 50-75 ms
    # in one call) in two turns of its own
    if sliders.held_back:
        with _canvas_draws_held(real):
            sliders.create()
        yield "sliders"
        with _canvas_draws_held(real):
            sliders.show()
        yield "sliders shown"
    # ... and shown with their real ranges at the next turn (the window's new layout
    # and repaint come at the turns after)
    with _canvas_draws_held(real):
        dims.range = lead + tail
        dims.point = [r[0] for r in lead] + point  # the slider at the first cube
    yield "ranges"


class _SliderRebuild:
    """napari's dims sliders rebuilt in parts (private ``QtDims`` methods; where they are
    not there, napari rebuilds them itself, in one call, as before).

    While :meth:`held` is entered the ``QtDims`` widget does not follow the dims (its
    callbacks blocked); :meth:`create` then makes the sliders and :meth:`show` lays them
    out and sets their ranges, each meant for its own event-loop turn.
    """

    _CALLBACKS = (("ndim", "_update_nsliders"), ("range", "_update_range"),
                  ("current_step", "_update_slider"), ("order", "_update_display"),
                  ("last_used", "_on_last_used_changed"))
    _PARTS = ("_trim_sliders", "_create_sliders", "_update_display", "_update_range",
              "_update_slider", "_on_last_used_changed", "stop")

    def __init__(self, viewer) -> None:
        qt_viewer = _qt_viewer(viewer)
        qd = getattr(qt_viewer, "dims", None)
        self._qd = qd if qd is not None and all(hasattr(qd, m) for m in self._PARTS) else None
        self._dims = viewer.dims
        self.held_back = False

    @contextlib.contextmanager
    def held(self):
        if self._qd is None:
            yield
            return
        blocked = []
        try:
            for event, method in self._CALLBACKS:
                emitter = getattr(self._dims.events, event)
                callback = getattr(self._qd, method)
                emitter.block(callback)  # napari's EventEmitter: block one callback
                blocked.append((emitter, callback))
            yield
            self.held_back = True
        finally:
            for emitter, callback in blocked:
                emitter.unblock(callback)

    def create(self) -> None:
        qd = self._qd
        qd._trim_sliders(0)
        qd._create_sliders(self._dims.ndim)
        for widget in qd.slider_widgets:  # shown by the next step, once
            widget.hide()

    def show(self) -> None:
        qd = self._qd
        qd._update_display()
        qd._update_range()
        qd._update_slider()
        qd._on_last_used_changed()
        qd.stop()


class _canvas_draws_held:
    """Within the block the canvas does not draw (a resize repaints it at once, inside
    the call that resized it); on exit it asks for one repaint, at a later turn."""

    def __init__(self, viewer) -> None:
        canvas = getattr(_qt_viewer(viewer), "canvas", None)
        scene_canvas = getattr(canvas, "_scene_canvas", None)
        self._draw = getattr(getattr(scene_canvas, "events", None), "draw", None)
        self._canvas = scene_canvas

    def __enter__(self):
        if self._draw is not None:
            self._draw.block()
        return self

    def __exit__(self, *exc) -> None:
        if self._draw is not None:
            self._draw.unblock()
            self._canvas.update()
