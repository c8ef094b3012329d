"""The cells of an evaluation: one unit of resumable work each (sanity checks, clean
predictions, one attack at one budget or over all budgets, the margin estimate).

Each cell function returns a JSON-able dict; :func:`napari_cryoguard.evaluate.run.evaluate`
stores it in ``state.json``. Under torchrun the cells share their work among the ranks
(:func:`shared_attack`, :func:`predict`) and every rank gets the full result.

Robust accuracy, the headline number, is the fraction of samples classified correctly
both clean and after the attack (an attack is never credited with fixing a wrong
prediction). ``adv_accuracy`` is the plain accuracy on the adversarial volumes, and
``adv_macro_f1`` / ``adv_macro_sensitivity`` are computed from the predictions on the
adversarial volumes, as in MIRST-DM (Sun et al., MICCAI 2022) Tables 1-3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.evaluate import sanity as _sanity
from napari_cryoguard.evaluate.inputs import EvalModel
from napari_cryoguard.evaluate.metrics import (
    classification_metrics,
    margin_summary,
    robust_predictions,
)
from napari_cryoguard.evaluate.suite import cell_params, member_params, minimal_distance

__all__ = [
    "attack_cell",
    "attack_dataset",
    "clean_cell",
    "margin_cell",
    "predict",
    "sanity_cell",
    "session",
    "shared_attack",
    "use_session",
]


def attack_dataset(*args: Any, **kwargs: Any) -> Any:
    """Indirection to :func:`napari_cryoguard.attacks.attack_dataset` (tests count calls)."""
    from napari_cryoguard.attacks import attack_dataset as _ad

    return _ad(*args, **kwargs)


#: The torchrun session of the running :func:`evaluate` (None: one process).
_SESSION: Any = None


def session() -> Any:
    """The torchrun session of the running evaluation (an inactive one in one process)."""
    from napari_cryoguard.distributed import Session

    return _SESSION if _SESSION is not None else Session()


@contextlib.contextmanager
def use_session(sess: Any) -> Iterator[Any]:
    """Run the cells inside the ``with`` block under the torchrun session ``sess``."""
    global _SESSION
    prev, _SESSION = _SESSION, sess
    try:
        yield sess
    finally:
        _SESSION = prev


def shared_attack(
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
    sess = session()
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



def predict(
    model: nn.Module, vols: np.ndarray, device: torch.device, batch_size: int
) -> np.ndarray:
    """Predicted classes of ``vols``; under torchrun each rank predicts its share of
    whole batches and every rank gets all predictions (in row order)."""
    sess = session()
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


def sanity_cell(model: nn.Module, vols: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The sanity checks of :func:`.sanity.run_sanity_checks` (run before ``eval()``)."""
    return {"checks": [c.to_dict() for c in _sanity.run_sanity_checks(model, vols, y)]}


def clean_cell(
    model: nn.Module,
    vols: np.ndarray,
    y: np.ndarray,
    names: list[str],
    device: torch.device,
    batch_size: int,
) -> dict[str, Any]:
    """Clean metrics and the per-sample predictions (``pred``, kept for the attacks)."""
    pred = predict(model, vols, device, batch_size)
    return {**classification_metrics(y, pred, names), "pred": pred.tolist()}


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
                res = shared_attack(
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


def attack_cell(
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
    """One attack spec on the model: at ``budget`` (bounded attacks, worst cases) or
    once, read at every budget of the spec (minimal attacks; ``budget`` None)."""
    if "members" in spec:  # a worst case over several attacks
        assert budget is not None  # a worst case is bounded: one cell per budget
        return _worst_case_cell(
            model, vols, y, clean_pred, spec, budget, class_names, device, batch_size
        )
    runs = []
    top = budget if budget is not None else spec["budgets"][-1]
    for variant in spec["variants"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero gradients: counted below
            res = shared_attack(
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
    dist = [minimal_distance(spec, r) for r in runs]
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


def margin_cell(
    m: EvalModel,
    vols: np.ndarray,
    y: np.ndarray,
    clean_pred: np.ndarray,
    device: torch.device,
    batch_size: int,
    n_samples: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """IMA margins: the checkpoint's training margins if it carries them, and a BPGD
    estimate on the first ``n_samples`` correctly classified samples."""
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
            res = shared_attack(
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

