"""The ``picks`` Points layer: shown over a tomogram, selected by click, written back with
results (the napari side; the arrays come from :mod:`napari_cryoguard.layerdata`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_cryoguard._napari._layers import (
    PICKS_LAYER,
    SUBTOMOGRAMS_LAYER,
    iter_add_layer,
    run_steps,
    voxel_size_of,
)

if TYPE_CHECKING:
    import napari

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


def particle_source(viewer, i: int, image_layer=None) -> dict:
    """Where pick ``i``'s cube comes from (references only; main thread): the
    ``subtomograms`` layer when it holds pick ``i``, and ``image_layer`` with the pick's
    position for extraction at another cube size
    (:func:`napari_cryoguard.layerdata.particle_source`)."""
    from napari_cryoguard.layerdata import particle_source as source_of

    stack = {}
    if SUBTOMOGRAMS_LAYER in viewer.layers:
        layer = viewer.layers[SUBTOMOGRAMS_LAYER]
        stack = {"stack": layer.data, "stack_index": layer.metadata.get("index"),
                 "stack_normalized": bool(layer.metadata.get("normalized"))}
    points = viewer.layers[PICKS_LAYER].data if PICKS_LAYER in viewer.layers else None
    return source_of(i, **stack, points=points,
                     volume=None if image_layer is None else image_layer.data)


def particle_voxels(viewer, image_layer) -> dict:
    """What a single pick's cube needs to be cut at the right place (main thread).

    ``scale`` turns the picks layer's voxel indices into the image's (picks layer
    ``metadata["voxel_size"]`` / image voxel size), ``voxel_size`` is the image's, and
    ``translate`` / ``image_translate`` the two layers' translations (Angstrom ZYX).
    """
    if image_layer is None or PICKS_LAYER not in viewer.layers:
        return {}
    vs = voxel_size_of(image_layer)
    picks = viewer.layers[PICKS_LAYER]
    picks_vs = float((picks.metadata or {}).get("voxel_size", vs))
    from napari_cryoguard.layerdata import protein_is_dark

    return {"scale": picks_vs / vs, "voxel_size": vs,
            "invert": protein_is_dark(image_layer.metadata), "tomogram_name": image_layer.name,
            # placed through world coordinates, as napari draws them (an OME-Zarr level
            # with a translation: layerdata.particle_for_model)
            "translate": tuple(float(t) for t in picks.translate[-3:]),
            "image_translate": tuple(float(t) for t in image_layer.translate[-3:])}


def pick_particle(viewer, i: int, image_layer=None) -> dict:
    """:func:`particle_source` with :func:`particle_voxels`: all a worker needs to cut
    pick ``i``'s cube for a model (:func:`napari_cryoguard.layerdata.particle_for_model`)."""
    source = particle_source(viewer, i, image_layer)
    source.update(particle_voxels(viewer, image_layer))
    return source


def layer_picks_for(image_layer, picks_layer) -> dict:
    """The picks of ``picks_layer`` that belong to ``image_layer``, in its voxels (main
    thread; :func:`napari_cryoguard.layerdata.layer_picks`: placed through both layers'
    ``translate``, as napari draws them)."""
    from napari_cryoguard.layerdata import inverted_note, layer_picks, protein_is_dark

    out = layer_picks(picks_layer, image_layer, image_voxel_size=voxel_size_of(image_layer))
    out["invert"] = protein_is_dark(image_layer.metadata)
    if out["invert"]:
        out["notes"] = [*out.get("notes", []), inverted_note(image_layer.name)]
    return out


def tomogram_picks(viewer, image_layer, what: str) -> dict:
    """:func:`layer_picks_for` of the viewer's ``picks`` over ``image_layer``; raises
    :class:`CryoGuardError` saying ``what`` needs them when either is missing."""
    from napari_cryoguard.errors import CryoGuardError

    if PICKS_LAYER not in viewer.layers or image_layer is None:
        raise CryoGuardError(f"{what} needs a 'picks' layer and a tomogram")
    return layer_picks_for(image_layer, viewer.layers[PICKS_LAYER])


def update_layer(layer, update: dict) -> None:
    """Set a layer's properties from ``update`` (name -> value), in its order."""
    for key, value in update.items():
        setattr(layer, key, value)


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


class PickIndex:
    """A ``particle`` spin box that follows the pick the user clicks in ``picks``.

    ``follow_count``: its maximum is the number of picks at each click (else it is
    fixed, any pick number can be typed). The widget keeps this object (the selection
    holds it weakly, so a closed widget is not kept alive).
    """

    def __init__(self, viewer, *, follow_count: bool = False,
                 tooltip: str = "clicking a point of 'picks' selects it") -> None:
        from magicgui.widgets import SpinBox

        self._viewer = viewer
        self._follow = follow_count
        self.spin = SpinBox(value=0, min=0, max=0 if follow_count else 10**7, label="particle",
                            tooltip=tooltip)
        connect_pick_selection(viewer, self._on_select)

    def fit(self) -> None:
        """Let the spin box reach the last pick (``follow_count``)."""
        if self._follow and PICKS_LAYER in self._viewer.layers:
            self.spin.max = max(len(self._viewer.layers[PICKS_LAYER].data) - 1, 0)

    def _on_select(self, index: int) -> None:
        self.fit()
        self.spin.value = int(index)


def apply_predictions(layer, preds, index) -> float | None:
    """Write classification results to a picks Points layer and colour it by class
    (:func:`napari_cryoguard.layerdata.prediction_update`); returns the accuracy against
    a ``true_class`` feature when the layer has one, else ``None``."""
    from napari_cryoguard.layerdata import prediction_update

    update, accuracy = prediction_update(layer.features, layer.metadata, len(layer.data),
                                         preds, index)
    update_layer(layer, update)
    return accuracy
