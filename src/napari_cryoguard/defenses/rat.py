"""``rat``: Regularized Adversarial Training (RAT), the defense proposed for CB3D.

Source: Wu et al., RAT (IEEE BIBM 2019) section III.C, Eq. (1)
and (3)-(6), Algorithm 1, and section IV.B for the settings. Eq. (1):

    min_theta E [ max_{x_adv in B(x, eps1)} [ CE(f(x_adv), y)
                  + gamma * max_{x'_adv in B(x_adv, eps2)} k(f_l(x'_adv), f_l(x_adv)) ] ]

1. ``x_adv`` maximises the cross-entropy (Eq. (3)-(4)): exactly the adversarial example
   of the ``at`` defense (:func:`napari_cryoguard.defenses.at.pgd_examples`: random
   start in ``[a, b] = [-0.01, 0.01]``, sign steps ``mu_1 = 0.001``, 10 steps).
2. ``x'_adv`` maximises the label-free discrepancy ``k`` around ``x_adv`` (Eq. (5)-(6)):
   random start in ``[a', b'] = [-0.01, 0.01]`` around ``x_adv``, sign steps
   ``mu_2 = 0.001``, 10 steps (IV.B; Algorithm 1 writes a single ascent step, IV.B uses
   10 "consistent with [30]"; ``steps_prime=1`` gives Algorithm 1's literal form), with
   the softmax output ``f_l(x_adv)`` held fixed as the target.
3. The weights minimise ``mean_i [CE(f(x_adv_i), y_i) + gamma * k_i]`` (Algorithm 1).

``k`` is the Kullback-Leibler divergence (section III.C) ``k = KL(f_l(x_adv) ||
f_l(x'_adv))``: the distribution at ``x_adv`` plays the reference, as the clean output
does in TRADES; both sides keep their gradient in the outer loss. ``gamma = 1``
(IV.B). The inner maximisations run in eval mode (see :mod:`~napari_cryoguard.defenses.at`).

``gamma = 0`` skips step 2: the loss, its gradient and the random-number stream are
then exactly those of ``at`` with the same ``eps``, ``step_size``, ``steps`` (the paper:
RAT "tends to original adversarial training when gamma -> 0").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.defenses.at import (
    InnerMaxParams,
    adversarial_examples,
    ce_and_accuracy,
    kl_ascent,
    kl_per_sample,
    masked_accuracy,
    random_start,
)
from napari_cryoguard.defenses.base import Batch, Defense, masked_cross_entropy, register_defense
from napari_cryoguard.registry import number

__all__ = ["RAT", "RATParams", "rat_loss", "rat_regulariser_examples"]


@dataclass
class RATParams(InnerMaxParams):
    """Parameters of the ``rat`` defense (RAT paper section IV.B): the ball and iteration
    of ``x_adv`` (Eq. (3)) as :class:`~napari_cryoguard.defenses.at.InnerMaxParams`
    (clip range ``[a, b] = [-eps, eps]`` = [-0.01, 0.01], ``mu_1`` = 0.001, 10 steps;
    ``norm`` and ``eps_unit`` hold for both balls, ``x'_adv``'s ball using the range of
    ``x_adv``) and

    Attributes
    ----------
    gamma
        Regularisation weight of Eq. (1): 1.0. 0 gives ``at`` exactly.
    random_start
        ``x_adv`` starts from a uniform random point of ``[a, b]`` (III.C): True.
    eps_prime
        Radius of ``x'_adv``'s ball around ``x_adv`` (Eq. (6)): ``[a', b'] = [-0.01, 0.01]``;
        always a random start in it.
    step_size_prime
        ``mu_2`` of Eq. (6): 0.001.
    steps_prime
        Iterations of Eq. (6): 10.
    """

    gamma: float = number(1.0)
    random_start: bool = True
    eps_prime: float = number(0.01)
    step_size_prime: float = number(0.001)
    steps_prime: int = number(10, integer=True)


def rat_regulariser_examples(
    model: nn.Module, x_adv: torch.Tensor, params: RATParams
) -> torch.Tensor:
    """``x'_adv``: label-free KL ascent around ``x_adv`` (RAT Eq. (5)-(6)), eval mode."""
    return kl_ascent(
        model,
        x_adv,
        norm=params.norm,
        eps=params.eps_prime,
        step_size=params.step_size_prime,
        steps=params.steps_prime,
        start=lambda x: random_start(x, params.norm, params.eps_prime),
        eps_unit=params.eps_unit,
    )


def rat_loss(
    model: nn.Module, batch: Batch, params: RATParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """RAT loss ``mean CE(f(x_adv), y) + gamma * mean KL(f_l(x_adv) || f_l(x'_adv))``.

    Returns
    -------
    (loss, logs)
        Logs: ``adv_ce``, ``kl`` (0 when ``gamma = 0``), ``adv_acc``.
    """
    x_adv = adversarial_examples(model, batch, params)
    if float(params.gamma) == 0.0:
        loss, logs = ce_and_accuracy(model, x_adv, batch.y, prefix="adv_")
        return loss, {**logs, "kl": 0.0}
    n = batch.x.shape[0]
    x2 = rat_regulariser_examples(model, x_adv, params)
    logits = model(torch.cat([x_adv, x2]))
    adv, adv2 = logits[:n].float(), logits[n:].float()
    ce, _ = masked_cross_entropy(adv, batch.y)
    kl = kl_per_sample(F.log_softmax(adv, dim=1), F.log_softmax(adv2, dim=1)).mean()
    loss = ce + float(params.gamma) * kl
    return loss, {
        "adv_ce": float(ce.detach().item()),
        "kl": float(kl.detach().item()),
        "adv_acc": masked_accuracy(adv.detach(), batch.y),
    }


@register_defense("rat", RATParams)
class RAT(Defense):
    """Regularized Adversarial Training (RAT paper Eq. (1), Algorithm 1); see :func:`rat_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return rat_loss(model, batch, self.params)
