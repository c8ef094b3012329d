"""BPGD: PGD followed by a binary search for the decision boundary (IMA Algorithm 3).

Source: Ma & Liang, IMA (arXiv:2005.09147), Algorithm 3 (BPGD)
with Eq. (1) (the PGD iteration, step ``alpha * eps / N_PGD``) and Algorithm 2 (the
margin of a sample is the distance ``||x - x_n||_p`` to the boundary point ``x_n``;
margins are clipped to ``eps_max``). IMA trains with 20-PGD (``N_PGD = 20``,
``alpha = 4``) and uses a maximum noise level of 0.3 in its Moons / COVID-19 CT
experiments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_cryoguard.attacks.base import (
    Attack,
    AttackParams,
    box_rows,
    check_choice,
    check_number,
    clamp,
    flat_norm,
    input_gradient,
    normalized_step,
    objective,
    per_sample,
    project,
    register_attack,
)

__all__ = ["BPGD", "BPGDParams"]


@dataclass
class BPGDParams(AttackParams):
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

    norm: str = "linf"
    eps: float = 0.3
    n_pgd: int = 20
    alpha: float = 4.0
    n_binary: int = 10
    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("norm", self.norm, ("linf", "l2"))
        check_choice("loss", self.loss, ("ce", "margin"))
        check_number("eps", self.eps)
        check_number("n_pgd", self.n_pgd, minimum=1, integer=True)
        check_number("alpha", self.alpha, strict=True)
        check_number("n_binary", self.n_binary, integer=True)


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

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: BPGDParams = self.params  # type: ignore[assignment]
        n = x.shape[0]
        dev = x.device
        step = p.alpha * p.eps / p.n_pgd
        already = logits0.argmax(1) != y
        margins = torch.full((n,), float(p.eps), device=dev)
        margins[already] = 0.0
        x_adv = x.clone()
        lo_pt = x.clone()  # last correct iterate
        hi_pt = x.clone()  # first wrong iterate
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        sample_steps = torch.zeros(n, dtype=torch.long, device=dev)

        active = torch.nonzero(~already).flatten()
        cur = x[active].clone()
        prev = cur
        used = 0
        for t in range(p.n_pgd + 1):
            if active.numel() == 0:
                break
            ya = y[active]
            if t < p.n_pgd:
                grad, logits = input_gradient(
                    model, cur, lambda z, ya=ya: objective(z, ya, p.loss, False)
                )
                if t == 0:
                    self._note_gradient(grad, active)
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
            if t == p.n_pgd or not bool(keep.any()):
                x_adv[active[keep]] = cur[keep]
                break
            active, cur, grad = active[keep], cur[keep], grad[keep]
            xa = x[active]
            prev = cur
            delta = project(cur + step * normalized_step(grad, p.norm) - xa, p.norm, p.eps)
            cur = clamp(xa + delta, box_rows(box, active))
            sample_steps[active] += 1
            used = t + 1

        rows = torch.nonzero(found).flatten()
        if rows.numel():
            lo, hi, yr = lo_pt[rows], hi_pt[rows], y[rows]
            with torch.no_grad():
                for _ in range(p.n_binary):
                    mid = (lo + hi) / 2
                    wrong = model(mid).argmax(1) != yr
                    w5 = per_sample(wrong)
                    hi = torch.where(w5, mid, hi)
                    lo = torch.where(w5, lo, mid)
            x_adv[rows] = hi
            margins[rows] = flat_norm(hi - x[rows], p.norm)
        max_reached = ~found & ~already
        return (
            x_adv,
            used + (p.n_binary if rows.numel() else 0),
            {
                "margins": margins,
                "max_reached": max_reached,
                "already_wrong": already,
                "sample_steps": sample_steps,
            },
        )
