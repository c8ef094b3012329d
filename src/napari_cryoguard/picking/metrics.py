"""Scoring picks against ground truth: one-to-one matching within a distance."""

from __future__ import annotations

import numpy as np


def match_picks(predicted, truth, tolerance: float = 4.0) -> tuple[float, float]:
    """Precision and recall of ``predicted`` picks against ``truth`` within ``tolerance`` voxels.

    Matching is one-to-one and greedy by distance: the closest (pick, true particle) pair
    within ``tolerance`` is matched first, then the next closest among those left, so a
    true particle is never counted twice. Both arrays are (N, 3) ZYX voxel coordinates.

    Returns
    -------
    precision, recall : float
        ``matched / len(predicted)`` and ``matched / len(truth)`` (1.0 for an empty set,
        by the convention that nothing was wrongly picked or missed).
    """
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1, 3)
    true = np.asarray(truth, dtype=np.float64).reshape(-1, 3)
    matched = count_matches(pred, true, tolerance)
    precision = matched / len(pred) if len(pred) else 1.0
    recall = matched / len(true) if len(true) else 1.0
    return float(precision), float(recall)


def match_pairs(pred: np.ndarray, true: np.ndarray, tolerance: float) -> list[tuple[int, int]]:
    """One-to-one (pick, true particle) pairs within ``tolerance``, closest pairs first."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 3)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 3)
    if len(pred) == 0 or len(true) == 0:
        return []
    from scipy.spatial import cKDTree  # here: importing the picking package stays fast

    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(true), tolerance, output_type="ndarray")
    if len(pairs) == 0:
        return []
    order = np.argsort(pairs["v"], kind="stable")
    used_p, used_t, out = set(), set(), []
    for i, j in zip(pairs["i"][order], pairs["j"][order], strict=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out.append((int(i), int(j)))
    return out


def count_matches(pred: np.ndarray, true: np.ndarray, tolerance: float) -> int:
    """Number of one-to-one matches within ``tolerance`` (greedy, closest pairs first)."""
    return len(match_pairs(pred, true, tolerance))


def assign_truth(picks, truth, truth_classes, tolerance: float) -> np.ndarray:
    """The true class of each pick: its one-to-one match in ``truth`` within ``tolerance``.

    ``picks`` and ``truth`` are (N, 3) coordinates in the same units (voxels of one
    tomogram, or Angstrom). A pick with no true particle within ``tolerance`` (a false
    pick, or one whose particle went to a closer pick) gets ``""``: it has no known
    class and is left out of anything scored against the truth.
    """
    classes = np.asarray(truth_classes).astype(str)
    out = np.array([""] * len(np.asarray(picks).reshape(-1, 3)), dtype=object)
    for i, j in match_pairs(picks, truth, tolerance):
        out[i] = classes[j]
    return out.astype(str)
