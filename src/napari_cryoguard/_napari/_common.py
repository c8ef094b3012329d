"""Helpers shared by the dock widgets: layer lookup, pick layers, error display."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

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


def set_picks_layer(viewer: napari.viewer.Viewer, picks, image_layer, name: str = PICKS_LAYER, **kwargs):
    """Add or replace the Points layer ``name`` showing ``picks`` over ``image_layer``.

    Coordinates are the picks' ZYX voxel indices; the layer takes the image's scale and
    translate so that points sit on the particles in physical units. Scores (and any
    features of the picks) become layer features.
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
    metadata = {"voxel_size": voxel_size_of(image_layer), "tomo_name": image_layer.name,
                "class_names": list(picks.class_names or [])}
    style = dict(size=kwargs.pop("size", 10), symbol=kwargs.pop("symbol", "disc"),
                 border_color=kwargs.pop("border_color", "yellow"),
                 face_color=kwargs.pop("face_color", "transparent"),
                 border_width=kwargs.pop("border_width", 0.15),
                 out_of_slice_display=kwargs.pop("out_of_slice_display", True))
    if name in viewer.layers:
        viewer.layers.remove(name)
    layer = viewer.add_points(picks.coords.reshape(-1, 3), name=name, features=features,
                              scale=scale, translate=translate, metadata=metadata,
                              **style, **kwargs)
    return layer
