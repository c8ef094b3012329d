"""Layer data <-> the package's objects: datasets, picks, particle cubes, result features.

The dock widgets read what they need off napari layers on the Qt thread (arrays, scales,
feature tables, metadata: references, no copies) and hand it to the functions here,
which build the objects the core works with (a labelled
:class:`~napari_cryoguard.data.SubtomogramDataset`, the picks of one tomogram in its
voxels, the cube of one pick as a model takes it) and, the other way, turn results
(predictions, attack outcomes, evaluation scores) into the feature table and colours a
Points layer takes. Scripts can call them with plain arrays.

This module imports neither napari nor Qt, nor torch at import time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "FLIPPED_RGBA",
    "HELD_RGBA",
    "Labels",
    "accuracy_note",
    "attack_outcome_update",
    "class_colors",
    "evaluation_features",
    "extraction_size",
    "label_names",
    "labelled_dataset",
    "layer_picks",
    "margin_features",
    "particle_cube",
    "particle_for_model",
    "particle_source",
    "picks_for_image",
    "prediction_update",
]

#: outcome colours of "Attack all picks": flipped (red) and held (green)
FLIPPED_RGBA = (0.9, 0.15, 0.15, 1.0)
HELD_RGBA = (0.2, 0.8, 0.3, 1.0)
#: colour of a pick without a result
UNSET_RGBA = (0.6, 0.6, 0.6, 1.0)


#: a tomogram layer's ``metadata`` key for how protein looks in it, as Pick found or was
#: told ("bright": protein white, "dark": protein black)
POLARITY_KEY = "polarity"


def protein_is_dark(metadata) -> bool:
    """Whether a tomogram layer's metadata says protein is black in it (set by Pick)."""
    return (metadata or {}).get(POLARITY_KEY) == "dark"


def inverted_note(name: str, how: str = "as Pick found or was told") -> str:
    """The sentence that says a tomogram's cubes were inverted (``how``: who said so)."""
    return (f"protein is black in {name} ({how}): the cubes were "
            "inverted to protein white, as the simulator and the bundled models have it")


#: ``Labels.source`` of the "none" labels choice
NO_LABELS = "no labels"


@dataclass
class Labels:
    """Per-pick class names (``""`` = unknown) and how to speak of them."""

    names: np.ndarray
    source: str
    predictions: bool = False

    @property
    def known(self) -> np.ndarray:
        return self.names != ""

    @property
    def score_word(self) -> str:
        """``accuracy``, or ``agreement with the model's own predictions``."""
        return "agreement with the model's own predictions" if self.predictions else "accuracy"


def label_names(values) -> np.ndarray:
    """A feature column (any dtype) as per-pick class names: ``""`` where it is missing
    (``None``, NaN, ``<NA>``)."""
    values = np.asarray(values, dtype=object)
    return np.array(["" if (v is None or (isinstance(v, float) and np.isnan(v))
                            or str(v) in ("nan", "<NA>")) else str(v) for v in values], dtype=str)


def accuracy_note(labels: Labels | None, predicted_names, index) -> str:
    """``"; accuracy 0.750 on 4 picks against <labels>"`` for the picks ``index`` that have
    a true class in ``labels``; ``""`` when none has, or the labels are predictions."""
    if labels is None or labels.predictions:
        return ""
    true = labels.names[np.asarray(index, dtype=np.int64)]
    known = true != ""
    if not known.any():
        return ""
    acc = float(np.mean(np.asarray(predicted_names)[known] == true[known]))
    return f"; accuracy {acc:.3f} on {int(known.sum())} picks against {labels.source}"


# matplotlib's "tab10" and "tab20" qualitative palettes, as sRGB hex: written out so that
# colouring picks on the Qt thread never waits for a matplotlib import (65 ms, bench_gui)
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
_TAB20 = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
          "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2",
          "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5")


def class_colors(n: int) -> np.ndarray:
    """``n`` distinct RGBA colours (tab10, then tab20; repeating past 20), one per class."""
    table = _TAB10 if n <= 10 else _TAB20
    rgb = [[int(h[i:i + 2], 16) / 255.0 for i in (1, 3, 5)] for h in table]
    return np.array([rgb[i % len(rgb)] + [1.0] for i in range(n)], dtype=np.float32)


# ---------------------------------------------------------------------- datasets


