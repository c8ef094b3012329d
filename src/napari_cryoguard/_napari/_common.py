"""Helpers shared by the dock widgets: layer lookup, pick layers, error display."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

import threading
import weakref
from contextlib import contextmanager

PICKS_LAYER = "picks"
SUBTOMOGRAMS_LAYER = "subtomograms"


def show_error(exc: BaseException) -> None:
    """Show an error as a napari notification (never raise into Qt's event loop)."""
    from napari.utils.notifications import show_error as _show

    _show(str(exc))


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


def set_picks_layer(viewer: napari.viewer.Viewer, picks, image_layer, name: str = PICKS_LAYER,
                    diameter: float | None = None, **kwargs):
    """:func:`iter_picks_layer` all at once (scripts, tests, the demo); returns the layer."""
    return run_steps(iter_picks_layer(viewer, picks, image_layer, name=name, diameter=diameter,
                                      **kwargs))


def iter_picks_layer(viewer: napari.viewer.Viewer, picks, image_layer, name: str = PICKS_LAYER,
                     diameter: float | None = None, **kwargs):
    """Show ``picks`` over ``image_layer`` as the Points layer ``name`` (updated in place).

    Coordinates are the picks' ZYX voxel indices; the layer takes the image's scale and
    translate so that points sit on the particles in physical units. Scores (and any
    features of the picks) become layer features. ``diameter`` is the particle diameter
    in Angstrom; the point size is that diameter in voxels of ``image_layer`` (napari's
    Points ``size`` is in data units, drawn times the layer's scale), default 14 voxels.

    Picks are drawn out of slice: a point shows on every slice its particle crosses, as
    the disc the particle's sphere cuts there. napari 0.9 replaced ``out_of_slice_display``
    (deprecated; it now means ``projection_mode="rescale_linear"`` and only acts within
    a thick slice) by projection modes, so the layer gets
    ``projection_mode="rescale_spherical"`` and the viewer's slice along Z is made at
    least one particle diameter thick (:func:`fit_slice_to_points`); Image layers ignore
    the thickness (their projection mode is ``none``), so the tomogram looks the same.

    A layer ``name`` that is already there is updated in place, so what listens to it
    (its selection, for click-to-select) keeps working. A new layer is added in steps
    (:func:`iter_add_layer`). A generator of Qt-thread steps, for :func:`apply_stepwise`
    (one step per event-loop turn); returns the layer.
    """
    import pandas as pd

    features = pd.DataFrame(index=np.arange(len(picks)))
    if picks.scores is not None:
        features["score"] = picks.scores
    names = picks.class_of()
    if names is not None:
        features["class"] = pd.Categorical(names, categories=list(picks.class_names))
    for key, values in picks.features.items():
        features[key] = values
    scale = tuple(image_layer.scale[-3:])
    translate = tuple(image_layer.translate[-3:])
    voxel = voxel_size_of(image_layer)
    metadata = {"voxel_size": voxel, "tomo_name": image_layer.name,
                "class_names": list(picks.class_names or [])}
    size = kwargs.pop("size", None)
    if size is None:
        size = float(diameter) / voxel if diameter else 14.0
        metadata["diameter"] = float(diameter) if diameter else 14.0 * voxel
    style = dict(size=size, symbol=kwargs.pop("symbol", "disc"),
                 border_color=kwargs.pop("border_color", "yellow"),
                 face_color=kwargs.pop("face_color", "transparent"),
                 border_width=kwargs.pop("border_width", 0.12),
                 projection_mode=kwargs.pop("projection_mode", "rescale_spherical"))
    coords = picks.coords.reshape(-1, 3)
    layer = viewer.layers[name] if name in viewer.layers else None
    from napari.layers import Points

    if isinstance(layer, Points) and layer.ndim == 3:
        # only what changed: each property set refreshes the layer (~10 ms apiece)
        layer.selected_data = set()
        if not np.allclose(layer.scale[-3:], scale):
            layer.scale = scale
        if not np.allclose(layer.translate[-3:], translate):
            layer.translate = translate
        layer.data = coords
        layer.features = features
        layer.metadata = metadata
        for key, value in {**style, **kwargs}.items():
            current = getattr(layer, key, None)
            same = False
            try:
                same = bool(np.all(np.asarray(current) == np.asarray(value)))
            except (TypeError, ValueError):
                same = False
            if not same or key == "size":
                setattr(layer, key, value)
    else:
        if layer is not None:
            viewer.layers.remove(name)
            yield "removed"
        layer = Points(coords, name=name, features=features, scale=scale, translate=translate,
                       metadata=metadata, **style, **kwargs)
        yield from iter_add_layer(viewer, layer)
    fit_slice_to_points(viewer, layer)
    return layer


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


def fit_slice_to_points(viewer, layer) -> None:
    """Make the viewer's slice along the Points ``layer``'s first axis (Z) at least as
    thick as its largest point (world units), so that a projection mode that draws
    points out of slice shows each particle on every slice it crosses."""
    size = np.asarray(layer.size, dtype=float)
    if size.size == 0 or viewer.dims.ndim < 3:
        return
    axis = viewer.dims.ndim - layer.ndim
    needed = float(np.max(size)) * abs(float(layer.scale[0])) * 1.02
    thickness = list(viewer.dims.thickness)
    if thickness[axis] < needed:
        thickness[axis] = needed
        viewer.dims.thickness = tuple(thickness)


def class_colors(n: int) -> np.ndarray:
    """``n`` distinct RGBA colours (tab10, then tab20), one per class."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(n)], dtype=np.float32)


def show_particle_layers(viewer, layers: dict, **kwargs) -> list:
    """:func:`iter_particle_layers` all at once (scripts, the demo)."""
    return run_steps(iter_particle_layers(viewer, layers, **kwargs))


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


def iter_particle_layers(viewer, layers: dict, *, image_layer=None, center=None,
                         styles: dict | None = None, gap: int = 4, columns: int = 3,
                         go_to: bool = True, frames: str | None = None):
    """Show single-particle cubes at the tomogram's scale, in a grid beside the particle.

    ``layers`` maps names (``particle <i>``, ``adversarial <i>``, ``perturbation <i> x<k>``,
    then ``reconstruction <i>``, ``adversarial reconstruction <i>``) to (D, H, W) cubes.
    They take ``image_layer``'s scale (voxel size in Angstrom) and fill a grid of
    ``columns`` columns, row by row, that starts ``gap`` voxels to the right of the
    particle at ``center`` (ZYX voxel indices of ``image_layer``) with its top row level
    with the particle; every cube's middle slice lies on the particle's Z, so the cubes
    show in the slice the user looks at, next to the particle itself (reconstructions sit
    under the particle and adversarial cubes they belong to). A layer of the same name,
    or the inspection layer of the same role shown for another particle, is updated in
    place and renamed (no remove/re-add: a new layer costs ~0.1 s on the Qt thread). ``styles`` maps a name to layer properties
    (colormap, contrast_limits). With ``go_to`` the view moves there: the Z slider to the
    particle and the camera over the particle and the grid, zoomed to fit them.
    ``frames`` names a Shapes layer drawn around the cubes, each captioned with its
    layer's name without the particle number, so the cubes stand out from the tomogram.
    """
    styles = styles or {}
    scale = np.asarray(image_layer.scale[-3:], dtype=float) if image_layer is not None else np.ones(3)
    origin = np.asarray(image_layer.translate[-3:], dtype=float) if image_layer is not None else np.zeros(3)
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float)[-3:]
    cz, cy, cx = origin + c * scale
    out = []
    rects, captions = [], []
    lo_y = hi_y = cy
    lo_x = hi_x = cx
    for j, (name, vol) in enumerate(layers.items()):
        vol = np.asarray(vol, dtype=np.float32)
        d, h, w = vol.shape[-3:]
        row, col = divmod(j, columns)
        x0 = cx + (w / 2 + gap) * scale[2] + col * (w + gap) * scale[2]
        y0 = cy - (h / 2) * scale[1] + row * (h + gap) * scale[1]
        translate = (cz - (d - 1) / 2 * scale[0], y0, x0)
        lo_x, hi_x = min(lo_x, cx - w / 2 * scale[2]), max(hi_x, x0 + w * scale[2])
        lo_y, hi_y = min(lo_y, y0), max(hi_y, y0 + h * scale[1])
        y1, x1 = y0 + (h - 1) * scale[1], x0 + (w - 1) * scale[2]
        half = (scale[1] / 2, scale[2] / 2)
        rects.append(np.array([[cz, y0 - half[0], x0 - half[1]], [cz, y0 - half[0], x1 + half[1]],
                               [cz, y1 + half[0], x1 + half[1]], [cz, y1 + half[0], x0 - half[1]]]))
        caption = " ".join(t for t in name.split() if not t.isdigit())
        captions.append(caption.replace("adversarial reconstruction", "adv. reconstruction"))
        style = {"colormap": "gray", **styles.get(name, {})}
        if "contrast_limits" not in style:
            lo, hi = float(vol.min()), float(vol.max())
            style["contrast_limits"] = (lo, hi if hi > lo else lo + 1.0)
        _recycle(viewer, name)
        if name in viewer.layers and viewer.layers[name].ndim == 3:
            layer = viewer.layers[name]
            layer.data = vol
            if not np.allclose(layer.scale, scale):
                layer.scale = tuple(scale)
            layer.translate = translate
            for key, value in style.items():
                if key == "colormap" and getattr(layer.colormap, "name", None) == value:
                    continue
                setattr(layer, key, value)
            if not layer.visible:
                layer.visible = True
        else:
            if name in viewer.layers:
                viewer.layers.remove(name)
                yield f"removed {name}"
            from napari.layers import Image

            layer = Image(vol, name=name, scale=tuple(scale), translate=translate,
                          metadata={INSPECTION: _role(name)}, **style)
            # not made active: the user's active layer (picks, for click-to-select) stays
            yield from iter_add_layer(viewer, layer, activate=False)
        out.append(layer)
        yield name
    if frames and rects:
        # frames relative to the particle, placed by the layer's translate: the next
        # particle only moves the layer (rebuilding a Shapes layer's data costs ~60 ms)
        anchor = np.array([cz, cy, cx])
        yield from _show_frames(viewer, frames, [(r - anchor) / scale for r in rects], captions,
                                scale, translate=tuple(anchor))
    if go_to and out:
        yield from iter_go_to_region(viewer, cz, ((lo_y + hi_y) / 2, (lo_x + hi_x) / 2),
                                     width=(hi_x - lo_x) * 1.15, height=(hi_y - lo_y) * 1.15)
    return out


INSPECTION = "cryoguard_inspection"  # layer metadata key: the role of an inspection layer


def _role(name: str) -> str:
    """``particle 3`` -> ``particle``; ``perturbation 3 x50`` -> ``perturbation``."""
    import re

    return " ".join(t for t in name.split() if not re.fullmatch(r"\d+|x\d+", t))


def _recycle(viewer, name: str) -> None:
    """Rename the inspection layer of ``name``'s role (another particle's, or another
    magnification's) to ``name``, so it is updated in place: creating a napari layer
    costs ~0.1 s on the Qt thread, renaming costs nothing. Layers of other particles the
    user renamed or made are left alone."""
    if name in viewer.layers:
        return
    role = _role(name)
    for layer in list(viewer.layers):
        if (layer.metadata or {}).get(INSPECTION) == role and layer.name != name:
            layer.name = name
            return


def _show_frames(viewer, name: str, rects: list, captions: list, scale, translate=None):
    """Rectangles (voxels at ``scale``, then shifted by ``translate`` in world units) with
    a caption above each, as the Shapes layer ``name``.

    The active layer stays what it was (clicking picks keeps working). An existing layer
    whose rectangles and captions are the same is only moved. A generator of Qt-thread
    steps."""
    text = {"string": "{caption}", "anchor": "upper_left", "color": "yellow", "size": 8,
            "translation": [0, -1.5, 0]}
    translate = (0.0, 0.0, 0.0) if translate is None else tuple(float(t) for t in translate)
    _recycle(viewer, name)
    if name in viewer.layers and viewer.layers[name].ndim == 3:
        layer = viewer.layers[name]
        same = (len(layer.data) == len(rects)
                and all(np.shape(a) == np.shape(b) and np.allclose(a, b)
                        for a, b in zip(layer.data, rects, strict=True))
                and list(layer.features.get("caption", [])) == list(captions))
        if not np.allclose(layer.scale[-3:], scale):
            layer.scale = tuple(scale)
            same = False
        if not same:
            layer.data = rects
            layer.features = {"caption": captions}
            layer.text = text
        if not np.allclose(layer.translate[-3:], translate):
            layer.translate = translate
        if not layer.visible:
            layer.visible = True
        yield name
    else:
        from napari.layers import Shapes

        # the captions are shown a turn after the frames: the first draw of the text is
        # one repaint, that of the frames another (each builds its shaders)
        layer = Shapes(rects, shape_type="polygon", name=name, edge_color="yellow",
                       face_color="transparent", edge_width=0.6, scale=tuple(scale),
                       translate=translate, features={"caption": captions},
                       text={**text, "visible": False},
                       opacity=0.9, metadata={INSPECTION: _role(name)})
        yield from iter_add_layer(viewer, layer, activate=False)
        layer.text.visible = True
        yield "captions"


def go_to_region(viewer, z_world: float, center_yx, width: float, height: float) -> None:
    """Move the Z slider to ``z_world`` and the 2D camera over ``center_yx``, fitting
    ``width`` x ``height`` (world units) in the canvas."""
    run_steps(iter_go_to_region(viewer, z_world, center_yx, width, height))


def iter_go_to_region(viewer, z_world: float, center_yx, width: float, height: float):
    """:func:`go_to_region` in two Qt-thread steps (a generator): the Z slider (every
    layer is sliced again, once: :func:`_set_point_slicing_once`), then the camera (one
    repaint); what is already there is not set again."""
    if viewer.dims.ndim >= 3:
        axis = viewer.dims.ndim - 3
        step = float(viewer.dims.range[axis].step or 1.0)
        if abs(float(viewer.dims.point[axis]) - float(z_world)) > step / 2:
            _set_point_slicing_once(viewer, axis, float(z_world))
            yield "slice"
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    center = (float(center_yx[0]), float(center_yx[1]))
    try:
        ch, cw = viewer.canvas.size
    except Exception:  # noqa: BLE001 - no canvas model (older napari)
        ch, cw = 600, 800
    zoom = float(min(cw / width, ch / height)) if width > 0 and height > 0 and ch > 0 and cw > 0 \
        else None
    if not np.allclose(np.asarray(camera.center)[-2:], center):
        camera.center = center
    if zoom is not None and not np.isclose(float(camera.zoom), zoom):
        camera.zoom = zoom
    yield "camera"


def _set_point_slicing_once(viewer, axis: int, value: float) -> None:
    """``viewer.dims.set_point(axis, value)``, with every layer sliced once.

    napari slices every layer for each of the events a new point emits (``point``, then
    ``current_step``): two full passes, 40-90 ms with a dozen layers under load. Here the
    viewer's slicing callback is held back while the point is set and run once after.
    """
    from napari_cryoguard._napari._state import _unwrap

    real = _unwrap(viewer)
    update = getattr(real, "_update_layers", None)
    emitters = [getattr(real.dims.events, name, None) for name in ("point", "current_step")]
    emitters = [e for e in emitters if e is not None and hasattr(e, "block")]
    if update is None or not emitters:
        viewer.dims.set_point(axis, value)
        return
    for emitter in emitters:
        emitter.block(update)
    try:
        real.dims.set_point(axis, value)
    finally:
        for emitter in emitters:
            emitter.unblock(update)
    update()


class Failure:
    """A user-caused error (:class:`CryoGuardError`) carried back from a worker thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"


def guarded(fn, *args, **kwargs):
    """Run ``fn`` (a function or a generator function) inside a worker, as a generator.

    Progress values a generator yields pass through; its return value (or the function's)
    is returned. A :class:`~napari_cryoguard.CryoGuardError` — bad input the user can fix —
    comes back as a :class:`Failure` for the widget to show as a notification, instead of
    an exception in the Qt event loop; so does an ``OSError`` (an output folder that cannot
    be written, a disk that is full), as one sentence naming the path. Anything else is a
    bug and propagates.
    """
    import inspect

    from napari_cryoguard.errors import CryoGuardError, os_error

    try:
        result = fn(*args, **kwargs)
        if inspect.isgenerator(result):
            result = yield from result
        return result
    except CryoGuardError as exc:
        return Failure(exc)
    except OSError as exc:  # disk full, read-only, a file where a folder goes: the user's to fix
        return Failure(os_error(exc))


def start_worker(widget, fn, *args, on_return, on_yield=None, buttons=(), **kwargs):
    """Start ``guarded(fn, ...)`` in a napari thread worker and wire it to ``widget``.

    ``buttons`` are disabled while it runs; ``on_return`` gets the result, while a
    :class:`Failure` goes to ``widget.show_failure``. The worker is kept as
    ``widget._worker`` (tests and Cancel use it).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(guarded, fn, *args, _start_thread=False, **kwargs)

    def returned(result):
        if isinstance(result, Failure):
            widget.show_failure(result.error)
        else:
            on_return(result)

    def finished():
        widget._busy = False
        for b in buttons:
            b.enabled = True

    if on_yield is not None:
        worker.yielded.connect(on_yield)
    worker.returned.connect(returned)
    worker.errored.connect(widget.show_failure)
    worker.finished.connect(finished)
    for b in buttons:
        b.enabled = False
    widget._worker = worker
    widget._busy = True  # until `finished` (tests and benchmarks wait on it)
    worker.start()
    return worker


FILE_CHOICE = "checkpoint file..."


def chosen_file(edit, what: str = "a file"):
    """The path in a FileEdit, or a :class:`CryoGuardError` saying "choose ..." when empty.

    magicgui turns an empty field into ``Path(".")`` (the working directory); that is
    never what the user meant.
    """
    from pathlib import Path

    from napari_cryoguard.errors import CryoGuardError

    raw = getattr(getattr(edit, "line_edit", None), "value", None)  # what the user typed
    value = edit.value if raw is None else raw
    text = "" if value is None else str(value).strip()
    # magicgui fills an empty field with the working directory: that is "nothing chosen"
    if text in ("", ".") or Path(text).expanduser().resolve() == Path.cwd().resolve():
        raise CryoGuardError(f"choose {what} first (the {edit.label} field is empty)")
    path = Path(text).expanduser()
    if path.is_dir():
        raise CryoGuardError(f"{path} is a folder: choose {what}")
    return path


class ModelPicker:
    """A model combo box plus a checkpoint file field, shared by the widgets of a viewer.

    Choices: the bundled weights, every checkpoint the viewer's widgets know (trained
    runs, files chosen before; see :mod:`._state`), and *checkpoint file...*. "Use model"
    in the Train widget selects a checkpoint in every picker of the viewer, also in
    widgets opened later. :meth:`spec` is what :func:`napari_cryoguard.classify.load_model`
    takes; :meth:`load` (call it from a worker: a large checkpoint takes seconds) caches
    the loaded model until the choice changes.
    """

    def __init__(self, viewer=None) -> None:
        from magicgui.widgets import ComboBox, FileEdit

        from napari_cryoguard._napari._state import state_for

        self.state = state_for(viewer) if viewer is not None else None
        self.model = ComboBox(choices=self._choices, label="model")
        self.checkpoint = FileEdit(mode="r", filter="*.safetensors", label="checkpoint")
        self._cache = None
        self._sync_visibility()
        self.model.changed.connect(self._changed)
        self.checkpoint.changed.connect(self._changed)
        if viewer is not None:
            # quiet_gc froze the objects of the time; a removed layer must be collectable
            viewer.layers.events.removed.connect(thaw_gc)
        if self.state is not None:
            self.state.models_changed.connect(self._models_changed)
            self.state.model_selected.connect(self.select)
            if self.state.selected_model:
                self.select(self.state.selected_model)

    def _choices(self, widget=None) -> list:
        from pathlib import Path

        from napari_cryoguard.models import bundled_models

        out = [(name, name) for name in bundled_models()]
        for spec in (self.state.models if self.state is not None else []):
            if spec not in dict(out).values():
                p = Path(spec)
                out.append((f"{p.parent.name}/{p.name}" if p.parent.name else p.name, spec))
        out.append((FILE_CHOICE, FILE_CHOICE))
        return out

    def _models_changed(self) -> None:
        value = self.model.value
        self.model.reset_choices()
        if value in [v for _, v in self._choices()]:
            self.model.value = value

    @property
    def widgets(self) -> list:
        return [self.model, self.checkpoint]

    def _sync_visibility(self) -> None:
        self.checkpoint.visible = self.model.value == FILE_CHOICE

    def _changed(self, *_) -> None:
        self._sync_visibility()
        self._cache = None

    def spec(self) -> str:
        """The chosen model: a bundled name or a checkpoint path (raises when none)."""
        if self.model.value == FILE_CHOICE:
            return str(chosen_file(self.checkpoint, "a checkpoint file (.safetensors)"))
        return str(self.model.value)

    @property
    def display_name(self) -> str:
        """How results name the model: the bundled name, or ``run folder/file``."""
        from pathlib import Path

        try:
            spec = self.spec()
        except Exception:  # noqa: BLE001 - no model chosen yet
            return "(no model)"
        p = Path(spec)
        return f"{p.parent.name}/{p.name}" if p.suffix == ".safetensors" else spec

    def select(self, spec) -> None:
        """Select ``spec`` (a bundled name or a checkpoint path) in this picker."""
        spec = str(spec)
        self.model.reset_choices()
        if spec in [v for _, v in self._choices()]:
            self.model.value = spec
        else:
            self.model.value = FILE_CHOICE
            self.checkpoint.value = spec
        self._cache = None
        self._sync_visibility()

    def set_checkpoint(self, path) -> None:
        """Make ``path`` known to the viewer's pickers and select it here."""
        if self.state is not None:
            self.state.add_model(str(path))
        self.select(path)

    def load(self, spec: str | None = None):
        """The chosen model as a :class:`~napari_cryoguard.classify.LoadedModel` (cached)."""
        from napari_cryoguard.classify import load_model

        spec = self.spec() if spec is None else spec
        cache = self._cache
        if cache is None or cache.source != spec:
            with quiet_gc():  # the first load imports torch: ~10^5 long-lived objects
                cache = self._cache = load_model(spec, device="cpu")
        return cache


