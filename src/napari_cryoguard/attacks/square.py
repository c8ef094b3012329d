"""Square attack: score-based random search with cubes, no gradients.

Source
------
Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, arXiv:1912.00049: section 3 and
Algorithm 1 (random search: a candidate changes one window, it is kept only if the loss
decreases), section 3.1 (the L-inf sampling distribution: the window set to
``x + eps`` or ``x - eps``, one random sign per window; the start at "vertical stripes"
of width one with random signs), section 3.2 (the L2 sampling distribution: a new
pattern of nested squares with weights ``1 / (r + 1)^2``, two halves of opposite sign,
put into a first window together with the perturbation mass of a second window, which
is emptied; the total rescaled to norm ``eps``; the start a grid of such patterns),
the margin loss ``z_y - max_{j != y} z_j`` (untargeted) and the schedule of the window
fraction ``p``: ``p_init`` (0.8 in the AutoAttack configuration) halved at iterations
10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10 000-query run, rescaled to
the number of queries here.

Our own implementation for volumes. Departures, all stated here:

* **Cubes instead of squares.** The window is a cube of side
  ``s = round((p * D * H * W) ** (1/3))`` (at least 1, at most ``min(D, H, W) - 1``),
  so that it covers the fraction ``p`` of the voxels as the paper's square covers
  ``p`` of the pixels. There is one channel, so one sign per window.
* **Stripes.** The L-inf start is ``x + eps * s`` with one random sign per (z, x)
  line, constant along y (the 3D analogue of the paper's vertical stripes).
* **A window that would not change anything** (every voxel already at that value,
  e.g. through the bounds) is retried once with the other sign, as the paper
  resamples it.
* **L2 patterns in 3D.** The pattern of a cube window of side ``s`` is split in two
  halves along a random axis, with opposite signs; in each half the value of a voxel is
  ``sum_{r >= c}^{R} 1 / (r + 1)^2``, ``c`` its Chebyshev distance to the half's centre
  (nested cubes instead of nested squares), normalised to unit L2 norm. The L2 start
  tiles the volume with such patterns (side ``max(D // 5, 1)``, ...) of random signs.
  With bounds the candidate is clamped to the box, which can only shorten it.

Score-based: the attack reads the model's logits only, always under
``torch.no_grad()`` (no gradients). A sample leaves the search once fooled; the
per-sample query count (the start included) is in ``extras["queries"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, BallParams, register_attack
from napari_cryoguard.params import Loss
from napari_cryoguard.registry import number

__all__ = ["Square", "SquareParams", "l2_pattern", "square_fraction", "square_side"]

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
class SquareParams(BallParams):
    """Parameters of :class:`Square`.

    Attributes
    ----------
    norm
        ``"linf"`` or ``"l2"``.
    eps
        Budget in the attack's norm, in the data's units (normalised units for z-scored
        subtomograms; an L2 budget is the norm of the whole cube), or with
        ``eps_unit="range"`` a fraction of each sample's intensity range
        (:mod:`napari_cryoguard.attacks.units`).
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

    n_queries: int = number(5000, minimum=1, integer=True)
    p_init: float = number(0.8, strict=True, maximum=1.0)
    restarts: int = number(1, minimum=1, integer=True)
    loss: Loss = "margin"
    targeted: bool = False
    seed: int | None = None


