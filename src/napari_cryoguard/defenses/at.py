"""``at``: PGD adversarial training, and the inner-maximisation helpers the other defenses share.

Source: Wu et al., RAT (IEEE BIBM 2019) section III.C, Eq. (2)-(4)
(Madry et al.'s min-max objective; adversarial examples by the sign-gradient iteration of
Eq. (3), starting "from a random perturbation around the examples in a l-inf ball") and
section IV.B (eps = 0.01, step mu = 0.001, 10 steps, the perturbation range
``[a, b] = [-0.01, 0.01]``). The model is trained on the adversarial examples only:

    min_theta  E_(x, y) [ max_{||x_adv - x||_inf <= eps} CE(f(x_adv; theta), y) ]

Conventions shared by every adversarial defense of this package
---------------------------------------------------------------
* **Mode.** The inner maximisation runs on the plain model (:func:`unwrap`) switched to
  *eval* mode (dropout off, batch norm on its running statistics, drop-max as at
  inference), as the TRADES reference code does, so the adversarial example is a
  deterministic function of the current weights and of the random start. Every
  submodule's mode is restored afterwards; the loss' forward pass then runs in the
  mode the trainer set (train mode) through the model handle (DDP). Attacks take the
  gradient w.r.t. the input only (``torch.autograd.grad``), so no weight gradient is
  left behind.
* **Randomness.** Random starts draw from torch's global generator on the batch's
  device, which the trainer reseeds every epoch from ``(seed, epoch, rank)``: a run is
  reproducible and resumable.
* **Unlabelled samples** (``y = -1``) get no label-driven perturbation (their objective
  is masked to zero, so they stay at their random start) and no cross-entropy term;
  label-free terms (TRADES' and RAT's KL, SimCLR) use them.
* **Units.** ``eps`` and ``step_size`` are in the dataset's normalised units
  (zero-mean, unit-variance subtomograms) by default, or, with ``eps_unit="range"``, a
  fraction of each sample's intensity range max - min (the papers' unit for images in
  [0, 1]; :mod:`napari_cryoguard.attacks.units`): the inner maximisation then runs in
  per-sample rescaled coordinates (:func:`pgd_trajectory`). ``norm`` is ``"linf"`` (the
  papers') or ``"l2"``. No value clamp (cryo-ET data has no natural range, DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.attacks.gradient import pgd_perturb
from napari_cryoguard.attacks.ops import random_start as _random_start
from napari_cryoguard.attacks.units import EpsUnit, check_eps_unit, range_coordinates
from napari_cryoguard.defenses.base import (
    Batch,
    Defense,
    masked_cross_entropy,
    register_defense,
    unwrap,
)
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Norm
from napari_cryoguard.registry import check_fields, number

__all__ = [
    "AT",
    "ATParams",
    "adversarial_ce_objective",
    "adversarial_examples",
    "at_loss",
    "attack_mode",
    "InnerMaxParams",
    "ce_and_accuracy",
    "kl_ascent",
    "kl_per_sample",
    "masked_accuracy",
    "pgd_examples",
    "pgd_trajectory",
    "random_start",
]

Objective = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- helpers


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Yield the plain model in eval mode; restore every submodule's mode afterwards."""
    plain = unwrap(model)
    modes = [(m, m.training) for m in plain.modules()]
    plain.eval()
    try:
        yield plain
    finally:
        for m, mode in modes:
            m.training = mode


@dataclass
class InnerMaxParams:
    """The ball and the PGD iteration of an adversarial defense's inner maximisation.

    The fields every adversarial defense here shares, declared once with their ranges
    (checked by :func:`napari_cryoguard.registry.check_fields`) and help: ``eps``,
    ``step_size``, ``steps`` (the RAT paper's budget, section IV.B, unless a defense
    declares its own default), ``norm`` and ``eps_unit``.
    """

    eps: float = number(0.01, help="radius of the perturbation ball (RAT IV.B: 0.01)")
    step_size: float = number(0.001, help="step of the sign-gradient iteration (RAT IV.B: 0.001)")
    steps: int = number(10, integer=True, help="iterations of the inner maximisation (10)")
    norm: Norm = field(default="linf", metadata={"help": "the ball's norm: linf (the papers') or l2"})
    eps_unit: EpsUnit = field(default="normalized", metadata={
        "help": "unit of eps and step_size: normalized (the data's units) or range (a "
                "fraction of each sample's intensity range)"})

    def __post_init__(self) -> None:
        check_fields(self)