_GC_LOCK = threading.Lock()
_GC_USERS = 0
_GC_WAS_ENABLED = True
_GC_THAWED = False


@contextmanager
def quiet_gc():
    """Keep big imports and model loads (in a worker) out of the garbage collector's full passes.

    Python's cyclic garbage collector makes a full pass over every tracked object (all
    of napari, Qt wrappers, vispy, torch: 0.4-0.8 s with the GIL held, so the event loop
    freezes too) once the objects that survived the young generations since the last
    full pass exceed a quarter of the old generation. Importing torch alone adds that
    many; the freeze then hit a later, unrelated step (the third "Attack particle", or
    Evaluate). Inside this block the collector is paused; at its end every object that
    exists is moved to the permanent generation (``gc.freeze()``), which full passes
    skip: later passes only look at what was made since, and take milliseconds.

    What is frozen is only freed by reference counting. napari layers hold reference
    cycles, so :func:`thaw_gc` (connected to the viewer's layer removals by
    :class:`ModelPicker`) gives the frozen objects back to the collector when a layer is
    removed: its memory is then freed by the next full pass, as without this, and
    nothing is frozen again.
    """
    import gc

    global _GC_USERS, _GC_WAS_ENABLED
    with _GC_LOCK:
        if _GC_USERS == 0:
            _GC_WAS_ENABLED = gc.isenabled()
            gc.disable()
        _GC_USERS += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_USERS -= 1
            if _GC_USERS == 0:
                if not _GC_THAWED:
                    gc.freeze()
                if _GC_WAS_ENABLED:
                    gc.enable()


