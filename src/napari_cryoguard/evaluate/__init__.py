"""Robustness evaluation and small-scale reproductions of the papers (Qt-free).

Public API
----------
``evaluate(checkpoints, dataset, *, attacks=None, out, device="auto", max_samples=None,
resume=True, progress=None, quick=False, ...) -> dict``
    Sanity checks, clean metrics (accuracy, per-class F1 / sensitivity, confusion),
    accuracy under an attack suite at several budgets, IMA margins, reconstruction
    error; ``metrics.json``, ``report.md``, ``report.html`` and plots; resumable
    (:mod:`.run`; the cells in :mod:`.cells`, the files in :mod:`.output`).
``reproduce(out, *, quick=False, parts="abcde", device="cpu", seed=0, progress=None) -> dict``
    Small reproductions of the papers' tables on simulated data, with the paper's
    numbers beside ours and a verdict per claimed direction (:mod:`.reproduction`).
``default_suite()``, ``quick_suite()``, ``autoattack_suite()``, ``named_suite(name)``
    The attack suites (:mod:`.suite`); ``autoattack`` is the per-sample worst case over
    APGD-CE, APGD-T and Square.
Metrics (:mod:`.metrics`) and sanity checks (:mod:`.sanity`) are importable on their own.
The commands ``cryoguard evaluate`` and ``cryoguard reproduce`` are in
:mod:`napari_cryoguard.cli.evaluate` and :mod:`napari_cryoguard.cli.reproduce`.
"""

from __future__ import annotations

from napari_cryoguard.evaluate.metrics import (
    classification_metrics,
    confusion_matrix,
    margin_summary,
    per_class_scores,
    reconstruction_mse,
    robust_predictions,
)
from napari_cryoguard.evaluate.reproduction import reproduce
from napari_cryoguard.evaluate.run import evaluate
from napari_cryoguard.evaluate.sanity import Check, run_sanity_checks, verdict
from napari_cryoguard.evaluate.suite import (
    autoattack_suite,
    default_suite,
    named_suite,
    quick_suite,
)

__all__ = [
    "Check",
    "autoattack_suite",
    "classification_metrics",
    "confusion_matrix",
    "default_suite",
    "evaluate",
    "margin_summary",
    "named_suite",
    "per_class_scores",
    "quick_suite",
    "reconstruction_mse",
    "reproduce",
    "robust_predictions",
    "run_sanity_checks",
    "verdict",
]
