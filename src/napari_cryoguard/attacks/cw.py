"""Carlini-Wagner attacks: L2 (binary search over the constant c) and L-inf (PGD on the CW loss).

Sources
-------
* Wu et al., RAT (IEEE BIBM 2019) section IV.C: CW "searches
  for the adversarial images that the disparity between these images and raw images is
  as small as possible while the adversarial samples are misclassified" (the L2 form).
* Sun et al., MIRST-DM (MICCAI 2022) section 2.1: the L-inf
  version is "similar to the PGD attack excepting the loss function"; section 4
  (attack settings): eps = 5/255 = 0.0196, at most 10 iterations, step 0.001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, AttackParams, register_attack
from napari_cryoguard.attacks.gradient import first_step, pgd_perturb
from napari_cryoguard.params import Norm
from napari_cryoguard.registry import number

__all__ = ["CW", "CWLinf", "CWLinfParams", "CWParams"]


@dataclass
class CWParams(AttackParams):
    """Parameters of :class:`CW`.

    Attributes
    ----------
    norm
        ``"l2"`` (Carlini-Wagner L2, RAT IV.C) or ``"linf"`` (MIRST-DM 2.1: PGD on the CW
        loss within ``eps``; uses ``eps``, ``step_size`` and ``steps``).
    confidence
        kappa: required logit margin ``max_{j != y} z_j - z_y >= kappa`` (0).
    steps
        L2: Adam iterations per binary-search step; L-inf: PGD iterations. Default
        100 for L2 (foolbox uses up to 10000 with early abort); MIRST-DM used 10
        for L-inf (see ``cw_linf``).
    binary_search_steps
        L2: searches over the constant c (9, Carlini & Wagner 2017).
    initial_const
        L2: first value of c (1e-3, Carlini & Wagner 2017).
    lr
        L2: Adam learning rate on the perturbation variable (0.01, Carlini & Wagner 2017).
    abort_early
        L2: stop a search step when the loss has not decreased by 0.01 % over a tenth
        of ``steps``.
    eps, step_size
        L-inf only: budget and step (MIRST-DM: 5/255, 0.001).
    targeted
        Make the prediction equal the target labels.
    """

    norm: Norm = "l2"
    confidence: float = number(0.0)
    steps: int = number(100, integer=True)
    binary_search_steps: int = number(9, minimum=1, integer=True)
    initial_const: float = number(1e-3, strict=True)
    lr: float = number(0.01, strict=True)
    abort_early: bool = True
    eps: float = number(5 / 255)
    step_size: float = number(0.001)
    targeted: bool = False


@register_attack("cw", CWParams)
class CW(Attack):
    """Carlini-Wagner attack: minimal L2 perturbation (binary search on c), or CW-L-inf.

    L2 (Carlini & Wagner 2017): per sample minimise
    ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0)`` (targeted:
    ``max(max_{j != t} z_j - z_t + kappa, 0)``) with Adam; ``c`` starts at
    ``initial_const`` and is searched per sample (x10 until a success, then bisection).
    Without bounds the perturbation is optimised directly; with bounds through the
    change of variables ``x' = lo + (hi - lo) * (tanh(w) + 1) / 2``. The result is the
    smallest-L2 adversarial found per sample; samples never fooled return ``x``
    unchanged with ``success=False``. Distance: L2, no budget.

    L-inf (MIRST-DM 2.1): PGD with sign steps on the clipped margin
    ``min(max_{j != y} z_j - z_y, kappa)`` within ``||x' - x||_inf <= eps``.

    Input (N, 1, D, H, W) float32, normalised units. ``extras["const"]`` (L2): the
    final upper bound on c per sample (inf where no success).

    Example
    -------
    >>> run_attack("cw", model, x, y, steps=200, binary_search_steps=5)  # doctest: +SKIP
    """

    norms = ("l2", "linf")
    minimal = True
    quick_params = {"steps": 10, "binary_search_steps": 2, "initial_const": 1.0, "lr": 0.05}
    _grad0: torch.Tensor | None = None
    _logits_after: torch.Tensor | None = None

    @classmethod
    def is_minimal(cls, params):  # type: ignore[override]
        return cls.norm_of(params) != "linf"  # CW-L-inf takes its budget as eps

    def _pgd_from_x(self) -> bool:
        """CW-L-inf starting at ``x``: the clean forward pass is also the first step's."""
        p: CWParams = self.params  # type: ignore[assignment]
        return p.norm == "linf" and p.steps > 0

    def _clean_logits(self, model, x, y):  # type: ignore[override]
        p: CWParams = self.params  # type: ignore[assignment]
        self._grad0 = None
        self._logits_after = None
        if not self._pgd_from_x():
            return super()._clean_logits(model, x, y)
        return first_step(self, model, x, y, _clipped_margin(y, p.targeted, p.confidence))

    def _adv_logits(self, model, x_adv):  # type: ignore[override]
        # CW-L2 keeps the logits of the iterate it returns: no further forward pass
        logits, self._logits_after = self._logits_after, None
        return logits if logits is not None else super()._adv_logits(model, x_adv)

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: CWParams = self.params  # type: ignore[assignment]
        if p.norm == "linf":
            return _cw_linf(self, logits0, model, x, y, box, p)
        return _cw_l2(self, model, x, y, box, p, logits0)