def labelled_dataset(volumes, index, labels: Labels, *, coords=None, voxel_size: float = 1.0,
                     normalized: bool = False, min_classes: int = 1, purpose: str = "this",
                     source: str = "napari subtomograms layer"):
    """A stack of subtomograms and the picks' labels as a labelled dataset.

    ``volumes`` (N, D, H, W) are the stack's cubes, ``index`` the pick each row came from
    (an index into ``labels.names``), ``coords`` the picks' ZYX positions (all picks;
    the rows' are taken) when known. Rows without a class are left out.

    Returns ``(dataset, pick_index)``: the
    :class:`~napari_cryoguard.data.SubtomogramDataset` and, for each of its rows, the
    pick it came from. Raises :class:`CryoGuardError` when the stack does not match the
    picks, when no row has a label, or when fewer than ``min_classes`` classes remain.
    """
    from napari_cryoguard.data import SubtomogramDataset

    index = np.asarray(index, dtype=np.int64)
    if len(labels.names) and index.max(initial=-1) >= len(labels.names):
        raise CryoGuardError("the 'subtomograms' layer does not match the current picks: "
                             "extract the subtomograms again")
    names = labels.names[index] if len(labels.names) else np.array([""] * len(index))
    keep = names != ""
    if not keep.any() and labels.source == NO_LABELS:
        raise CryoGuardError(f"{purpose} needs labels, and 'labels' is 'none': choose a picks "
                             "feature holding each particle's true class (e.g. 'true_class', "
                             "or a class column of the pick file), or the model's own "
                             "predictions to measure agreement only")
    if not keep.any():
        raise CryoGuardError(f"{purpose} needs labels: none of the {len(index)} subtomograms has "
                             f"a class in {labels.source}; choose other labels")
    class_names = sorted(set(names[keep].tolist()))
    if len(class_names) < min_classes:
        raise CryoGuardError(f"{purpose} needs at least {min_classes} classes; {labels.source} "
                             f"gives {len(class_names)} ({', '.join(class_names)})")
    rows = None if coords is None else np.asarray(coords)[index[keep], -3:]
    ds = SubtomogramDataset(
        volumes=np.asarray(volumes, dtype=np.float32)[keep],
        labels=np.array([class_names.index(c) for c in names[keep]], dtype=np.int64),
        class_names=class_names, coords=rows, voxel_size=float(voxel_size),
        normalized=bool(normalized),
        meta={"source": source, "labels": labels.source, "pick_index": index[keep].tolist()})
    return ds, index[keep]


# ---------------------------------------------------------------------- picks


