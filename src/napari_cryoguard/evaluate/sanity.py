"""Sanity checks before a robustness number is trusted (STYLE.md habit 7).

After auto-attack's ``checks.py`` (a randomised model, zero gradients, odd outputs) and
the project's own list: the model is in eval mode and deterministic, its clean accuracy
is known (and better than chance), its input gradients are non-zero, an attack with
budget 0 changes nothing, and accuracy under attack does not rise with the budget.

:func:`check_collapse` flags a model that did not learn (dead final features, one
predicted class, accuracy whose 95 % interval reaches chance): comparisons between such
models say nothing about the methods, so the reproduction reports them as "not
compared" instead of giving them a verdict.

Each check returns a :class:`Check` with a status ``"pass"``, ``"warn"`` or ``"fail"``;
:func:`verdict` combines them (the worst status wins). None of the checks changes the
model's mode or weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "Check",
    "check_clean_accuracy",
    "check_collapse",
    "check_deterministic",
    "check_eps_zero",
    "check_eval_mode",
    "check_input_gradients",
    "check_monotonic",
    "final_features",
    "run_sanity_checks",
    "verdict",
]

_ORDER = {"pass": 0, "warn": 1, "fail": 2}


@dataclass
class Check:
    """One sanity check: its name, status (pass / warn / fail), a message, details."""

    name: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(checks: Sequence[Check | dict]) -> str:
    """The worst status of ``checks`` (``"pass"`` if there are none)."""
    worst = "pass"
    for c in checks:
        s = c["status"] if isinstance(c, dict) else c.status
        if _ORDER.get(s, 2) > _ORDER[worst]:
            worst = s
    return worst


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _batch(x: Any, model: nn.Module) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    if t.dim() == 4:
        t = t.unsqueeze(1)
    return t.to(_device(model), torch.float32)


def check_eval_mode(model: nn.Module) -> Check:
    """Fail if any submodule is in training mode (dropout / batch-norm statistics live)."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    stochastic = [
        name or type(m).__name__
        for name, m in model.named_modules()
        if m.training
        and isinstance(m, nn.modules.dropout._DropoutNd | nn.modules.batchnorm._BatchNorm)
    ]
    if not training:
        return Check("eval_mode", "pass", "every module is in eval mode")
    msg = f"{len(training)} module(s) are in training mode"
    if stochastic:
        msg += f", including dropout / batch norm ({', '.join(stochastic[:5])})"
    return Check(
        "eval_mode",
        "fail",
        msg + ": predictions are random or batch-dependent; the evaluation switches the "
        "model to eval mode",
        {"training_modules": training[:20], "stochastic_modules": stochastic[:20]},
    )


def check_deterministic(model: nn.Module, x: Any, *, atol: float = 1e-5) -> Check:
    """Fail if two forward passes on the same batch give different logits."""
    xb = _batch(x, model)
    with torch.no_grad():
        a = model(xb).float()
        b = model(xb).float()
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if diff <= atol:
        return Check("deterministic", "pass", "two forward passes agree", {"max_diff": diff})
    return Check(
        "deterministic",
        "fail",
        f"two forward passes on the same input differ by up to {diff:.3g}: the model is "
        "randomised (dropout in train mode, random defenses); its robustness numbers "
        "are not reproducible",
        {"max_diff": diff},
    )


def check_clean_accuracy(accuracy: float | None, n: int, num_classes: int) -> Check:
    """Fail without a clean accuracy; warn when it is no better than chance."""
    if accuracy is None or n == 0 or not math.isfinite(float(accuracy)):
        return Check(
            "clean_accuracy",
            "fail",
            "no labelled samples: the clean accuracy is unknown, so accuracy under "
            "attack cannot be interpreted",
            {"n": n},
        )
    chance = 1.0 / max(num_classes, 1)
    details = {"accuracy": float(accuracy), "n": n, "chance": chance}
    if accuracy <= chance + 1e-12:
        return Check(
            "clean_accuracy",
            "warn",
            f"clean accuracy {accuracy:.3f} on {n} samples is not above chance "
            f"({chance:.3f}): robustness numbers of this model say little",
            details,
        )
    return Check("clean_accuracy", "pass", f"clean accuracy {accuracy:.3f} on {n} samples", details)


def check_input_gradients(model: nn.Module, x: Any, y: Any) -> Check:
    """Fail if the cross-entropy's input gradient is zero for every sample; warn for some.

    A zero gradient makes gradient attacks (FGSM, PGD, CW) powerless, so a high
    accuracy under them would only reflect gradient masking.
    """
    xb = _batch(x, model).detach().requires_grad_(True)
    yb = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=xb.device)
    with torch.enable_grad():
        logits = model(xb).float()
        if not logits.requires_grad:
            grad = torch.zeros_like(xb)
        else:
            loss = nn.functional.cross_entropy(logits, yb, reduction="sum")
            (g,) = torch.autograd.grad(loss, xb, allow_unused=True)
            grad = torch.zeros_like(xb) if g is None else g
    per = grad.detach().flatten(1).abs().amax(1)
    zero = (per == 0) | ~torch.isfinite(per)
    n0, n = int(zero.sum()), int(per.numel())
    details = {"zero_gradient_samples": n0, "n": n, "mean_abs_max": float(per.mean())}
    if n0 == n:
        return Check(
            "input_gradients",
            "fail",
            f"the input gradient is exactly zero for all {n} samples: gradient attacks "
            "cannot work (gradient masking or an output that ignores the input)",
            details,
        )
    if n0:
        return Check(
            "input_gradients",
            "warn",
            f"the input gradient is zero for {n0} of {n} samples",
            details,
        )
    return Check(
        "input_gradients", "pass", f"input gradients non-zero for all {n} samples", details
    )


