"""Single-particle cubes shown beside their particle, framed and captioned, and the view
moved there (the inspection layers of Classify and Attack)."""

from __future__ import annotations

import numpy as np

from napari_cryoguard._napari._layers import iter_add_layer, iter_slice_layers, run_steps


def show_particle_layers(viewer, layers: dict, **kwargs) -> list:
    """:func:`iter_particle_layers` all at once (scripts, the demo)."""
    return run_steps(iter_particle_layers(viewer, layers, **kwargs))


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
    rects = []
    captions = [_caption(name) for name in layers]
    shapes = [np.shape(vol)[-3:] for vol in layers.values()]
    em = caption_em(captions, min(w for _, _, w in shapes)) if frames else 0.0
    band = CAPTION_BAND * em + CAPTION_LIFT if frames else 0.0  # voxels above each frame
    lo_y = hi_y = cy
    lo_x = hi_x = cx
    for j, (name, vol) in enumerate(layers.items()):
        vol = np.asarray(vol, dtype=np.float32)
        d, h, w = vol.shape[-3:]
        row, col = divmod(j, columns)
        x0 = cx + (w / 2 + gap) * scale[2] + col * (w + gap) * scale[2]
        y0 = cy - (h / 2) * scale[1] + row * (h + gap + band) * scale[1]
        translate = (cz - (d - 1) / 2 * scale[0], y0, x0)
        lo_x, hi_x = min(lo_x, cx - w / 2 * scale[2]), max(hi_x, x0 + w * scale[2])
        lo_y, hi_y = min(lo_y, y0 - band * scale[1]), max(hi_y, y0 + h * scale[1])
        y1, x1 = y0 + (h - 1) * scale[1], x0 + (w - 1) * scale[2]
        half = (scale[1] / 2, scale[2] / 2)
        rects.append(np.array([[cz, y0 - half[0], x0 - half[1]], [cz, y0 - half[0], x1 + half[1]],
                               [cz, y1 + half[0], x1 + half[1]], [cz, y1 + half[0], x0 - half[1]]]))
        style = {"colormap": "gray", **styles.get(name, {})}
        if "contrast_limits" not in style:
            lo, hi = float(vol.min()), float(vol.max())
            style["contrast_limits"] = (lo, hi if hi > lo else lo + 1.0)
        if _recycle(viewer, name):
            # each of these is a turn of its own (napari updates the layer list, the
            # widgets' layer choices, the dims, the slice and the thumbnail for each)
            yield f"renamed {name}"
        if name in viewer.layers and viewer.layers[name].ndim == 3:
            layer = viewer.layers[name]
            if not np.allclose(layer.scale, scale):
                layer.scale = tuple(scale)
            if not np.allclose(layer.translate, translate):
                layer.translate = translate
                yield f"moved {name}"
            layer.data = vol
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
                                scale, translate=tuple(anchor), em=em)
    if go_to and out:
        yield from iter_go_to_region(viewer, cz, ((lo_y + hi_y) / 2, (lo_x + hi_x) / 2),
                                     width=(hi_x - lo_x) * 1.15, height=(hi_y - lo_y) * 1.15)
    return out


INSPECTION = "cryoguard_inspection"  # layer metadata key: the role of an inspection layer

# Captions are drawn at a size in world units (napari's ``text.scaling``): they grow and
# shrink with the frames, so captions that keep apart at one zoom keep apart at every zoom.
CHAR_EM = 0.72  # widest average advance of a caption's characters, in em (OpenSans, measured)
CAPTION_FILL = 0.9  # the longest caption spans at most this fraction of its frame's width
CAPTION_MAX_EM = 0.12  # ... and its em is at most this fraction of the frame's width
CAPTION_BAND = 1.3  # the band above a frame holding its caption, in em ...
CAPTION_LIFT = 0.5  # ... plus this many voxels between the caption and the frame's top edge
PT_PER_EM = 0.75  # napari draws text of size s at 96/72 s pixels: em = s / 0.75


