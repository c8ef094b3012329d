"""APGD-CE and APGD-T: Auto-PGD with a step-size schedule, momentum and checkpoints.

Source
------
Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020, arXiv:2003.01690: section 3 (Auto-PGD,
Algorithm 1: initial step ``eta = 2 eps``, momentum ``alpha = 0.75``, checkpoints
``w_j = ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
``p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06)``, the step halved at a checkpoint
when fewer than ``rho = 0.75`` of the steps since the last one increased the loss, or
when neither the step nor the best loss changed since the last one; after a halving the
iteration restarts from the best point), section 4 (the Difference of Logits Ratio loss
DLR and its targeted version) and the ensemble built from them (AutoAttack: APGD-CE;
APGD-T, targeted DLR towards each of the 9 classes ranked highest after the first one,
one run each).

Our own implementation (written from the paper, not from the authors' code or
torchattacks). Departures, all stated here:

* **Few classes.** The DLR loss divides by ``z_pi1 - z_pi3`` (untargeted) or
  ``z_pi1 - (z_pi3 + z_pi4) / 2`` (targeted), which needs 3 or 4 classes. With 3 classes
  the targeted denominator is ``z_pi1 - z_pi3``; with 2 classes both losses are the
  plain logit margin (no denominator; the ratio would be constant there).
* **Fooled samples leave the batch.** An iterate that fools the model is kept and the
  sample is not queried again (the iterations of the other samples are unchanged, as
  every sample has its own step size and checkpoints).
* **Start and reset.** The random start (our choice) is a uniform point of the L-inf
  cube scaled so that its largest coordinate is ``eps`` (L-inf), or a Gaussian direction
  scaled to norm ``eps`` (L2). After a halving the iteration restarts from the best
  point with no momentum (``x^(k-1) = x^(k) = x_max``).

Budgets are in the data's units (normalised units for z-scored subtomograms), or with
``eps_unit="range"`` fractions of each sample's intensity range, as for every attack
(:mod:`napari_cryoguard.attacks.units`); the
result's success follows the registry contract: untargeted (``pred != y``) for
``apgd-t`` too -- its targets only steer the search, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, BallParams, register_attack
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import number

__all__ = [
    "APGDCE",
    "APGDT",
    "APGDCEParams",
    "APGDParams",
    "APGDTParams",
    "apgd_checkpoints",
    "apgd_perturb",
    "dlr_loss",
    "dlr_loss_targeted",
]

Box = ops.Box
_TINY = 1e-12


# --------------------------------------------------------------------------- losses
def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR loss (N,), ascended: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``.

    ``z_pi1 >= z_pi2 >= ...`` are the sorted logits (Croce & Hein 2020, section 4).
    Positive once the sample is misclassified. With 2 classes the denominator is 1.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    num = -(z_y - ops.other_max(logits, y))
    if logits.shape[1] < 3:
        return num
    s = logits.sort(dim=1, descending=True).values
    return num / (s[:, 0] - s[:, 2] + _TINY)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (N,), ascended: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``.

    Croce & Hein 2020, section 4. With 3 classes the denominator is ``z_pi1 - z_pi3``,
    with 2 classes 1 (see the module docstring).
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, t[:, None]).squeeze(1)
    num = -(z_y - z_t)
    c = logits.shape[1]
    if c < 3:
        return num
    s = logits.sort(dim=1, descending=True).values
    ref = 0.5 * (s[:, 2] + s[:, 3]) if c >= 4 else s[:, 2]
    return num / (s[:, 0] - ref + _TINY)


# --------------------------------------------------------------------------- schedule
def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` (j >= 1) at which APGD may halve its step.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06)``
    (Croce & Hein 2020, section 3); only the ``w_j`` in ``[1, steps]``, without repeats.
    """
    out: list[int] = []
    p_prev, p = 0.0, 0.22
    while p <= 1.0 + 1e-12:
        w = max(1, math.ceil(p * steps - 1e-9))
        if w <= steps and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def _apgd_start(
    x: torch.Tensor, norm: str, eps: float, gen: torch.Generator | None
) -> torch.Tensor:
    """A random start on the boundary: L-inf cube corner direction or L2 sphere."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1
        m = ops.flat_norm(t, "linf").clamp_min(_TINY)
        return eps * t / ops.per_sample(m, x.dim())
    t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return eps * ops.normalized_step(t, "l2")


# --------------------------------------------------------------------------- the loop
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SuccessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_and_grad(
    model: nn.Module, x: torch.Tensor, rows: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xg = x.detach().requires_grad_(True)
    logits = model(xg).float()
    loss = loss_fn(logits, rows)
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), grad.detach(), logits.detach()


def apgd_perturb(
    model: nn.Module,
    x: torch.Tensor,
    *,
    norm: str,
    eps: float,
    steps: int,
    loss_fn: LossFn,
    success_fn: SuccessFn,
    start: torch.Tensor | None = None,
    box: Box = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    on_first_grad: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run (Algorithm 1 of Croce & Hein 2020) on a prepared batch.

    Parameters
    ----------
    model
        Classifier (mode handled by the caller).
    x
        Clean batch (N, 1, D, H, W).
    norm, eps, steps
        Threat model and iterations ``N_iter`` (gradient steps after the start).
    loss_fn
        ``loss_fn(logits, rows) -> (k,)``, ascended; ``rows`` index the batch.
    success_fn
        ``success_fn(logits, rows) -> bool (k,)``.
    start
        Initial perturbation (None: zero), projected onto the ball.
    box
        Value bounds (as from ``resolve_bounds``).
    rho, momentum
        The checkpoint threshold ``rho`` and ``alpha`` (both 0.75 in the paper).
    on_first_grad
        Called with the gradient at the start (zero-gradient check).

    Returns
    -------
    x_adv, loss, success
        Per sample: the last fooling iterate where one was found, else the point of
        highest loss; that loss (``+inf`` marks no evaluation); the success mask.
    """
    n = x.shape[0]
    dev = x.device
    every = torch.arange(n, device=dev)
    delta0 = torch.zeros_like(x) if start is None else ops.project(start, norm, eps)
    x_cur = ops.clamp(x + delta0, box)
    loss, grad, logits = _loss_and_grad(model, x_cur, every, loss_fn)
    if on_first_grad is not None:
        on_first_grad(grad)
    found = success_fn(logits, every).clone()
    x_found = x_cur.clone()
    f_max, x_max, g_max = loss.clone(), x_cur.clone(), grad.clone()
    loss_prev = loss.clone()
    x_prev = x_cur.clone()
    eta = torch.full((n,), 2.0 * eps, device=dev, dtype=x.dtype)
    checks = set(apgd_checkpoints(steps))
    last_check = 0
    increases = torch.zeros(n, device=dev, dtype=torch.long)
    f_max_last = f_max.clone()
    reduced_last = torch.zeros(n, dtype=torch.bool, device=dev)
    for k in range(steps):
        if bool(found.all()):
            break
        step = ops.per_sample(eta, x.dim()) * ops.normalized_step(grad, norm)
        z = ops.clamp(x + ops.project(x_cur + step - x, norm, eps), box)
        a = momentum if k > 0 else 1.0
        x_new = x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev)
        x_new = ops.clamp(x + ops.project(x_new - x, norm, eps), box)
        act = torch.nonzero(~found).flatten()
        x_prev = x_cur
        x_cur = x_new
        l_a, g_a, z_a = _loss_and_grad(model, x_cur[act], act, loss_fn)
        loss = loss.clone()
        loss[act] = l_a
        grad = grad.clone()
        grad[act] = g_a
        ok = torch.zeros(n, dtype=torch.bool, device=dev)
        ok[act] = success_fn(z_a, act)
        x_found[ok] = x_cur[ok]
        found |= ok
        increases += (loss > loss_prev).long()
        loss_prev = loss
        better = loss > f_max
        f_max = torch.where(better, loss, f_max)
        x_max[better] = x_cur[better]
        g_max[better] = grad[better]
        if (k + 1) in checks:
            span = (k + 1) - last_check
            osc = increases.double() < rho * span
            stuck = ~reduced_last & (f_max <= f_max_last)
            halve = (osc | stuck) & ~found
            eta = torch.where(halve, eta / 2, eta)
            x_cur = torch.where(ops.per_sample(halve, x.dim()), x_max, x_cur)
            x_prev = torch.where(ops.per_sample(halve, x.dim()), x_max, x_prev)
            grad = torch.where(ops.per_sample(halve, x.dim()), g_max, grad)
            loss_prev = torch.where(halve, f_max, loss_prev)
            reduced_last = halve
            f_max_last = f_max.clone()
            increases.zero_()
            last_check = k + 1
    out = torch.where(ops.per_sample(found, x.dim()), x_found, x_max)
    return out.detach(), f_max, found