def ce_and_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, prefix: str = ""
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of ``model(x)`` over the labelled samples, and its logs
    ``<prefix>ce`` and ``<prefix>acc`` (the defenses' plain-CE branch)."""
    logits = model(x)
    loss, _ = masked_cross_entropy(logits, y)
    return loss, {
        f"{prefix}ce": float(loss.detach().item()),
        f"{prefix}acc": masked_accuracy(logits.detach(), y),
    }


def adversarial_ce_objective(y: torch.Tensor) -> Objective:
    """Per-sample cross-entropy to ascend, zero for unlabelled samples (``y < 0``)."""
    mask = (y >= 0).float()
    safe = y.clamp(min=0)

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), safe, reduction="none") * mask

    return fn


def kl_per_sample(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q)`` per sample (N,) from log-probabilities (N, C): ``sum p (log p - log q)``."""
    return (p_log.exp() * (p_log - q_log)).sum(dim=1)


def masked_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``logits`` on the labelled samples (0.0 when there are none)."""
    mask = y >= 0
    if not bool(mask.any()):
        return 0.0
    return float((logits[mask].argmax(1) == y[mask]).float().mean().item())


def random_start(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """A uniform random point of the ``norm`` ball of radius ``eps`` around 0, drawn
    from torch's global generator (which the trainer reseeds every epoch)."""
    return _random_start(x, norm, float(eps), None)


def kl_ascent(
    model: nn.Module,
    x: torch.Tensor,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    start: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eps_unit: str = "normalized",
) -> torch.Tensor:
    """Label-free ascent of ``KL(p(x) || p(x'))`` over ``x'`` in the ``eps`` ball around ``x``.

    The inner maximisation shared by TRADES (``x' = x_adv``) and RAT's regulariser
    (``x'_adv`` around ``x_adv``, RAT Eq. (5)-(6)); run in eval mode (:func:`attack_mode`).
    ``start(x)`` gives the initial perturbation (``None``: start at ``x``); it is drawn
    after the clean forward pass, so the random stream is the same as before this helper.
    """
    with attack_mode(model) as plain:
        with torch.no_grad():
            target = F.log_softmax(plain(x).float(), dim=1)

        def objective(logits: torch.Tensor) -> torch.Tensor:
            return kl_per_sample(target, F.log_softmax(logits.float(), dim=1))

        (out,) = pgd_trajectory(
            plain,
            x,
            objective,
            norm=norm,
            eps=eps,
            step_size=step_size,
            checkpoints=(steps,),
            start=None if start is None else start(x),
            eps_unit=eps_unit,
        )
    return out


def pgd_trajectory(
    model: nn.Module,
    x: torch.Tensor,
    objective_fn: Objective,
    *,
    norm: str,
    eps: float,
    step_size: float,
    checkpoints: tuple[int, ...],
    start: torch.Tensor | None = None,
    eps_unit: str = "normalized",
) -> list[torch.Tensor]:
    """Iterates of one PGD run at the given step counts (MIRST-DM Eq. (3)).

    ``x_(t+1) = Proj_{B(x, eps)}(x_t + step * sign(grad J(x_t)))`` (L-inf; the L2
    version normalises the gradient), ``x_0 = x + start``. The run is cut into
    segments by :func:`napari_cryoguard.attacks.gradient.pgd_perturb`, which continues
    exactly where the previous segment stopped. ``model`` must already be in the
    mode the caller wants (see :func:`attack_mode`).

    Parameters
    ----------
    checkpoints
        Non-decreasing step counts (>= 0); the iterate after each is returned.
    eps_unit
        ``"normalized"`` (default) or ``"range"``: ``eps``, ``step_size`` and ``start``
        are then fractions of each sample's intensity range, and the run happens in
        per-sample rescaled coordinates (:func:`napari_cryoguard.attacks.units.range_coordinates`;
        ``model`` is then called on the whole batch only, as here).

    Returns
    -------
    list of Tensor
        One detached (N, 1, D, H, W) iterate per checkpoint, in data units.
    """
    if check_eps_unit(eps_unit) == "range":
        rc = range_coordinates(model, x)
        outs = pgd_trajectory(
            rc.model,
            rc.u,
            objective_fn,
            norm=norm,
            eps=eps,
            step_size=step_size,
            checkpoints=checkpoints,
            start=start,
        )
        return [rc.to_data(o) for o in outs]

    out: list[torch.Tensor] = []
    done = 0
    cur_start = start
    x_cur: torch.Tensor | None = None
    dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # objective_fn decides
    for c in checkpoints:
        c = int(c)
        if c < done:
            raise CryoGuardError(f"checkpoints must be non-decreasing, got {checkpoints!r}")
        if x_cur is None or c > done:
            x_cur = pgd_perturb(
                model,
                x,
                dummy,
                norm=norm,
                eps=float(eps),
                step_size=float(step_size),
                steps=c - done,
                start=cur_start,
                objective_fn=objective_fn,
            )
            cur_start = x_cur - x
            done = c
        out.append(x_cur)
    return out


def pgd_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool,
    eps_unit: str = "normalized",
) -> torch.Tensor:
    """Adversarial examples of RAT Eq. (3)-(4): PGD on the cross-entropy, eval mode.

    Returns a detached batch ``x_adv`` with ``||x_adv - x||_norm <= eps``; unlabelled
    samples stay at their (random) start.
    """
    with attack_mode(model) as plain:
        start = _random_start(x, norm, float(eps), None) if random_start and eps > 0 else None
        (x_adv,) = pgd_trajectory(
            plain,
            x,
            adversarial_ce_objective(y),
            norm=norm,
            eps=eps,
            step_size=step_size,
            checkpoints=(steps,),
            start=start,
            eps_unit=eps_unit,
        )
    return x_adv