def thaw_gc(event=None) -> None:
    """Give what :func:`quiet_gc` froze back to the garbage collector (a layer was removed:
    its memory can only be freed by a full pass)."""
    import gc

    global _GC_THAWED
    with _GC_LOCK:
        _GC_THAWED = True  # from now on, the collector as Python runs it
        if gc.get_freeze_count():
            gc.unfreeze()


def particle_source(viewer, i: int, image_layer=None) -> dict:
    """Where pick ``i``'s cube comes from (cheap: references only; main thread).

    The ``subtomograms`` layer when it holds pick ``i``, and the tomogram with the pick's
    position (ZYX voxels) for extraction at another cube size. Raises
    :class:`CryoGuardError` when neither is available.
    """
    from napari_cryoguard.errors import CryoGuardError

    src: dict = {"index": int(i), "stack": None, "volume": None, "center": None}
    if SUBTOMOGRAMS_LAYER in viewer.layers:
        layer = viewer.layers[SUBTOMOGRAMS_LAYER]
        index = [int(v) for v in np.asarray(layer.metadata.get("index", np.arange(len(layer.data))))]
        if i in index:
            src["stack"] = (layer.data, index.index(i), bool(layer.metadata.get("normalized")))
    if PICKS_LAYER in viewer.layers:
        points = viewer.layers[PICKS_LAYER].data
        if not 0 <= i < len(points):
            raise CryoGuardError(f"there is no pick {i} (the picks layer has {len(points)} points)")
        src["center"] = np.asarray(points[i], dtype=float)[-3:]
        if image_layer is not None:
            src["volume"] = image_layer.data
    if src["stack"] is None and src["volume"] is None:
        raise CryoGuardError("choose a tomogram and a pick first (or extract subtomograms)")
    return src