# --------------------------------------------------------------------------- params
#: APGD's objectives: cross-entropy or the difference of logits ratio
APGDLoss = Literal["ce", "dlr"]


@dataclass
class APGDParams(BallParams):
    """Fields of both APGD attacks.

    Attributes
    ----------
    norm
        ``"linf"`` or ``"l2"``.
    eps
        Budget in the data's units (normalised units for z-scored subtomograms).
    steps
        Iterations per run (the paper: 100).
    restarts
        Runs from independent random starts, each only on the samples not yet fooled
        (AutoAttack's standard version: 1; APGD-T: per target class).
    random_start
        Start each run from a random point of the ball's surface (otherwise at ``x``,
        for the first run).
    rho, momentum
        The paper's checkpoint threshold and ``alpha`` (0.75 both).
    seed
        Seed of the random starts (None: torch's global RNG).
    """

    steps: int = number(100, integer=True)
    restarts: int = number(1, minimum=1, integer=True)
    random_start: bool = True
    rho: float = number(0.75, maximum=1.0)
    momentum: float = number(0.75, strict=True, maximum=1.0)
    seed: int | None = None


@dataclass
class APGDCEParams(APGDParams):
    """Parameters of :class:`APGDCE` (``apgd-ce``): those of :class:`APGDParams` and

    Attributes
    ----------
    loss
        ``"ce"`` (APGD-CE) or ``"dlr"`` (APGD-DLR, untargeted).
    targeted
        Cross-entropy towards the given target labels (success: ``pred == target``);
        ``loss="ce"`` only.
    """

    loss: APGDLoss = "ce"
    targeted: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.targeted and self.loss == "dlr":
            raise CryoGuardError(
                "apgd-ce: the targeted DLR loss needs the true labels as well as the targets; "
                "use the attack 'apgd-t' (or loss='ce' with targeted=True)"
            )


