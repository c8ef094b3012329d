"""Layers added to the viewer in event-loop-sized steps, and the layer lookups the widgets share.

napari adds a layer in one call on the Qt thread (its controls, its visual, the layer
list row, the active layer): one freeze. :func:`iter_add_layer` spreads that over
turns of the event loop and :func:`apply_stepwise` runs such generators one step per
turn.
"""

from __future__ import annotations

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
    if add_visual is not None and layer in layers:
        canvas = getattr(qt_viewer, "canvas", None)
        if layer not in getattr(canvas, "layer_to_visual", {}):
            qt_viewer._add_layer(layer)
            yield "visual"
    if add_controls is not None and layer in layers and layer not in controls.widgets:
        from types import SimpleNamespace

        add_controls(SimpleNamespace(value=layer))
        yield "controls"
    if visible:
        layer.visible = True
        yield "shown"
    if activate and layer in layers:
        layers.selection.active = layer
        yield "active"


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
    order.block(fit)
    try:
        # the new axes first with one step each: their sliders are built hidden ...
        dims.update({"ndim": new, "range": [(r[0], r[0], r[2]) for r in lead] + ranges})
    finally:
        order.unblock(fit)
    position = list(real.cursor.position)
    if len(position) < new:
        real.cursor.position = tuple([0.0] * (new - len(position)) + position)
    yield "dims"
    # ... and shown with their real ranges at the next turn (the window's new layout
    # and repaint come at the turns after)
    dims.range = lead + tail
    dims.point = [r[0] for r in lead] + point  # the slider at the first cube
    yield "ranges"
