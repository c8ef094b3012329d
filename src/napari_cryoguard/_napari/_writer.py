"""napari writer: a Points layer to RELION STAR or CSV picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_cryoguard.io import Picks
from napari_cryoguard.io import write_picks as _write_picks


def points_to_picks(data, attributes: dict) -> Picks:
    """Turn a Points layer's data and attributes (as napari hands them to writers) into Picks.

    Coordinates stay in voxel (data) units, ZYX; the voxel size comes from the layer
    metadata (or the scale). Feature columns ``score`` and ``class`` become the score and
    labels; the other numeric or string feature columns are kept as features.
    """
    coords = np.asarray(data, dtype=np.float64).reshape(-1, np.asarray(data).shape[-1] if len(data) else 3)
    coords = coords[:, -3:]
    features = attributes.get("features")
    meta = attributes.get("metadata") or {}
    scale = attributes.get("scale")
    voxel_size = float(meta.get("voxel_size", scale[-1] if scale is not None else 1.0))
    scores = labels = class_names = tomo_names = None
    extra = {}
    if features is not None and len(features):
        for col in features.columns:
            values = np.asarray(features[col])
            if col == "score":
                scores = values.astype(np.float64)
            elif col == "class":
                cats = [str(c) for c in values]
                class_names = list(meta.get("class_names") or sorted(set(cats)))
                lookup = {c: i for i, c in enumerate(class_names)}
                labels = np.array([lookup.get(c, -1) for c in cats], dtype=np.int64)
            elif col == "tomo_name":
                tomo_names = values.astype(str)
            elif values.dtype.kind in "biuf":
                extra[col] = values
    if tomo_names is None and meta.get("tomo_name"):
        tomo_names = np.array([meta["tomo_name"]] * len(coords))
    return Picks(coords=coords, scores=scores, labels=labels, class_names=class_names,
                 tomo_names=tomo_names, features=extra, voxel_size=voxel_size)


def write_picks(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer for Points layers (``.star`` or ``.csv``)."""
    picks = points_to_picks(data, attributes)
    _write_picks(Path(path), picks)
    return [str(path)]
