"""``gr`` and ``llr``: gradient regularisation and local linearity regularisation.

Source: Sun et al., MIRST-DM (MICCAI 2022) section 2.1 (the
defenses MIRST-DM compares with) and section 4.1 (their weights).

* **GR** (Ross & Doshi-Velez, MIRST-DM [2]): "introduces the L2 norm of gradients with
  respect to the input into the loss function ... GR conducts double backpropagation"::

      L_GR = mean_i CE(f(x_i), y_i) + lambda * mean_i || grad_x CE(f(x_i), y_i) ||_2^2

  with ``lambda = 1`` (section 4.1: "the weight of adversarial loss in GR ... is set to
  1"). The input gradient is taken with ``create_graph=True`` so the penalty is
  differentiated w.r.t. the weights (double backprop).
* **LLR** (Qin et al. 2019, MIRST-DM [3]): "regularizes the classifier to be locally
  linear using the first-order Taylor expansion of a loss function". With
  ``l(x) = CE(f(x), y)`` and ``g(delta; x) = | l(x + delta) - l(x) - delta . grad_x l(x) |``::

      delta* = argmax_{||delta||_inf <= eps} g(delta; x)            (PGD, eval mode)
      L_LLR  = mean_i [ l(x_i) + lambda_lin * g(delta*_i; x_i)
                        + mu_grad * | delta*_i . grad_x l(x_i) | ]

  with the weights of the locally-linearity measure and of the gradient-magnitude term
  3 and 4 (section 4.1). The budget defaults to the RAT paper's training ball
  (eps 0.01, step 0.001, 10 steps; the MIRST-DM paper does not print LLR's), with a
  uniform random start as in Qin et al. The outer terms are computed in one forward
  pass over ``x`` and ``x + delta`` with dropout switched off (:func:`dropout_off`),
  so that ``g`` measures the curvature of the loss and not two different dropout masks.

Unlabelled samples are left out of every term (all are label-driven).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.defenses.at import (
    InnerMaxParams,
    attack_mode,
    masked_accuracy,
    pgd_trajectory,
    random_start,
)
from napari_cryoguard.defenses.base import Batch, Defense, register_defense, unwrap
from napari_cryoguard.registry import check_fields, number

__all__ = [
    "GR",
    "LLR",
    "GRParams",
    "LLRParams",
    "dropout_off",
    "gr_loss",
    "input_gradient_penalty",
    "llr_loss",
    "llr_perturbation",
    "local_linearity",
]


def _per_sample_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample (N,), 0 for unlabelled samples."""
    return F.cross_entropy(logits.float(), y.clamp(min=0), reduction="none") * (y >= 0).float()