def check_eps_zero(
    model: nn.Module, x: Any, y: Any, attacks: Sequence[str] = ("fgsm", "pgd")
) -> Check:
    """Fail if an attack with budget 0 changes an input or a prediction."""
    from napari_cryoguard.attacks import run_attack

    changed: dict[str, dict[str, float]] = {}
    params = {
        "fgsm": {"eps": 0.0},
        "pgd": {"eps": 0.0, "steps": 2, "random_start": True, "seed": 0},
        "bim": {"eps": 0.0, "steps": 2},
        "cw_linf": {"eps": 0.0, "steps": 2},
    }
    for name in attacks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = run_attack(name, model, x, y, **params.get(name, {"eps": 0.0}))
        pert = float(res.norm_linf.max()) if len(res) else 0.0
        flips = int((res.pred_after != res.pred_before).sum())
        if pert > 0 or flips:
            changed[name] = {"max_linf": pert, "prediction_changes": flips}
    if changed:
        return Check(
            "eps_zero",
            "fail",
            "an attack with budget 0 changed the input or the prediction: "
            + "; ".join(
                f"{k}: max |delta| {v['max_linf']:.3g}, {v['prediction_changes']} "
                "prediction(s) changed"
                for k, v in changed.items()
            ),
            {"changed": changed},
        )
    return Check("eps_zero", "pass", f"budget 0 changes nothing ({', '.join(attacks)})")


def check_monotonic(
    curves: dict[str, tuple[Sequence[float], Sequence[float]]], *, tolerance: float = 0.0
) -> Check:
    """Warn where accuracy under attack *rises* with the budget.

    Parameters
    ----------
    curves
        ``{attack label: (budgets, accuracies)}``; budgets need not be sorted.
    tolerance
        Rises up to this much are accepted (0: any rise is flagged).

    A stronger budget can never make a correct attack less successful (the larger ball
    contains the smaller one), so a rise means a weak or broken attack (too few steps,
    an unlucky random start) and the larger-budget numbers overstate robustness.
    """
    violations: list[dict[str, Any]] = []
    for label, (budgets, accs) in curves.items():
        b = np.asarray(budgets, dtype=np.float64)
        a = np.asarray(accs, dtype=np.float64)
        order = np.argsort(b, kind="stable")
        b, a = b[order], a[order]
        for i in range(1, len(a)):
            if np.isfinite(a[i]) and np.isfinite(a[i - 1]) and a[i] > a[i - 1] + tolerance:
                violations.append(
                    {
                        "attack": label,
                        "from_budget": float(b[i - 1]),
                        "to_budget": float(b[i]),
                        "from_accuracy": float(a[i - 1]),
                        "to_accuracy": float(a[i]),
                    }
                )
    if violations:
        text = "; ".join(
            f"{v['attack']}: {v['from_accuracy']:.3f} at {v['from_budget']:g} -> "
            f"{v['to_accuracy']:.3f} at {v['to_budget']:g}"
            for v in violations[:6]
        )
        return Check(
            "monotonic",
            "warn",
            f"accuracy rises with the budget in {len(violations)} place(s) ({text}): the "
            "attack is too weak there, robustness is overstated",
            {"violations": violations},
        )
    return Check(
        "monotonic", "pass", f"accuracy non-increasing with the budget ({len(curves)} curve(s))"
    )


