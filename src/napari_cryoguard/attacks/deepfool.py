"""DeepFool (Moosavi-Dezfooli et al. 2016) in L2 and L-inf: a minimal perturbation attack.

Source: Wu et al., RAT (IEEE BIBM 2019) section IV.C ("DeepFool
L2/L-inf approximates the model with a linear classifier and finds the closest
projection of the original image onto the space of misclassification").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, AttackParams, register_attack
from napari_cryoguard.params import Norm
from napari_cryoguard.registry import number

__all__ = ["DeepFool", "DeepFoolParams"]


@dataclass
class DeepFoolParams(AttackParams):
    """Parameters of :class:`DeepFool`.

    Attributes
    ----------
    norm
        ``"l2"`` or ``"linf"`` (RAT IV.C uses both).
    steps
        Maximum iterations per sample (50, as in the DeepFool paper's reference code
        and foolbox).
    overshoot
        The accumulated step is applied as ``(1 + overshoot) * r`` (0.02, DeepFool paper).
    candidates
        Number of classes considered: the top-``candidates`` of the clean logits
        (including the true class); ``None`` = all classes. Default 10 (DeepFool paper).
    """

    norm: Norm = "l2"
    steps: int = number(50, integer=True)
    overshoot: float = number(0.02)
    candidates: int | None = number(10, minimum=2, integer=True)


@register_attack("deepfool", DeepFoolParams)
class DeepFool(Attack):
    """DeepFool: iterate the closest linearised boundary crossing until the label flips.

    At each step, for every candidate class ``k != y`` with ``f_k = z_k - z_y`` and
    ``g_k = grad_x f_k``, the distance to the linearised boundary is
    ``|f_k| / ||g_k||_q`` (q = 2 for L2, q = 1 for L-inf, the dual norm); the closest
    ``k`` gives the step ``(|f_k| + 1e-4) / ||g_k||_2^2 * g_k`` (L2) or
    ``(|f_k| + 1e-4) / ||g_k||_1 * sign(g_k)`` (L-inf). Steps accumulate in ``r`` and
    ``x_adv = ops.clamp(x + (1 + overshoot) * r)``. Each sample stops as soon as it is
    misclassified (it is then dropped from the batch), so the perturbation is minimal
    in the sense of DeepFool. No budget: report ``norm`` (``norm``-distance).
    Untargeted only. ``extras["sample_steps"]``: iterations per sample.

    Example
    -------
    >>> res = run_attack("deepfool", model, x, y, norm="linf")  # doctest: +SKIP
    >>> res.norm[res.success].median()  # doctest: +SKIP
    """

    norms = ("l2", "linf")
    minimal = True
    budget_field = None  # no budget: the distance is the result
    quick_params = {"steps": 10}

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p: DeepFoolParams = self.params  # type: ignore[assignment]
        n, c = logits0.shape
        k = c if p.candidates is None else min(int(p.candidates), c)
        # candidate classes: the top-(k-1) of the clean logits other than y
        order = logits0.masked_fill(
            torch.nn.functional.one_hot(y, c).bool(), float("-inf")
        ).argsort(dim=1, descending=True)[:, : k - 1]

        x_adv = x.clone()
        r_total = torch.zeros_like(x)
        sample_steps = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        q = "l2" if p.norm == "l2" else "l1"
        used = 0
        for it in range(p.steps + 1):
            if active.numel() == 0:
                break
            xa = x_adv[active].detach().requires_grad_(True)
            logits = model(xa)
            keep = logits.detach().argmax(1) == y[active]  # not yet misclassified
            if it == p.steps or not bool(keep.any()):
                break
            active = active[keep]
            logits = logits[keep]
            z_y = logits.gather(1, y[active][:, None]).squeeze(1)
            cand = order[active]
            fs, grads = [], []
            for j in range(cand.shape[1]):
                f = logits.gather(1, cand[:, j : j + 1]).squeeze(1) - z_y
                (g,) = torch.autograd.grad(f.sum(), xa, retain_graph=j < cand.shape[1] - 1)
                fs.append(f.detach())
                grads.append(g[keep])
            f_all = torch.stack(fs, 1)  # (m, k-1)
            g_all = torch.stack(grads, 1)  # (m, k-1, 1, D, H, W)
            if it == 0:
                self._note_gradient(g_all.flatten(1), active)
            gnorm = ops.flat_norm(g_all.flatten(0, 1), q).view(f_all.shape)
            dist = torch.where(
                gnorm > 0,
                f_all.abs() / gnorm.clamp_min(1e-30),
                torch.full_like(f_all, float("inf")),
            )
            best = dist.argmin(1)
            rows = torch.arange(best.numel(), device=x.device)
            f_b = f_all[rows, best].abs() + 1e-4
            g_b = g_all[rows, best]
            gn_b = gnorm[rows, best]
            if p.norm == "l2":
                scale = f_b / gn_b.square().clamp_min(1e-30)
                direction = g_b
            else:
                scale = f_b / gn_b.clamp_min(1e-30)
                direction = g_b.sign()
            scale = torch.where(gn_b > 0, scale, torch.zeros_like(scale))
            r_total[active] += direction * ops.per_sample(scale)
            x_adv[active] = ops.clamp(
                x[active] + (1.0 + p.overshoot) * r_total[active], ops.box_rows(box, active)
            )
            sample_steps[active] += 1
            used = it + 1
        return x_adv, used, {"sample_steps": sample_steps}