def _mean_labelled(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of the per-sample values over the labelled samples (0 * sum when none)."""
    mask = y >= 0
    count = int(mask.sum().item())
    if count == 0:
        return v.sum() * 0.0
    return (v * mask.float()).sum() / count


# --------------------------------------------------------------------------- gr


@dataclass
class GRParams:
    """Parameters of the ``gr`` defense.

    Attributes
    ----------
    weight
        ``lambda``, the weight of the squared input-gradient norm: 1.0 (MIRST-DM 4.1).
    """

    weight: float = number(1.0)

    def __post_init__(self) -> None:
        check_fields(self)


def input_gradient_penalty(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample CE, squared input-gradient norms and logits, by double backprop.

    Returns
    -------
    (ce, sq_norm, logits)
        ``ce`` (N,) per-sample cross-entropy (0 for unlabelled), ``sq_norm`` (N,)
        ``||grad_{x_i} CE_i||_2^2`` (differentiable w.r.t. the weights when
        ``create_graph``), ``logits`` (N, C).
    """
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    ce = _per_sample_ce(logits, y)
    (grad,) = torch.autograd.grad(ce.sum(), xg, create_graph=create_graph)
    return ce, grad.float().pow(2).flatten(1).sum(dim=1), logits


def gr_loss(
    model: nn.Module, batch: Batch, params: GRParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """``mean CE + lambda * mean ||grad_x CE||_2^2`` over labelled samples (GR).

    Returns
    -------
    (loss, logs)
        Logs: ``ce``, ``grad_sq`` (mean squared input-gradient norm), ``acc``.
    """
    ce, sq, logits = input_gradient_penalty(model, batch.x, batch.y)
    ce_m = _mean_labelled(ce, batch.y)
    pen = _mean_labelled(sq, batch.y)
    loss = ce_m + float(params.weight) * pen
    return loss, {
        "ce": float(ce_m.detach().item()),
        "grad_sq": float(pen.detach().item()),
        "acc": masked_accuracy(logits.detach(), batch.y),
    }


@register_defense("gr", GRParams)
class GR(Defense):
    """Input-gradient regularisation by double backprop (MIRST-DM [2]); see :func:`gr_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return gr_loss(model, batch, self.params)


# --------------------------------------------------------------------------- llr


@dataclass
class LLRParams(InnerMaxParams):
    """Parameters of the ``llr`` defense: the ball and PGD iteration that find
    ``delta*`` as :class:`~napari_cryoguard.defenses.at.InnerMaxParams` (0.01, 0.001,
    10: the RAT IV.B budget) and

    Attributes
    ----------
    lambda_lin
        Weight of the local-linearity measure ``g(delta*; x)``: 3 (MIRST-DM 4.1).
    mu_grad
        Weight of the gradient-magnitude term ``|delta* . grad_x l(x)|``: 4 (MIRST-DM 4.1).
    """

    lambda_lin: float = number(3.0)
    mu_grad: float = number(4.0)


def local_linearity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLR's terms at a given perturbation ``delta``, per sample.

    Returns
    -------
    (gamma, grad_term, ce, logits)
        ``gamma = |l(x + delta) - l(x) - delta . grad_x l(x)|`` (N,), ``grad_term =
        |delta . grad_x l(x)|`` (N,), ``ce = l(x)`` (N,) and the clean logits; all 0 for
        unlabelled samples. One forward pass scores ``x`` and ``x + delta``; with
        ``create_graph`` everything is differentiable w.r.t. the weights.
    """
    n = x.shape[0]
    both = torch.cat([x.detach(), (x + delta).detach()]).requires_grad_(True)
    logits = model(both)
    ce_all = _per_sample_ce(logits, torch.cat([y, y]))
    ce, ce_d = ce_all[:n], ce_all[n:]
    (grad,) = torch.autograd.grad(ce.sum(), both, create_graph=create_graph)
    lin = (delta.detach().float() * grad[:n].float()).flatten(1).sum(dim=1)
    gamma = (ce_d - ce - lin).abs()
    return gamma, lin.abs(), ce, logits[:n]


def llr_perturbation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: LLRParams
) -> torch.Tensor:
    """``delta*``: PGD ascent of ``g(delta; x)`` in the eps-ball, eval mode, random start."""
    with attack_mode(model) as plain:
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits0 = plain(xg)
            ce0 = _per_sample_ce(logits0, y)
            (g0,) = torch.autograd.grad(ce0.sum(), xg)
        ce0 = ce0.detach()
        safe, mask = y.clamp(min=0), (y >= 0).float()

        # g depends on delta = x_adv - x as well as on the logits, so the objective is
        # written on the input directly: a tiny wrapper model returns [g] as "logits".
        class _Gap(nn.Module):
            def forward(self, xa: torch.Tensor) -> torch.Tensor:
                ce_d = F.cross_entropy(plain(xa).float(), safe, reduction="none") * mask
                lin = ((xa - x).float() * g0.float()).flatten(1).sum(dim=1)
                return (ce_d - ce0 - lin).abs().unsqueeze(1)

        start = random_start(x, params.norm, params.eps)
        (x_adv,) = pgd_trajectory(
            _Gap(),
            x,
            lambda z: z[:, 0],
            norm=params.norm,
            eps=params.eps,
            step_size=params.step_size,
            checkpoints=(params.steps,),
            start=start,
            eps_unit=params.eps_unit,
        )
    return (x_adv - x).detach()


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Switch the dropout layers of the plain model to eval mode for the duration.

    LLR compares the loss at ``x`` and ``x + delta``: with independent dropout masks
    the two forward passes would differ by the masks rather than by ``delta``, so its
    terms are computed without dropout (batch norm, if any, stays in training mode and
    normalises both halves with the same batch statistics).
    """
    drops = [
        (m, m.training)
        for m in unwrap(model).modules()
        if isinstance(m, nn.modules.dropout._DropoutNd)
    ]
    for m, _ in drops:
        m.eval()
    try:
        yield
    finally:
        for m, mode in drops:
            m.training = mode


def llr_loss(
    model: nn.Module, batch: Batch, params: LLRParams
) -> tuple[torch.Tensor, dict[str, float]]:
    """LLR loss ``mean [l(x) + lambda_lin * g(delta*) + mu_grad * |delta* . grad l(x)|]``.

    Returns
    -------
    (loss, logs)
        Logs: ``ce``, ``linearity`` (mean ``g(delta*)``), ``grad_term``, ``acc``.
    """
    delta = llr_perturbation(model, batch.x, batch.y, params)
    with dropout_off(model):
        gamma, grad_term, ce, logits = local_linearity(
            model, batch.x, batch.y, delta, create_graph=True
        )
    ce_m = _mean_labelled(ce, batch.y)
    g_m = _mean_labelled(gamma, batch.y)
    t_m = _mean_labelled(grad_term, batch.y)
    loss = ce_m + float(params.lambda_lin) * g_m + float(params.mu_grad) * t_m
    return loss, {
        "ce": float(ce_m.detach().item()),
        "linearity": float(g_m.detach().item()),
        "grad_term": float(t_m.detach().item()),
        "acc": masked_accuracy(logits.detach(), batch.y),
    }


@register_defense("llr", LLRParams)
class LLR(Defense):
    """Local linearity regularisation (Qin et al. 2019, MIRST-DM [3]); see :func:`llr_loss`."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return llr_loss(model, batch, self.params)
