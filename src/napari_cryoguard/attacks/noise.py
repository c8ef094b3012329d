"""Decision-based noise attacks: additive uniform noise and salt-and-pepper noise.

Source: Wu et al., RAT (IEEE BIBM 2019) section IV.C --
"Additive Uniform Noise Attack: the standard deviation of noise gradually increases
until misclassified"; "Salt and Pepper Noise Attack repeatedly adds the salt and pepper
noise to the image until misclassified". Both are decision-based (they use only the
predicted labels, no gradients; RAT section IV.C, ref. [40]): the model is only ever
called under ``torch.no_grad()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_cryoguard.attacks import ops
from napari_cryoguard.attacks.base import Attack, AttackParams, register_attack
from napari_cryoguard.params import Norm
from napari_cryoguard.registry import number

__all__ = ["SaltPepper", "SaltPepperParams", "UniformNoise", "UniformNoiseParams"]


@dataclass
class UniformNoiseParams(AttackParams):
    """Parameters of :class:`UniformNoise`.

    Attributes
    ----------
    norm
        ``"linf"``: noise uniform in ``[-e, e]`` per voxel; ``"l2"``: uniform noise rescaled
        to L2 norm ``e`` (foolbox's L2 additive uniform noise).
    eps_max
        Largest amplitude tried, normalised units (1.0 = one standard deviation of a
        z-scored subtomogram for L-inf).
    steps
        Amplitudes tried: ``eps_max * k / steps`` for ``k = 1 .. steps``.
    repeats
        Independent noise draws per amplitude.
    seed
        Seed of the noise (None: torch's global RNG).
    """

    norm: Norm = "linf"
    eps_max: float = number(1.0)
    steps: int = number(50, minimum=1, integer=True)
    repeats: int = number(1, minimum=1, integer=True)
    seed: int | None = None


class _DecisionAttack(Attack):
    """Shared loop: grow the noise level until each sample is misclassified."""

    uses_gradients = False
    minimal = True
    distance_key = "level"  # the noise level that fooled each sample

    def _levels(self) -> list[float]:
        raise NotImplementedError

    def _perturb(self, x, level, box, gen):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        p = self.params
        gen = ops.make_generator(p.seed, x.device)
        n = x.shape[0]
        x_adv = x.clone()
        level_found = torch.full((n,), float("nan"), device=x.device)
        active = torch.nonzero(logits0.argmax(1) == y).flatten()
        # already misclassified: nothing to add (level 0)
        level_found[logits0.argmax(1) != y] = 0.0
        used = 0
        with torch.no_grad():
            for level in self._levels():
                if active.numel() == 0:
                    break
                used += 1
                for _ in range(p.repeats):
                    if active.numel() == 0:
                        break
                    cand = self._perturb(x[active], level, ops.box_rows(box, active), gen)
                    fooled = model(cand).argmax(1) != y[active]
                    if bool(fooled.any()):
                        rows = active[fooled]
                        x_adv[rows] = cand[fooled]
                        level_found[rows] = level
                        active = active[~fooled]
        return x_adv, used, {"level": level_found}


@register_attack("uniform_noise", UniformNoiseParams)
class UniformNoise(_DecisionAttack):
    """Additive uniform noise of growing amplitude until misclassified (decision-based).

    Source: RAT paper section IV.C (Rauber et al.'s additive uniform noise attack).
    For each amplitude ``e`` on the grid, ``repeats`` draws of noise are added (then the
    bounds clamp, if any); the first draw that changes the prediction is kept, so each
    sample gets the smallest amplitude that worked. Samples never fooled are returned
    unchanged with ``success=False``. Distance: ``norm`` of the actual perturbation;
    ``extras["level"]``: the amplitude that worked (NaN if none, 0 if the clean sample
    is already misclassified). Untargeted only; no gradients are used.

    Example
    -------
    >>> run_attack("uniform_noise", model, x, y, eps_max=2.0, steps=40)  # doctest: +SKIP
    """

    norms = ("linf", "l2")
    budget_field = search_limit = "eps_max"
    budget_name = "noise amplitude"
    quick_params = {"eps_max": 1.0, "steps": 10, "seed": 0}

    def _levels(self) -> list[float]:
        p: UniformNoiseParams = self.params  # type: ignore[assignment]
        return [p.eps_max * k / p.steps for k in range(1, p.steps + 1)]

    def _perturb(self, x, level, box, gen):
        p: UniformNoiseParams = self.params  # type: ignore[assignment]
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
        if p.norm == "l2":
            u = ops.normalized_step(u, "l2")
        return ops.clamp(x + level * u, box)


@dataclass
class SaltPepperParams(AttackParams):
    """Parameters of :class:`SaltPepper`.

    Attributes
    ----------
    max_fraction
        Largest fraction of voxels replaced (1.0).
    steps
        Fractions tried: ``max_fraction * k / steps`` for ``k = 1 .. steps`` (100).
    repeats
        Independent draws per fraction.
    seed
        Seed of the noise (None: torch's global RNG).

    Salt/pepper values are the bounds when ``bounds=(lo, hi)``, else each sample's own
    maximum/minimum (with ``bounds=None`` or ``"sample"``).
    """

    max_fraction: float = number(1.0, maximum=1.0)
    steps: int = number(100, minimum=1, integer=True)
    repeats: int = number(1, minimum=1, integer=True)
    seed: int | None = None


@register_attack("salt_pepper", SaltPepperParams)
class SaltPepper(_DecisionAttack):
    """Salt-and-pepper noise on a growing fraction of voxels until misclassified.

    Source: RAT paper section IV.C (Rauber et al.'s salt and pepper noise attack).
    At fraction ``p`` each voxel is independently set to the maximum ("salt") with
    probability ``p / 2`` and to the minimum ("pepper") with probability ``p / 2``; the
    smallest fraction that changes the prediction is kept. Decision-based, untargeted.
    Distance reported: L2 of the perturbation (``norm``); ``extras["level"]`` is the
    fraction that worked (NaN if none) and ``extras["fraction_changed"]`` the fraction
    of voxels actually changed.

    Example
    -------
    >>> run_attack("salt_pepper", model, x, y, max_fraction=0.2, steps=40)  # doctest: +SKIP
    """

    default_norm = "l2"
    norms = ("l2",)
    budget_field = search_limit = "max_fraction"
    search_max = 1.0
    budget_name = "fraction of voxels replaced"
    budget_unit = "fraction"
    quick_params = {"steps": 10, "seed": 0}

    def _levels(self) -> list[float]:
        p: SaltPepperParams = self.params  # type: ignore[assignment]
        return [p.max_fraction * k / p.steps for k in range(1, p.steps + 1)]

    def _perturb(self, x, level, box, gen):
        if box is None:
            f = x.flatten(1)
            lo, hi = ops.per_sample(f.amin(1)), ops.per_sample(f.amax(1))
        else:
            lo, hi = box
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        out = torch.where(u < level / 2, lo.expand_as(x) if lo.dim() else lo, x)
        return torch.where((u >= level / 2) & (u < level), hi.expand_as(x) if hi.dim() else hi, out)

    def _run(self, model, x, y, box, logits0):  # type: ignore[override]
        x_adv, used, extras = super()._run(model, x, y, box, logits0)
        extras["fraction_changed"] = (x_adv != x).flatten(1).float().mean(1)
        return x_adv, used, extras
