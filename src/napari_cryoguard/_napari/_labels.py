"""Explicit labels for the widgets that need them (Attack all, Train, Evaluate).

A labels choice names where the true class of each pick comes from:

- ``picks: <column>``: a feature of the ``picks`` layer (``true_class``, or a
  ``class`` read from a STAR file, any text or categorical column);
- ``truth layer (within N voxels)``: a Points layer ``truth`` with a ``class`` feature
  (the sample data has one); each pick takes the class of the true particle it matches
  one-to-one within N voxels, the others have no label;
- ``none``.

The picks' ``class`` column written by Classify holds the model's own predictions
(``picks.metadata["predicted_columns"]``). It is offered only under its own name,
``picks: class (the model's own predictions)``, never chosen by default; results
computed against it say "agreement with the model's own predictions".
"""

from __future__ import annotations

import numpy as np

from napari_cryoguard._napari._layers import PICKS_LAYER, SUBTOMOGRAMS_LAYER
from napari_cryoguard.layerdata import NO_LABELS, Labels, label_names

TRUTH_LAYER = "truth"
NONE = "none"
TRUTH_TOLERANCE = 4.0  # voxels of the picks' tomogram
PREDICTIONS_SUFFIX = " (the model's own predictions)"
_SKIP = {"score", "confidence", "flipped", "adv_class", "adv_norm", "eval_correct", "margin"}


def predicted_columns(layer) -> set[str]:
    return set((layer.metadata or {}).get("predicted_columns", []))


def label_choices(viewer) -> list[str]:
    """What the user can choose as labels, best first; the model's predictions last."""
    first, other, predicted = [], [], []
    if PICKS_LAYER in viewer.layers:
        picks = viewer.layers[PICKS_LAYER]
        preds = predicted_columns(picks)
        feats = picks.features
        for c in sorted(map(str, feats.columns)):
            if c in _SKIP or c.startswith(("p_", "robust_")):
                continue
            if c != "true_class" and str(feats[c].dtype) not in ("object", "category", "string", "str"):
                continue
            if c in preds:
                predicted.append(f"picks: {c}{PREDICTIONS_SUFFIX}")
            else:
                (first if c == "true_class" else other).append(f"picks: {c}")
    if TRUTH_LAYER in viewer.layers and "class" in viewer.layers[TRUTH_LAYER].features:
        first.append(f"truth layer (within {TRUTH_TOLERANCE:g} voxels)")
    return [*first, *other, NONE, *predicted]


def resolve_labels(viewer, choice: str) -> Labels:
    """Per-pick class names for ``choice`` (one of :func:`label_choices`)."""
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.picking.metrics import assign_truth

    if PICKS_LAYER not in viewer.layers:
        raise CryoGuardError("no 'picks' layer: pick particles (or open a pick file) first")
    picks = viewer.layers[PICKS_LAYER]
    n = len(picks.data)
    if not choice or choice == NONE:
        return Labels(np.array([""] * n, dtype=str), NO_LABELS)
    if choice.startswith("truth layer"):
        if TRUTH_LAYER not in viewer.layers:
            raise CryoGuardError("there is no 'truth' layer any more: choose other labels")
        truth = viewer.layers[TRUTH_LAYER]
        # compare in world units (Angstrom), then the tolerance in the picks' voxels
        world_p = np.asarray(picks.data)[:, -3:] * picks.scale[-3:] + picks.translate[-3:]
        world_t = np.asarray(truth.data)[:, -3:] * truth.scale[-3:] + truth.translate[-3:]
        voxel = float(np.mean(picks.scale[-3:]))
        names = assign_truth(world_p, world_t, np.asarray(truth.features["class"]),
                             tolerance=TRUTH_TOLERANCE * voxel)
        return Labels(names, f"the truth layer (matched within {TRUTH_TOLERANCE:g} voxels)")
    column = choice[len("picks: "):].removesuffix(PREDICTIONS_SUFFIX)
    if column not in picks.features.columns:
        raise CryoGuardError(f"the picks have no '{column}' feature any more: choose other labels")
    names = label_names(picks.features[column])
    is_pred = column in predicted_columns(picks)
    source = f"the picks' '{column}' feature" + (PREDICTIONS_SUFFIX if is_pred else "")
    return Labels(names, source, predictions=is_pred)


class LabelsChoice:
    """A ``labels`` combo box whose choices follow the viewer's layers."""

    def __init__(self, viewer, label: str = "labels") -> None:
        from magicgui.widgets import ComboBox

        self._viewer = viewer
        self.combo = ComboBox(choices=self._choices, label=label,
                              tooltip="where the true class of each pick comes from; the "
                                      "model's own predictions only when chosen explicitly")

    def _choices(self, widget=None) -> list[str]:
        try:
            return label_choices(self._viewer)
        except Exception:  # noqa: BLE001 - a layer half-made while napari refreshes
            return [NONE]

    def resolve(self) -> Labels:
        self.combo.reset_choices()
        return resolve_labels(self._viewer, self.combo.value)


def subtomogram_stack(viewer, purpose: str = "this") -> dict:
    """The ``subtomograms`` layer (and the picks' positions) as the keyword arguments of
    :func:`napari_cryoguard.layerdata.labelled_dataset` (references; main thread).

    Raises :class:`CryoGuardError` when there is no ``subtomograms`` layer.
    """
    from napari_cryoguard.errors import CryoGuardError

    if SUBTOMOGRAMS_LAYER not in viewer.layers:
        raise CryoGuardError(f"{purpose} needs the 'subtomograms' layer: press 'Extract "
                             "subtomograms' in Pick particles first")
    sub = viewer.layers[SUBTOMOGRAMS_LAYER]
    picks = viewer.layers[PICKS_LAYER] if PICKS_LAYER in viewer.layers else None
    return {"volumes": sub.data,
            "index": sub.metadata.get("index", np.arange(len(sub.data))),
            "coords": None if picks is None else picks.data,
            "voxel_size": float(sub.metadata.get("voxel_size", 1.0)),
            "normalized": bool(sub.metadata.get("normalized", False))}