@dataclass
class CWLinfParams(AttackParams):
    """Parameters of :class:`CWLinf` (MIRST-DM section 4 settings as defaults).

    Attributes
    ----------
    eps
        L-inf budget (5/255 = 0.0196).
    step_size
        Sign step (0.001).
    steps
        Iterations (10).
    confidence
        kappa of the clipped margin loss (0).
    random_start
        Start from a uniform point of the eps-box (False, as in MIRST-DM Eq. (3)).
    targeted
        Make the prediction equal the target labels.
    seed
        Seed of the random start.
    """

    eps: float = number(5 / 255)
    step_size: float = number(0.001)
    steps: int = number(10, integer=True)
    confidence: float = number(0.0)
    random_start: bool = False
    targeted: bool = False
    seed: int | None = None


@register_attack("cw_linf", CWLinfParams)
class CWLinf(CW):
    """CW-L-inf of MIRST-DM section 2.1: PGD (sign steps, eps-box) on the CW margin loss.

    Ascends ``min(max_{j != y} z_j - z_y, kappa)`` (targeted: ``min(z_t - max_{j != t} z_j,
    kappa)``), so the loss saturates once the margin reaches kappa.
    Distance: L-inf, ``||x_adv - x||_inf <= eps``. Same as ``run_attack("cw", ...,
    norm="linf")`` with MIRST-DM's defaults.

    Example
    -------
    >>> run_attack("cw_linf", model, x, y, eps=5 / 255, steps=10)  # doctest: +SKIP
    """

    default_norm = "linf"
    norms = ("linf",)
    minimal = False
    quick_params = {"eps": 0.1, "step_size": 0.02, "steps": 5}

    def _pgd_from_x(self) -> bool:
        p: CWLinfParams = self.params  # type: ignore[assignment]
        return not p.random_start and p.steps > 0

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        return _cw_linf(self, logits0, model, x, y, box, self.params)