def particle_cube(source: dict, cube: int) -> np.ndarray:
    """The normalised ``cube``^3 volume of a pick from :func:`particle_source` (a worker).

    Taken from the ``subtomograms`` stack when it has that size, else extracted from the
    tomogram around the pick (padded at the border).
    """
    from napari_cryoguard.classify import zscore
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.picking import extract_subtomograms

    if source["stack"] is not None:
        data, row, normalized = source["stack"]
        if data.shape[-1] == cube:
            vol = np.asarray(data[row], dtype=np.float32)
            return vol if normalized else zscore(vol[None])[0]
    if source["volume"] is None or source["center"] is None:
        raise CryoGuardError(f"the subtomograms are not {cube}^3 (the model's cube): choose the "
                             "tomogram to cut the particle from")
    sub = extract_subtomograms(source["volume"], source["center"][None], size=cube, border="pad")
    if len(sub.volumes) == 0:
        raise CryoGuardError(f"pick {source['index']} lies outside the tomogram")
    return sub.volumes[0]


def connect_pick_selection(viewer, callback) -> None:
    """Call ``callback(index)`` when the user selects a point of ``picks``.

    Works whatever layer was active when the widget opened, and again after the picks
    layer is replaced (a new Pick, a pick file opened). ``callback`` is held weakly when
    it is a bound method, so a closed widget is not kept alive.
    """
    import weakref

    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
    hooked: weakref.WeakSet = weakref.WeakSet()

    def on_selection(event=None, layer_ref=None) -> None:
        layer = layer_ref() if layer_ref is not None else None
        fn = ref()
        if layer is None or fn is None:
            return
        chosen = sorted(layer.selected_data)
        if chosen:
            fn(int(chosen[0]))

    def hook(layer) -> None:
        from napari_cryoguard._napari._state import _unwrap

        layer = _unwrap(layer)  # the proxies napari hands plugins are new objects each time
        if getattr(layer, "name", None) != PICKS_LAYER or layer in hooked:
            return
        hooked.add(layer)
        layer_ref = weakref.ref(layer)
        layer.selected_data.events.items_changed.connect(
            lambda event=None: on_selection(event, layer_ref))

    def on_inserted(event) -> None:
        hook(event.value)

    viewer.layers.events.inserted.connect(on_inserted)
    if PICKS_LAYER in viewer.layers:
        hook(viewer.layers[PICKS_LAYER])