def _caption(name: str) -> str:
    """The caption of an inspection layer: its name without the particle number."""
    caption = " ".join(t for t in name.split() if not t.isdigit())
    return caption.replace("adversarial reconstruction", "adv. reconstruction")


def caption_em(captions, width: float) -> float:
    """The captions' em in voxels: the longest one fits in :data:`CAPTION_FILL` of a frame
    ``width`` voxels wide (so it ends before the next frame's caption begins)."""
    longest = max((len(c) for c in captions), default=1) or 1
    return float(min(CAPTION_FILL * width / (CHAR_EM * longest), CAPTION_MAX_EM * width))


def _role(name: str) -> str:
    """``particle 3`` -> ``particle``; ``perturbation 3 x50`` -> ``perturbation``."""
    import re

    return " ".join(t for t in name.split() if not re.fullmatch(r"\d+|x\d+", t))


def _recycle(viewer, name: str) -> bool:
    """Rename the inspection layer of ``name``'s role (another particle's, or another
    magnification's) to ``name``, so it is updated in place: creating a napari layer
    costs ~0.1 s on the Qt thread, renaming costs nothing. Layers of other particles the
    user renamed or made are left alone. Returns whether a layer was renamed."""
    if name in viewer.layers:
        return False
    role = _role(name)
    for layer in list(viewer.layers):
        if (layer.metadata or {}).get(INSPECTION) == role and layer.name != name:
            layer.name = name
            return True
    return False


def _show_frames(viewer, name: str, rects: list, captions: list, scale, translate=None,
                 em: float = 2.0):
    """Rectangles (voxels at ``scale``, then shifted by ``translate`` in world units) with
    a caption above each, as the Shapes layer ``name``.

    Each caption sits above its frame's top edge, left-aligned with it, ``em`` voxels
    high and scaled with the zoom (so captions never run into each other, whatever the
    zoom: :func:`caption_em` sizes them to their frames).

    The active layer stays what it was (clicking picks keeps working). An existing layer
    whose rectangles and captions are the same is only moved. A generator of Qt-thread
    steps."""
    size = max(float(em) * float(scale[-1]) * PT_PER_EM, 1e-3)  # world units (scaling)
    text = {"string": "{caption}", "anchor": "upper_left", "color": "yellow", "size": size,
            "scaling": True, "translation": [0, -CAPTION_LIFT, 0]}
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
            yield from _iter_set_point(viewer, axis, float(z_world))
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
    """``viewer.dims.set_point(axis, value)``, with every layer sliced once (all at once)."""
    run_steps(_iter_set_point(viewer, axis, value))


def _iter_set_point(viewer, axis: int, value: float):
    """``viewer.dims.set_point(axis, value)`` with every layer sliced once, a few layers
    per event-loop turn (a generator of Qt-thread steps: "slice", then "sliced" ones).

    napari slices every layer for each of the events a new point emits (``point``, then
    ``current_step``): two full passes, 40-90 ms with a dozen layers under load. Here the
    viewer's slicing callback is held back while the point is set, and the layers are
    sliced after it by :func:`iter_slice_layers` (visible layers first, ~20 ms a turn).
    """
    from napari_cryoguard._napari._state import _unwrap

    real = _unwrap(viewer)
    update = getattr(real, "_update_layers", None)
    emitters = [getattr(real.dims.events, name, None) for name in ("point", "current_step")]
    emitters = [e for e in emitters if e is not None and hasattr(e, "block")]
    if update is None or not emitters:
        viewer.dims.set_point(axis, value)
        yield "slice"
        return
    for emitter in emitters:
        emitter.block(update)
    try:
        real.dims.set_point(axis, value)
    finally:
        for emitter in emitters:
            emitter.unblock(update)
    yield "slice"
    yield from iter_slice_layers(real)
