"""Robustness evaluation of one or more classifiers, resumable, with a report.

:func:`evaluate` runs, per model: sanity checks (:mod:`.sanity`), clean accuracy with
per-class F1 and sensitivity and the confusion matrix (:mod:`.metrics`), accuracy under
every attack of a suite at every budget (:mod:`.suite`), IMA margins and the
reconstruction error of autoencoding classifiers; it writes ``metrics.json``,
``report.md``, ``report.html`` and PNG plots into ``out``.

Robust accuracy, the headline number, is the fraction of samples classified correctly
both clean and after the attack (an attack is never credited with fixing a wrong
prediction). ``adv_accuracy`` is the plain accuracy on the adversarial volumes, and
``adv_macro_f1`` / ``adv_macro_sensitivity`` are computed from the predictions on the
adversarial volumes, as in Sun et al., MIRST-DM (MICCAI 2022)
Tables 1-3.

Resuming: the unit of work is a *cell* -- (model, sanity), (model, clean), (model,
attack, budget) for bounded attacks, (model, attack) for minimal attacks (one run gives
every budget), (model, margins), (model, reconstruction). After each cell its result is
added to ``<out>/state.json`` (written atomically). A rerun with the same data
selection finds the finished cells there by key (a hash of the model weights, the
attack, its parameters and the budget) and skips them; a different selection of
samples, seed, batch size or device type starts afresh.

Also runnable as ``python -m napari_cryoguard.evaluate.run`` (= ``cryoguard evaluate``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryoguard._evaluate_parser import evaluate_parser as build_parser
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate import sanity as _sanity
from napari_cryoguard.evaluate.metrics import (
    classification_metrics,
    json_clean,
    margin_summary,
    reconstruction_mse,
    robust_predictions,
)
from napari_cryoguard.evaluate.report import (
    Report,
    plot_confusion,
    plot_curves,
    plot_histograms,
    write_json,
)
from napari_cryoguard.evaluate.suite import (
    WORST_CASE,
    budget_unit,
    cell_params,
    member_params,
    named_suite,
    normalize_suite,
)

__all__ = ["attack_dataset", "build_parser", "evaluate", "evaluate_main"]

STATE_VERSION = 1

#: BPGD settings of the margin estimate (IMA Algorithm 3, "Experiments": N_PGD = 20,
#: N_binary = 10, alpha = 4; eps_max 0.3 as the IMA paper's largest noise level).
MARGIN_PARAMS = {"eps": 0.3, "n_pgd": 20, "n_binary": 10, "alpha": 4.0}
QUICK_MARGIN_PARAMS = {"eps": 0.3, "n_pgd": 5, "n_binary": 4, "alpha": 4.0}


def attack_dataset(*args: Any, **kwargs: Any) -> Any:
    """Indirection to :func:`napari_cryoguard.attacks.attack_dataset` (tests count calls)."""
    from napari_cryoguard.attacks import attack_dataset as _ad

    return _ad(*args, **kwargs)


#: The torchrun session of the running :func:`evaluate` (None: one process).
_SESSION: Any = None


def _session() -> Any:
    from napari_cryoguard.distributed import Session

    return _SESSION if _SESSION is not None else Session()


def _shared_attack(
    model: nn.Module,
    vols: np.ndarray,
    y: np.ndarray,
    name: str,
    *,
    batch_size: int,
    device: Any,
    indices: np.ndarray | None = None,
    **params: Any,
) -> Any:
    """:func:`attack_dataset` on the rows ``indices`` (all rows: None), shared by the ranks.

    In one process a plain call. Under torchrun each rank attacks its contiguous share
    of whole batches (:func:`~napari_cryoguard.distributed.rank_rows`, so every batch,
    and its seeded random start, is that of one process), and the per-sample results
    (without the adversarial volumes) are gathered on every rank in rank order: all
    ranks continue with the full result of a one-process run.
    """
    sess = _session()
    if not sess.active:
        if indices is None:
            return attack_dataset(
                model, vols, y, name, batch_size=batch_size, device=device, **params
            )
        return attack_dataset(
            model, vols, y, name, batch_size=batch_size, device=device, indices=indices,
            **params,
        )
    from napari_cryoguard.attacks.base import AttackResult
    from napari_cryoguard.distributed import rank_rows

    rows = (
        np.arange(len(vols)) if indices is None
        else np.asarray(indices, dtype=np.int64).reshape(-1)
    )
    lo, hi = rank_rows(rows.size, batch_size, sess.rank, sess.size)
    piece: Any = None
    if hi > lo:
        try:
            res = attack_dataset(
                model, vols, y, name, batch_size=batch_size, device=device,
                indices=rows[lo:hi], **params,
            )
            empty = res.x_adv.new_empty((len(res), 0))
            piece = dataclasses.replace(res, x_adv=empty, perturbation=empty.clone())
        except CryoGuardError as exc:  # raised on every rank, not only on this one
            piece = exc
    gathered = sess.all_gather(piece)
    for g in gathered:
        if isinstance(g, BaseException):
            raise g
    pieces = [g for g in gathered if g is not None]
    if not pieces:  # nothing to attack: the one-process error
        return attack_dataset(
            model, vols, y, name, batch_size=batch_size, device=device, indices=rows, **params
        )
    return AttackResult.concatenate(pieces)


# --------------------------------------------------------------------------- inputs
@dataclass
class _Model:
    name: str
    loaded: Any  # LoadedModel
    fingerprint: str
    was_training: bool


def _sha(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(json_clean(p), sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _model_fingerprint(model: nn.Module, meta: dict) -> str:
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    h.update(json.dumps(meta.get("class_names"), default=str).encode())
    h.update(type(model).__name__.encode())
    return h.hexdigest()


def _as_dataset(data: Any) -> Any:
    from napari_cryoguard.data import SubtomogramDataset, load_dataset

    if isinstance(data, str | os.PathLike):
        ds = load_dataset(data)
        ds.meta = {**ds.meta, "_source": str(data)}
    elif isinstance(data, SubtomogramDataset):
        ds = data
    elif hasattr(data, "volumes") and hasattr(data, "labels"):
        params = dict(getattr(data, "params", {}) or {})
        ds = SubtomogramDataset(
            volumes=np.asarray(data.volumes, dtype=np.float32),
            labels=np.asarray(data.labels),
            class_names=list(getattr(data, "class_names", None) or []) or None,
            voxel_size=float(getattr(data, "voxel_size", 1.0)),
            normalized=bool(params.get("normalize", True)),
            meta={"simulated": params} if params else {},
        )
    else:
        raise CryoGuardError(
            f"cannot evaluate on a {type(data).__name__}: give a dataset path (.npz), a "
            "SubtomogramDataset or a simulated dataset"
        )
    if ds.labels is None or not (np.asarray(ds.labels) >= 0).any():
        raise CryoGuardError(
            "the dataset has no labels: robustness evaluation needs labelled subtomograms "
            "(the clean accuracy must be known)"
        )
    return ds


def _load_models(
    entries: Sequence[Any],
    names: Sequence[str] | None,
    cube: int,
    class_names: Sequence[str] | None,
) -> list[_Model]:
    from napari_cryoguard.classify import LoadedModel, load_model

    if not entries:
        raise CryoGuardError("no models to evaluate")
    if names is not None and len(names) != len(entries):
        raise CryoGuardError(f"{len(names)} names for {len(entries)} models")
    out: list[_Model] = []
    used: set[str] = set()
    for i, entry in enumerate(entries):
        if isinstance(entry, LoadedModel):
            loaded, default = entry, Path(str(entry.source)).stem or f"model{i + 1}"
        elif isinstance(entry, nn.Module):
            # a bare module is assumed to use the dataset's classes, in its order
            loaded = LoadedModel(
                model=entry,
                metadata={
                    "cube": int(getattr(entry, "cube", cube)),
                    "class_names": list(class_names) if class_names else None,
                },
                source=type(entry).__name__,
            )
            default = f"model{i + 1}"
        else:
            loaded = load_model(entry, device="cpu")
            default = Path(str(entry)).stem if str(entry).endswith(".safetensors") else str(entry)
        name = str(names[i]) if names is not None else default
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        was_training = any(m.training for m in loaded.model.modules())
        out.append(
            _Model(name, loaded, _model_fingerprint(loaded.model, loaded.metadata), was_training)
        )
    return out


def _domain_warnings(models: Sequence[_Model], ds) -> dict[str, list[str]]:
    """Per model: how the dataset lies outside what it was trained on (voxel size, cube,
    normalisation), so robustness numbers on foreign data are read as such."""
    from napari_cryoguard.classify import domain_warnings

    return {m.name: domain_warnings(m.loaded, voxel_size=ds.voxel_size, cube=ds.cube,
                                    normalized=ds.normalized) for m in models}


def _select(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Rows with known labels; with ``max_samples`` a seeded, class-balanced subset (sorted)."""
    known = np.flatnonzero(labels >= 0)
    if max_samples is None or max_samples >= known.size:
        return known
    if max_samples < 1:
        raise CryoGuardError(f"max_samples must be >= 1, got {max_samples}")
    rng = np.random.default_rng([int(seed), 0xE7A1])
    perm = rng.permutation(known)
    lab = labels[perm]
    rank = np.zeros(perm.size, dtype=np.int64)
    for c in np.unique(lab):
        pos = np.flatnonzero(lab == c)
        rank[pos] = np.arange(pos.size)
    order = np.lexsort((lab, rank))  # round robin over the classes
    return np.sort(perm[order[:max_samples]])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


