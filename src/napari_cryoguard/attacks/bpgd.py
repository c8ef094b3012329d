"""BPGD: PGD followed by a binary search for the decision boundary (IMA Algorithm 3).

Source: Ma & Liang, IMA (arXiv:2005.09147), Algorithm 3 (BPGD)
with Eq. (1) (the PGD iteration, step ``alpha * eps / N_PGD``) and Algorithm 2 (the
margin of a sample is the distance ``||x - x_n||_p`` to the boundary point ``x_n``;
margins are clipped to ``eps_max``). IMA trains with 20-PGD (``N_PGD = 20``,
``alpha = 4``) and uses a maximum noise level of 0.3 in its Moons / COVID-19 CT
experiments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, BallParams, register_attack
from napari_cryoguard.params import Loss
from napari_cryoguard.registry import number

__all__ = ["BPGD", "BPGDParams", "BPGDSearch", "bpgd_search"]


@dataclass
class BPGDParams(BallParams):
    """Parameters of :class:`BPGD`.

    Attributes
    ----------
    norm
        ``"linf"`` or ``"l2"``: the PGD steps, the ball and the margin's norm.
    eps
        ``eps_max``, the largest margin looked for (IMA: 0.3), normalised units.
    n_pgd
        PGD iterations (IMA: 20).
    alpha
        Step size factor: ``step = alpha * eps / n_pgd`` (IMA: 4, so the ball is
        swept ``alpha`` times).
    n_binary
        Bisection steps between the last correct and the first wrong PGD iterate
        (IMA: 10).
    loss
        PGD objective: ``"ce"`` or ``"margin"``.
    """

    eps: float = number(0.3)
    n_pgd: int = number(20, minimum=1, integer=True)
    alpha: float = number(4.0, strict=True)
    n_binary: int = number(10, integer=True)
    loss: Loss = "ce"


@register_attack("bpgd", BPGDParams)
class BPGD(Attack):
    """Boundary points and margins by PGD + binary search (IMA Algorithm 3).

    For each correctly classified sample: run PGD from ``x`` (no random start) and
    classify each iterate; at the first wrong iterate ``x_2`` with the previous (still
    correct) iterate ``x_1``, bisect the segment ``[x_1, x_2]`` ``n_binary`` times. The
    boundary point returned is the wrong-side end of the final bracket (so it is
    misclassified, within ``step / 2**n_binary`` of the boundary along the segment),
    and the margin is its distance ``||x_adv - x||_p`` from ``x``.

    * Samples never misclassified within ``n_pgd`` steps (IMA "case-0"): margin
      ``eps``, ``x_adv`` the last PGD iterate, ``success=False``,
      ``extras["max_reached"]=True``.
    * Samples misclassified already: margin 0, ``x_adv = x``,
      ``extras["already_wrong"]=True``.

    ``result.margins`` and ``result.norm`` hold the margins (N,) in ``norm``;
    ``extras["sample_steps"]`` the PGD iterations used per sample. Untargeted.

    Example
    -------
    >>> res = run_attack("bpgd", model, x, y, norm="l2", eps=5.0)  # doctest: +SKIP
    >>> res.margins  # doctest: +SKIP
    """

    norms = ("linf", "l2")
    minimal = True
    search_limit = "eps"  # margins are looked for up to the largest budget
    budget_name = "margin"
    quick_params = {"eps": 0.3, "n_pgd": 5, "n_binary": 4}

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: BPGDParams = self.params  # type: ignore[assignment]
        out = bpgd_search(
            model,
            x,
            y,
            p.eps,
            norm=p.norm,
            n_pgd=p.n_pgd,
            alpha=p.alpha,
            n_binary=p.n_binary,
            loss=p.loss,
            box=box,
            already=logits0.argmax(1) != y,
            on_first_grad=self._note_gradient,
        )
        extras = {
            "margins": out.margins,
            "max_reached": ~out.found & ~out.already,
            "already_wrong": out.already,
            "sample_steps": out.sample_steps,
        }
        return out.x_n, out.steps, extras


class BPGDSearch(NamedTuple):
    """What :func:`bpgd_search` finds, per sample (N,) unless said otherwise."""

    #: (N, 1, D, H, W): the boundary point where one was found, else the last iterate
    x_n: torch.Tensor
    #: a boundary point was found (the sample was misclassified within ``n_pgd`` steps)
    found: torch.Tensor
    #: ``||x_n - x||_norm`` where found, ``eps`` where not (case-0), 0 where already wrong
    margins: torch.Tensor
    #: misclassified before any step
    already: torch.Tensor
    #: PGD iterations used
    sample_steps: torch.Tensor
    #: iterations of the whole batch: PGD steps plus bisection steps (an int)
    steps: int


def bpgd_search(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    norm: str = "linf",
    n_pgd: int = 20,
    alpha: float = 4.0,
    n_binary: int = 10,
    loss: str = "ce",
    box: ops.Box = None,
    already: torch.Tensor | None = None,
    on_first_grad: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> BPGDSearch:
    """IMA Algorithm 3 on a prepared batch (the model's mode is the caller's).

    PGD from ``x`` (no random start), step ``alpha * eps / n_pgd``, within the ball of
    radius ``eps`` (one radius, or a tensor (N,) of one per sample: IMA's margins) and
    the value ``box``; at the first wrong iterate, ``n_binary`` bisections between it
    and the previous (still correct) one. ``already``: the samples misclassified at
    ``x`` (None: the model is asked). ``on_first_grad(grad, rows)``: the gradient of
    the first step, for the zero-gradient check. Used by :class:`BPGD` and by the IMA
    defense (:mod:`napari_cryoguard.defenses.ima`).
    """
    n = x.shape[0]
    dev = x.device
    x = x.detach()
    per = isinstance(eps, torch.Tensor)
    eps_n = eps.to(device=dev, dtype=x.dtype).reshape(n) if per else None
    if already is None:
        with torch.no_grad():
            already = model(x).argmax(1) != y
    margins = eps_n.clone() if per else torch.full((n,), float(eps), device=dev)
    margins[already] = 0.0
    x_n = x.clone()
    lo_pt = x.clone()  # last correct iterate
    hi_pt = x.clone()  # first wrong iterate
    found = torch.zeros(n, dtype=torch.bool, device=dev)
    sample_steps = torch.zeros(n, dtype=torch.long, device=dev)

    active = torch.nonzero(~already).flatten()
    cur = x[active].clone()
    prev = cur
    used = 0
    for t in range(n_pgd + 1):
        if active.numel() == 0:
            break
        ya = y[active]
        if t < n_pgd:
            grad, logits = ops.input_gradient(
                model, cur, lambda z, ya=ya: ops.objective(z.float(), ya, loss, False)
            )
            if t == 0 and on_first_grad is not None:
                on_first_grad(grad, active)
        else:
            with torch.no_grad():
                logits = model(cur)
        wrong = logits.argmax(1) != ya
        if bool(wrong.any()):
            rows = active[wrong]
            lo_pt[rows] = prev[wrong]
            hi_pt[rows] = cur[wrong]
            found[rows] = True
        keep = ~wrong
        if t == n_pgd or not bool(keep.any()):
            x_n[active[keep]] = cur[keep]
            break
        active, cur, grad = active[keep], cur[keep], grad[keep]
        xa = x[active]
        prev = cur
        if eps_n is not None:
            radius: float | torch.Tensor = eps_n[active]
            step: float | torch.Tensor = ops.per_sample(alpha * radius / n_pgd, cur.dim())
        else:
            radius, step = float(eps), alpha * float(eps) / n_pgd
        delta = ops.project(cur + step * ops.normalized_step(grad, norm) - xa, norm, radius)
        cur = ops.clamp(xa + delta, ops.box_rows(box, active))
        sample_steps[active] += 1
        used = t + 1

    rows = torch.nonzero(found).flatten()
    if rows.numel():
        lo, hi, yr = lo_pt[rows], hi_pt[rows], y[rows]
        with torch.no_grad():
            for _ in range(n_binary):
                mid = (lo + hi) / 2
                w5 = ops.per_sample(model(mid).argmax(1) != yr, mid.dim())
                hi = torch.where(w5, mid, hi)
                lo = torch.where(w5, lo, mid)
        x_n[rows] = hi
        margins[rows] = ops.flat_norm(hi - x[rows], norm)
    steps = used + (n_binary if rows.numel() else 0)
    return BPGDSearch(x_n.detach(), found, margins, already, sample_steps, steps)
