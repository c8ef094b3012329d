"""``ima``: Increasing-Margin Adversarial training with per-sample margins.

Source: Ma & Liang, IMA (arXiv:2005.09147), Algorithms 1-3 and the
"Experiments on Classification" settings (``beta = 0.5``, ``N_PGD = 20``,
``N_binary = 10``, PGD ``alpha = 4``).

* **Algorithm 1** (one training step): the batch is classified; the wrongly classified
  samples ``X0`` and the correctly classified ``X1`` both contribute their clean
  cross-entropy, and every sample of ``X1`` contributes the cross-entropy of its noisy
  sample ``Xn = BPGD(X1, Y1, E(X1))``, found within its own margin ``E(x)``::

      L = ((1 - beta) * (L0 + L1) + beta * L2) / batch_size      (sums of CE)

  Algorithm 3 says a sample for which BPGD finds no boundary point within ``E(x)``
  ("case-0") returns None and "will be ignored". ``use_max_noise=True`` (default)
  instead trains on its last PGD iterate, which lies on the ``E(x)``-ball (our choice:
  early in training, when margins are tiny, nearly every sample is case-0 and the
  noisy term would otherwise vanish); ``use_max_noise=False`` follows the note.
* **Algorithm 2** (after each epoch, :meth:`IMA.on_epoch_end`): every training sample
  is classified; a wrong one has its margin re-initialised to ``delta``; a correct one
  runs ``BPGD(x, y, E(x))``: when a boundary point ``x_n`` is found the margin shrinks
  to ``||x - x_n||_p`` (refine), otherwise it grows by ``delta`` (expand). Margins are
  then clipped to ``[delta, eps_max]``. Margins start at ``delta = eps_max / epochs``
  (the note of Algorithm 2).
* **Algorithm 3** (BPGD): PGD (Eq. (1), step ``alpha * E(x) / N_PGD``, no random start)
  with the sample's own radius ``E(x)``; at the first misclassified iterate, bisect
  ``N_binary`` times between it and the previous (correct) iterate; the boundary point
  is the misclassified end of the final bracket. :func:`bpgd_per_sample` runs the
  ``bpgd`` attack's loop (:func:`napari_cryoguard.attacks.bpgd.bpgd_search`) with a
  *per-sample* radius, which the attack (one scalar ``eps``) does not take.

The margins live beside the dataset: a float32 tensor over all ``trainer.num_samples``
rows, addressed by ``batch.index`` (validation rows keep ``delta``); the trainer saves
them in the checkpoint as ``extra.defense.margins`` (with ``extra.defense.delta``) and
:meth:`IMA.load_state_tensors` restores them on resume. Units: the norm's, in
normalised intensity units. ``eps_max`` = 0.03 is our choice for z-scored subtomograms
(the largest FGSM budget of Wu et al., RAT (IEEE BIBM 2019)
IV.C); the IMA paper picks ``eps_max`` per dataset. BPGD runs in eval mode (see
:mod:`napari_cryoguard.defenses.at`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.attacks.units import EpsUnit
from napari_cryoguard.defenses.at import attack_mode, masked_accuracy
from napari_cryoguard.defenses.base import Batch, Defense, register_defense, unwrap
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Loss, Norm
from napari_cryoguard.registry import check_fields, number

if TYPE_CHECKING:
    from napari_cryoguard.defenses.trainer import Trainer

__all__ = [
    "IMA",
    "IMAParams",
    "bpgd_per_sample",
    "ima_loss",
    "ima_update_margins",
    "initial_delta",
]


@dataclass
class IMAParams:
    """Parameters of the ``ima`` defense.

    Attributes
    ----------
    beta
        Weight of the noisy-sample loss in Algorithm 1: 0.5 (the paper's classification
        experiments).
    eps_max
        Largest margin (Algorithm 2), in ``norm`` and normalised units: 0.03 (our
        choice, see the module docstring).
    delta
        Margin expansion step and initial margin; None: ``eps_max / epochs`` (note of
        Algorithm 2).
    norm
        ``"linf"`` or ``"l2"``: the PGD steps, the balls and the margins.
    n_pgd
        PGD iterations of BPGD: 20.
    alpha
        PGD step factor, ``step = alpha * E(x) / n_pgd``: 4.
    n_binary
        Bisection steps of BPGD: 10.
    loss
        BPGD's PGD objective: ``"ce"`` or ``"margin"``.
    use_max_noise
        Train on the last PGD iterate of samples without a boundary point ("case-0")
        instead of ignoring them: True (see the module docstring).
    eps_unit
        Unit of ``eps_max``, ``delta`` and the margins: ``"normalized"`` (default) or
        ``"range"`` (a fraction of each sample's intensity range max - min, the IMA
        paper's unit for images in [0, 1]; :mod:`napari_cryoguard.attacks.units`). With
        ``"range"`` the margins are stored in range units and BPGD runs with radius
        ``margin_i * range_i`` in data units.
    """

    beta: float = number(0.5, maximum=1.0)
    eps_max: float = number(0.03, strict=True)
    delta: float | None = number(None, strict=True)
    norm: Norm = "linf"
    n_pgd: int = number(20, minimum=1, integer=True)
    alpha: float = number(4.0, strict=True)
    n_binary: int = number(10, integer=True)
    loss: Loss = "ce"
    use_max_noise: bool = True
    eps_unit: EpsUnit = "normalized"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.delta is not None and self.delta > self.eps_max:
            raise CryoGuardError(f"delta must be in (0, eps_max], got {self.delta!r}")


def _unit_scale(x: torch.Tensor, params: IMAParams) -> torch.Tensor:
    """Data units per margin unit (N,): 1, or each sample's intensity range (``"range"``)."""
    if params.eps_unit == "range":
        from napari_cryoguard.attacks.units import sample_range

        return sample_range(x).to(torch.float32)
    return torch.ones(x.shape[0], dtype=torch.float32, device=x.device)


def initial_delta(params: IMAParams, epochs: int) -> float:
    """``delta``: the given one, or ``eps_max / epochs`` (Algorithm 2's note)."""
    if params.delta is not None:
        return float(params.delta)
    return float(params.eps_max) / max(int(epochs), 1)


# --------------------------------------------------------------------------- bpgd


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def bpgd_per_sample(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    *,
    norm: str = "linf",
    n_pgd: int = 20,
    alpha: float = 4.0,
    n_binary: int = 10,
    loss: str = "ce",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BPGD (IMA Algorithm 3) with a per-sample radius; ``model`` as given (eval mode).

    Parameters
    ----------
    x : (N, 1, D, H, W)
    y : (N,) labels (all labelled)
    eps : (N,) radius ``E(x_i)`` of each sample's ball.

    Returns
    -------
    (x_n, found, margins)
        ``x_n`` (N, ...): the boundary point (misclassified end of the bisection
        bracket) where one was found, else the last PGD iterate (``x`` itself for a
        sample misclassified already). ``found`` (N,) bool. ``margins`` (N,):
        ``||x_n - x||_norm`` where found, ``eps`` where not (case-0), 0 for samples
        misclassified already.
    """
    from napari_cryoguard.attacks.bpgd import bpgd_search

    out = bpgd_search(
        model,
        x,
        y,
        eps.reshape(x.shape[0]),
        norm=norm,
        n_pgd=int(n_pgd),
        alpha=float(alpha),
        n_binary=int(n_binary),
        loss=loss,
    )
    return out.x_n, out.found, out.margins


# --------------------------------------------------------------------------- algorithms


def ima_loss(
    model: nn.Module, batch: Batch, params: IMAParams, margins: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """IMA Algorithm 1 on a batch, with the batch's margins ``E`` (N,).

    Returns
    -------
    (loss, logs)
        ``((1 - beta) * (L0 + L1) + beta * L2) / n_labelled``; logs ``ce`` (clean mean),
        ``noisy_ce`` (mean over the noisy samples), ``acc``, ``noisy_acc``,
        ``noisy_frac`` (noisy samples per labelled sample), ``margin`` (batch mean).
    """
    lab = batch.y >= 0
    x, y = batch.x[lab], batch.y[lab]
    n = x.shape[0]
    if n == 0:
        logits = model(batch.x)
        return logits.sum() * 0.0, {"ce": 0.0, "noisy_ce": 0.0, "margin": 0.0}
    eps = margins.to(batch.device, torch.float32)[lab]
    scale = _unit_scale(x, params)
    with attack_mode(model) as plain:
        correct = _predict(plain, x) == y
        rows = torch.nonzero(correct).flatten()
        x_n, found, _ = bpgd_per_sample(
            plain,
            x[rows],
            y[rows],
            eps[rows] * scale[rows],
            norm=params.norm,
            n_pgd=params.n_pgd,
            alpha=params.alpha,
            n_binary=params.n_binary,
            loss=params.loss,
        )
    if not params.use_max_noise:
        x_n, rows = x_n[found], rows[found]
    y_n = y[rows]
    logits = model(torch.cat([x, x_n])).float()
    clean, noisy = logits[:n], logits[n:]
    l01 = F.cross_entropy(clean, y, reduction="sum")
    l2 = F.cross_entropy(noisy, y_n, reduction="sum")
    beta = float(params.beta)
    loss = ((1.0 - beta) * l01 + beta * l2) / n
    m = int(rows.numel())
    return loss, {
        "ce": float(l01.detach().item()) / n,
        "noisy_ce": float(l2.detach().item()) / m if m else 0.0,
        "acc": masked_accuracy(clean.detach(), y),
        "noisy_acc": masked_accuracy(noisy.detach(), y_n) if m else 0.0,
        "noisy_frac": m / n,
        "margin": float(eps.mean().item()),
    }


def ima_update_margins(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    margins: torch.Tensor,
    params: IMAParams,
    delta: float,
) -> torch.Tensor:
    """IMA Algorithm 2 on a batch: the updated margins (N,), clipped to ``[delta, eps_max]``.

    Wrongly classified samples are re-initialised to ``delta``; correctly classified
    ones shrink to their BPGD boundary distance when BPGD (radius = current margin)
    finds a boundary point, and expand by ``delta`` otherwise. Unlabelled samples
    (``y < 0``) keep their margin. Runs the plain model in eval mode.
    """
    margins = margins.to(x.device, torch.float32)
    out = margins.clone()
    lab = y >= 0
    idx = torch.nonzero(lab).flatten()
    if idx.numel() == 0:
        return out
    with attack_mode(model) as plain:
        xl, yl, el = x[idx], y[idx], margins[idx]
        correct = _predict(plain, xl) == yl
        new = torch.full_like(el, float(delta))
        c = torch.nonzero(correct).flatten()
        if c.numel():
            scale = _unit_scale(xl[c], params)
            _, found, dist = bpgd_per_sample(
                plain,
                xl[c],
                yl[c],
                el[c] * scale,
                norm=params.norm,
                n_pgd=params.n_pgd,
                alpha=params.alpha,
                n_binary=params.n_binary,
                loss=params.loss,
            )
            new[c] = torch.where(found, dist / scale, el[c] + float(delta))
    out[idx] = new.clamp(min=float(delta), max=float(params.eps_max))
    return out


# --------------------------------------------------------------------------- defense


@register_defense("ima", IMAParams)
class IMA(Defense):
    """Increasing-Margin Adversarial training (IMA Algorithms 1-3).

    Per-sample margins (``self.margins``, over the whole dataset) are allocated in
    :meth:`setup`, used by :func:`ima_loss` through ``batch.index``, updated by
    Algorithm 2 in :meth:`on_epoch_end` (each DDP rank updates its shard of the
    training rows; the ranks' updates are summed), and saved in the checkpoint as
    ``extra.defense.margins``.
    """

    def __init__(self, params: IMAParams) -> None:
        super().__init__(params)
        self.margins: torch.Tensor | None = None
        self.delta: float = float(params.delta) if params.delta is not None else float("nan")
        self._device = torch.device("cpu")

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        self._device = trainer.device
        self.delta = initial_delta(self.params, trainer.recipe.epochs)
        self.margins = torch.full(
            (trainer.num_samples,), self.delta, dtype=torch.float32, device=self._device
        )

    def _require(self) -> torch.Tensor:
        if self.margins is None:
            raise CryoGuardError("the ima defense has no margins: call setup(trainer) first")
        return self.margins

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        margins = self._require()[batch.index.to(self._device)]
        return ima_loss(model, batch, self.params, margins)

    def on_epoch_end(self, trainer: Trainer) -> None:
        margins = self._require()
        rows = np.asarray(trainer.train_index)[trainer.rank :: trainer.world_size]
        rows = rows[trainer.labels[rows] >= 0]
        upd = torch.zeros_like(margins)
        owned = torch.zeros_like(margins)
        plain = unwrap(trainer.model)
        bs = max(int(trainer.recipe.batch_size), 1)
        for s in range(0, len(rows), bs):
            idx = torch.as_tensor(rows[s : s + bs], dtype=torch.int64)
            x = trainer.volumes[idx].unsqueeze(1).to(self._device)
            y = torch.as_tensor(trainer.labels[idx.numpy()], dtype=torch.int64).to(self._device)
            dev_idx = idx.to(self._device)
            upd[dev_idx] = ima_update_margins(
                plain, x, y, margins[dev_idx], self.params, self.delta
            )
            owned[dev_idx] = 1.0
        trainer.all_reduce_tensor(upd)
        trainer.all_reduce_tensor(owned)
        self.margins = torch.where(owned > 0, upd, margins)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.margins is None:
            return {}
        return {
            "margins": self.margins.detach().to("cpu", torch.float32),
            "delta": torch.tensor([self.delta], dtype=torch.float32),
        }

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if "margins" not in tensors:
            return
        m = tensors["margins"].detach().to(self._device, torch.float32).flatten()
        if self.margins is not None and m.numel() != self.margins.numel():
            raise CryoGuardError(
                f"the checkpoint holds {m.numel()} IMA margins but the dataset has "
                f"{self.margins.numel()} samples"
            )
        self.margins = m.clone()
        if "delta" in tensors:
            self.delta = float(tensors["delta"].flatten()[0].item())