def _clipped_margin(y: torch.Tensor, targeted: bool, kappa: float):
    """The CW-L-inf objective ``min(margin, kappa)`` per sample, as a function of logits."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        return ops.margin(z, y, targeted).clamp(max=kappa)

    return fn


def _cw_linf(attack, logits0, model, x, y, box, p: CWParams | CWLinfParams):
    """PGD with sign steps on the clipped CW margin (MIRST-DM 2.1), budget ``p.eps``.

    Without a random start the clean forward pass is also the first step's
    (:func:`~napari_cryoguard.attacks.gradient.first_step`): ``steps + 1`` forward
    passes in all, ``steps`` backward passes.
    """
    eps, steps, kappa, targeted = p.eps, p.steps, p.confidence, p.targeted
    rand, seed = getattr(p, "random_start", False), getattr(p, "seed", None)
    # the clipped loss has a zero gradient where the margin already reaches kappa:
    # only the other samples are checked for a vanishing input gradient
    unsaturated = torch.nonzero(ops.margin(logits0, y, targeted) < kappa).flatten()

    def check(grad: torch.Tensor) -> None:
        attack._note_gradient(grad[unsaturated], unsaturated)

    start = ops.random_start(x, "linf", eps, ops.make_generator(seed, x.device)) if rand else None
    grad0, attack._grad0 = getattr(attack, "_grad0", None), None
    x_adv = pgd_perturb(
        model,
        x,
        y,
        norm="linf",
        eps=eps,
        step_size=p.step_size,
        steps=steps,
        targeted=targeted,
        start=start,
        box=box,
        on_first_grad=check,
        objective_fn=_clipped_margin(y, targeted, kappa),
        first_grad=grad0 if start is None else None,
    )
    return x_adv, steps, {}


def _adam(step: int, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: float) -> torch.Tensor:
    """One Adam update (Kingma & Ba, default betas) of a perturbation variable, in place."""
    b1, b2 = 0.9, 0.999
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    mhat = m / (1 - b1**step)
    vhat = v / (1 - b2**step)
    return lr * mhat / (vhat.sqrt() + 1e-8)


def _cw_l2(attack, model, x, y, box, p: CWParams, logits0: torch.Tensor):
    """Carlini-Wagner L2 with Adam and the binary search on c (see :class:`CW`).

    Cost: one forward + backward pass per Adam step, plus the clean forward pass; the
    logits of the returned iterate are kept from the step that found it (the clean
    ones where nothing was found), so no forward pass follows. The zero-gradient check
    reads the first step's gradient where the hinge is active (there the distance
    term's gradient is exactly 0 and the loss gradient is ``-c`` times the margin's);
    only when some sample already satisfies the margin does it take one more backward
    pass of the margin itself.
    """
    n = x.shape[0]
    dev = x.device
    kappa = float(p.confidence)
    if box is not None:
        lo, hi = box
        mid, half = (lo + hi) / 2, ((hi - lo) / 2).clamp_min(1e-12)
        w0 = torch.atanh(((x - mid) / half).clamp(-1, 1) * 0.999999)

        def to_x(w: torch.Tensor) -> torch.Tensor:
            return mid + half * torch.tanh(w)

        x_ref = to_x(w0).detach()
    else:
        w0 = x

        def to_x(w: torch.Tensor) -> torch.Tensor:
            return w

        x_ref = x

    const = torch.full((n,), float(p.initial_const), device=dev)
    lower = torch.zeros(n, device=dev)
    upper = torch.full((n,), math.inf, device=dev)
    best_x = x.clone()
    best_logits = logits0.detach().float().clone()
    best_norm = torch.full((n,), math.inf, device=dev)
    total = 0
    first = True
    check_every = max(1, math.ceil(p.steps / 10))
    for search in range(p.binary_search_steps):
        if search == p.binary_search_steps - 1 and p.binary_search_steps >= 10:
            const = torch.minimum(upper, torch.full_like(upper, 1e10))
        w = w0.clone()
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        prev_loss = math.inf
        for step in range(p.steps):
            wg = w.detach().requires_grad_(True)
            xa = to_x(wg)
            logits = model(xa)
            mg = ops.margin(logits, y, p.targeted)  # > 0: adversarial
            hinge = (kappa - mg).clamp_min(0)
            dist = (xa - x_ref).flatten(1).square().sum(1)
            loss = (dist + const * hinge).sum()
            check_g = False
            if first:
                first = False
                if bool((hinge > 0).all()):
                    check_g = True  # g = -const * grad(margin) at w0 (docstring)
                else:  # the hinge is zero somewhere: check the classifier's own gradient
                    (gm,) = torch.autograd.grad(mg.sum(), wg, retain_graph=True)
                    attack._note_gradient(gm)
            (g,) = torch.autograd.grad(loss, wg)
            if check_g:
                attack._note_gradient(g)
            total += 1
            with torch.no_grad():
                ok = (mg >= kappa) if kappa > 0 else (mg > 0)
                ok = ok & _argmax_ok(logits, y, p.targeted)
                xa_d = xa.detach()
                nrm = ops.flat_norm(xa_d - x, "l2")
                better = ok & (nrm < best_norm)
                best_x = torch.where(ops.per_sample(better), xa_d, best_x)
                best_logits = torch.where(better[:, None], logits.detach().float(), best_logits)
                best_norm = torch.where(better, nrm, best_norm)
                found |= ok
                w = w - _adam(step + 1, g, m, v, p.lr)
            if p.abort_early and step % check_every == 0:
                lv = float(loss.detach())
                if not lv <= 0.9999 * prev_loss:
                    break
                prev_loss = lv
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    attack._logits_after = best_logits
    return best_x, total, {"const": upper}


def _argmax_ok(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y
