"""``rst`` and ``mirst``: (multi-instance) robust self-training, MIRST-DM.

Source: Sun et al., MIRST-DM (MICCAI 2022) section 3.1, Eq. (1)-(3),
and section 4.1 for the settings.

* **RST** (supervised form, Eq. (1); the paper uses "only labeled images and a loss
  function with the standard cross-entropy loss and the adversarial loss")::

      L_RST = mean_i [ CE(f(x_i), y_i) + alpha * CE(f(x_bar_i), y_i) ]

  with ``x_bar`` the most aggressive adversarial instance: the last iterate of a
  T-step PGD (Eq. (3)).
* **MIRST** (Eq. (2)): the same clean term, and the adversarial term spread over ``m``
  instances of *one* PGD trajectory::

      L_MIRST = mean_i [ CE(f(x_i), y_i) + alpha * sum_j beta_j * CE(f(x_bar_j,i), y_i) ]

  with ``beta = (0.34, 0.28, 0.22, 0.16)`` (section 4.1, summing to 1, the heaviest
  weight on the least perturbed instance) and ``alpha = 1`` ("MIRST-DM uses weight 1 for
  the adversarial loss for a fair comparison with RST").

How they differ, exactly: RST is MIRST with one instance, ``instance_steps = (T,)``
and ``weights = (1.0,)``; the code path is the same, so ``mirst`` with those two
settings returns bit-for-bit RST's loss. Both differ from ``at`` by the clean
cross-entropy term: with the same start, ``rst = standard + alpha * at``.

The trajectory (Eq. (3)): ``x^adv_(t+1) = Proj_[x-eps, x+eps](x^adv_t + gamma *
sign(grad CE(f(x^adv_t), y)))``, ``x^adv_1 = x`` (no random start), ``T = 10``. The
paper takes ``x_bar_j = x^adv_(3j+1)``, i.e. the iterate after ``3j`` steps; its fourth
instance (12 steps) lies beyond ``T = 10``, so by default the instances are taken after
``min(3j, T)`` steps: (3, 6, 9, 10) for T = 10 (our reading of the paper's indexing).
The budget is the paper's, eps = 5/255 = 0.0196 (section 4.1, all attacks); the paper
does not print the training step ``gamma``: its attacks use 0.001, with which 10 steps
could not leave a 0.01-ball, so we use 0.002 (our choice) to let the last instance reach
the eps boundary. The drop-max layer ("DM") is a model parameter (``drop_max=True``);
SimCLR pre-training is the ``simclr`` defense. Instances are generated in eval mode (see
:mod:`napari_cryoguard.defenses.at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_cryoguard.checks import check_number
from napari_cryoguard.defenses.at import (
    InnerMaxParams,
    adversarial_ce_objective,
    attack_mode,
    masked_accuracy,
    pgd_trajectory,
    random_start,
)
from napari_cryoguard.defenses.base import Batch, Defense, masked_cross_entropy, register_defense
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import number

__all__ = [
    "MIRST",
    "RST",
    "MIRSTParams",
    "RSTParams",
    "mirst_loss",
    "multi_instance_loss",
    "rst_loss",
]

_EPS_5_255 = 5.0 / 255.0


@dataclass
class RSTParams(InnerMaxParams):
    """Parameters of the ``rst`` defense (MIRST-DM Eq. (1), (3); section 4.1): the ball
    and PGD iteration of :class:`~napari_cryoguard.defenses.at.InnerMaxParams` with the
    paper's L-inf budget 5/255 = 0.0196 (section 4.1), the step ``gamma`` of Eq. (3)
    0.002 (our choice, see the module docstring) and ``T`` = 10 steps (section 3.1), and

    Attributes
    ----------
    alpha
        Weight of the adversarial loss: 1.0 (section 4.1).
    random_start
        Eq. (3) starts at the clean image: False.
    """

    eps: float = number(_EPS_5_255, help="L-inf budget (MIRST-DM 4.1: 5/255)")
    step_size: float = number(0.002, help="PGD step gamma of Eq. (3): 0.002")
    alpha: float = number(1.0)
    random_start: bool = False

    def instances(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(weights, step counts) of the adversarial instances: RST's one, the last iterate."""
        return (1.0,), (self.steps,)