@dataclass
class APGDTParams(APGDParams):
    """Parameters of :class:`APGDT` (``apgd-t``): those of :class:`APGDParams` and

    Attributes
    ----------
    n_target_classes
        Targets tried, the classes ranked 2nd, 3rd, ... by the clean logits (the
        paper: 9, capped at ``C - 1``).
    loss
        ``"dlr"`` (targeted DLR, the paper) or ``"ce"`` (cross-entropy towards the target).
    """

    n_target_classes: int = number(9, minimum=1, integer=True)
    loss: APGDLoss = "dlr"


# --------------------------------------------------------------------------- attacks
class _APGDBase(Attack):
    """Restarts (and targets) around :func:`apgd_perturb`, on the samples left."""

    norms = ("linf", "l2")

    def _runs(self, logits0: torch.Tensor) -> list[torch.Tensor | None]:
        """Per run: target labels (N,) or None (untargeted)."""
        raise NotImplementedError

    def _fns(self, y: torch.Tensor, target: torch.Tensor | None) -> tuple[LossFn, SuccessFn]:
        raise NotImplementedError

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p = self.params
        gen = ops.make_generator(p.seed, x.device)
        pred0 = logits0.argmax(1)
        found = (pred0 == y) if self.targeted else (pred0 != y)
        best_x = x.clone()
        best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
        runs = 0
        first = True
        for target in self._runs(logits0):
            for r in range(p.restarts):
                rows = torch.nonzero(~found).flatten()
                if rows.numel() == 0:
                    break
                xr = x[rows]
                use_start = p.random_start or r > 0
                start = _apgd_start(xr, p.norm, p.eps, gen) if use_start else None
                t_rows = target[rows] if target is not None else None
                loss_fn, success_fn = self._fns(y[rows], t_rows)

                def note(g: torch.Tensor, rows: torch.Tensor = rows) -> None:
                    self._note_gradient(g, rows)

                x_adv, loss, ok = apgd_perturb(
                    model,
                    xr,
                    norm=p.norm,
                    eps=p.eps,
                    steps=p.steps,
                    loss_fn=loss_fn,
                    success_fn=success_fn,
                    start=start,
                    box=ops.box_rows(box, rows),
                    rho=p.rho,
                    momentum=p.momentum,
                    on_first_grad=note if first else None,
                )
                first = False
                runs += 1
                # a success always wins; otherwise the higher loss (losses of different
                # targets are comparable DLR values, as in the paper's ensemble)
                keep = ok | (loss > best_loss[rows])
                idx = rows[keep]
                best_x[idx] = x_adv[keep]
                best_loss[idx] = torch.where(
                    ok[keep], torch.full_like(loss[keep], math.inf), loss[keep]
                )
                found[rows[ok]] = True
        return best_x, max(runs, 1) * p.steps, {}


