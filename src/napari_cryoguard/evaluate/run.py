"""Robustness evaluation of one or more classifiers, resumable, with a report.

:func:`evaluate` runs, per model: sanity checks (:mod:`.sanity`), clean accuracy with
per-class F1 and sensitivity and the confusion matrix (:mod:`.metrics`), accuracy under
every attack of a suite at every budget (:mod:`.suite`), IMA margins and the
reconstruction error of autoencoding classifiers. The work is done by the cells of
:mod:`.cells`; the report, plots and ``metrics.json`` are written by :mod:`.output`.

Resuming: the unit of work is a *cell* -- (model, sanity), (model, clean), (model,
attack, budget) for bounded attacks, (model, attack) for minimal attacks (one run gives
every budget), (model, margins), (model, reconstruction). After each cell its result is
added to ``<out>/state.json`` (written atomically). A rerun with the same data
selection finds the finished cells there by key (a hash of the model weights, the
attack, its parameters and the budget) and skips them; a different selection of
samples, seed, batch size or device type starts afresh.

The command line is ``cryoguard evaluate`` (:mod:`napari_cryoguard.cli.evaluate`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cryoguard.checks import check_number
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate import cells
from napari_cryoguard.evaluate import sanity as _sanity
from napari_cryoguard.evaluate.inputs import (
    EvalModel,
    as_dataset,
    domain_warnings,
    load_models,
    select_rows,
    sha,
)
from napari_cryoguard.evaluate.metrics import json_clean, reconstruction_mse
from napari_cryoguard.evaluate.output import curve_arrays, write_metrics, write_outputs
from napari_cryoguard.evaluate.report import write_json
from napari_cryoguard.evaluate.suite import budget_unit, normalize_suite

__all__ = [
    "MARGIN_PARAMS",
    "QUICK_MARGIN_PARAMS",
    "STATE_VERSION",
    "CellStore",
    "curve_arrays",  # the Evaluate widget's import; the function is in .output
    "evaluate",
]

STATE_VERSION = 1

#: BPGD settings of the margin estimate (IMA Algorithm 3, "Experiments": N_PGD = 20,
#: N_binary = 10, alpha = 4; eps_max 0.3 as the IMA paper's largest noise level).
MARGIN_PARAMS = {"eps": 0.3, "n_pgd": 20, "n_binary": 10, "alpha": 4.0}
QUICK_MARGIN_PARAMS = {"eps": 0.3, "n_pgd": 5, "n_binary": 4, "alpha": 4.0}


def evaluate(
    checkpoints: Sequence[Any],
    dataset: Any,
    *,
    attacks: list[dict[str, Any]] | str | None = None,
    out: str | os.PathLike,
    device: str | torch.device = "auto",
    max_samples: int | None = None,
    resume: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    quick: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    margins: bool = True,
    margin_samples: int | None = None,
    margin_params: dict[str, Any] | None = None,
    names: Sequence[str] | None = None,
    title: str = "Robustness evaluation",
) -> dict[str, Any]:
    """Evaluate classifiers' clean and adversarial performance; write metrics and a report.

    Parameters
    ----------
    checkpoints
        ``.safetensors`` checkpoint paths, bundled model names (``"default"``,
        ``"cb3d-default"``, ``"ae-default"``), :class:`~napari_cryoguard.classify.LoadedModel`
        objects or ``nn.Module`` classifiers (a bare module is assumed to predict the
        dataset's classes in the dataset's order).
    dataset
        A labelled dataset: ``.npz`` path, :class:`~napari_cryoguard.data.SubtomogramDataset`
        or a simulated dataset. Labels are matched to each model's classes by name.
    attacks
        Attack specs (:mod:`napari_cryoguard.evaluate.suite`) or a suite name
        (``"default"``, ``"autoattack"``: the worst case over APGD-CE, APGD-T and Square;
        ``quick=True`` gives their quick versions); None: the default suite
        (FGSM at eps 0.01-0.12 as in RAT Table II, PGD-100 L-inf with CE and margin loss
        as in IMA, DeepFool L2/L-inf, CW L2, uniform noise, salt & pepper as in RAT
        Table I), or the quick suite with ``quick=True``.
    out
        Output folder: ``metrics.json``, ``report.md``, ``report.html``, ``plots/*.png``,
        ``state.json``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    max_samples
        Evaluate a seeded, class-balanced subset of at most this many samples
        (``quick=True`` defaults it to 32).
    resume
        Reuse the finished cells of ``<out>/state.json`` (see the module docstring).
    progress
        Called after every cell with ``{"model", "cell", "budget", "done", "total",
        "cached"}``; an exception raised there stops the evaluation (the finished cells
        are saved).
    quick
        Quick preset: the quick attack suite, 32 samples, a cheap margin estimate.
    batch_size, seed
        Attack batch size; seed of the sample selection.
    margins
        Report IMA margins: the checkpoint's (if it carries them) and a BPGD estimate on
        ``margin_samples`` (64; quick 16) correctly classified samples.
    margin_params
        BPGD parameters of the estimate (default :data:`MARGIN_PARAMS`).
    names
        Display names of the models (default: checkpoint file stems).

    Returns
    -------
    dict
        The content of ``metrics.json``.

    Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the ranks share the
    work: every attack, margin estimate and clean prediction runs on each rank's share
    of whole batches and the per-sample results are gathered on every rank, so the
    metrics equal a one-process run; only rank 0 reads and writes ``state.json`` and
    writes the report and ``metrics.json`` (every rank returns the metrics).
    """
    from napari_cryoguard import distributed

    kwargs = dict(
        attacks=attacks, out=out, max_samples=max_samples, resume=resume,
        progress=progress, quick=quick, batch_size=batch_size, seed=seed, margins=margins,
        margin_samples=margin_samples, margin_params=margin_params, names=names, title=title,
    )
    if distributed.world()[1] == 1:
        return _evaluate(checkpoints, dataset, device=device, **kwargs)
    with distributed.session(str(device)) as sess, cells.use_session(sess):
        return _evaluate(checkpoints, dataset, device=sess.device, **kwargs)


@dataclass
class _Settings:
    """The resolved arguments of one :func:`evaluate` call."""

    suite: list[dict[str, Any]]
    device: torch.device
    batch_size: int
    max_samples: int | None
    seed: int
    quick: bool
    margins: bool
    margin_samples: int
    margin_params: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The ``settings`` entry of ``metrics.json``."""
        return {
            "attacks": self.suite,
            "max_samples": self.max_samples,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "device": str(self.device),
            "quick": bool(self.quick),
            "margins": bool(self.margins),
            "margin_samples": self.margin_samples,
            "margin_params": self.margin_params,
        }


class CellStore:
    """The finished cells of ``<out>/state.json``, looked up by key, and the progress.

    ``key`` hashes what every cell shares (the selected samples, their labels, classes,
    normalisation, batch size, device type); a stored state with another key is not
    reused. Under torchrun only rank 0 reads and writes the file; it tells the other
    ranks which cells are cached.
    """

    def __init__(self, out: Path, key: str, *, resume: bool, total: int,
                 progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.sess = cells.session()
        self.path = out / "state.json"
        self.state: dict[str, Any] = {"version": STATE_VERSION, "key": key, "cells": {}}
        self.total, self.progress = total, progress
        self.counters = {"done": 0, "computed": 0, "cached": 0}
        if resume and self.path.is_file() and self.sess.is_main:
            try:
                old = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("version") == STATE_VERSION and old.get("key") == key:
                self.state["cells"] = dict(old.get("cells") or {})
        if self.sess.active:  # rank 0 decides which cells are cached
            self.state["cells"] = self.sess.broadcast(self.state["cells"])

    def run(self, m: EvalModel, kind: str, ident: Any, fn: Callable[[], dict], label: str,
            budget: float | None = None) -> dict:
        """The result of one cell: the stored one, or ``fn()`` computed and stored."""
        key = sha(m.fingerprint, kind, ident)
        cell = self.state["cells"].get(key)
        cached = cell is not None
        if cell is None:
            t0 = time.perf_counter()
            result = fn()
            cell = {
                "model": m.name,
                "kind": kind,
                "label": label,
                "budget": budget,
                "result": json_clean(result),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            self.state["cells"][key] = cell
            if self.sess.is_main:
                write_json(self.path, self.state)
            self.counters["computed"] += 1
        else:
            self.counters["cached"] += 1
        self.counters["done"] += 1
        if self.progress is not None:
            self.progress(
                {
                    "model": m.name,
                    "cell": label,
                    "kind": kind,
                    "budget": budget,
                    "done": self.counters["done"],
                    "total": self.total,
                    "cached": cached,
                }
            )
        return cell["result"]


def _settings(attacks: Any, device: Any, *, quick: bool, max_samples: int | None,
              batch_size: int, seed: int, margins: bool, margin_samples: int | None,
              margin_params: dict[str, Any] | None) -> _Settings:
    """Check the arguments and fill in the quick preset's defaults."""
    from napari_cryoguard.device import resolve_device

    check_number("batch_size", batch_size, minimum=1, integer=True)
    suite = normalize_suite(attacks, quick=quick)
    if quick and max_samples is None:
        max_samples = 32
    return _Settings(
        suite=suite,
        device=resolve_device(device),
        batch_size=batch_size,
        max_samples=max_samples,
        seed=seed,
        quick=quick,
        margins=margins,
        margin_samples=margin_samples if margin_samples is not None else (16 if quick else 64),
        margin_params=dict(margin_params or (QUICK_MARGIN_PARAMS if quick else MARGIN_PARAMS)),
    )


def _cell_count(cfg: _Settings, models: Sequence[EvalModel]) -> int:
    """Cells of the whole evaluation: sanity, clean, the attacks, margins, reconstruction."""
    attacks = sum(len(s["budgets"]) if s["mode"] == "bounded" else 1 for s in cfg.suite)
    return sum(
        2 + attacks + (1 if cfg.margins else 0) + (1 if m.loaded.has_decoder else 0)
        for m in models
    )


def _evaluate(
    checkpoints: Sequence[Any],
    dataset: Any,
    *,
    attacks: list[dict[str, Any]] | str | None,
    out: str | os.PathLike,
    device: str | torch.device,
    max_samples: int | None,
    resume: bool,
    progress: Callable[[dict[str, Any]], None] | None,
    quick: bool,
    batch_size: int,
    seed: int,
    margins: bool,
    margin_samples: int | None,
    margin_params: dict[str, Any] | None,
    names: Sequence[str] | None,
    title: str,
) -> dict[str, Any]:
    sess = cells.session()
    t_start = time.perf_counter()
    out = Path(out)
    cfg = _settings(attacks, device, quick=quick, max_samples=max_samples,
                    batch_size=batch_size, seed=seed, margins=margins,
                    margin_samples=margin_samples, margin_params=margin_params)
    ds = as_dataset(dataset)
    labels_all = np.asarray(ds.labels, dtype=np.int64)
    sel = select_rows(labels_all, cfg.max_samples, seed)
    models = load_models(list(checkpoints), names, ds.cube, ds.class_names)
    key = sha(
        STATE_VERSION,
        sha(np.ascontiguousarray(ds.volumes[sel])),
        labels_all[sel],
        ds.class_names,
        bool(ds.normalized),
        int(batch_size),
        cfg.device.type,
    )
    store = CellStore(out, key, resume=resume, total=_cell_count(cfg, models),
                      progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    results = {m.name: _evaluate_model(m, ds, sel, labels_all, cfg, store) for m in models}
    metrics = _metrics(ds, sel, cfg, models, results)
    files = write_outputs(out, metrics, title) if sess.is_main else None
    metrics["files"] = sess.broadcast(files)
    metrics["timing"] = {
        "seconds": round(time.perf_counter() - t_start, 3),
        "cells_computed": store.counters["computed"],
        "cells_cached": store.counters["cached"],
    }
    if sess.is_main:
        write_metrics(out, metrics)
    sess.barrier()  # the outputs exist when evaluate() returns on any rank
    return json_clean(metrics)


def _model_data(m: EvalModel, ds: Any, sel: np.ndarray,
                labels_all: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's view of the selected samples: labels in its class order, prepared
    volumes, and which selected rows have one of its classes."""
    from napari_cryoguard.classify import align_labels, prepare_volumes

    y_all = align_labels(labels_all[sel], ds.class_names, m.loaded.class_names)
    keep = y_all >= 0
    if not keep.any():
        raise CryoGuardError(
            f"none of the dataset's classes {ds.class_names} is a class of model "
            f"{m.name!r} ({m.loaded.class_names})"
        )
    vols = prepare_volumes(m.loaded, ds.volumes[sel][keep], ds.normalized)
    return y_all[keep], vols, keep


def _evaluate_model(m: EvalModel, ds: Any, sel: np.ndarray, labels_all: np.ndarray,
                    cfg: _Settings, store: CellStore) -> dict[str, Any]:
    """Every cell of one model, then its entry of ``metrics["models"]``."""
    model = m.loaded.model
    y, vols, keep = _model_data(m, ds, sel, labels_all)
    names_m = m.loaded.class_names
    dev, bs = cfg.device, cfg.batch_size
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    sanity_res = store.run(
        m,
        "sanity",
        {"training": m.was_training, "n": int(min(16, len(y)))},
        partial(cells.sanity_cell, model, vols, y),
        "sanity checks",
    )
    model.eval()  # everything below is measured in eval mode
    model.to(dev)
    try:
        clean = store.run(
            m, "clean", None, partial(cells.clean_cell, model, vols, y, names_m, dev, bs), "clean"
        )
        clean_pred = np.asarray(clean["pred"], dtype=np.int64)
        curves = {
            spec["label"]: _curve(m, spec, vols, y, clean_pred, cfg, store) for spec in cfg.suite
        }
        margin_res = None
        if cfg.margins:
            n, params = cfg.margin_samples, cfg.margin_params
            margin_res = store.run(
                m,
                "margins",
                {"n": n, "params": params},
                partial(cells.margin_cell, m, vols, y, clean_pred, dev, bs, n, params),
                "margins",
            )
        recon = None
        if m.loaded.has_decoder:
            recon = store.run(
                m,
                "reconstruction",
                None,
                partial(reconstruction_mse, model, vols, batch_size=bs, device=dev),
                "reconstruction",
            )
    finally:
        model.to(home)
    checks = _model_checks(sanity_res, clean, curves, len(names_m))
    meta = m.loaded.metadata
    return {
        "source": str(m.loaded.source),
        "arch": meta.get("arch", type(model).__name__),
        "defense": meta.get("defense"),
        "class_names": names_m,
        "cube": int(m.loaded.cube),
        "n_evaluated": int(len(y)),
        "n_dropped_unknown_class": int((~keep).sum()),
        # dataset rows evaluated, and whether the clean prediction was right, per row
        "sample_index": np.asarray(sel)[keep].tolist(),
        "clean_correct_by_sample": (clean_pred == y).astype(int).tolist(),
        "sanity": {"verdict": _sanity.verdict(checks), "checks": checks},
        "clean": {k: v for k, v in clean.items() if k != "pred"},
        "attacks": curves,
        "margins": margin_res,
        "reconstruction": recon,
    }


def _curve(m: EvalModel, spec: dict[str, Any], vols: np.ndarray, y: np.ndarray,
           clean_pred: np.ndarray, cfg: _Settings, store: CellStore) -> dict[str, Any]:
    """One attack spec on one model: a cell per budget (bounded) or one cell (minimal)."""
    ident = {k: spec[k] for k in ("name", "params", "variants", "mode")}
    ident.update({k: spec[k] for k in ("members", "keep") if k in spec})
    bounded = spec["mode"] == "bounded"
    pts: list[dict] = []
    extra: dict[str, Any] = {}
    for b in spec["budgets"] if bounded else [None]:
        r = store.run(
            m,
            "attack",
            {**ident, "budget": b} if bounded else {**ident, "budgets": spec["budgets"]},
            partial(cells.attack_cell, m.loaded.model, vols, y, clean_pred, spec, b,
                    m.loaded.class_names, cfg.device, cfg.batch_size),
            spec["label"],
            b,
        )
        pts += r["points"]
        if not bounded:
            extra["distance"] = r.get("distance")
    if "members" in spec:  # a worst case over several attacks
        extra.update(members=spec["members"], keep=spec["keep"])
    return {
        "attack": spec["name"],
        "mode": spec["mode"],
        "params": spec["params"],
        "variants": spec["variants"],
        "budget_unit": budget_unit(spec),
        "points": pts,
        **extra,
    }


def _model_checks(sanity_res: dict[str, Any], clean: dict[str, Any],
                  curves: dict[str, Any], n_classes: int) -> list[dict[str, Any]]:
    """The sanity cell's checks plus those read from the results: clean accuracy above
    chance, robust accuracy falling with the budget."""
    checks = [dict(c) for c in sanity_res["checks"]]
    checks.append(_sanity.check_clean_accuracy(clean["accuracy"], clean["n"], n_classes).to_dict())
    mono = {
        label: (
            [0.0] + [p["budget"] for p in c["points"]],
            [clean["accuracy"]] + [p["robust_accuracy"] for p in c["points"]],
        )
        for label, c in curves.items()
        if c["mode"] == "bounded"
    }
    checks.append(_sanity.check_monotonic(mono).to_dict())
    return checks


def _metrics(ds: Any, sel: np.ndarray, cfg: _Settings, models: Sequence[EvalModel],
             results: dict[str, Any]) -> dict[str, Any]:
    """The content of ``metrics.json`` (before ``files`` and ``timing``)."""
    overall = _sanity.verdict([{"status": r["sanity"]["verdict"]} for r in results.values()])
    return {
        "format": "cryoguard-evaluation",
        "version": STATE_VERSION,
        "verdict": overall,
        "dataset": {
            "source": str(ds.meta.get("_source", "in memory")),
            "n_total": int(len(ds)),
            "n_selected": int(sel.size),
            "class_names": ds.class_names,
            "cube": int(ds.cube),
            "normalized": bool(ds.normalized),
        },
        "settings": cfg.as_dict(),
        "models": results,
        "warnings": domain_warnings(models, ds),
    }