def _zyx3(value, what: str) -> tuple[float, float, float] | None:
    """The last three entries of a layer's ``translate`` (Angstrom, ZYX), or None."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size < 3 or not np.all(np.isfinite(arr[-3:])):
        raise CryoGuardError(f"{what} must end in 3 finite numbers (z, y, x in Angstrom), "
                             f"got {value!r}")
    return tuple(float(v) for v in arr[-3:])


def picks_for_image(points, *, image_name: str, image_voxel_size: float, features=None,
                    metadata: dict | None = None, layer_name: str = "picks",
                    translate=None, image_translate=None) -> dict:
    """The picks (``points``, ZYX voxels of their own layer) that belong to one tomogram,
    in its voxels.

    Rows are matched by tomogram name (a ``tomo_name`` feature per point, else
    ``metadata["tomo_name"]``) with :meth:`~napari_cryoguard.io.Picks.for_tomogram`, and
    converted from ``metadata["voxel_size"]`` to ``image_voxel_size`` with
    :meth:`~napari_cryoguard.io.Picks.at_voxel_size` (not converted when
    ``metadata["voxel_size_assumed"]``: a file without a voxel size indexes the image).

    ``translate`` and ``image_translate`` are the picks layer's and the image layer's
    ``translate`` (Angstrom, ZYX; an OME-Zarr level's translation, which the readers
    and :func:`~napari_cryoguard._napari._picks.set_picks_layer` give the layers). When
    both are given the conversion goes through world coordinates, the place napari
    draws each point: a point at ``c`` of a layer at ``v`` Angstrom translated by ``t``
    lies at ``c * v + t`` Angstrom, i.e. at voxel ``(c * v + t - t_image) / w`` of an
    image at ``w`` Angstrom (a note says so when ``t != t_image``). So picks made or
    opened over one level of an OME-Zarr pyramid are cut at the same place from a level
    translated by half a voxel. Without them (either ``None``) no shift is applied: the
    coordinates are taken to index the image's array (scaled by the voxel sizes).

    Returns
    -------
    dict
        ``coords`` (ZYX voxels of the image), ``rows`` (indices into ``points``),
        ``notes`` (what was matched or converted) and ``voxel_size`` (the image's).
    """
    from napari_cryoguard.io import Picks

    data = np.asarray(points, dtype=float)[:, -3:]
    n = len(data)
    meta = metadata or {}
    names = None
    if features is not None and "tomo_name" in getattr(features, "columns", ()) \
            and len(features) == n:
        names = np.asarray(features["tomo_name"]).astype(str)
    elif meta.get("tomo_name"):
        names = np.array([str(meta["tomo_name"])] * n)
    where = f"the {layer_name!r} layer"
    own = _zyx3(translate, f"{where}'s translate")
    target = _zyx3(image_translate, f"image {image_name!r}'s translate")
    if own is None or target is None:
        own = target = None
    picks = Picks(coords=data, tomo_names=names, features={"_row": np.arange(n)},
                  voxel_size=float(meta.get("voxel_size", image_voxel_size)),
                  notes=[str(x) for x in meta.get("notes", [])], origin_zyx=own,
                  voxel_size_assumed=bool(meta.get("voxel_size_assumed", False)))
    picks = picks.for_tomogram(image_name, source=where).at_voxel_size(
        image_voxel_size, source=where, origin_zyx=target)
    return {"coords": picks.coords, "rows": np.asarray(picks.features["_row"], dtype=np.int64),
            "notes": list(picks.notes), "voxel_size": float(image_voxel_size)}


def layer_picks(picks_layer, image_layer, *, image_voxel_size: float) -> dict:
    """:func:`picks_for_image` of a picks Points layer over an image layer (any objects
    with napari's ``data``, ``name``, ``features``, ``metadata`` and ``translate``):
    the rows of the image's tomogram, in its voxels, placed through world coordinates
    (both layers' ``translate``). ``image_voxel_size`` is the image's (Angstrom)."""
    return picks_for_image(picks_layer.data, image_name=image_layer.name,
                           image_voxel_size=image_voxel_size,
                           features=getattr(picks_layer, "features", None),
                           metadata=getattr(picks_layer, "metadata", None),
                           layer_name=picks_layer.name,
                           translate=getattr(picks_layer, "translate", None),
                           image_translate=getattr(image_layer, "translate", None))


# ---------------------------------------------------------------------- one particle


def particle_source(i: int, *, stack=None, stack_index=None, stack_normalized: bool = False,
                    points=None, volume=None) -> dict:
    """Where pick ``i``'s cube comes from (references only, cheap).

    ``stack`` (with ``stack_index``, the pick of each row) is the extracted stack when
    there is one; ``points`` the picks' ZYX voxels and ``volume`` the tomogram, for
    extraction at another cube size. Raises :class:`CryoGuardError` when neither holds
    pick ``i``.
    """
    src: dict = {"index": int(i), "stack": None, "volume": None, "center": None}
    if stack is not None:
        rows = np.arange(len(stack)) if stack_index is None else np.asarray(stack_index)
        index = [int(v) for v in rows]
        if i in index:
            src["stack"] = (stack, index.index(i), bool(stack_normalized))
    if points is not None:
        if not 0 <= i < len(points):
            raise CryoGuardError(f"there is no pick {i} (the picks layer has {len(points)} points)")
        src["center"] = np.asarray(points[i], dtype=float)[-3:]
        src["volume"] = volume
    if src["stack"] is None and src["volume"] is None:
        raise CryoGuardError("choose a tomogram and a pick first (or extract subtomograms)")
    return src


def particle_cube(source: dict, cube: int) -> np.ndarray:
    """The normalised ``cube``^3 volume of a pick from :func:`particle_source`.

    Taken from the stack when it has that size, else extracted from the tomogram around
    the pick (padded at the border).
    """
    from napari_cryoguard.classify import zscore
    from napari_cryoguard.picking import extract_subtomograms

    if source["stack"] is not None:
        data, row, normalized = source["stack"]
        if data.shape[-1] == cube:
            vol = np.asarray(data[row], dtype=np.float32)
            return vol if normalized else zscore(vol[None])[0]
    if source["volume"] is None or source["center"] is None:
        raise CryoGuardError(f"the subtomograms are not {cube}^3 (the model's cube): choose the "
                             "tomogram to cut the particle from")
    sub = extract_subtomograms(source["volume"], source["center"][None], size=cube, border="pad",
                               invert=bool(source.get("invert")))
    if len(sub.volumes) == 0:
        raise CryoGuardError(f"pick {source['index']} lies outside the tomogram")
    return sub.volumes[0]


def extraction_size(loaded, voxel_size: float | None) -> int:
    """Cube edge to cut at ``voxel_size`` so that it covers the model's field of view.

    The model's cube when the voxel sizes agree within 1 % or either is unknown; else
    ``ceil(cube * model voxel size / voxel size)`` (at least 4), which
    :func:`~napari_cryoguard.classify.prepare_volumes` then resamples to the model's cube.
    """
    from napari_cryoguard.classify import VOXEL_SIZE_RTOL

    mvs = loaded.voxel_size
    if voxel_size is None or mvs is None or abs(voxel_size - mvs) <= VOXEL_SIZE_RTOL * mvs:
        return loaded.cube
    return max(4, math.ceil(loaded.cube * mvs / float(voxel_size)))


def particle_for_model(source: dict, loaded, notes: list[str] | None = None) -> np.ndarray:
    """A pick's cube as the model takes it: cut at the image's voxels, covering the model's
    field of view, resampled to its voxel size and cube when they differ.

    ``source`` is :func:`particle_source`'s, with ``scale`` (picks voxels -> image
    voxels) and ``voxel_size`` (the image's) when known, and ``translate`` /
    ``image_translate`` (the two layers' translate, Angstrom ZYX) when known: the pick
    is then placed through world coordinates as in :func:`picks_for_image`.
    """
    from napari_cryoguard.classify import prepare_volumes

    src = dict(source)
    scale = float(src.get("scale", 1.0))
    if src.get("center") is not None and abs(scale - 1.0) > 1e-4:
        src["center"] = np.asarray(src["center"], dtype=float) * scale
        if notes is not None:
            notes.append(f"converted the pick from the picks layer's voxels to the image's "
                         f"(x {scale:g})")
    own = _zyx3(src.get("translate"), "the picks layer's translate")
    target = _zyx3(src.get("image_translate"), "the image's translate")
    vs0 = src.get("voxel_size")
    if src.get("center") is not None and own is not None and target is not None and vs0:
        shift = (np.asarray(own) - np.asarray(target)) / float(vs0)
        if np.abs(shift).max() > 1e-9:
            src["center"] = np.asarray(src["center"], dtype=float) + shift
            if notes is not None:
                notes.append("moved the pick by " + ", ".join(f"{v:g}" for v in shift)
                             + " voxels (z, y, x): the picks layer and the image have "
                             "different translates (OME-Zarr levels)")
    vs = src.get("voxel_size")
    cube = extraction_size(loaded, vs)
    from_stack = src["stack"] is not None and src["stack"][0].shape[-1] == cube
    if src.get("invert") and not from_stack and notes is not None:
        notes.append(inverted_note(src.get("tomogram_name", "the tomogram")))
    vol = particle_cube(src, cube)
    return prepare_volumes(loaded, vol[None], True, voxel_size=vs, notes=notes)[0]


# ---------------------------------------------------------------------- results -> features


def _column(n: int, rows, values, fill=np.nan) -> np.ndarray:
    col = np.full(n, fill, dtype=float if isinstance(fill, float) else object)
    col[np.asarray(rows, dtype=np.int64)] = values
    return col


def prediction_update(features, metadata: dict | None, n: int, preds, index) -> tuple[dict, Any]:
    """Classification results as the new properties of a picks Points layer.

    Features: ``class`` (predicted name; empty for picks not classified, e.g. skipped at
    the border), ``confidence`` and ``p_<class>`` per class; a ``class`` read from a pick
    file (not in ``metadata["predicted_columns"]``) is kept as ``file_class``. Colours
    by :func:`class_colors` (grey: not classified; translucent fill).

    Returns ``(update, accuracy)``: ``update`` maps layer properties (``features``,
    ``border_color``, ``face_color``, ``metadata``) to their values, in the order to set
    them; ``accuracy`` is against a ``true_class`` feature when there is one (picks
    without a true class ignored), else ``None``.
    """
    import pandas as pd

    names = list(preds.class_names)
    meta = dict(metadata or {})
    index = np.asarray(index, dtype=np.int64)
    feats = features.copy()
    if "class" in feats.columns and "class" not in meta.get("predicted_columns", []):
        # a class read from a pick file: keep it (as a label choice), predictions go to 'class'
        feats["file_class"] = feats["class"].astype(str).replace({"nan": ""})
    probs = np.full((n, len(names)), np.nan, dtype=np.float32)
    probs[index] = preds.probabilities
    predicted = _column(n, index, preds.predicted_names, fill="")
    feats["class"] = pd.Categorical(predicted.astype(str), categories=[*names, ""])
    feats["confidence"] = np.nanmax(np.where(np.isnan(probs), -1, probs), axis=1)
    for j, c in enumerate(names):
        feats[f"p_{c}"] = probs[:, j]
    colors = class_colors(len(names))
    rgba = np.tile(UNSET_RGBA, (n, 1))
    pred_idx = np.full(n, -1)
    pred_idx[index] = preds.predicted
    rgba[pred_idx >= 0] = colors[pred_idx[pred_idx >= 0]]
    face = rgba.copy()
    face[:, 3] = 0.3  # translucent fill: the particle stays visible under its pick
    meta["class_names"] = names
    # the ``class`` column now holds the model's own predictions: never labels by default
    meta["predicted_columns"] = sorted({*meta.get("predicted_columns", []), "class"})
    update = {"features": feats, "border_color": rgba, "face_color": face, "metadata": meta}
    accuracy = None
    if "true_class" in feats.columns:
        true = np.asarray(feats["true_class"]).astype(str)[index]
        known = np.isin(true, names)
        if known.any():
            accuracy = float(np.mean(np.asarray(preds.predicted_names)[known] == true[known]))
    return update, accuracy


def attack_outcome_update(features, n: int, res, index, class_names) -> dict:
    """"Attack all picks" results as the new properties of a picks Points layer.

    Features ``flipped``, ``adv_class`` and ``adv_norm`` (picks not attacked: ``False``,
    ``""``, NaN); points red where flipped, green where held, grey elsewhere. ``res`` is
    the :class:`~napari_cryoguard.attacks.AttackResult` of the picks ``index``.
    """
    import pandas as pd

    succ = res.success.numpy().astype(bool)
    flipped = np.zeros(n, dtype=bool)
    attacked = np.zeros(n, dtype=bool)
    flipped[index] = succ
    attacked[index] = True
    feats = features.copy()
    feats["flipped"] = flipped
    feats["adv_class"] = pd.Categorical(
        _column(n, index, [class_names[j] for j in res.pred_after.numpy()], fill="").astype(str))
    feats["adv_norm"] = _column(n, index, res.norm.numpy())
    rgba = np.tile(UNSET_RGBA, (n, 1))
    rgba[attacked & flipped] = FLIPPED_RGBA
    rgba[attacked & ~flipped] = HELD_RGBA
    return {"features": feats, "border_color": rgba, "face_color": rgba}


def margin_features(features, n: int, pick_index, margins):
    """IMA margins of a run's samples as the picks' ``margin`` feature (NaN for picks
    without one; samples whose pick index is past the ``n`` picks are dropped)."""
    pick_index = np.asarray(pick_index, dtype=np.int64)
    ok = pick_index < n
    feats = features.copy()
    feats["margin"] = _column(n, pick_index[ok], np.asarray(margins, dtype=float)[ok])
    return feats


def evaluation_features(features, n: int, metrics: dict, index):
    """Per-pick results of the first model of an evaluation as picks features, or ``None``.

    ``eval_correct`` and ``robust_<attack>`` (at the largest budget of each bounded
    attack); NaN for picks not evaluated. ``index`` maps the evaluated dataset's rows to
    picks.
    """
    models = metrics.get("models") or {}
    if not models:
        return None
    first = next(iter(models.values()))
    rows = np.asarray(first.get("sample_index", []), dtype=np.int64)
    if rows.size == 0:
        return None
    feats = features.copy()
    picks_rows = np.asarray(index)[rows]
    feats["eval_correct"] = _column(n, picks_rows,
                                    np.asarray(first.get("clean_correct_by_sample", []), float))
    for label, curve in (first.get("attacks") or {}).items():
        points = [p for p in curve.get("points", []) if "robust_by_sample" in p]
        if curve.get("mode") == "bounded" and points:
            feats[f"robust_{label}"] = _column(n, picks_rows,
                                               np.asarray(points[-1]["robust_by_sample"], float))
    return feats