@register_attack("apgd-ce", APGDCEParams)
class APGDCE(_APGDBase):
    """APGD-CE (Croce & Hein, ICML 2020, arXiv:2003.01690): Auto-PGD on the cross-entropy.

    Algorithm 1 of the paper: steps of size ``eta`` (initially ``2 eps``) along the sign
    (L-inf) or the L2-normalised gradient, momentum ``alpha = 0.75``, the step halved
    at the checkpoints when the loss oscillates or stalls. Distance: ``norm``; every
    iterate lies in the ``eps``-ball and, with bounds, in the box. Input
    (N, 1, D, H, W) float32, ``eps`` in the data's units. ``steps`` in the result is
    ``steps`` times the runs made. ``loss="dlr"`` gives APGD-DLR.

    Example
    -------
    >>> run_attack("apgd-ce", model, x, y, eps=0.03, steps=100, seed=0)  # doctest: +SKIP
    """

    quick_params = {"eps": 0.1, "steps": 5, "seed": 0}

    def _runs(self, logits0):  # type: ignore[override]
        return [None]

    def _fns(self, y, target):  # type: ignore[override]
        p: APGDCEParams = self.params  # type: ignore[assignment]

        def loss_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            yy = y[rows]
            if p.loss == "dlr":
                return dlr_loss(z, yy)
            ce = F.cross_entropy(z, yy, reduction="none")
            return -ce if p.targeted else ce

        def success_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            yy = y[rows]
            return z.argmax(1) == yy if p.targeted else z.argmax(1) != yy

        return loss_fn, success_fn


@register_attack("apgd-t", APGDTParams)
class APGDT(_APGDBase):
    """APGD-T (Croce & Hein, ICML 2020, arXiv:2003.01690): targeted DLR, several targets.

    For each of the ``n_target_classes`` classes ranked highest by the clean logits
    after the first one, an APGD run (as :class:`APGDCE`) ascends the targeted DLR loss
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` on the samples not yet
    misclassified. ``y`` are the true labels and success means ``pred != y`` (the
    targets only steer the search). Distance: ``norm``, ``||x_adv - x||_p <= eps``.
    ``steps`` in the result is ``steps`` times the runs made.

    Example
    -------
    >>> run_attack("apgd-t", model, x, y, eps=0.03, steps=100, n_target_classes=9)  # doctest: +SKIP
    """

    quick_params = {"eps": 0.1, "steps": 5, "n_target_classes": 2, "seed": 0}

    def _runs(self, logits0):  # type: ignore[override]
        p: APGDTParams = self.params  # type: ignore[assignment]
        c = logits0.shape[1]
        order = logits0.argsort(dim=1, descending=True)
        return [order[:, k] for k in range(1, min(p.n_target_classes, c - 1) + 1)]

    def _fns(self, y, target):  # type: ignore[override]
        p: APGDTParams = self.params  # type: ignore[assignment]
        assert target is not None

        def loss_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            yy, tt = y[rows], target[rows]
            if p.loss == "dlr":
                return dlr_loss_targeted(z, yy, tt)
            return -F.cross_entropy(z, tt, reduction="none")

        def success_fn(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return z.argmax(1) != y[rows]

        return loss_fn, success_fn