@dataclass
class MIRSTParams(RSTParams):
    """Parameters of the ``mirst`` defense (MIRST-DM Eq. (2)-(3); section 4.1).

    Attributes
    ----------
    weights
        ``beta_j`` of the adversarial instances: (0.34, 0.28, 0.22, 0.16).
    instance_steps
        PGD steps after which each instance is taken (one per weight, non-decreasing,
        at most ``steps``); None: ``min(3j, steps)`` for ``j = 1..m`` (the paper's
        ``x^adv_(3j+1)``), i.e. (3, 6, 9, 10) for 10 steps.

    The other fields are those of :class:`RSTParams`.
    """

    weights: tuple[float, ...] = (0.34, 0.28, 0.22, 0.16)
    instance_steps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.weights = tuple(self.weights)
        if not self.weights:
            raise CryoGuardError("weights must be one or more numbers >= 0, got ()")
        for w in self.weights:
            check_number("weights", w)
        self.weights = tuple(float(w) for w in self.weights)
        if self.instance_steps is not None:
            self.instance_steps = tuple(self.instance_steps)
            for step in self.instance_steps:
                check_number("instance_steps", step, integer=True)
        self.resolved_instance_steps()  # validates

    def instances(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """(weights, step counts) of the adversarial instances."""
        return self.weights, self.resolved_instance_steps()

    def resolved_instance_steps(self) -> tuple[int, ...]:
        """The step count of each instance (see ``instance_steps``)."""
        m = len(self.weights)
        if self.instance_steps is None:
            return tuple(min(3 * j, self.steps) for j in range(1, m + 1))
        steps = tuple(self.instance_steps)
        if len(steps) != m:
            raise CryoGuardError(
                f"instance_steps needs {m} values (one per weight), got {steps!r}"
            )
        if any(s < 0 or s > self.steps for s in steps) or list(steps) != sorted(steps):
            raise CryoGuardError(
                f"instance_steps must be non-decreasing in [0, steps={self.steps}], got {steps!r}"
            )
        return steps


def multi_instance_loss(
    model: nn.Module, batch: Batch, params: RSTParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """``CE(f(x), y) + alpha * sum_j w_j CE(f(x_bar_j), y)`` (MIRST-DM Eq. (2)).

    The instances ``x_bar_j`` (weights and step counts from ``params.instances()``)
    are the iterates of one PGD run (Eq. (3), eval mode) after ``instance_steps[j]``
    steps; one forward pass (train mode) scores the clean batch and all instances.
    RST (Eq. (1)) is the case of one instance, the last iterate, of weight 1.

    Returns
    -------
    (loss, logs)
        Logs: ``ce`` (clean), ``adv_ce`` (the weighted adversarial sum), ``acc``
        (clean) and ``adv_acc`` (on the last instance).
    """
    weights, instance_steps = params.instances()
    x = batch.x
    n = x.shape[0]
    with attack_mode(model) as plain:
        start = None
        if params.random_start and params.eps > 0:
            start = random_start(x, params.norm, params.eps)
        instances = pgd_trajectory(
            plain,
            x,
            adversarial_ce_objective(batch.y),
            norm=params.norm,
            eps=params.eps,
            step_size=params.step_size,
            checkpoints=tuple(instance_steps),
            start=start,
            eps_unit=params.eps_unit,
        )
    logits = model(torch.cat([x, *instances])).float()
    ce, _ = masked_cross_entropy(logits[:n], batch.y)
    adv = logits.new_zeros(())
    for j, w in enumerate(weights):
        cj, _ = masked_cross_entropy(logits[(j + 1) * n : (j + 2) * n], batch.y)
        adv = adv + float(w) * cj
    loss = ce + float(params.alpha) * adv
    logs = {k: float(v.detach().item()) for k, v in (("ce", ce), ("adv_ce", adv))}
    logs["acc"] = masked_accuracy(logits[:n].detach(), batch.y)
    logs["adv_acc"] = masked_accuracy(logits[-n:].detach(), batch.y)
    return loss, logs


def rst_loss(
    model: nn.Module, batch: Batch, params: RSTParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """RST (MIRST-DM Eq. (1)): clean CE + ``alpha`` * CE of the last PGD iterate."""
    return multi_instance_loss(model, batch, params)


def mirst_loss(
    model: nn.Module, batch: Batch, params: MIRSTParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """MIRST (MIRST-DM Eq. (2)): clean CE + ``alpha`` * weighted CE of several PGD iterates."""
    return multi_instance_loss(model, batch, params)


@register_defense("rst", RSTParams)
class RST(Defense):
    """Robust self-training, supervised form (MIRST-DM Eq. (1)); see :func:`rst_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return rst_loss(model, batch, self.params)


@register_defense("mirst", MIRSTParams)
class MIRST(Defense):
    """Multi-instance robust self-training (MIRST-DM Eq. (2)); see :func:`mirst_loss`.

    For MIRST-DM train a model built with ``drop_max=True``
    (``--set model.drop_max=true``).
    """

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return mirst_loss(model, batch, self.params)
