"""Square attack: score-based random search with cubes, no gradients.

Source
------
Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, arXiv:1912.00049: section 3 and
Algorithm 1 (random search: a candidate changes one window, it is kept only if the loss
decreases), section 3.1 and Algorithm 2 (the L-inf sampling distribution: the window
set to ``x + eps`` or ``x - eps``, one random sign per window; the start at "vertical
stripes" of width one with random signs), the margin loss ``z_y - max_{j != y} z_j``
(untargeted) and the schedule of the window fraction ``p``: ``p_init`` (0.8 in the
AutoAttack configuration) halved at iterations 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of a 10 000-query run, rescaled to the number of queries here.

Our own implementation for volumes. Departures, all stated here:

* **Cubes instead of squares.** The window is a cube of side
  ``s = round((p * D * H * W) ** (1/3))`` (at least 1, at most ``min(D, H, W) - 1``),
  so that it covers the fraction ``p`` of the voxels as the paper's square covers
  ``p`` of the pixels. There is one channel, so one sign per window.
* **Stripes.** The start is ``x + eps * s`` with one random sign per (z, x) line,
  constant along y (the 3D analogue of the paper's vertical stripes).
* **A window that would not change anything** (every voxel already at that value,
  e.g. through the bounds) is retried once with the other sign, as the paper
  resamples it.
* L-inf only (the paper's L2 sampling distribution is not implemented).

Score-based: the attack reads the model's logits only, always under
``torch.no_grad()`` (no gradients). A sample leaves the search once fooled; the
per-sample query count (the start included) is in ``extras["queries"]``.
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
    make_generator,
    objective,
    register_attack,
)
from napari_cryoguard.errors import CryoGuardError

__all__ = ["Square", "SquareParams", "square_fraction", "square_side"]

#: iterations (of a 10 000-query run) after which the window fraction is halved
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, it: int, n_queries: int) -> float:
    """The window fraction ``p`` at iteration ``it`` (Andriushchenko et al. 2020, section 3.1).

    The paper's schedule for 10 000 queries, halving ``p`` after each iteration of
    :data:`_HALVINGS`; other budgets are mapped onto it linearly
    (``it * 10000 / n_queries``).
    """
    i = int(it / max(n_queries, 1) * 10000)
    halvings = sum(1 for h in _HALVINGS if i > h)
    return p_init / (2**halvings)


def square_side(p: float, shape: tuple[int, int, int]) -> int:
    """Side of the cube window covering about the fraction ``p`` of a D x H x W volume."""
    d, h, w = shape
    s = int(round((p * d * h * w) ** (1.0 / 3.0)))
    upper = max(min(d, h, w) - 1, 1)
    return max(1, min(s, upper))


@dataclass
class SquareParams(AttackParams):
    """Parameters of :class:`Square`.

    Attributes
    ----------
    norm
        ``"linf"`` (the only one implemented).
    eps
        L-inf budget in the data's units (normalised units for z-scored subtomograms).
    n_queries
        Model evaluations per sample and run, the start included (AutoAttack: 5000).
    p_init
        Initial fraction of the voxels a window covers (AutoAttack: 0.8).
    restarts
        Independent runs, each on the samples not yet fooled.
    loss
        ``"margin"`` (the paper, untargeted) or ``"ce"``; minimised as ``-objective``.
    targeted
        Search towards the given target labels (success: ``pred == target``).
    seed
        Seed of the random search (None: torch's global RNG).
    """

    norm: str = "linf"
    eps: float = 0.03
    n_queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    loss: str = "margin"
    targeted: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm == "l2":
            raise CryoGuardError(
                "square: only norm='linf' is implemented (the paper's L2 sampling "
                "distribution is not); use apgd-ce/apgd-t with norm='l2'"
            )
        check_choice("norm", self.norm, ("linf",))
        check_choice("loss", self.loss, ("margin", "ce"))
        check_number("eps", self.eps)
        check_number("n_queries", self.n_queries, minimum=1, integer=True)
        check_number("restarts", self.restarts, minimum=1, integer=True)
        check_number("p_init", self.p_init, strict=True)
        if self.p_init > 1.0:
            raise CryoGuardError(f"p_init must be in (0, 1], got {self.p_init!r}")


@register_attack("square", SquareParams)
class Square(Attack):
    """Square attack (Andriushchenko et al., ECCV 2020, arXiv:1912.00049), L-inf, 3D cubes.

    Random search on the vertices of the L-inf ball: each iteration proposes, for every
    sample not yet fooled, a random cube window set to ``x +- eps`` and keeps it when
    the loss (the logit margin) decreases. Distance: L-inf,
    ``||x_adv - x||_inf <= eps``; with bounds the volume is clamped to the box.
    Score-based: logits only, under ``torch.no_grad()``. ``steps`` in the result is
    the largest number of queries one sample used (over the runs); per sample in
    ``extras["queries"]``.

    Example
    -------
    >>> run_attack("square", model, x, y, eps=0.03, n_queries=1000, seed=0)  # doctest: +SKIP
    """

    uses_gradients = False
    default_norm = "linf"

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: SquareParams = self.params  # type: ignore[assignment]
        gen = make_generator(p.seed, x.device)
        pred0 = logits0.argmax(1)
        found = (pred0 == y) if p.targeted else (pred0 != y)
        best_x = x.clone()
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        with torch.no_grad():
            for _ in range(p.restarts):
                rows = torch.nonzero(~found).flatten()
                if rows.numel() == 0:
                    break
                xr, ok, used = self._search(model, x[rows], y[rows], box_rows(box, rows), gen)
                best_x[rows] = xr
                found[rows] |= ok
                queries[rows] += used
        return best_x, int(queries.max()), {"queries": queries}

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, margin: > 0 while not yet fooled)."""
        p: SquareParams = self.params  # type: ignore[assignment]
        margin = -objective(logits, y, "margin", p.targeted)
        loss = margin if p.loss == "margin" else -objective(logits, y, "ce", p.targeted)
        return loss, margin

    def _search(self, model, x, y, box, gen):
        """One run on a batch: (x_adv, fooled, queries per sample)."""
        p: SquareParams = self.params  # type: ignore[assignment]
        n = x.shape[0]
        dev, dt = x.device, x.dtype
        d, h, w = x.shape[-3:]
        eps = float(p.eps)
        signs = torch.randint(0, 2, (n, 1, d, 1, w), generator=gen, device=dev).to(dt) * 2 - 1
        x_best = clamp(x + eps * signs, box)
        loss, margin = self._loss(model(x_best).float(), y)
        used = torch.ones(n, dtype=torch.long, device=dev)
        ar = [torch.arange(k, device=dev).view(*([1] * (2 + i)), k, *([1] * (2 - i)))
              for i, k in enumerate((d, h, w))]
        upper = clamp(x + eps, box)
        lower = clamp(x - eps, box)
        for it in range(p.n_queries - 1):
            act = torch.nonzero(margin > 0).flatten()
            if act.numel() == 0:
                break
            k = act.numel()
            s = square_side(square_fraction(p.p_init, it, p.n_queries), (d, h, w))
            corner = [torch.randint(0, size - s + 1, (k,), generator=gen, device=dev)
                      for size in (d, h, w)]
            mask = torch.ones((k, 1, 1, 1, 1), dtype=torch.bool, device=dev)
            for a, c in zip(ar, corner, strict=True):
                c5 = c.view(k, 1, 1, 1, 1)
                mask = mask & (a >= c5) & (a < c5 + s)
            up = torch.randint(0, 2, (k,), generator=gen, device=dev).bool().view(k, 1, 1, 1, 1)
            cur = x_best[act]
            cand = torch.where(mask, torch.where(up, upper[act], lower[act]), cur)
            same = (cand == cur).flatten(1).all(1).view(k, 1, 1, 1, 1)
            if bool(same.any()):  # nothing would change: the other sign
                flip = torch.where(mask, torch.where(up, lower[act], upper[act]), cur)
                cand = torch.where(same, flip, cand)
            l_new, m_new = self._loss(model(cand).float(), y[act])
            used[act] += 1
            better = l_new < loss[act]
            rows = act[better]
            x_best[rows] = cand[better]
            loss[rows] = l_new[better]
            margin[rows] = m_new[better]
        return x_best, margin <= 0, used
