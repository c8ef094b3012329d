"""``standard``: plain cross-entropy training, the baseline every defense is compared to.

The CB3D paper (Che et al. 2018 (CB3D) section 2.3)
minimises the categorical cross-entropy; the RAT paper
(Wu et al., RAT (IEEE BIBM 2019) section IV.B) uses the same
loss as the first term of its objective (Eq. 1). Unlabelled samples (label -1) are
ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_cryoguard.checks import check_prob
from napari_cryoguard.defenses.base import Batch, Defense, masked_cross_entropy, register_defense

__all__ = ["Standard", "StandardParams", "standard_loss"]


@dataclass
class StandardParams:
    """Parameters of the ``standard`` defense.

    Attributes
    ----------
    label_smoothing
        Cross-entropy label smoothing in [0, 1); the papers use none (0.0).
    """

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_prob("label_smoothing", self.label_smoothing)


def standard_loss(
    model: nn.Module, batch: Batch, params: StandardParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy of ``model(batch.x)`` over the labelled samples.

    Returns
    -------
    (loss, logs)
        Scalar loss; logs ``{"ce": loss, "acc": batch accuracy on labelled samples}``.
    """
    logits = model(batch.x)
    mask = batch.y >= 0
    if params.label_smoothing > 0 and bool(mask.any()):
        loss = nn.functional.cross_entropy(
            logits[mask].float(), batch.y[mask], label_smoothing=float(params.label_smoothing)
        )
        count = int(mask.sum().item())
    else:
        loss, count = masked_cross_entropy(logits, batch.y)
    acc = float((logits[mask].argmax(1) == batch.y[mask]).float().mean().item()) if count else 0.0
    return loss, {"ce": float(loss.detach().item()), "acc": acc}


@register_defense("standard", StandardParams)
class Standard(Defense):
    """Standard (non-robust) training with cross-entropy; see :func:`standard_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return standard_loss(model, batch, self.params)
