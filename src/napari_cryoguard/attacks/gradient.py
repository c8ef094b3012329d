"""Gradient-sign attacks: FGSM, PGD (L-inf / L2, CE or margin loss, restarts) and BIM.

Sources
-------
* Wu et al., RAT (IEEE BIBM 2019) section IV.C (FGSM against
  CB3D, max eps 0.03; Table II also 0.06 and 0.12) and Eq. (3) (the iterative sign
  update with eps 0.01, step 0.001, 10 steps used for training).
* Sun et al., MIRST-DM (MICCAI 2022) section 2.1 and Eq. (3)
  (PGD: sign step, projection on [x - eps, x + eps]; evaluation eps 5/255, 20 steps,
  step 0.001).
* Ma & Liang, IMA (arXiv:2005.09147) Eq. (1) (PGD in L-inf or L2:
  sign or L2-normalised gradient, clip to the eps-ball; random start; "100-PGD" run
  with both the cross-entropy and the margin loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, AttackParams, StepParams, register_attack
from napari_cryoguard.registry import number

__all__ = [
    "BIM",
    "FGSM",
    "PGD",
    "BIMParams",
    "FGSMParams",
    "PGDParams",
    "first_step",
    "pgd_perturb",
]

Box = ops.Box


@dataclass
class FGSMParams(AttackParams):
    """Parameters of :class:`FGSM`.

    Attributes
    ----------
    eps
        L-inf budget in normalised units (RAT IV.C: max eps 0.03; Table II adds 0.06, 0.12).
    targeted
        Step towards the target labels (``-eps * sign(grad CE(x, t))``).
    """

    eps: float = number(0.03)
    targeted: bool = False


@register_attack("fgsm", FGSMParams)
class FGSM(Attack):
    """Fast Gradient Sign Method, one step: ``x_adv = x + eps * sign(grad_x CE(f(x), y))``.

    Source: RAT paper section IV.C (Goodfellow et al. 2015); MIRST-DM section 2.1.
    Distance: L-inf, ``||x_adv - x||_inf <= eps`` (equal to eps where the gradient is
    non-zero, before any bounds clamp). Input (N, 1, D, H, W) float32 in normalised
    units; ``eps`` in the same units.

    Example
    -------
    >>> res = FGSM(eps=0.03)(model, x, y)  # doctest: +SKIP
    >>> run_attack("fgsm", model, x, y, eps=0.03)  # the same  # doctest: +SKIP
    """

    default_norm = "linf"
    quick_params = {"eps": 0.1}

    def _clean_logits(self, model, x, y):  # type: ignore[override]
        # one forward pass gives both the clean logits and the gradient at x
        p: FGSMParams = self.params  # type: ignore[assignment]
        return first_step(
            self, model, x, y, lambda z: ops.objective(z.float(), y, "ce", p.targeted)
        )

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: FGSMParams = self.params  # type: ignore[assignment]
        grad, self._grad0 = self._grad0, None
        self._note_gradient(grad)
        delta = (p.eps * grad.sign()).clamp(-p.eps, p.eps)
        return ops.clamp(x + delta, box), 1, {}


@dataclass
class BIMParams(StepParams):
    """Parameters of :class:`BIM`: PGD's fields without random start or restarts.

    Defaults: RAT Eq. (3) -- eps 0.01, step 0.001, 10 steps.

    Attributes
    ----------
    norm
        ``"linf"`` (sign steps, box projection) or ``"l2"`` (L2-normalised steps, ball
        projection); IMA Eq. (1).
    eps
        Budget in normalised units (RAT Eq. (3): 0.01; MIRST-DM: 5/255 = 0.0196).
    step_size
        Step per iteration (RAT, MIRST-DM: 0.001). ``None``: ``2.5 * eps / steps``
        (Madry et al.; IMA writes it ``alpha * eps / N_PGD``).
    steps
        Iterations (RAT: 10; MIRST-DM evaluation: 20; IMA evaluation: 100).
    loss
        ``"ce"`` (cross-entropy) or ``"margin"`` (CW margin); IMA runs both.
    targeted
        Descend towards the target labels instead.
    """

    eps: float = number(0.01)


@dataclass
class PGDParams(BIMParams):
    """Parameters of :class:`PGD`: those of :class:`BIMParams` and

    Attributes
    ----------
    random_start
        Start from a uniform random point of the eps-ball (IMA Eq. (1), x_(0)).
    restarts
        Number of runs from independent random starts; per sample the best is kept
        (a success, else the highest final loss).
    seed
        Seed of the random start (None: torch's global RNG).
    """

    random_start: bool = True
    restarts: int = number(1, minimum=1, integer=True)
    seed: int | None = None


def pgd_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    loss: str = "ce",
    targeted: bool = False,
    start: torch.Tensor | None = None,
    box: Box = None,
    on_first_grad: Callable[[torch.Tensor], None] | None = None,
    objective_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    first_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """The PGD loop on a prepared batch (no mode handling): returns ``x_adv`` (detached).

    ``x_(t+1) = Proj_{B(x, eps) ∩ box}(x_t + step * h(grad J(x_t)))`` with ``h`` the sign
    (L-inf) or L2 normalisation (IMA Eq. (1); MIRST-DM Eq. (3)). ``start`` is the initial
    perturbation (None: zero).
    ``objective_fn(logits) -> (N,)`` replaces the ``loss``/``targeted`` objective.
    Used by :class:`PGD`, :class:`BIM` and CW-L-inf; callers are responsible for the
    model's mode (``Attack.__call__`` does that).

    Cost: exactly ``steps`` forward + backward passes (the backward to the input only),
    or ``steps - 1`` when ``first_grad`` -- the gradient of the objective at the
    starting point, computed by the caller together with the clean logits -- is given.
    For L-inf the ball and the value box are intersected once (``[max(x - eps, lo),
    min(x + eps, hi)]``) and each step is one in-place sign, add and clamp on the
    iterate; no other tensor is allocated per step.
    """

    def default_fn(z: torch.Tensor) -> torch.Tensor:
        return ops.objective(z, y, loss, targeted)

    fn = objective_fn if objective_fn is not None else default_fn

    delta = torch.zeros_like(x) if start is None else ops.project(start, norm, eps)
    x_adv = ops.clamp(x + delta, box)  # a fresh tensor: updated in place below
    del delta
    if steps <= 0:
        return x_adv.detach()
    if norm == "linf":
        lo, hi = x - eps, x + eps
        if box is not None:
            lo = torch.maximum(lo, box[0])
            hi = torch.minimum(hi, box[1])
    for t in range(steps):
        if t == 0 and first_grad is not None:
            grad = first_grad.clone()
        else:
            grad, _ = ops.input_gradient(model, x_adv, fn)
        if t == 0 and on_first_grad is not None:
            on_first_grad(grad)
        with torch.no_grad():
            if norm == "linf":
                x_adv.add_(grad.sign(), alpha=step_size).clamp_(lo, hi)
            else:
                x_adv.add_(ops.normalized_step(grad, norm), alpha=step_size)
                x_adv = ops.clamp(x + ops.project(x_adv.sub_(x), norm, eps), box)
    return x_adv.detach()


def first_step(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Clean logits (N, C) float32 and the gradient of ``fn`` at ``x`` from one pass.

    For attacks whose first iterate is ``x`` itself (BIM, PGD without random start,
    CW-L-inf): the gradient is kept in ``attack._grad0`` and handed to
    :func:`pgd_perturb` as ``first_grad``, so the clean forward pass is also the first
    step's.
    """
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    ops.check_logits(logits, x.shape[0], y)
    (grad,) = torch.autograd.grad(fn(logits).sum(), xg)
    attack._grad0 = grad
    return logits.detach().float()


@register_attack("bim", BIMParams)
class BIM(Attack):
    """Basic Iterative Method (Kurakin et al. 2016): PGD started at ``x`` itself.

    This is the iteration written in RAT Eq. (3) and MIRST-DM Eq. (3) (no random
    start). Distance: ``norm`` (default L-inf), ``||x_adv - x||_p <= eps``.
    Deterministic. Input (N, 1, D, H, W) float32.

    Cost: ``steps + 1`` forward passes (the first step's is the clean one, the last
    gives the logits of ``x_adv``), ``steps`` backward passes.

    Example
    -------
    >>> run_attack("bim", model, x, y, eps=0.01, step_size=0.001, steps=10)  # doctest: +SKIP
    """

    norms = ("linf", "l2")
    quick_params = {"eps": 0.1, "step_size": 0.02, "steps": 5}
    _grad0: torch.Tensor | None = None

    def _random_start(self) -> bool:
        return False

    def _clean_logits(self, model, x, y):  # type: ignore[override]
        p: BIMParams = self.params  # type: ignore[assignment]
        self._grad0 = None
        if self._random_start() or p.steps == 0:
            return super()._clean_logits(model, x, y)
        return first_step(self, model, x, y, lambda z: ops.objective(z, y, p.loss, p.targeted))

    def _perturb(self, model, x, y, box, start, first: bool, grad0) -> torch.Tensor:
        """One PGD run from ``start`` (None: ``x``) with this attack's parameters."""
        p: BIMParams = self.params  # type: ignore[assignment]
        return pgd_perturb(
            model,
            x,
            y,
            norm=p.norm,
            eps=p.eps,
            step_size=p.resolved_step(),
            steps=p.steps,
            loss=p.loss,
            targeted=p.targeted,
            start=start,
            box=box,
            on_first_grad=self._note_gradient if first else None,
            first_grad=grad0 if start is None else None,
        )

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        grad0, self._grad0 = self._grad0, None
        return self._perturb(model, x, y, box, None, True, grad0), self.params.steps, {}


@register_attack("pgd", PGDParams)
class PGD(BIM):
    """Projected Gradient Descent (Madry et al. 2018) in L-inf or L2, CE or margin loss.

    Sources: IMA paper Eq. (1) (both norms, random start, CE and margin losses);
    MIRST-DM Eq. (3); RAT Eq. (3). Distance: ``norm``; every iterate satisfies
    ``||x_adv - x||_p <= eps`` and, with bounds, lies in the box. Input
    (N, 1, D, H, W) float32, eps and step in normalised units. ``steps`` in the result
    is ``steps * restarts``.

    Cost (forward passes of the model; counted in ``tests/test_speed_paths.py``): with a
    random start, ``steps`` forward + backward passes plus two forward passes without
    gradient, one for the clean logits and one for the logits of ``x_adv`` (the result's
    predictions before and after): ``steps + 2``. Without a random start the first
    step's forward pass *is* the clean one: ``steps + 1``. With ``restarts = R``:
    ``R * (steps + 1) + 1`` (each restart's final forward pass also gives the result's
    logits), ``R * (steps + 1)`` without random start.

    Example
    -------
    >>> run_attack("pgd", model, x, y, norm="l2", eps=0.5, steps=20, loss="margin")  # doctest: +SKIP
    """

    quick_params = {"eps": 0.1, "step_size": 0.02, "steps": 5, "seed": 0}
    _logits_after: torch.Tensor | None = None

    def _random_start(self) -> bool:
        return bool(self.params.random_start)  # type: ignore[attr-defined]

    def _clean_logits(self, model, x, y):  # type: ignore[override]
        self._logits_after = None
        return super()._clean_logits(model, x, y)

    def _adv_logits(self, model, x_adv):  # type: ignore[override]
        logits, self._logits_after = self._logits_after, None
        return logits if logits is not None else super()._adv_logits(model, x_adv)

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: PGDParams = self.params  # type: ignore[assignment]
        gen = ops.make_generator(p.seed, x.device)
        best_x: torch.Tensor | None = None
        best_loss = best_ok = best_logits = None
        grad0, self._grad0 = self._grad0, None
        for r in range(p.restarts):
            start = ops.random_start(x, p.norm, p.eps, gen) if self._random_start() else None
            x_adv = self._perturb(model, x, y, box, start, r == 0, grad0)
            if p.restarts == 1:  # nothing to compare: the result's forward pass follows
                return x_adv, p.steps, {}
            with torch.no_grad():
                logits = model(x_adv).float()
            final = ops.objective(logits, y, p.loss, p.targeted)
            pred = logits.argmax(1)
            ok = pred == y if p.targeted else pred != y
            if best_x is None:
                best_x, best_loss, best_ok, best_logits = x_adv, final, ok, logits
                continue
            better = (ok & ~best_ok) | ((ok == best_ok) & (final > best_loss))
            best_x = torch.where(better.view(-1, 1, 1, 1, 1), x_adv, best_x)
            best_logits = torch.where(better.view(-1, 1), logits, best_logits)
            best_loss = torch.where(better, final, best_loss)
            best_ok = best_ok | ok
        assert best_x is not None
        self._logits_after = best_logits  # the result's logits: no further forward pass
        return best_x, p.steps * p.restarts, {}
