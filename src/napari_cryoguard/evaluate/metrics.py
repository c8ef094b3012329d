"""Classification and robustness metrics: confusion matrix, F1, sensitivity, margins, MSE.

Sources
-------
* Sun et al., MIRST-DM (MICCAI 2022) section 4.1: F1 score and
  sensitivity (recall) under attack. The paper's task is binary; for our multi-class
  subtomograms we report them per class and as the unweighted mean over the classes
  present in the labels ("macro" F1 / sensitivity; the macro sensitivity is the
  balanced accuracy).
* Liu et al., 3D autoencoding classifier (BMVC 2019) Eq. 1 and Table 3: the
  reconstruction error is the voxel-mean squared error, averaged over the test set.
* Ma & Liang, IMA (arXiv:2005.09147) Fig. 9 (middle): the
  distribution of per-sample margins, summarised by :func:`margin_summary`.
* Uncertainty (none of the papers gives any): every accuracy with its 95 % Wilson score
  interval (:func:`wilson_interval`, Wilson 1927), a mean of per-sample values with a
  normal interval (:func:`mean_interval`), and the verdict of a claimed direction
  "A > B" from the two intervals (:func:`interval_verdict`): ``"agrees"`` when A's
  interval lies wholly above B's, ``"disagrees"`` when wholly below, ``"within noise"``
  when they overlap. Non-overlap of two 95 % intervals is a conservative test (it
  corresponds to p < ~0.006 for equal widths), chosen so that no verdict is noise.

Conventions: labels and predictions are 0-based class indices; labels < 0 (unknown)
are ignored everywhere. The confusion matrix has the true class on the rows and the
predicted class on the columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "VERDICTS",
    "accuracy_interval",
    "classification_metrics",
    "interval_verdict",
    "mean_interval",
    "wilson_interval",
    "confusion_matrix",
    "margin_summary",
    "per_class_scores",
    "reconstruction_mse",
    "robust_predictions",
]


def _as_int(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise CryoGuardError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise CryoGuardError(f"{name} must hold integer class indices")
    return arr.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of samples of true class ``i`` predicted as class ``j``.

    Parameters
    ----------
    y_true, y_pred
        (N,) class indices; samples with ``y_true < 0`` are left out.
    num_classes
        Size of the matrix; default ``max(y_true, y_pred) + 1``.

    Returns
    -------
    ndarray, shape (num_classes, num_classes), int64
    """
    t = _as_int(y_true, "y_true")
    p = _as_int(y_pred, "y_pred")
    if t.shape != p.shape:
        raise CryoGuardError(f"{t.size} labels but {p.size} predictions")
    keep = t >= 0
    t, p = t[keep], p[keep]
    if num_classes is None:
        num_classes = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (p.min() < 0 or max(t.max(), p.max()) >= num_classes):
        raise CryoGuardError(f"class indices out of range for {num_classes} classes")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, sensitivity (recall), F1 and support from a confusion matrix.

    ``F1 = 2 TP / (2 TP + FP + FN)`` (the harmonic mean of precision and recall, and 0
    when a class has no true positives). A class without samples has NaN recall and a
    class never predicted NaN precision; a class neither present nor predicted has NaN
    F1. These NaNs are left out of the macro averages.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        denom = 2 * tp + (predicted - tp) + (support - tp)
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {"precision": precision, "sensitivity": recall, "f1": f1, "support": support}


