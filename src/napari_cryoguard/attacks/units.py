"""Budget units: ``eps`` in normalised units or as a fraction of each sample's range.

The papers state their budgets for images in [0, 1]: MIRST-DM's ``eps = 5/255`` and IMA's
``eps_max`` are fractions of the intensity range, and the RAT paper's attacks come from
foolbox, whose FGSM/DeepFool budgets are scaled by the model's value range. Our
subtomograms are z-scored, where a simulated 28^3 cube spans about 9 units, so the same
number means a ~9x larger perturbation in the papers' sense if read in normalised units.

Two units (``eps_unit``):

``"normalized"`` (default)
    Budgets are in the units of the data (z-scored subtomograms: standard deviations).
``"range"``
    Budgets are fractions of each sample's own intensity range ``r_i = max(x_i) -
    min(x_i)`` of the clean sample: ``eps = 5/255`` allows ``||delta_i|| <= 5/255 * r_i``
    (in the attack's norm, L-inf or L2). Every budget-like parameter of the attack
    (``eps``, ``step_size``, ``eps_max`` of the noise attacks, ...) is read in the same
    unit.

How ``"range"`` is run: in per-sample rescaled coordinates. Each sample is divided by
its range, ``u_i = x_i / r_i`` (so it spans exactly 1), the model is wrapped as
``g(u) = f(u * r)`` (:class:`RangeScaledModel`), the attack runs unchanged on ``(g, u)``
with the budget read in normalised units, and the result is mapped back,
``x_adv = x + (u_adv - u) * r``. A perturbation of norm ``eps`` in ``u`` is one of norm
``eps * r_i`` in ``x``, for L-inf and L2 alike, and the model sees exactly what it would
see in ``x``. Predictions, probabilities and norms of the returned
:class:`~napari_cryoguard.attacks.base.AttackResult` are recomputed in data units (so
``norm_linf``, ``norm_l2`` are in data units; ``extras["intensity_range"]`` holds
``r_i``, and ``bpgd`` margins are converted to data units).

Attacks that call the model on a subset of the batch's rows (CW, DeepFool, the noise
attacks, Square, BPGD, ...) cannot be given a per-row scale by a wrapper that only sees
the subset; the wrapper detects such a call and the attack is rerun sample by sample
(each with its own scalar range, which any subset call honours), and the attack class is
remembered so later calls go sample by sample at once. Explicit ``bounds=(lo, hi)`` are
also run sample by sample (the box becomes ``(lo / r_i, hi / r_i)``).

Defenses take ``eps_unit`` in their parameters and pass it to
:func:`range_coordinates` around their inner maximisation
(:func:`napari_cryoguard.defenses.at.pgd_trajectory`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
from torch import nn

from napari_cryoguard.errors import CryoGuardError

if TYPE_CHECKING:
    from napari_cryoguard.attacks.base import Attack, AttackResult

__all__ = [
    "DEFAULT_EPS_UNIT",
    "EPS_UNITS",
    "EpsUnit",
    "RangeCoordinates",
    "RangeScaledModel",
    "call_in_range_units",
    "check_eps_unit",
    "range_coordinates",
    "sample_range",
]

#: The budget units (a field type of the parameter dataclasses); see the module docstring.
EpsUnit = Literal["normalized", "range"]
#: The budget units, as a tuple.
EPS_UNITS: tuple[str, ...] = get_args(EpsUnit)
#: The default unit of every attack and defense.
DEFAULT_EPS_UNIT = "normalized"

#: Attack names seen calling the model on a subset of rows (run sample by sample).
_ROW_SUBSET_ATTACKS: set[str] = set()


def check_eps_unit(value: Any, where: str = "eps_unit") -> str:
    """Return ``value`` if it is one of :data:`EPS_UNITS`, else raise ``CryoGuardError``."""
    if value not in EPS_UNITS:
        raise CryoGuardError(
            f"{where} must be one of {', '.join(map(repr, EPS_UNITS))}, got {value!r}"
        )
    return str(value)


def sample_range(x: torch.Tensor) -> torch.Tensor:
    """Per-sample intensity range ``max - min`` (N,) of a batch (N, ...).

    Raises ``CryoGuardError`` for a sample whose range is 0 (a constant volume has no
    range to take a fraction of).
    """
    f = x.detach().flatten(1)
    r = f.amax(1) - f.amin(1)
    bad = torch.nonzero(~(r > 0)).flatten().tolist()
    if bad:
        raise CryoGuardError(
            f"eps_unit='range': sample(s) {bad[:10]} have an intensity range (max - min) of "
            "0; a budget as a fraction of the range needs non-constant samples"
        )
    return r


class _RowSubsetCall(Exception):
    """Internal: the model was called on a different number of rows than the batch."""


class RangeScaledModel(nn.Module):
    """``g(u) = f(u * r)``: the model in coordinates where each sample spans 1.

    ``scale`` is (N,) (one range per row of the batch) or (1,) (one sample, any batch
    of its copies). A call with another number of rows than ``scale`` raises an
    internal exception (see the module docstring).
    """

    def __init__(self, model: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.scale = scale.detach().reshape(-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n = self.scale.numel()
        if n > 1 and u.shape[0] != n:
            raise _RowSubsetCall
        return self.model(u * self.scale.reshape(-1, *([1] * (u.dim() - 1))).to(u.dtype))


@dataclass
class RangeCoordinates:
    """A batch in per-sample range coordinates (:func:`range_coordinates`).

    Attributes
    ----------
    x
        The batch in data units (N, 1, D, H, W).
    u
        ``x / r`` per sample.
    scale
        ``r`` (N,): each sample's intensity range.
    model
        :class:`RangeScaledModel` of the model with ``scale``.
    """

    x: torch.Tensor
    u: torch.Tensor
    scale: torch.Tensor
    model: RangeScaledModel

    def to_data(self, u_adv: torch.Tensor) -> torch.Tensor:
        """``x + (u_adv - u) * r``: an adversarial batch back in data units (detached)."""
        s = self.scale.reshape(-1, *([1] * (self.x.dim() - 1)))
        return (self.x + (u_adv.detach() - self.u) * s).detach()


def range_coordinates(model: nn.Module, x: torch.Tensor) -> RangeCoordinates:
    """The batch ``x`` and ``model`` in per-sample range coordinates (for defenses)."""
    scale = sample_range(x)
    u = x.detach() / scale.reshape(-1, *([1] * (x.dim() - 1)))
    return RangeCoordinates(x=x.detach(), u=u, scale=scale, model=RangeScaledModel(model, scale))


def _eval_logits(model: nn.Module, *batches: torch.Tensor) -> list[torch.Tensor]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return [model(b).float() for b in batches]
    finally:
        for m, mode in modes:
            m.training = mode


def _back(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    u: torch.Tensor,
    scale: torch.Tensor,
    res: AttackResult,
) -> AttackResult:
    from napari_cryoguard.attacks.ops import clamp, per_sample, resolve_bounds

    s = per_sample(scale, x.dim())
    x_adv = x + (res.x_adv.to(x.device) - u) * s
    box = resolve_bounds(attack.params.bounds, x)
    x_adv = clamp(x_adv, box).detach()
    logits0, logits1 = _eval_logits(model, x, x_adv)
    extras = {k: v.to(x.device) for k, v in res.extras.items()}
    if res.margins is not None:
        extras["margins"] = res.margins.to(x.device) * scale
    extras["intensity_range"] = scale
    return attack._result(x, y, x_adv, logits0, logits1, res.steps, extras, res.zero_grad)


def _inner(attack: Attack, bounds: Any) -> Attack:
    params = dataclasses.replace(attack.params, eps_unit="normalized", bounds=bounds)
    return type(attack)(params)


def _per_sample(
    attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor
) -> AttackResult:
    from napari_cryoguard.attacks.base import AttackResult

    bounds = attack.params.bounds
    out = []
    for i in range(x.shape[0]):
        si = scale[i : i + 1]
        b = bounds
        if isinstance(bounds, tuple):
            b = (float(bounds[0]) / float(si), float(bounds[1]) / float(si))
        xi = x[i : i + 1]
        ui = xi / float(si)
        res = _inner(attack, b)(RangeScaledModel(model, si), ui, y[i : i + 1])
        out.append(_back(attack, model, xi, y[i : i + 1], ui, si, res))
    return AttackResult.concatenate(out)


def call_in_range_units(attack: Attack, model: nn.Module, x: Any, y: Any) -> AttackResult:
    """Run ``attack`` (whose ``params.eps_unit`` is ``"range"``) in range coordinates.

    Called by :meth:`napari_cryoguard.attacks.base.Attack.__call__`; see the module
    docstring. Returns the same result contract, in data units.
    """
    from napari_cryoguard.attacks.ops import as_batch, as_labels, model_device, per_sample

    device = model_device(model)
    xb = as_batch(x, device)
    yb = as_labels(y, xb.shape[0], device)
    scale = sample_range(xb)
    name = type(attack).name
    if isinstance(attack.params.bounds, tuple) or name in _ROW_SUBSET_ATTACKS:
        return _per_sample(attack, model, xb, yb, scale)
    u = xb / per_sample(scale, xb.dim())
    try:
        res = _inner(attack, attack.params.bounds)(RangeScaledModel(model, scale), u, yb)
    except _RowSubsetCall:
        _ROW_SUBSET_ATTACKS.add(name)
        return _per_sample(attack, model, xb, yb, scale)
    return _back(attack, model, xb, yb, u, scale, res)