def apply_predictions(layer, preds, index) -> float | None:
    """Write classification results to a picks Points layer and colour it by class.

    Features: ``class`` (predicted name; empty for picks not classified, e.g. skipped at
    the border), ``confidence`` and ``p_<class>`` per class; points coloured with
    :func:`class_colors`. Returns the accuracy against a ``true_class`` feature when the
    layer has one (picks without a true class are ignored), else ``None``.
    """
    import pandas as pd

    names = list(preds.class_names)
    n = len(layer.data)
    index = np.asarray(index, dtype=np.int64)
    feats = layer.features.copy()
    if "class" in feats.columns and "class" not in layer.metadata.get("predicted_columns", []):
        # a class read from a pick file: keep it (as a label choice), predictions go to 'class'
        feats["file_class"] = feats["class"].astype(str).replace({"nan": ""})
    probs = np.full((n, len(names)), np.nan, dtype=np.float32)
    probs[index] = preds.probabilities
    predicted = np.array([""] * n, dtype=object)
    predicted[index] = preds.predicted_names
    feats["class"] = pd.Categorical(predicted.astype(str), categories=[*names, ""])
    feats["confidence"] = np.nanmax(np.where(np.isnan(probs), -1, probs), axis=1)
    for j, c in enumerate(names):
        feats[f"p_{c}"] = probs[:, j]
    layer.features = feats
    colors = class_colors(len(names))
    rgba = np.tile([0.6, 0.6, 0.6, 1.0], (n, 1))
    pred_idx = np.full(n, -1)
    pred_idx[index] = preds.predicted
    rgba[pred_idx >= 0] = colors[pred_idx[pred_idx >= 0]]
    layer.border_color = rgba
    face = rgba.copy()
    face[:, 3] = 0.3  # translucent fill: the particle stays visible under its pick
    layer.face_color = face
    layer.metadata["class_names"] = names
    # the ``class`` column now holds the model's own predictions: never labels by default
    layer.metadata["predicted_columns"] = sorted({*layer.metadata.get("predicted_columns", []), "class"})
    if "true_class" not in feats.columns:
        return None
    true = np.asarray(feats["true_class"]).astype(str)[index]
    known = np.isin(true, names)
    if not known.any():
        return None
    return float(np.mean(np.asarray(preds.predicted_names)[known] == true[known]))