def final_features(model: nn.Module, x: Any, *, batch_size: int = 64) -> torch.Tensor:
    """The input of the model's last ``nn.Linear`` layer (N, F): its final features.

    Run as the model is (call ``model.eval()`` first); raises :class:`~napari_cryoguard.CryoGuardError`
    if the model has no linear layer.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CryoGuardError("the model has no nn.Linear layer: no final features to inspect")
    seen: list[torch.Tensor] = []
    hook = linears[-1].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().flatten(1).float().cpu())
    )
    xb = _batch(x, model)
    try:
        with torch.no_grad():
            for s in range(0, xb.shape[0], batch_size):
                model(xb[s : s + batch_size])
    finally:
        hook.remove()
    return torch.cat(seen) if seen else torch.zeros(0, 0)


def check_collapse(
    model: nn.Module,
    x: Any,
    y: Any,
    num_classes: int,
    *,
    min_live: float = 0.05,
    max_one_class: float = 0.9,
) -> Check:
    """Fail when the model did not learn (a collapsed model), so it is not compared.

    Computed in eval mode on a labelled batch (the model's modes are restored):

    * ``live_share``: the fraction of final features (:func:`final_features`) that are
      positive for at least one sample; ``positive_share``: the fraction of positive
      entries. Dead ReLUs (a too-large learning rate) drive both towards 0.
    * ``accuracy`` with its 95 % Wilson interval; "at chance" when the interval's lower
      end is at or below chance (1 / ``num_classes``).
    * ``top_class_share``: the largest fraction of samples predicted as one class.

    Fails ("collapsed") when the accuracy is at chance, when ``top_class_share >=
    max_one_class`` (0.9) or when ``live_share < min_live`` (0.05); warns when fewer
    than a quarter of the final-feature entries are positive; passes otherwise.
    """
    from napari_cryoguard.evaluate.metrics import wilson_interval

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        xb = _batch(x, model)
        with torch.no_grad():
            logits = torch.cat([model(xb[s : s + 64]).float() for s in range(0, len(xb), 64)])
        try:
            feats = final_features(model, xb)
        except CryoGuardError:  # no linear layer: only the accuracy criteria apply
            feats = None
    finally:
        for m, mode in modes:
            m.training = mode
    yb = np.asarray(y).reshape(-1)
    pred = logits.argmax(1).cpu().numpy()
    n = int(yb.size)
    acc = float((pred == yb).mean()) if n else float("nan")
    lo, hi = wilson_interval(acc * n, n) if n else (0.0, 1.0)
    chance = 1.0 / max(int(num_classes), 1)
    has_feats = feats is not None
    live = float((feats > 0).any(0).float().mean()) if has_feats and feats.numel() else 0.0
    positive = float((feats > 0).float().mean()) if has_feats and feats.numel() else 0.0
    counts = np.bincount(pred, minlength=int(num_classes)) if pred.size else np.zeros(1)
    top = float(counts.max() / max(pred.size, 1))
    details = {
        "accuracy": acc,
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "n": n,
        "chance": chance,
        "live_share": live,
        "positive_share": positive,
        "top_class_share": top,
        "features": int(feats.shape[1]) if has_feats and feats.dim() == 2 else 0,
    }
    reasons = []
    if not n or lo <= chance:
        reasons.append(
            f"accuracy {acc:.3f} (95 % interval {lo:.3f}-{hi:.3f}, n = {n}) reaches chance "
            f"({chance:.3f})"
        )
    if top >= max_one_class:
        reasons.append(f"{top:.0%} of the samples are predicted as one class")
    if has_feats and live < min_live:
        reasons.append(f"only {live:.1%} of the final features are ever positive (dead ReLUs)")
    if reasons:
        return Check("collapse", "fail", "collapsed model: " + "; ".join(reasons), details)
    if has_feats and positive < 0.25:
        return Check(
            "collapse",
            "warn",
            f"only {positive:.1%} of the final-feature entries are positive (accuracy "
            f"{acc:.3f})",
            details,
        )
    return Check(
        "collapse",
        "pass",
        f"learned: accuracy {acc:.3f} ({lo:.3f}-{hi:.3f}) above chance {chance:.3f}, "
        f"{live:.0%} of the final features live",
        details,
    )


def run_sanity_checks(model: nn.Module, x: Any, y: Any, *, max_samples: int = 16,
                      collapse_samples: int = 256) -> list[Check]:
    """The checks that need only the model and a labelled batch, in a safe order.

    ``eval_mode`` is checked on the model as given; the other checks run in eval mode
    (the mode the evaluation uses) and the model's modes are restored afterwards. The
    gradient checks use the first ``max_samples`` samples; :func:`check_collapse` (a model
    that did not learn is flagged rather than compared) the first ``collapse_samples``,
    with the number of classes read from the model's output.
    """
    xb = _batch(x, model)[:max_samples]
    yb = np.asarray(y)[:max_samples]
    checks = [check_eval_mode(model)]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        checks.append(check_deterministic(model, xb))
        checks.append(check_input_gradients(model, xb, yb))
        checks.append(check_eps_zero(model, xb, yb))
        with torch.no_grad():
            num_classes = int(model(xb[:1]).shape[1])
    finally:
        for m, mode in modes:
            m.training = mode
    n = int(collapse_samples)
    collapse = check_collapse(model, x[:n], np.asarray(y)[:n], num_classes)
    d = collapse.details
    only_uncertain = (collapse.status == "fail" and d["accuracy"] > d["chance"]
                      and d["top_class_share"] < 0.9
                      and (not d["features"] or d["live_share"] >= 0.05))
    if only_uncertain:
        # above chance, but too few samples for the interval to clear it: say so, do not fail
        collapse = Check("collapse", "warn",
                         f"accuracy {d['accuracy']:.3f} on {d['n']} samples: its 95 % interval "
                         f"({d['accuracy_lo']:.3f}-{d['accuracy_hi']:.3f}) still reaches chance "
                         f"({d['chance']:.3f}); too few samples to tell that the model learned",
                         d)
    checks.append(collapse)
    return checks