def _nanmean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Accuracy, confusion matrix, per-class and macro F1 / sensitivity / precision.

    Macro averages are over the classes present in ``y_true`` (support > 0), following
    the usual definition of balanced accuracy (= macro sensitivity).

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``macro_f1``, ``macro_sensitivity``, ``macro_precision``,
        ``confusion`` (list of lists), ``class_names``, and ``per_class``: one dict per
        class with ``precision``, ``sensitivity``, ``f1``, ``support``. NaN where
        undefined.
    """
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise CryoGuardError(f"{len(names)} class names for {k} classes")
    s = per_class_scores(cm)
    n = int(cm.sum())
    present = s["support"] > 0
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "macro_f1": _nanmean(s["f1"][present]),
        "macro_sensitivity": _nanmean(s["sensitivity"][present]),
        "macro_precision": _nanmean(s["precision"][present]),
        "confusion": cm.tolist(),
        "class_names": names,
        "per_class": [
            {
                "class": names[i],
                "precision": float(s["precision"][i]),
                "sensitivity": float(s["sensitivity"][i]),
                "f1": float(s["f1"][i]),
                "support": int(s["support"][i]),
            }
            for i in range(k)
        ],
    }


def robust_predictions(
    y_true: Any, pred_clean: Any, pred_adv: Any, fooled: Any | None = None
) -> np.ndarray:
    """Predictions an attacker achieves: the adversarial one where the attack counts.

    A sample counts as attacked when ``fooled`` is True (default: wherever the clean
    prediction was right -- an attack is not credited with fixing a wrong one); elsewhere
    the clean prediction stands. The accuracy of these predictions is the robust
    accuracy "right on the clean sample and on its adversarial version".
    """
    t = _as_int(y_true, "y_true")
    pc = _as_int(pred_clean, "pred_clean")
    pa = _as_int(pred_adv, "pred_adv")
    use = (pc == t) if fooled is None else np.asarray(fooled, dtype=bool) & (pc == t)
    return np.where(use, pa, pc)


def margin_summary(margins: Any, bins: int = 20, upper: float | None = None) -> dict[str, Any]:
    """Summary statistics and a histogram of per-sample margins (IMA Fig. 9, middle).

    Parameters
    ----------
    margins
        (N,) margins in normalised units; non-finite values are dropped.
    bins
        Histogram bins over ``[0, upper]``.
    upper
        Histogram range; default the largest margin (at least a tiny positive value).
    """
    m = np.asarray(margins, dtype=np.float64).reshape(-1)
    m = m[np.isfinite(m)]
    if m.size == 0:
        return {
            "n": 0,
            "mean": float("nan"),
            "median": float("nan"),
            "std": float("nan"),
            "min": float("nan"),
            "max": float("nan"),
            "q10": float("nan"),
            "q90": float("nan"),
            "hist_counts": [],
            "hist_edges": [],
        }
    hi = float(upper) if upper is not None else max(float(m.max()), 1e-12)
    counts, edges = np.histogram(np.clip(m, 0, hi), bins=bins, range=(0.0, hi))
    return {
        "n": int(m.size),
        "mean": float(m.mean()),
        "median": float(np.median(m)),
        "std": float(m.std()),
        "min": float(m.min()),
        "max": float(m.max()),
        "q10": float(np.quantile(m, 0.1)),
        "q90": float(np.quantile(m, 0.9)),
        "hist_counts": counts.astype(int).tolist(),
        "hist_edges": [float(e) for e in edges],
    }


def reconstruction_mse(
    model: Any, volumes: Any, *, batch_size: int = 32, device: Any = None
) -> dict[str, float]:
    """Voxel-mean squared reconstruction error of an autoencoding classifier.

    ``MSE_i = mean_voxels (recon(x_i) - x_i)^2`` (semi-supervised paper Eq. 1); returns
    the mean (with its 95 % normal interval ``mse_lo``, ``mse_hi``) and the median over
    the samples. ``model`` must have ``reconstruct(x)``
    returning (N, 1, D, H, W); it is run as it is (call ``model.eval()`` first).
    """
    import torch

    if not hasattr(model, "reconstruct"):
        raise CryoGuardError("the model has no decoder (reconstruct); no reconstruction error")
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim == 4:
        v = v[:, None]
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    per: list[np.ndarray] = []
    with torch.no_grad():
        for s in range(0, len(v), batch_size):
            x = torch.from_numpy(v[s : s + batch_size]).to(device)
            r = model.reconstruct(x).float()
            if r.shape != x.shape:
                raise CryoGuardError(
                    f"the reconstruction has shape {tuple(r.shape)}, the input {tuple(x.shape)}"
                )
            per.append(((r - x) ** 2).flatten(1).mean(1).cpu().numpy().astype(np.float64))
    e = np.concatenate(per) if per else np.zeros(0)
    ci = mean_interval(e)
    return {
        "mse": float(e.mean()) if e.size else float("nan"),
        "median_mse": float(np.median(e)) if e.size else float("nan"),
        "n": int(e.size),
        "mse_lo": ci["lo"],
        "mse_hi": ci["hi"],
    }


#: The verdicts of :func:`interval_verdict` (plus ``"not compared"`` for a missing number).
VERDICTS = ("agrees", "disagrees", "within noise", "not compared")
_Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % for the default z).

    ``(p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)``; it stays in
    [0, 1] and is not degenerate at 0 or n successes (unlike the normal interval).
    ``successes`` may be fractional (a proportion times ``n``). ``n = 0`` gives (0, 1).
    """
    n = int(n)
    if n < 0:
        raise CryoGuardError(f"n must be >= 0, got {n}")
    if n == 0:
        return 0.0, 1.0
    k = float(successes)
    if not 0.0 <= k <= n + 1e-9:
        raise CryoGuardError(f"successes must be in [0, n = {n}], got {successes!r}")
    p = min(k / n, 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(accuracy: float | None, n: int) -> dict[str, Any]:
    """``{"value", "n", "lo", "hi"}``: an accuracy on ``n`` samples with its Wilson interval."""
    if accuracy is None or not math.isfinite(float(accuracy)) or n <= 0:
        return {"value": None, "n": int(n), "lo": None, "hi": None}
    lo, hi = wilson_interval(float(accuracy) * n, n)
    return {"value": float(accuracy), "n": int(n), "lo": lo, "hi": hi}


def mean_interval(values: Any, z: float = _Z95) -> dict[str, Any]:
    """Mean of per-sample values with the normal interval ``mean -+ z * sd / sqrt(n)``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"value": None, "n": 0, "lo": None, "hi": None}
    m = float(v.mean())
    half = z * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else float("inf")
    return {"value": m, "n": int(v.size), "lo": m - half, "hi": m + half}


def interval_verdict(
    a: dict[str, Any] | None, b: dict[str, Any] | None, *, higher_is_better: bool = True
) -> str:
    """Verdict of the claim "a beats b" from two intervals ``{"lo", "hi"}``.

    ``"agrees"``: a's interval wholly above b's (below, with ``higher_is_better=False``);
    ``"disagrees"``: wholly on the other side; ``"within noise"``: they overlap;
    ``"not compared"``: a number or an interval is missing.
    """
    if not a or not b or any(d.get(k) is None for d in (a, b) for k in ("lo", "hi")):
        return "not compared"
    lo_a, hi_a, lo_b, hi_b = (float(a["lo"]), float(a["hi"]), float(b["lo"]), float(b["hi"]))
    if not higher_is_better:
        lo_a, hi_a, lo_b, hi_b = -hi_a, -lo_a, -hi_b, -lo_b
    if lo_a > hi_b:
        return "agrees"
    if hi_a < lo_b:
        return "disagrees"
    return "within noise"


def json_clean(obj: Any) -> Any:
    """``obj`` with NaN/inf turned into None and numpy scalars into Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_clean(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