# --------------------------------------------------------------------------- cells
def _predict(
    model: nn.Module, vols: np.ndarray, device: torch.device, batch_size: int
) -> np.ndarray:
    """Predicted classes of ``vols``; under torchrun each rank predicts its share of
    whole batches and every rank gets all predictions (in row order)."""
    sess = _session()
    lo, hi = (0, len(vols))
    if sess.active:
        from napari_cryoguard.distributed import rank_rows

        lo, hi = rank_rows(len(vols), batch_size, sess.rank, sess.size)
    out = []
    with torch.no_grad():
        for s in range(lo, hi, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(vols[s : s + batch_size])).unsqueeze(1)
            out.append(model(x.to(device)).float().argmax(1).cpu().numpy())
    if not sess.active:
        return np.concatenate(out).astype(np.int64)
    mine = np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)
    return np.concatenate(sess.all_gather(mine)).astype(np.int64)


def _sanity_cell(model: nn.Module, vols: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {"checks": [c.to_dict() for c in _sanity.run_sanity_checks(model, vols, y)]}


def _clean_cell(
    model: nn.Module,
    vols: np.ndarray,
    y: np.ndarray,
    names: list[str],
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    pred = _predict(model, vols, device, batch_size)
    return {**classification_metrics(y, pred, names), "pred": pred.tolist()}


def _distance(spec: dict[str, Any], res: Any) -> np.ndarray:
    if spec["name"] in ("uniform_noise", "salt_pepper"):
        return res.extras["level"].double().cpu().numpy()
    if res.margins is not None:
        return res.margins.double().cpu().numpy()
    return res.norm.double().cpu().numpy()


def _point(
    budget: float,
    y: np.ndarray,
    clean_pred: np.ndarray,
    preds: list[np.ndarray],
    fooled: list[np.ndarray],
    norms_linf: list[np.ndarray],
    norms_l2: list[np.ndarray],
    class_names: list[str],
    zero_grad: int,
) -> dict[str, Any]:
    """Combine the variants of one budget: a sample is robust only if no variant fooled it."""
    n = len(y)
    any_fooled = np.zeros(n, dtype=bool)
    adv_pred = preds[0].copy()
    linf = np.full(n, np.nan)
    l2 = np.full(n, np.nan)
    for p, f, a, b in zip(preds, fooled, norms_linf, norms_l2, strict=True):
        new = f & ~any_fooled
        adv_pred[new] = p[new]
        linf[new], l2[new] = a[new], b[new]
        any_fooled |= f
    correct = clean_pred == y
    robust_pred = robust_predictions(y, clean_pred, adv_pred, any_fooled)
    adv_m = classification_metrics(y, adv_pred, class_names)
    hit = any_fooled & correct
    return {
        "budget": float(budget),
        "robust_accuracy": float((robust_pred == y).mean()) if n else float("nan"),
        "adv_accuracy": float((adv_pred == y).mean()) if n else float("nan"),
        "adv_macro_f1": adv_m["macro_f1"],
        "adv_macro_sensitivity": adv_m["macro_sensitivity"],
        "success_rate": float(hit.sum() / correct.sum()) if correct.any() else float("nan"),
        "mean_linf": float(np.nanmean(linf[hit])) if hit.any() else float("nan"),
        "mean_l2": float(np.nanmean(l2[hit])) if hit.any() else float("nan"),
        "n": int(n),
        "zero_grad_samples": int(zero_grad),
        # per evaluated sample (order of "sample_index"): right on clean AND under attack
        "robust_by_sample": (robust_pred == y).astype(int).tolist(),
    }


def _worst_case_cell(
    model: nn.Module,
    vols: np.ndarray,
    y: np.ndarray,
    clean_pred: np.ndarray,
    spec: dict[str, Any],
    budget: float,
    class_names: list[str],
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    """One budget of a worst-case spec: its members in order, combined per sample.

    Only correctly classified samples are attacked; with ``keep="first"`` each member
    only those still robust (AutoAttack's protocol), with ``keep="smallest"`` all of
    them, the smallest successful perturbation kept (see :mod:`.suite`).
    """
    n = len(y)
    correct = clean_pred == y
    adv_pred = clean_pred.copy()
    fooled = np.zeros(n, dtype=bool)
    linf = np.full(n, np.nan)
    l2 = np.full(n, np.nan)
    dist = np.full(n, np.inf)
    chosen = np.full(n, -1, dtype=np.int64)
    members: list[dict[str, Any]] = []
    zero = 0
    for j, member in enumerate(spec["members"]):
        todo = correct & ~fooled if spec["keep"] == "first" else correct
        rows = np.flatnonzero(todo)
        hit = 0
        if rows.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero gradients: counted
                res = _shared_attack(
                    model,
                    vols,
                    y,
                    member["name"],
                    batch_size=batch_size,
                    device=device,
                    indices=rows,
                    **member_params(member, budget),
                )
            pa = res.pred_after.cpu().numpy().astype(np.int64)
            f = pa != y[rows]
            d = res.norm.double().cpu().numpy()
            take = f & (d < dist[rows]) if spec["keep"] == "smallest" else f
            r = rows[take]
            adv_pred[r] = pa[take]
            linf[r] = res.norm_linf.double().cpu().numpy()[take]
            l2[r] = res.norm_l2.double().cpu().numpy()[take]
            dist[r] = d[take]
            chosen[r] = j
            fooled[rows[f]] = True
            hit = int(f.sum())
            zero = max(zero, int(res.zero_grad.sum()))
        members.append(
            {
                "attack": member["label"],
                "name": member["name"],
                "attacked": int(rows.size),
                "fooled": hit,
                "robust_accuracy_after": float((correct & ~fooled).mean()) if n else float("nan"),
            }
        )
    point = _point(budget, y, clean_pred, [adv_pred], [fooled], [linf], [l2], class_names, zero)
    point["members"] = members
    point["attack_by_sample"] = chosen.tolist()
    return {"points": [point]}


def _attack_cell(
    model: nn.Module,
    vols: np.ndarray,
    y: np.ndarray,
    clean_pred: np.ndarray,
    spec: dict[str, Any],
    budget: float | None,
    class_names: list[str],
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    if spec["name"] == WORST_CASE:
        assert budget is not None  # a worst case is bounded: one cell per budget
        return _worst_case_cell(
            model, vols, y, clean_pred, spec, budget, class_names, device, batch_size
        )
    runs = []
    top = budget if budget is not None else spec["budgets"][-1]
    for variant in spec["variants"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero gradients: counted below
            res = _shared_attack(
                model,
                vols,
                y,
                spec["name"],
                batch_size=batch_size,
                device=device,
                **cell_params(spec, variant, top),
            )
        runs.append(res)
    pa = [r.pred_after.cpu().numpy().astype(np.int64) for r in runs]
    pb = [r.pred_before.cpu().numpy().astype(np.int64) for r in runs]
    linf = [r.norm_linf.double().cpu().numpy() for r in runs]
    l2 = [r.norm_l2.double().cpu().numpy() for r in runs]
    zero = int(max(int(r.zero_grad.sum()) for r in runs))
    if spec["mode"] == "bounded":
        fooled = [p != y for p in pa]
        return {"points": [_point(top, y, clean_pred, pa, fooled, linf, l2, class_names, zero)]}
    dist = [_distance(spec, r) for r in runs]
    succ = [r.success.cpu().numpy().astype(bool) for r in runs]
    points = []
    for b in spec["budgets"]:
        fooled = [
            s & np.isfinite(d) & (d <= b * (1 + 1e-6) + 1e-12)
            for s, d in zip(succ, dist, strict=True)
        ]
        preds = [np.where(f, a, c) for f, a, c in zip(fooled, pa, pb, strict=True)]
        points.append(_point(b, y, clean_pred, preds, fooled, linf, l2, class_names, zero))
    ok = np.concatenate([d[s & np.isfinite(d)] for s, d in zip(succ, dist, strict=True)])
    return {
        "points": points,
        "distance": {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "median": float(np.median(ok)) if ok.size else float("nan"),
            "found": int(ok.size),
        },
    }


def _margin_cell(
    m: _Model,
    vols: np.ndarray,
    y: np.ndarray,
    clean_pred: np.ndarray,
    device: torch.device,
    batch_size: int,
    n_samples: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    extra = m.loaded.metadata.get("extra_tensors") or {}
    key = next((k for k in extra if str(k).endswith("margins")), None)
    if key is not None:
        arr = np.asarray(
            extra[key].detach().cpu().numpy()
            if isinstance(extra[key], torch.Tensor)
            else extra[key],
            dtype=np.float64,
        ).reshape(-1)
        out["checkpoint"] = {
            "source": f"checkpoint tensor {key!r} (IMA training margins, training samples)",
            "summary": margin_summary(arr),
            "values": arr.tolist(),
        }
    rows = np.flatnonzero(clean_pred == y)[:n_samples]
    if rows.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _shared_attack(
                m.loaded.model,
                vols,
                y,
                "bpgd",
                batch_size=batch_size,
                device=device,
                indices=rows,
                **params,
            )
        mg = res.margins.double().cpu().numpy()
        case0 = res.extras["max_reached"].cpu().numpy().astype(bool)
        out["bpgd"] = {
            "source": f"BPGD estimate on {rows.size} correctly classified samples",
            "params": dict(params),
            "summary": margin_summary(mg),
            "values": mg.tolist(),
            "case0_fraction": float(case0.mean()),
        }
    return out


# --------------------------------------------------------------------------- main
def _resolve_device(device: Any) -> torch.device:
    from napari_cryoguard.device import resolve_device

    return resolve_device(device)


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
    global _SESSION
    from napari_cryoguard import distributed

    kwargs = dict(
        attacks=attacks, out=out, max_samples=max_samples, resume=resume,
        progress=progress, quick=quick, batch_size=batch_size, seed=seed, margins=margins,
        margin_samples=margin_samples, margin_params=margin_params, names=names, title=title,
    )
    if distributed.world()[1] == 1:
        return _evaluate(checkpoints, dataset, device=device, **kwargs)
    with distributed.session(str(device)) as sess:
        prev, _SESSION = _SESSION, sess
        try:
            return _evaluate(checkpoints, dataset, device=sess.device, **kwargs)
        finally:
            _SESSION = prev


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
    sess = _session()
    t_start = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CryoGuardError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = Path(out)
    suite = normalize_suite(attacks, quick=quick)
    if quick and max_samples is None:
        max_samples = 32
    n_margin = margin_samples if margin_samples is not None else (16 if quick else 64)
    mparams = dict(margin_params or (QUICK_MARGIN_PARAMS if quick else MARGIN_PARAMS))
    dev = _resolve_device(device)
    ds = _as_dataset(dataset)
    labels_all = np.asarray(ds.labels, dtype=np.int64)
    sel = _select(labels_all, max_samples, seed)
    models = _load_models(list(checkpoints), names, ds.cube, ds.class_names)

    base_key = _sha(
        STATE_VERSION,
        _sha(np.ascontiguousarray(ds.volumes[sel])),
        labels_all[sel],
        ds.class_names,
        bool(ds.normalized),
        int(batch_size),
        dev.type,
    )
    state_path = out / "state.json"
    state: dict[str, Any] = {"version": STATE_VERSION, "key": base_key, "cells": {}}
    if resume and state_path.is_file() and sess.is_main:
        try:
            old = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("version") == STATE_VERSION and old.get("key") == base_key:
            state["cells"] = dict(old.get("cells") or {})
    if sess.active:  # rank 0 decides which cells are cached
        state["cells"] = sess.broadcast(state["cells"])
    out.mkdir(parents=True, exist_ok=True)

    total = sum(
        2
        + sum(len(s["budgets"]) if s["mode"] == "bounded" else 1 for s in suite)
        + (1 if margins else 0)
        + (1 if m.loaded.has_decoder else 0)
        for m in models
    )
    counters = {"done": 0, "computed": 0, "cached": 0}

    def run_cell(
        m: _Model,
        kind: str,
        ident: Any,
        fn: Callable[[], dict],
        label: str,
        budget: float | None = None,
    ) -> dict:
        key = _sha(m.fingerprint, kind, ident)
        cell = state["cells"].get(key)
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
            state["cells"][key] = cell
            if sess.is_main:
                write_json(state_path, state)
            counters["computed"] += 1
        else:
            counters["cached"] += 1
        counters["done"] += 1
        if progress is not None:
            progress(
                {
                    "model": m.name,
                    "cell": label,
                    "kind": kind,
                    "budget": budget,
                    "done": counters["done"],
                    "total": total,
                    "cached": cached,
                }
            )
        return cell["result"]

    results: dict[str, Any] = {}
    for m in models:
        model = m.loaded.model
        from napari_cryoguard.classify import align_labels, prepare_volumes

        y_all = align_labels(labels_all[sel], ds.class_names, m.loaded.class_names)
        keep = y_all >= 0
        if not keep.any():
            raise CryoGuardError(
                f"none of the dataset's classes {ds.class_names} is a class of model "
                f"{m.name!r} ({m.loaded.class_names})"
            )
        y = y_all[keep]
        vols = prepare_volumes(m.loaded, ds.volumes[sel][keep], ds.normalized)
        names_m = m.loaded.class_names
        home = next((p.device for p in model.parameters()), torch.device("cpu"))

        sanity_res = run_cell(
            m,
            "sanity",
            {"training": m.was_training, "n": int(min(16, len(y)))},
            partial(_sanity_cell, model, vols, y),
            "sanity checks",
        )
        model.eval()  # everything below is measured in eval mode
        model.to(dev)
        try:
            clean = run_cell(
                m,
                "clean",
                None,
                partial(_clean_cell, model, vols, y, names_m, dev, batch_size),
                "clean",
            )
            clean_pred = np.asarray(clean["pred"], dtype=np.int64)
            curves: dict[str, Any] = {}
            for spec in suite:
                ident = {k: spec[k] for k in ("name", "params", "variants", "mode")}
                ident.update({k: spec[k] for k in ("members", "keep") if k in spec})
                pts: list[dict] = []
                extra: dict[str, Any] = {}
                if spec["mode"] == "bounded":
                    for b in spec["budgets"]:
                        r = run_cell(
                            m,
                            "attack",
                            {**ident, "budget": b},
                            partial(
                                _attack_cell,
                                model,
                                vols,
                                y,
                                clean_pred,
                                spec,
                                b,
                                names_m,
                                dev,
                                batch_size,
                            ),
                            spec["label"],
                            b,
                        )
                        pts += r["points"]
                else:
                    r = run_cell(
                        m,
                        "attack",
                        {**ident, "budgets": spec["budgets"]},
                        partial(
                            _attack_cell,
                            model,
                            vols,
                            y,
                            clean_pred,
                            spec,
                            None,
                            names_m,
                            dev,
                            batch_size,
                        ),
                        spec["label"],
                    )
                    pts = r["points"]
                    extra["distance"] = r.get("distance")
                if spec["name"] == WORST_CASE:
                    extra.update(members=spec["members"], keep=spec["keep"])
                curves[spec["label"]] = {
                    "attack": spec["name"],
                    "mode": spec["mode"],
                    "params": spec["params"],
                    "variants": spec["variants"],
                    "budget_unit": budget_unit(spec),
                    "points": pts,
                    **extra,
                }
            margin_res = None
            if margins:
                margin_res = run_cell(
                    m,
                    "margins",
                    {"n": n_margin, "params": mparams},
                    partial(
                        _margin_cell, m, vols, y, clean_pred, dev, batch_size, n_margin, mparams
                    ),
                    "margins",
                )
            recon = None
            if m.loaded.has_decoder:
                recon = run_cell(
                    m,
                    "reconstruction",
                    None,
                    partial(reconstruction_mse, model, vols, batch_size=batch_size, device=dev),
                    "reconstruction",
                )
        finally:
            model.to(home)

        checks = [dict(c) for c in sanity_res["checks"]]
        checks.append(
            _sanity.check_clean_accuracy(clean["accuracy"], clean["n"], len(names_m)).to_dict()
        )
        mono = {
            label: (
                [0.0] + [p["budget"] for p in c["points"]],
                [clean["accuracy"]] + [p["robust_accuracy"] for p in c["points"]],
            )
            for label, c in curves.items()
            if c["mode"] == "bounded"
        }
        checks.append(_sanity.check_monotonic(mono).to_dict())
        meta = m.loaded.metadata
        results[m.name] = {
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

    overall = _sanity.verdict([{"status": r["sanity"]["verdict"]} for r in results.values()])
    metrics: dict[str, Any] = {
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
        "settings": {
            "attacks": suite,
            "max_samples": max_samples,
            "seed": seed,
            "batch_size": batch_size,
            "device": str(dev),
            "quick": bool(quick),
            "margins": bool(margins),
            "margin_samples": n_margin,
            "margin_params": mparams,
        },
        "models": results,
        "warnings": _domain_warnings(models, ds),
    }
    files = _write_outputs(out, metrics, title) if sess.is_main else None
    metrics["files"] = sess.broadcast(files)
    metrics["timing"] = {
        "seconds": round(time.perf_counter() - t_start, 3),
        "cells_computed": counters["computed"],
        "cells_cached": counters["cached"],
    }
    if sess.is_main:
        write_json(out / "metrics.json", metrics)
    sess.barrier()  # the outputs exist when evaluate() returns on any rank
    return json_clean(metrics)


# --------------------------------------------------------------------------- report
def curve_arrays(
    curve: dict[str, Any], clean_accuracy: float | None = None, key: str = "robust_accuracy"
) -> tuple[list[float], list[float]]:
    """(budgets, values) of a stored curve; a bounded curve starts at budget 0 = clean."""
    xs = [p["budget"] for p in curve["points"]]
    ys = [p[key] for p in curve["points"]]
    if clean_accuracy is not None and curve.get("mode") == "bounded" and key == "robust_accuracy":
        xs, ys = [0.0, *xs], [clean_accuracy, *ys]
    return xs, ys


def _write_outputs(out: Path, metrics: dict[str, Any], title: str) -> dict[str, Any]:
    plots = out / "plots"
    models = metrics["models"]
    files: dict[str, Any] = {"plots": []}
    rep = Report(title)
    rep.paragraph(
        f"Overall sanity verdict: {metrics['verdict'].upper()}. Dataset: "
        f"{metrics['dataset']['source']} ({metrics['dataset']['n_selected']} of "
        f"{metrics['dataset']['n_total']} samples evaluated, cube "
        f"{metrics['dataset']['cube']}). Device {metrics['settings']['device']}."
    )
    rep.paragraph(
        "Robust accuracy = correct on the clean sample and on its adversarial version. "
        "Adversarial F1 / sensitivity are macro averages over the classes, from the "
        "predictions on the adversarial volumes (MIRST-DM Tables 1-3). Budgets are in "
        "normalised (z-score) units."
    )
    # sanity
    rep.heading("Sanity checks")
    rows = []
    for name, r in models.items():
        for c in r["sanity"]["checks"]:
            rows.append([name, c["name"], c["status"].upper(), c["message"]])
    rep.table(["model", "check", "status", "message"], rows)
    rep.paragraph("; ".join(f"{n}: {r['sanity']['verdict'].upper()}" for n, r in models.items()))
    # clean
    rep.heading("Clean performance")
    rep.table(
        ["model", "arch", "defense", "n", "accuracy", "macro F1", "macro sensitivity"],
        [
            [
                n,
                r["arch"],
                r["defense"] or "—",
                r["clean"]["n"],
                r["clean"]["accuracy"],
                r["clean"]["macro_f1"],
                r["clean"]["macro_sensitivity"],
            ]
            for n, r in models.items()
        ],
    )
    for name, r in models.items():
        cl = r["clean"]
        rep.table(
            ["class", "support", "precision", "sensitivity", "F1"],
            [
                [pc["class"], pc["support"], pc["precision"], pc["sensitivity"], pc["f1"]]
                for pc in cl["per_class"]
            ],
            caption=f"{name}: per-class scores (clean)",
        )
        p = plot_confusion(
            plots / f"confusion_{_slug(name)}.png",
            cl["confusion"],
            cl["class_names"],
            title=f"Confusion matrix (clean): {name}",
        )
        files["plots"].append(str(p.relative_to(out)))
        rep.image(p, f"Confusion matrix of {name} on clean samples")
    # attacks
    labels = list(dict.fromkeys(lb for r in models.values() for lb in r["attacks"]))
    if labels:
        rep.heading("Accuracy under attack")
        header = (
            ["attack", "budget"]
            + [f"{n} robust acc" for n in models]
            + [f"{n} adv F1" for n in models]
        )
        rows = []
        for lb in labels:
            budgets = sorted(
                {
                    p["budget"]
                    for r in models.values()
                    if lb in r["attacks"]
                    for p in r["attacks"][lb]["points"]
                }
            )
            for b in budgets:
                row: list[Any] = [lb, b]
                f1s: list[Any] = []
                for r in models.values():
                    pt = next(
                        (p for p in r["attacks"].get(lb, {}).get("points", []) if p["budget"] == b),
                        None,
                    )
                    row.append(pt["robust_accuracy"] if pt else None)
                    f1s.append(pt["adv_macro_f1"] if pt else None)
                rows.append(row + f1s)
        rep.table(header, rows)
        for lb in labels:
            curves = {}
            unit = "budget"
            for n, r in models.items():
                if lb in r["attacks"]:
                    c = r["attacks"][lb]
                    unit = c["budget_unit"]
                    curves[n] = curve_arrays(c, r["clean"]["accuracy"])
            p = plot_curves(
                plots / f"accuracy_{_slug(lb)}.png",
                curves,
                title=f"Accuracy under {lb}",
                xlabel=unit,
                ylabel="robust accuracy",
            )
            files["plots"].append(str(p.relative_to(out)))
            rep.image(p, f"Robust accuracy vs budget under {lb}")
        rep.heading("Attack settings", 3)
        any_model = next(iter(models.values()))
        rep.bullets([_settings_line(lb, c) for lb, c in any_model["attacks"].items()])
        wc_rows = [
            [n, lb, p["budget"], m["attack"], m["attacked"], m["fooled"],
             m["robust_accuracy_after"]]
            for n, r in models.items()
            for lb, c in r["attacks"].items()
            if c["attack"] == WORST_CASE
            for p in c["points"]
            for m in p.get("members", [])
        ]
        if wc_rows:
            rep.table(
                ["model", "suite", "budget", "attack", "attacked", "fooled", "robust acc after"],
                wc_rows,
                caption="worst-case suites: each attack in order, on the samples still "
                "robust (keep='first') or on all correct ones (keep='smallest')",
            )
    # margins
    mrows, hist = [], {}
    for n, r in models.items():
        for src in ("checkpoint", "bpgd"):
            mg = (r.get("margins") or {}).get(src)
            if mg:
                s = mg["summary"]
                mrows.append(
                    [
                        n,
                        mg["source"],
                        s["n"],
                        s["mean"],
                        s["median"],
                        s["q10"],
                        s["q90"],
                        mg.get("case0_fraction"),
                    ]
                )
                hist[f"{n} ({src})"] = mg["values"]
    if mrows:
        rep.heading("Margins (IMA)")
        rep.table(
            ["model", "source", "n", "mean", "median", "10 %", "90 %", "case-0 fraction"], mrows
        )
        p = plot_histograms(
            plots / "margins.png",
            hist,
            title="Per-sample margin distribution",
            xlabel="margin (L-inf, normalised units)",
        )
        files["plots"].append(str(p.relative_to(out)))
        rep.image(p, "Margin histograms (IMA Fig. 9 middle)")
        rep.paragraph(
            "BPGD margins are capped at its eps (case-0 samples: no boundary point found)."
        )
    recon = [
        [n, r["reconstruction"]["mse"], r["reconstruction"]["median_mse"]]
        for n, r in models.items()
        if r.get("reconstruction")
    ]
    if recon:
        rep.heading("Reconstruction error")
        rep.table(
            ["model", "mean MSE", "median MSE"],
            recon,
            caption="voxel-mean squared error of the decoder (semi-supervised paper Eq. 1)",
        )
    md, ht = rep.write(out)
    files.update(report_md=md.name, report_html=ht.name, metrics="metrics.json", state="state.json")
    return files


def _settings_line(label: str, c: dict[str, Any]) -> str:
    if c["attack"] == WORST_CASE:
        parts = [f"{m['label']} = {m['name']} {json.dumps(m['params'])}" for m in c["members"]]
        return (
            f"{label}: worst case per sample over {'; '.join(parts)} (keep {c['keep']}: "
            + (
                "the first successful attack, each run on the samples still robust)"
                if c["keep"] == "first"
                else "the smallest successful perturbation)"
            )
        )
    return (
        f"{label}: {c['attack']} ({c['mode']}), params {json.dumps(c['params'])}"
        + (
            f", worst case over variants {json.dumps(c['variants'])}"
            if len(c["variants"]) > 1
            else ""
        )
    )


# --------------------------------------------------------------------------- CLI


def _suite_from_args(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    from napari_cryoguard.evaluate.suite import parse_attack_option

    specs: list[dict[str, Any]] = []
    if getattr(args, "suite", None):
        specs += named_suite(args.suite, quick=args.quick)
    if args.attacks_json:
        raw = args.attacks_json
        try:
            is_file = Path(raw).is_file()
        except OSError:  # inline JSON longer than a file name may be
            is_file = False
        text = Path(raw).read_text() if is_file else raw
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CryoGuardError(
                f"--attacks-json is neither a file nor valid JSON: {exc}"
            ) from None
        if not isinstance(loaded, list):
            raise CryoGuardError("--attacks-json must be a JSON list of attack specs")
        specs += loaded
    for a in args.attack or []:
        specs.append(parse_attack_option(a))
    return specs or None


def _summary_line(metrics: dict[str, Any]) -> dict[str, Any]:
    models = {}
    for name, r in metrics["models"].items():
        worst = [
            p["robust_accuracy"]
            for c in r["attacks"].values()
            for p in c["points"]
            if p["robust_accuracy"] is not None
        ]
        models[name] = {
            "clean_accuracy": r["clean"]["accuracy"],
            "macro_f1": r["clean"]["macro_f1"],
            "worst_robust_accuracy": min(worst) if worst else None,
            "verdict": r["sanity"]["verdict"],
        }
    return models


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cryoguard evaluate``; returns the exit status (0, or 2 on a user error)."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    t0 = time.perf_counter()
    from napari_cryoguard import distributed

    try:
        main_rank = distributed.world()[0] == 0  # under torchrun only rank 0 prints
    except CryoGuardError:
        main_rank = True

    def log(msg: str) -> None:
        if not args.quiet and main_rank:
            print(msg, file=sys.stderr, flush=True)

    try:
        if args.threads < 0:
            raise CryoGuardError(f"--threads must be >= 0, got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)
        suite = _suite_from_args(args)
        if args.list_attacks:
            print(json.dumps(normalize_suite(suite, quick=args.quick), indent=1))
            return 0
        if args.simulate:
            from napari_cryoguard.defenses.trainer import parse_simulate_spec
            from napari_cryoguard.simulate import simulate_subtomograms

            data: Any = simulate_subtomograms(**parse_simulate_spec(args.simulate))
        else:
            data = args.data

        def show(ev: dict[str, Any]) -> None:
            b = "" if ev["budget"] is None else f" @ {ev['budget']:g}"
            log(
                f"[{ev['done']}/{ev['total']}] {ev['model']}: {ev['cell']}{b}"
                f"{' (cached)' if ev['cached'] else ''}"
            )

        metrics = evaluate(
            args.models,
            data,
            attacks=suite,
            out=args.out,
            device=args.device,
            max_samples=args.max_samples,
            resume=not args.no_resume,
            progress=show,
            quick=args.quick,
            batch_size=args.batch_size,
            seed=args.seed,
            margins=not args.no_margins,
            margin_samples=args.margin_samples,
        )
    except CryoGuardError as exc:
        print(f"cryoguard evaluate: error: {exc}", file=sys.stderr, flush=True)
        if args.json and main_rank:
            print(json.dumps({"command": "evaluate", "ok": False, "error": str(exc)}), flush=True)
        return 2
    out = Path(args.out)
    log(f"verdict {metrics['verdict']}; report: {out / 'report.html'}")
    if args.json and main_rank:
        print(
            json.dumps(
                json_clean(
                    {
                        "command": "evaluate",
                        "ok": True,
                        "out": str(out),
                        "metrics": str(out / "metrics.json"),
                        "report": str(out / "report.md"),
                        "html": str(out / "report.html"),
                        "verdict": metrics["verdict"],
                        "models": _summary_line(metrics),
                        "cells_computed": metrics["timing"]["cells_computed"],
                        "cells_cached": metrics["timing"]["cells_cached"],
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(evaluate_main())