# --------------------------------------------------------------------------- at


@dataclass
class ATParams(InnerMaxParams):
    """Parameters of the ``at`` defense (RAT paper Eq. (2)-(4), section IV.B): the ball
    and iteration of :class:`InnerMaxParams` (eps 0.01 = the clip range ``[a, b] =
    [-0.01, 0.01]`` of Eq. (3), step ``mu_1`` 0.001, 10 steps "consistent with the
    implementation in [30]", linf) and

    Attributes
    ----------
    random_start
        Start from a uniform random point of the eps-ball (section III.C: "starts from a
        random perturbation ... as a seed"): True.
    clean_weight
        Weight ``w`` of the clean cross-entropy: the loss is ``(1 - w) CE(x_adv) + w
        CE(x)``. 0 (default): adversarial examples only (RAT Eq. (2), Madry et al.);
        0.5: the IMA paper's vanilla adversarial training "adv eps", Eq. (2)
        ``(CE(x) + CE(x_adv)) / 2``.
    """

    random_start: bool = True
    clean_weight: float = number(0.0, maximum=1.0)


def adversarial_examples(
    model: nn.Module, batch: Batch, params: InnerMaxParams
) -> torch.Tensor:
    """:func:`pgd_examples` of ``batch`` with the ball and iteration of ``params`` (and its
    ``random_start``, True when it has none)."""
    return pgd_examples(
        model,
        batch.x,
        batch.y,
        norm=params.norm,
        eps=params.eps,
        step_size=params.step_size,
        steps=params.steps,
        random_start=bool(getattr(params, "random_start", True)),
        eps_unit=params.eps_unit,
    )


def at_loss(
    model: nn.Module, batch: Batch, params: ATParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """PGD adversarial training loss: ``mean_i CE(f(x_adv_i), y_i)`` (RAT Eq. (2)).

    ``x_adv`` comes from :func:`pgd_examples` (eval mode, random start, Eq. (3)); the
    cross-entropy is then computed through ``model`` in its current (train) mode, over
    the labelled samples.

    Returns
    -------
    (loss, logs)
        Logs: ``adv_ce`` (the loss) and ``adv_acc`` (batch accuracy on ``x_adv``).
    """
    x_adv = adversarial_examples(model, batch, params)
    w = float(params.clean_weight)
    if w == 0.0:
        return ce_and_accuracy(model, x_adv, batch.y, prefix="adv_")
    n = batch.x.shape[0]
    both = model(torch.cat([batch.x, x_adv]))
    ce, _ = masked_cross_entropy(both[:n], batch.y)
    adv_ce, _ = masked_cross_entropy(both[n:], batch.y)
    loss = (1.0 - w) * adv_ce + w * ce
    return loss, {
        "ce": float(ce.detach().item()),
        "adv_ce": float(adv_ce.detach().item()),
        "acc": masked_accuracy(both[:n].detach(), batch.y),
        "adv_acc": masked_accuracy(both[n:].detach(), batch.y),
    }


@register_defense("at", ATParams)
class AT(Defense):
    """PGD adversarial training (RAT paper Eq. (2)-(4)); see :func:`at_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return at_loss(model, batch, self.params)
