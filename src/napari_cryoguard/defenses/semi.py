"""``semi``: joint reconstruction + classification training of the autoencoding classifier.

Source: Liu et al., 3D autoencoding classifier (BMVC 2019), Eq. 1-3 and
Algorithm 1. For every training sample the decoder's reconstruction is scored with the
voxel-mean squared error (Eq. 1); a *labelled* sample adds the cross-entropy of the
classifier branch (Eq. 2) in the joint loss ``alpha * MSE + beta * CE`` (Eq. 3,
Algorithm 1 line 8), an *unlabelled* one contributes only its MSE (line 10: alpha = 1,
beta = 0). The paper sets alpha = beta = 1 (section 4) and studies 5 %, 10 % and 20 %
labelled training data. The encoder's code carries an L1 sparsity penalty
(section 3.2).

With ``labelled_fraction < 1`` a seeded, class-stratified subset of the training
samples keeps its labels and the rest are treated as unlabelled (validation samples
are never touched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.defenses.base import Batch, Defense, register_defense, unwrap
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import check_fields, number

if TYPE_CHECKING:
    from napari_cryoguard.defenses.trainer import Trainer

__all__ = ["Semi", "SemiParams", "select_labelled", "semi_loss"]


@dataclass
class SemiParams:
    """Parameters of the ``semi`` defense.

    Attributes
    ----------
    alpha
        Weight of the reconstruction MSE for labelled samples (Eq. 3; 1.0 in the paper).
    beta
        Weight of the cross-entropy for labelled samples (Eq. 3; 1.0 in the paper).
    labelled_fraction
        Fraction of the training samples that keep their labels, in (0, 1]. 1.0 uses
        every label; the paper evaluates 0.05, 0.10 and 0.20.
    sparsity_weight
        Weight of the L1 penalty ``mean(|code|)`` on the encoder's code (section 3.2).
        ``None`` uses the model's own ``sparsity_weight`` (its ``sparsity_loss``).
    """

    alpha: float = number(1.0)
    beta: float = number(1.0)
    labelled_fraction: float = number(1.0, strict=True, maximum=1.0)
    sparsity_weight: float | None = number(None)

    def __post_init__(self) -> None:
        check_fields(self)


def semi_loss(
    model: nn.Module, batch: Batch, params: SemiParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """Algorithm 1 on a batch: mean over samples of the per-sample joint loss.

    ``L_i = alpha * MSE_i + beta * CE_i`` for a labelled sample (``y_i >= 0``) and
    ``L_i = MSE_i`` for an unlabelled one, with ``MSE_i`` the mean over the
    ``w^3`` voxels of ``(x_i - x_hat_i)^2`` (Eq. 1); plus the sparsity penalty on the
    code. ``model`` must provide ``forward_all(x) -> (logits, recon, code)``.

    Returns
    -------
    (loss, logs)
        Logs: ``mse`` (batch mean), ``ce`` (mean over labelled samples, 0 if none),
        ``sparsity``, ``labelled`` (fraction of the batch with labels), ``acc``.
    """
    if not hasattr(model, "forward_all"):
        raise CryoGuardError("the 'semi' defense needs a model with forward_all (autoencoder)")
    logits, recon, code = model.forward_all(batch.x)
    n = batch.x.shape[0]
    mse = (recon.float() - batch.x.float()).pow(2).reshape(n, -1).mean(dim=1)
    labelled = batch.y >= 0
    ce = F.cross_entropy(logits.float(), batch.y.clamp(min=0), reduction="none")
    ce = torch.where(labelled, ce, torch.zeros_like(ce))
    lab = labelled.to(mse.dtype)
    per_sample = lab * (params.alpha * mse + params.beta * ce) + (1.0 - lab) * mse
    loss = per_sample.mean()
    if params.sparsity_weight is None:
        sparsity = unwrap(model).sparsity_loss(code)
    else:
        sparsity = float(params.sparsity_weight) * code.abs().mean()
    loss = loss + sparsity
    count = int(labelled.sum().item())
    logs = {
        "mse": float(mse.mean().item()),
        "ce": float(ce.sum().item() / count) if count else 0.0,
        "sparsity": float(sparsity.detach().item()),
        "labelled": count / max(n, 1),
        "acc": float((logits[labelled].argmax(1) == batch.y[labelled]).float().mean().item())
        if count
        else 0.0,
    }
    return loss, logs


def select_labelled(
    labels: np.ndarray, train_index: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Training rows that keep their label: per class ``max(1, round(fraction * n_c))``.

    Parameters
    ----------
    labels
        (N,) int labels of the whole dataset (-1 = unknown).
    train_index
        Rows of the training split.
    fraction
        Labelled fraction in (0, 1].
    seed
        The same seed gives the same subset.

    Returns
    -------
    ndarray of int64
        Sorted rows (a subset of ``train_index``).
    """
    rng = np.random.default_rng([int(seed), 0x5E1])
    keep: list[np.ndarray] = []
    train_index = np.asarray(train_index, dtype=np.int64)
    lab = labels[train_index]
    for c in np.unique(lab[lab >= 0]):
        rows = np.sort(train_index[lab == c])
        k = min(len(rows), max(1, int(round(fraction * len(rows)))))
        keep.append(rng.choice(rows, size=k, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@register_defense("semi", SemiParams)
class Semi(Defense):
    """Semi-supervised autoencoding classifier training (Algorithm 1); see :func:`semi_loss`."""

    needs_forward_all = True

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        if self.params.labelled_fraction >= 1.0:
            return
        keep = select_labelled(
            trainer.labels,
            trainer.train_index,
            float(self.params.labelled_fraction),
            trainer.recipe.seed,
        )
        drop = np.setdiff1d(trainer.train_index, keep)
        trainer.labels[drop] = -1

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return semi_loss(model, batch, self.params)
