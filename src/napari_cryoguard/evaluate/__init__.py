"""Robustness evaluation and small-scale reproductions of the papers (Qt-free).

Public API
----------
``evaluate(checkpoints, dataset, *, attacks=None, out, device="auto", max_samples=None,
resume=True, progress=None, quick=False, ...) -> dict``
    Sanity checks, clean metrics (accuracy, per-class F1 / sensitivity, confusion),
    accuracy under an attack suite at several budgets, IMA margins, reconstruction
    error; ``metrics.json``, ``report.md``, ``report.html`` and plots; resumable
    (:mod:`.run`).
``evaluate_main(argv) -> int``
    The ``cryoguard evaluate`` command (also ``python -m napari_cryoguard.evaluate.run``).
``reproduce(out, *, quick=False, parts="abcde", device="cpu", seed=0, progress=None) -> dict``
    Small reproductions of the papers' tables on simulated data, with the paper's
    numbers beside ours and a verdict per claimed direction (:mod:`.reproduction`).
``reproduce_main(argv) -> int``
    The ``cryoguard reproduce`` command (also ``python -m napari_cryoguard.evaluate.reproduce``;
    import it from the package or from :mod:`.reproduction`).
``default_suite()``, ``quick_suite()``, ``autoattack_suite()``, ``named_suite(name)``
    The attack suites (:mod:`.suite`); ``autoattack`` is the per-sample worst case over
    APGD-CE, APGD-T and Square.
Metrics (:mod:`.metrics`) and sanity checks (:mod:`.sanity`) are importable on their own.
"""

from __future__ import annotations

from typing import Any

from napari_cryoguard.evaluate.metrics import (
    classification_metrics,
    confusion_matrix,
    margin_summary,
    per_class_scores,
    reconstruction_mse,
    robust_predictions,
)
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
    "evaluate_main",
    "margin_summary",
    "named_suite",
    "per_class_scores",
    "quick_suite",
    "reconstruction_mse",
    "reproduce",
    "reproduce_main",
    "robust_predictions",
    "run_sanity_checks",
    "verdict",
]

_LAZY = {
    "evaluate": "napari_cryoguard.evaluate.run",
    "evaluate_main": "napari_cryoguard.evaluate.run",
    "reproduce": "napari_cryoguard.evaluate.reproduction",
    "reproduce_main": "napari_cryoguard.evaluate.reproduction",
}


def __getattr__(name: str) -> Any:
    # run/reproduce are imported lazily so `python -m napari_cryoguard.evaluate.run`
    # does not find its own module half-imported
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
