"""``trades``: TRADES, a natural loss plus a KL robustness regulariser.

Sources: Wu et al., RAT (IEEE BIBM 2019) sections II and III.C
(TRADES [31]: "the natural loss encouraging the improvement of accuracy, and the robust
loss encouraging the amelioration of robustness"; compared with AT and RAT in IV.C) and
Sun et al., MIRST-DM (MICCAI 2022) section 2.1 (a soft
regularisation term "to minimize the difference of outputs between the clean image and
the crafted image") and section 4.1 (the weight of the adversarial term in TRADES is 1).
The objective, in the form of the TRADES reference code (STYLE.md):

    L = mean_i CE(f(x_i), y_i) + beta * mean_i KL( p(x_i) || p(x_adv_i) )

with ``x_adv`` from a label-free KL ascent in the eps-ball, started at
``x + 0.001 * N(0, 1)`` (the reference code's start) and iterated with sign steps like
RAT Eq. (3) against the fixed target ``p(x)`` (computed in eval mode, see
:mod:`napari_cryoguard.defenses.at` for the mode convention). The budget defaults to the
RAT paper's (IV.B: eps 0.01, step 0.001, 10 steps) so the three defenses it compares use
the same ball. Both distributions keep their gradient in the outer loss, as in the
reference code. The KL term uses every sample, labelled or not.

``beta = 0`` skips the inner maximisation altogether: the loss, its gradient and the
random-number stream are then exactly those of ``standard``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.defenses.at import (
    InnerMaxParams,
    ce_and_accuracy,
    kl_ascent,
    kl_per_sample,
    masked_accuracy,
)
from napari_cryoguard.defenses.base import Batch, Defense, masked_cross_entropy, register_defense
from napari_cryoguard.registry import number

__all__ = ["Trades", "TradesParams", "trades_examples", "trades_loss"]


@dataclass
class TradesParams(InnerMaxParams):
    """Parameters of the ``trades`` defense: the L-inf ball and sign-step iteration of
    the KL ascent as :class:`~napari_cryoguard.defenses.at.InnerMaxParams` (0.01, 0.001,
    10: RAT IV.B) and

    Attributes
    ----------
    beta
        Weight of the KL regulariser: 1.0 (MIRST-DM section 4.1; the TRADES paper
        itself uses 6 on CIFAR-10). 0 gives ``standard`` exactly.
    init_std
        Standard deviation of the Gaussian start around ``x``: 0.001 (reference code).
    """

    beta: float = number(1.0)
    init_std: float = number(0.001)


def trades_examples(model: nn.Module, x: torch.Tensor, params: TradesParams) -> torch.Tensor:
    """``argmax_{x' in B(x, eps)} KL(p(x) || p(x'))`` by sign-gradient ascent (eval mode)."""
    start = (lambda x0: params.init_std * torch.randn_like(x0)) if params.init_std > 0 else None
    return kl_ascent(model, x, norm=params.norm, eps=params.eps, step_size=params.step_size,
                     steps=params.steps, start=start, eps_unit=params.eps_unit)


def trades_loss(
    model: nn.Module, batch: Batch, params: TradesParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRADES loss ``CE(f(x), y) + beta * KL(p(x) || p(x_adv))``; see the module docstring.

    Returns
    -------
    (loss, logs)
        Logs: ``ce`` (clean cross-entropy over labelled samples), ``kl`` (batch mean),
        ``acc`` (clean batch accuracy) and, when ``beta > 0``, ``adv_acc``.
    """
    if float(params.beta) == 0.0:
        loss, logs = ce_and_accuracy(model, batch.x, batch.y)
        return loss, {**logs, "kl": 0.0}
    n = batch.x.shape[0]
    x_adv = trades_examples(model, batch.x, params)
    logits = model(torch.cat([batch.x, x_adv]))
    clean, adv = logits[:n].float(), logits[n:].float()
    ce, _ = masked_cross_entropy(clean, batch.y)
    kl = kl_per_sample(F.log_softmax(clean, dim=1), F.log_softmax(adv, dim=1)).mean()
    loss = ce + float(params.beta) * kl
    return loss, {
        "ce": float(ce.detach().item()),
        "kl": float(kl.detach().item()),
        "acc": masked_accuracy(clean.detach(), batch.y),
        "adv_acc": masked_accuracy(adv.detach(), batch.y),
    }


@register_defense("trades", TradesParams)
class Trades(Defense):
    """TRADES (natural CE + beta * KL to the adversarial output); see :func:`trades_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return trades_loss(model, batch, self.params)