@register_attack("square", SquareParams)
class Square(Attack):
    """Square attack (Andriushchenko et al., ECCV 2020, arXiv:1912.00049), 3D cubes.

    Random search: each iteration proposes, for every sample not yet fooled, a change
    of one random cube window and keeps it when the loss (the logit margin) decreases.
    L-inf: the window set to ``x +- eps`` (the vertices of the ball); L2: a new pattern
    in one window with the mass of a second one, the total at norm ``eps``. Distance:
    ``norm``, ``||x_adv - x||_p <= eps``; with bounds the volume is clamped to the box.
    Score-based: logits only, under ``torch.no_grad()``. ``steps`` in the result is
    the largest number of queries one sample used (over the runs); per sample in
    ``extras["queries"]``.

    Example
    -------
    >>> run_attack("square", model, x, y, eps=0.03, n_queries=1000, seed=0)  # doctest: +SKIP
    """

    uses_gradients = False
    default_norm = "linf"
    norms = ("linf", "l2")
    quick_params = {"eps": 0.1, "n_queries": 30, "seed": 0}

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: SquareParams = self.params  # type: ignore[assignment]
        gen = ops.make_generator(p.seed, x.device)
        pred0 = logits0.argmax(1)
        found = (pred0 == y) if p.targeted else (pred0 != y)
        best_x = x.clone()
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        with torch.no_grad():
            for _ in range(p.restarts):
                rows = torch.nonzero(~found).flatten()
                if rows.numel() == 0:
                    break
                xr, ok, used = self._search(model, x[rows], y[rows], ops.box_rows(box, rows), gen)
                best_x[rows] = xr
                found[rows] |= ok
                queries[rows] += used
        return best_x, int(queries.max()), {"queries": queries}

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, margin: > 0 while not yet fooled)."""
        p: SquareParams = self.params  # type: ignore[assignment]
        margin = -ops.objective(logits, y, "margin", p.targeted)
        loss = margin if p.loss == "margin" else -ops.objective(logits, y, "ce", p.targeted)
        return loss, margin

    def _search(self, model, x, y, box, gen):
        """One run on a batch: (x_adv, fooled, queries per sample).

        Random search (Algorithm 1 of the paper): a start, then per query one candidate
        per sample not yet fooled (:meth:`_linf_search` / :meth:`_l2_search` draw them),
        kept when it lowers the loss.
        """
        p: SquareParams = self.params  # type: ignore[assignment]
        shape = tuple(x.shape[-3:])
        draw = self._l2_search if p.norm == "l2" else self._linf_search
        x_best, propose = draw(x, box, gen, _aranges(shape, x.device))
        loss, margin = self._loss(model(x_best).float(), y)
        used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        for it in range(p.n_queries - 1):
            act = torch.nonzero(margin > 0).flatten()
            if act.numel() == 0:
                break
            cand = propose(
                x_best, act, square_side(square_fraction(p.p_init, it, p.n_queries), shape)
            )
            l_new, m_new = self._loss(model(cand).float(), y[act])
            used[act] += 1
            better = l_new < loss[act]
            rows = act[better]
            x_best[rows] = cand[better]
            loss[rows] = l_new[better]
            margin[rows] = m_new[better]
        return x_best, margin <= 0, used

    def _linf_search(self, x, box, gen, ar):
        """The L-inf start (stripes) and candidates (one window at ``x +- eps``)."""
        n = x.shape[0]
        dev, dt = x.device, x.dtype
        d, h, w = shape = tuple(x.shape[-3:])
        eps = float(self.params.eps)  # type: ignore[attr-defined]
        signs = torch.randint(0, 2, (n, 1, d, 1, w), generator=gen, device=dev).to(dt) * 2 - 1
        upper = ops.clamp(x + eps, box)
        lower = ops.clamp(x - eps, box)

        def propose(x_best, act, s):
            k = act.numel()
            mask = _window_mask(ar, shape, s, k, gen, dev)
            up = torch.randint(0, 2, (k,), generator=gen, device=dev).bool().view(k, 1, 1, 1, 1)
            cur = x_best[act]
            cand = torch.where(mask, torch.where(up, upper[act], lower[act]), cur)
            same = (cand == cur).flatten(1).all(1).view(k, 1, 1, 1, 1)
            if bool(same.any()):  # nothing would change: the other sign
                flip = torch.where(mask, torch.where(up, lower[act], upper[act]), cur)
                cand = torch.where(same, flip, cand)
            return cand

        return ops.clamp(x + eps * signs, box), propose

    def _l2_search(self, x, box, gen, ar):
        """The L2 start (a grid of patterns) and candidates (section 3.2 of the paper,
        with cube windows)."""
        dev, dt = x.device, x.dtype
        shape = tuple(x.shape[-3:])
        eps = float(self.params.eps)  # type: ignore[attr-defined]
        start = ops.clamp(x + _l2_start(x, eps, gen), box)

        def propose(x_best, act, s):
            k = act.numel()
            m1 = _window_mask(ar, shape, s, k, gen, dev)
            m2 = _window_mask(ar, shape, s, k, gen, dev)
            cur = x_best[act] - x[act]
            norm_all = _l2(cur)
            norm_1 = _l2(cur * m1)
            norm_u = _l2(cur * (m1 | m2))
            # the new pattern in window 1, on top of its old direction (unit norm each)
            pat = _pattern_in_window(m1, s, gen)
            sign = torch.randint(0, 2, (k,), generator=gen, device=dev).to(dt) * 2 - 1
            new = pat * sign.view(k, 1, 1, 1, 1) + cur * m1 / (norm_1 + 1e-12)
            target = (torch.clamp(eps**2 - norm_all**2, min=0.0) + norm_u**2).sqrt()
            new = new / (_l2(new) + 1e-12) * target
            cand_d = torch.where(m1, new, torch.where(m2, torch.zeros_like(cur), cur))
            cand_d = cand_d * eps / _l2(cand_d).clamp_min(1e-12)  # the total at norm eps
            return ops.clamp(x[act] + ops.project(cand_d, "l2", eps), ops.box_rows(box, act))

        return start, propose


# --------------------------------------------------------------------------- L2 helpers
def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped (N, 1, 1, 1, 1)."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1).view(-1, 1, 1, 1, 1)


def _aranges(shape: tuple[int, ...], dev: torch.device) -> list[torch.Tensor]:
    return [
        torch.arange(k, device=dev).view(*([1] * (2 + i)), k, *([1] * (2 - i)))
        for i, k in enumerate(shape)
    ]


def _window_mask(ar, shape, s: int, k: int, gen, dev) -> torch.Tensor:
    """Bool (k, 1, D, H, W): one random cube window of side ``s`` per sample."""
    mask = torch.ones((k, 1, 1, 1, 1), dtype=torch.bool, device=dev)
    for a, size in zip(ar, shape, strict=True):
        c = torch.randint(0, size - s + 1, (k,), generator=gen, device=dev).view(k, 1, 1, 1, 1)
        mask = mask & (a >= c) & (a < c + s)
    return mask


def l2_pattern(s: int, axis: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """The unit-norm L2 pattern of a cube window (s, s, s); see the module docstring.

    Two halves along ``axis`` (sizes ``s // 2`` and ``s - s // 2``) of opposite sign; in
    each, voxel value ``sum_{r >= c}^{R} 1 / (r + 1)^2`` with ``c`` the Chebyshev
    distance to the half's centre voxel and ``R`` the largest such distance.
    """

    def half(shape: tuple[int, int, int]) -> torch.Tensor:
        grids = torch.meshgrid(
            *[torch.arange(k, device=device, dtype=torch.float64) for k in shape], indexing="ij"
        )
        cheb = torch.stack([(g - (k // 2)).abs() for g, k in zip(grids, shape, strict=True)])
        c = cheb.amax(0).long()
        big = int(c.max()) if c.numel() else 0
        w = 1.0 / (torch.arange(big + 1, device=device, dtype=torch.float64) + 1) ** 2
        tail = torch.flip(torch.cumsum(torch.flip(w, [0]), 0), [0])  # sum_{r >= c}
        return tail[c]

    if s == 1:
        out = torch.ones((1, 1, 1), dtype=torch.float64, device=device)
    else:
        a = s // 2
        sh1 = [s, s, s]
        sh2 = [s, s, s]
        sh1[axis], sh2[axis] = a, s - a
        out = torch.cat([half(tuple(sh1)), -half(tuple(sh2))], dim=axis)
    return (out / torch.linalg.vector_norm(out)).float()


def _pattern_in_window(mask: torch.Tensor, s: int, gen) -> torch.Tensor:
    """(k, 1, D, H, W): the L2 pattern (random split axis per sample) inside each window."""
    k = mask.shape[0]
    dev = mask.device
    axes = torch.randint(0, 3, (k,), generator=gen, device=dev)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=dev)
    for ax in range(3):
        rows = torch.nonzero(axes == ax).flatten()
        if rows.numel() == 0:
            continue
        pat = l2_pattern(s, ax, dev).flatten()
        sub = out[rows]
        sub[mask[rows]] = pat.repeat(rows.numel())  # row-major order within each window
        out[rows] = sub
    return out


def _l2_start(x: torch.Tensor, eps: float, gen) -> torch.Tensor:
    """The L2 start: a grid of patterns with random signs, total norm ``eps``."""
    n = x.shape[0]
    d, h, w = x.shape[-3:]
    dev = x.device
    t = max(min(d, h, w) // 5, 1)
    delta = torch.zeros_like(x)
    for z0 in range(0, d - t + 1, t):
        for y0 in range(0, h - t + 1, t):
            for x0 in range(0, w - t + 1, t):
                ax = int(torch.randint(0, 3, (1,), generator=gen, device=dev))
                pat = l2_pattern(t, ax, dev).to(x.dtype)
                sign = torch.randint(0, 2, (n,), generator=gen, device=dev).to(x.dtype) * 2 - 1
                delta[:, :, z0 : z0 + t, y0 : y0 + t, x0 : x0 + t] = pat * sign.view(n, 1, 1, 1, 1)
    return delta * eps / _l2(delta).clamp_min(1e-12)
