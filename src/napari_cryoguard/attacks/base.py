"""The attack contract: parameters, the result object, the base class, its facts and the registry.

Contract
--------
``run_attack(name, model, x, y, **params) -> AttackResult``

* ``model``: a classifier ``nn.Module`` returning logits (N, C). The attack runs on the
  device of the model's parameters, with the model in eval mode; the model's
  train/eval mode and the ``requires_grad`` flags of its parameters are restored
  afterwards. Weights are never changed (no optimizer touches them) and parameter
  ``.grad`` fields are left as they were: gradients are taken with
  ``torch.autograd.grad`` with respect to the input only.
* ``x``: subtomograms (N, 1, D, H, W) or (N, D, H, W), a tensor or numpy array,
  converted to float32. ``x`` is never mutated (the attack works on a copy).
* ``y``: the true labels (N,) -- or, with ``targeted=True``, the target labels.
* ``**params``: fields of the attack's parameter dataclass
  (:func:`get_attack_params`); unknown names raise :class:`CryoGuardError` listing
  the valid ones.

Budgets (``eps``) are in the units of the data, i.e. normalised units for z-scored
subtomograms (DESIGN.md, conventions). Value bounds are optional and explicit:
``bounds=None`` (default, no clamp -- cryo-ET data has no natural [0, 1] range),
``bounds="sample"`` (each sample's own min/max), or ``bounds=(lo, hi)``. There is never
an implicit clamp to [0, 1]. With explicit ``(lo, hi)`` bounds the input must lie within
them (clip the data first), otherwise the ball and the box could not both be honoured.

The returned :class:`AttackResult` holds the adversarial batch, the perturbation,
predictions and softmax probabilities before and after, a per-sample success mask
(untargeted: prediction differs from ``y``; targeted: prediction equals the target),
per-sample perturbation norms (in the attack's norm, plus L-inf and L2), the number
of iterations, and the parameters used. Tensors are detached and live on the model's
device (``attack_dataset`` returns them on the CPU); ``AttackResult.numpy()`` gives
numpy arrays.

Sanity checks (STYLE.md habit 7, after auto-attack's ``checks.py``): gradient attacks
check that the input gradient of the first step is non-zero for every sample; samples
whose gradient is exactly zero are flagged in ``AttackResult.zero_grad`` and a
``RuntimeWarning`` is issued, since a "robust" verdict for them may only mean the
gradient is masked.

Facts
-----
Each attack class declares what an evaluation needs to know about it, as class
attributes (:class:`Attack`): ``norms``, ``minimal`` (a minimal-perturbation search or
a bounded attack; :meth:`Attack.is_minimal` where it depends on the parameters, as for
``cw``), ``budget_field`` (the parameter a bounded run takes its budget in),
``search_limit`` / ``search_max`` (what caps a minimal search), ``budget_name`` and
``budget_unit`` (the axis label), ``distance_key`` (the per-sample distance of a minimal
attack) and ``quick_params`` (small, effective settings for the contract tests).
:mod:`napari_cryoguard.evaluate.suite` reads these, never the attack's name.

The tensor helpers the attacks are built from are in :mod:`napari_cryoguard.attacks.ops`;
the registry is :data:`ATTACKS`, a :class:`napari_cryoguard.registry.Registry`.

Example
-------
>>> from napari_cryoguard.attacks import run_attack
>>> res = run_attack("pgd", model, volumes, labels, eps=0.03, steps=10)  # doctest: +SKIP
>>> res.summary()["success_rate"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from napari_cryoguard.attacks.ops import (
    Bounds,
    as_batch,
    as_labels,
    check_logits,
    flat_norm,
    model_device,
    model_layout,
    resolve_bounds,
    zero_gradient_mask,
)
from napari_cryoguard.attacks.units import EpsUnit
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import Loss, Norm
from napari_cryoguard.registry import Registry, check_fields, number

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackParams",
    "AttackResult",
    "BallParams",
    "Bounds",
    "available_attacks",
    "get_attack_class",
    "get_attack_params",
    "make_attack",
    "register_attack",
    "run_attack",
]


# --------------------------------------------------------------------------- params
@dataclass
class AttackParams:
    """Fields shared by every attack.

    Attributes
    ----------
    bounds
        Value bounds of the adversarial volume: ``None`` (no clamp, default),
        ``"sample"`` (per-sample min/max of the clean input) or ``(lo, hi)``.
    eps_unit
        Unit of every budget-like parameter (``eps``, ``step_size``, ...):
        ``"normalized"`` (default: the data's units) or ``"range"`` (a fraction of each
        sample's intensity range max - min, as the papers' budgets for [0, 1] images);
        see :mod:`napari_cryoguard.attacks.units`.
    """

    bounds: tuple[float, float] | str | None = None
    eps_unit: EpsUnit = "normalized"

    def __post_init__(self) -> None:
        check_fields(self)  # number() ranges and Literal choices of every field
        b = self.bounds
        if b is None or b == "sample":
            return
        if isinstance(b, str):
            raise CryoGuardError(f"bounds must be None, 'sample' or (lo, hi), got {b!r}")
        try:
            lo, hi = (float(v) for v in b)
        except (TypeError, ValueError):
            raise CryoGuardError(f"bounds must be None, 'sample' or (lo, hi), got {b!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise CryoGuardError(f"bounds (lo, hi) need finite lo < hi, got {b!r}")
        self.bounds = (lo, hi)


@dataclass
class BallParams(AttackParams):
    """Fields of an attack bounded by a ball ``||x_adv - x||_norm <= eps``.

    Attributes
    ----------
    norm
        ``"linf"`` or ``"l2"``: the ball, and the norm results are reported in.
    eps
        Budget (the ball's radius) in the data's units (normalised units for z-scored
        subtomograms; an L2 budget is the norm of the whole cube), or with
        ``eps_unit="range"`` a fraction of each sample's intensity range.
    """

    norm: Norm = "linf"
    eps: float = number(0.03)


@dataclass
class StepParams(BallParams):
    """:class:`BallParams` of an iterative gradient attack with a fixed step.

    Attributes
    ----------
    step_size
        Step per iteration. ``None``: ``2.5 * eps / steps`` (Madry et al.; IMA writes it
        ``alpha * eps / N_PGD``).
    steps
        Iterations.
    loss
        ``"ce"`` (cross-entropy) or ``"margin"`` (CW margin).
    targeted
        Move towards the given target labels instead.
    """

    step_size: float | None = number(0.001)
    steps: int = number(10, integer=True)
    loss: Loss = "ce"
    targeted: bool = False

    def resolved_step(self) -> float:
        """``step_size``, or ``2.5 * eps / steps`` when it is None."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / max(self.steps, 1)


# --------------------------------------------------------------------------- result
@dataclass
class AttackResult:
    """What an attack returns (tensors detached, on one device).

    Attributes
    ----------
    name
        Registry name of the attack.
    x_adv
        Adversarial batch (N, 1, D, H, W) float32.
    perturbation
        ``x_adv - x`` (N, 1, D, H, W).
    labels
        The labels the attack used (N,): true labels, or targets when ``targeted``.
    targeted
        Whether ``labels`` are target labels.
    pred_before, pred_after
        Predicted classes (N,) on ``x`` and on ``x_adv``.
    probs_before, probs_after
        Softmax probabilities (N, C).
    success
        Bool (N,): untargeted, ``pred_after != labels``; targeted, ``pred_after == labels``.
    norm
        Per-sample perturbation norm in the attack's own norm (``norm_name``); for
        ``bpgd`` this is the margin estimate.
    norm_linf, norm_l2
        Per-sample L-inf and L2 norms of ``perturbation``.
    norm_name
        ``"linf"`` or ``"l2"``.
    steps
        Iterations the attack ran (the largest over the batch; per sample in
        ``extras["sample_steps"]`` where it varies).
    params
        The parameter dataclass used, as a dict.
    zero_grad
        Bool (N,): samples whose input gradient was exactly zero (gradient attacks).
    margins
        ``bpgd`` only: per-sample margin estimates (N,) in ``norm_name``.
    extras
        Further per-sample tensors (N, ...) of some attacks (documented there).
    indices
        Row indices into the dataset, for :func:`attack_dataset` with ``indices``.
    """

    name: str
    x_adv: torch.Tensor
    perturbation: torch.Tensor
    labels: torch.Tensor
    targeted: bool
    pred_before: torch.Tensor
    pred_after: torch.Tensor
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    success: torch.Tensor
    norm: torch.Tensor
    norm_linf: torch.Tensor
    norm_l2: torch.Tensor
    norm_name: str
    steps: int
    params: dict[str, Any]
    zero_grad: torch.Tensor
    margins: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    indices: np.ndarray | None = None

    _PER_SAMPLE: ClassVar[tuple[str, ...]] = (
        "x_adv",
        "perturbation",
        "labels",
        "pred_before",
        "pred_after",
        "probs_before",
        "probs_after",
        "success",
        "norm",
        "norm_linf",
        "norm_l2",
        "zero_grad",
    )

    def __len__(self) -> int:
        return int(self.x_adv.shape[0])

    @property
    def zero_grad_samples(self) -> list[int]:
        """Indices (into this result) of samples whose input gradient was exactly zero."""
        return [int(i) for i in torch.nonzero(self.zero_grad).flatten().tolist()]

    def to(self, device: torch.device | str) -> AttackResult:
        """A copy with every tensor moved to ``device``."""
        moved = {k: getattr(self, k).to(device) for k in self._PER_SAMPLE}
        margins = self.margins.to(device) if self.margins is not None else None
        extras = {k: v.to(device) for k, v in self.extras.items()}
        return dataclasses.replace(self, **moved, margins=margins, extras=extras)

    def numpy(self) -> dict[str, Any]:
        """Every per-sample field as a numpy array (on the CPU), plus name/params/steps."""
        out: dict[str, Any] = {k: getattr(self, k).detach().cpu().numpy() for k in self._PER_SAMPLE}
        if self.margins is not None:
            out["margins"] = self.margins.detach().cpu().numpy()
        for k, v in self.extras.items():
            out[k] = v.detach().cpu().numpy()
        out.update(
            name=self.name,
            params=dict(self.params),
            steps=self.steps,
            norm_name=self.norm_name,
            targeted=self.targeted,
        )
        return out

    def summary(self) -> dict[str, Any]:
        """Headline numbers: success rate, norms, accuracy before and after.

        ``mean_norm`` / ``median_norm`` are over the successful samples (NaN if none),
        ``mean_norm_all`` over all. For targeted attacks ``accuracy_*`` is the fraction
        predicted as the target (the "targeted hit rate").
        """
        n = len(self)
        succ = self.success.bool()
        norms = self.norm.double()
        ok = norms[succ]
        out: dict[str, Any] = {
            "attack": self.name,
            "n": n,
            "targeted": self.targeted,
            "norm": self.norm_name,
            "success_rate": float(succ.double().mean()) if n else float("nan"),
            "mean_norm": float(ok.mean()) if ok.numel() else float("nan"),
            "median_norm": float(ok.median()) if ok.numel() else float("nan"),
            "mean_norm_all": float(norms.mean()) if n else float("nan"),
            "accuracy_before": float((self.pred_before == self.labels).double().mean())
            if n
            else float("nan"),
            "accuracy_after": float((self.pred_after == self.labels).double().mean())
            if n
            else float("nan"),
            "steps": self.steps,
            "zero_grad_samples": int(self.zero_grad.sum()),
        }
        if self.margins is not None and n:
            out["mean_margin"] = float(self.margins.double().mean())
        return out

    @classmethod
    def concatenate(cls, results: Sequence[AttackResult]) -> AttackResult:
        """Join results of the same attack computed on consecutive batches."""
        if not results:
            raise CryoGuardError("no attack results to concatenate")
        first = results[0]
        cat = {k: torch.cat([getattr(r, k) for r in results]) for k in cls._PER_SAMPLE}
        margins = (
            torch.cat([r.margins for r in results])  # type: ignore[misc]
            if first.margins is not None
            else None
        )
        extras = {k: torch.cat([r.extras[k] for r in results]) for k in first.extras}
        idx = (
            np.concatenate([r.indices for r in results])  # type: ignore[misc]
            if first.indices is not None
            else None
        )
        return dataclasses.replace(
            first,
            **cat,
            steps=max(r.steps for r in results),
            margins=margins,
            extras=extras,
            indices=idx,
        )


# --------------------------------------------------------------------------- base class
class Attack:
    """Base class: subclasses set ``name``/``params_cls`` (via :func:`register_attack`)
    and implement :meth:`_run`.

    ``__call__(model, x, y)`` prepares the inputs (copy, device, bounds), switches the
    model to eval mode and freezes its parameters' ``requires_grad``, calls ``_run``,
    restores the model, and builds the :class:`AttackResult`.
    """

    name: ClassVar[str] = ""
    params_cls: ClassVar[type[AttackParams]] = AttackParams
    #: the norm results are reported in, unless the params carry a ``norm`` field
    default_norm: ClassVar[str] = "linf"
    #: whether the attack uses gradients (decision-based attacks set False)
    uses_gradients: ClassVar[bool] = True

    # -- facts an evaluation reads (napari_cryoguard.evaluate.suite): no name branches
    #: the norms the attack offers (the choices of its ``norm`` field, or ``default_norm``)
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    #: a minimal-perturbation attack (one run, a sample counts as fooled at budget ``b``
    #: when its distance is ``<= b``) rather than a bounded one (one run per budget)
    minimal: ClassVar[bool] = False
    #: the parameter a bounded attack takes each budget in (None: none)
    budget_field: ClassVar[str | None] = "eps"
    #: minimal attacks: the parameter that caps the search, set (unless given) to the
    #: largest budget of the curve (None: an unbounded search)
    search_limit: ClassVar[str | None] = None
    #: the largest value ``search_limit`` takes (None: no cap)
    search_max: ClassVar[float | None] = None
    #: what the budget measures, in axis labels: ``"eps"``, ``"margin"``, ...
    budget_name: ClassVar[str] = "eps"
    #: the budget's unit: ``"normalized"`` (the data's units, or the range with
    #: ``eps_unit="range"``; the label names the norm) or ``"fraction"`` (unitless)
    budget_unit: ClassVar[str] = "normalized"
    #: minimal attacks: the ``extras`` key holding each sample's distance (None: the
    #: margins where the attack returns them, else the perturbation norm)
    distance_key: ClassVar[str | None] = None
    #: small, effective parameters for the contract tests (a tiny model, 16^3 cubes);
    #: every registered attack declares them (tests/attacks/test_attack_contract.py)
    quick_params: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def is_minimal(cls, params: Mapping[str, Any]) -> bool:
        """Whether the attack, with these parameters, is minimal (see :attr:`minimal`)."""
        return cls.minimal

    @classmethod
    def norm_of(cls, params: Mapping[str, Any]) -> str:
        """The norm the attack runs in with these parameters (its default otherwise)."""
        default = getattr(cls.params_cls, "norm", cls.default_norm)
        return str(params.get("norm", default))

    @classmethod
    def budget_label(cls, params: Mapping[str, Any]) -> str:
        """The name of the budget axis, e.g. ``"eps (L-inf, normalised units)"``."""
        if cls.budget_unit == "fraction":
            return cls.budget_name
        norm = "L2" if cls.norm_of(params) == "l2" else "L-inf"
        if params.get("eps_unit") == "range":
            unit = "fraction of each sample's intensity range"
        else:
            unit = "normalised units"
        return f"{cls.budget_name} ({norm}, {unit})"

    @classmethod
    def cell_params(
        cls, params: Mapping[str, Any], budget: float, minimal: bool | None = None
    ) -> dict[str, Any]:
        """``params`` for one evaluation run at ``budget``: a bounded attack takes it in
        :attr:`budget_field`; a minimal one in :attr:`search_limit` (unless given)."""
        out = dict(params)
        if minimal is None:
            minimal = cls.is_minimal(params)
        if not minimal:
            if cls.budget_field is not None:
                out[cls.budget_field] = float(budget)
        elif cls.search_limit is not None:
            cap = float(budget) if cls.search_max is None else min(float(budget), cls.search_max)
            out.setdefault(cls.search_limit, cap)
        return out

    @classmethod
    def distance(cls, res: AttackResult) -> torch.Tensor:
        """Per sample, the distance a minimal attack reached (N,)."""
        if cls.distance_key is not None:
            return res.extras[cls.distance_key]
        return res.margins if res.margins is not None else res.norm

    def __init__(self, params: AttackParams | None = None, **kwargs: Any) -> None:
        if params is not None and kwargs:
            raise CryoGuardError("give either a params dataclass or keyword parameters, not both")
        if params is None:
            params = build_params(self.params_cls, self.name, kwargs)
        elif not isinstance(params, self.params_cls):
            raise CryoGuardError(
                f"params for {self.name} must be a {self.params_cls.__name__}, "
                f"got {type(params).__name__}"
            )
        self.params = params
        self._zero_grad: torch.Tensor | None = None

    # -- for subclasses
    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        box: tuple[torch.Tensor, torch.Tensor] | None,
        logits0: torch.Tensor,
    ) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        """Return (x_adv, steps, extras). ``x`` may be read, never written."""
        raise NotImplementedError

    def _clean_logits(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) float32 of the clean batch, validated against ``y``.

        Subclasses that need the input gradient at ``x`` anyway (FGSM) override this to
        get both from one forward pass.
        """
        with torch.no_grad():
            logits = model(x).float()
        check_logits(logits, x.shape[0], y)
        return logits

    def _adv_logits(self, model: nn.Module, x_adv: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) float32 of the adversarial batch (one forward pass, no gradient).

        Subclasses that already hold them (PGD with restarts) return those instead.
        """
        with torch.no_grad():
            return model(x_adv).float()

    def _note_gradient(self, grad: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Record samples whose first input gradient is exactly zero."""
        if self._zero_grad is None:
            return
        zero = zero_gradient_mask(grad)
        if rows is None:
            self._zero_grad |= zero
        else:
            self._zero_grad[rows] |= zero

    @property
    def norm_name(self) -> str:
        return str(getattr(self.params, "norm", self.default_norm))

    @property
    def targeted(self) -> bool:
        return bool(getattr(self.params, "targeted", False))

    # -- the contract
    def __call__(self, model: nn.Module, x: Any, y: Any) -> AttackResult:
        if getattr(self.params, "eps_unit", "normalized") == "range":
            from napari_cryoguard.attacks.units import call_in_range_units

            return call_in_range_units(self, model, x, y)  # per-sample rescaled coordinates
        # normal autograd even when called under torch.no_grad() / inference_mode()
        with torch.inference_mode(False), torch.enable_grad():
            device = model_device(model)
            xb = as_batch(x, device, model_layout(model))
            yb = as_labels(y, xb.shape[0], device)
            box = resolve_bounds(self.params.bounds, xb)
            modes = [(m, m.training) for m in model.modules()]
            flags = [(p, p.requires_grad) for p in model.parameters()]
            self._zero_grad = torch.zeros(xb.shape[0], dtype=torch.bool, device=device)
            model.eval()
            try:
                for p, _ in flags:
                    p.requires_grad_(False)
                logits0 = self._clean_logits(model, xb, yb)
                x_adv, steps, extras = self._run(model, xb, yb, box, logits0)
                x_adv = x_adv.detach()
                logits1 = self._adv_logits(model, x_adv)
            finally:
                for p, flag in flags:
                    p.requires_grad_(flag)
                for m, mode in modes:  # per submodule: mixed modes come back as they were
                    m.training = mode
        zero = self._zero_grad
        self._zero_grad = None
        if self.uses_gradients and bool(zero.any()):
            idx = torch.nonzero(zero).flatten().tolist()
            warnings.warn(
                f"{self.name}: the input gradient is exactly zero for {len(idx)} of "
                f"{xb.shape[0]} samples (indices {idx[:10]}{'...' if len(idx) > 10 else ''}); "
                "their robustness may only reflect a masked gradient",
                RuntimeWarning,
                stacklevel=3,
            )
        return self._result(xb, yb, x_adv, logits0, logits1, steps, extras, zero)

    def _result(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        logits0: torch.Tensor,
        logits1: torch.Tensor,
        steps: int,
        extras: dict[str, torch.Tensor],
        zero: torch.Tensor,
    ) -> AttackResult:
        pert = x_adv - x
        pred0 = logits0.argmax(1)
        pred1 = logits1.argmax(1)
        success = pred1 == y if self.targeted else pred1 != y
        extras = dict(extras)
        margins = extras.pop("margins", None)
        norm_l2 = flat_norm(pert, "l2")
        norm_linf = flat_norm(pert, "linf")
        norm = (
            margins if margins is not None else (norm_l2 if self.norm_name == "l2" else norm_linf)
        )
        return AttackResult(
            name=self.name,
            x_adv=x_adv,
            perturbation=pert,
            labels=y,
            targeted=self.targeted,
            pred_before=pred0,
            pred_after=pred1,
            probs_before=torch.softmax(logits0, 1),
            probs_after=torch.softmax(logits1, 1),
            success=success,
            norm=norm,
            norm_linf=norm_linf,
            norm_l2=norm_l2,
            norm_name=self.norm_name,
            steps=int(steps),
            params=dataclasses.asdict(self.params),
            zero_grad=zero,
            margins=margins,
            extras=extras,
        )


# --------------------------------------------------------------------------- registry
#: Every attack, by name. Built-in attacks live one per module of this package and are
#: found by importing its modules (all but the infrastructure ones named here).
ATTACKS: Registry[type[Attack]] = Registry(
    "attack",
    package="napari_cryoguard.attacks",
    private=("base", "ops", "dataset", "units"),
    base=Attack,
    required_fields=("bounds",),
)
_REGISTRY = ATTACKS.entries
_A = TypeVar("_A", bound=type[Attack])


def register_attack(name: str, params_cls: type[AttackParams]) -> Callable[[_A], _A]:
    """Class decorator: register an :class:`Attack` subclass under ``name``.

    Sets ``cls.name`` and ``cls.params_cls``; ``params_cls`` must be a dataclass
    (normally a subclass of :class:`AttackParams`, which supplies ``bounds``).
    """
    return ATTACKS.register(name, params_cls)


def available_attacks() -> list[str]:
    """Names of all registered attacks, sorted."""
    return ATTACKS.names()


def get_attack_class(name: str) -> type[Attack]:
    """The :class:`Attack` subclass registered as ``name``."""
    return ATTACKS.get(name)


def get_attack_params(name: str) -> type[AttackParams]:
    """The parameter dataclass of attack ``name`` (for GUI forms and CLI options)."""
    return ATTACKS.params_class(name)


def build_params(params_cls: type[AttackParams], name: str, params: dict[str, Any]) -> AttackParams:
    """Instantiate ``params_cls`` from keywords, rejecting unknown names clearly."""
    return ATTACKS.build(params_cls, name, params)


def make_attack(name: str, **params: Any) -> Attack:
    """An attack instance by name, with its parameters validated."""
    cls = get_attack_class(name)
    return cls(build_params(cls.params_cls, cls.name, params))


def run_attack(name: str, model: nn.Module, x: Any, y: Any, **params: Any) -> AttackResult:
    """Run the registered attack ``name`` on a batch; see the module docstring.

    Parameters
    ----------
    name
        Attack name (:func:`available_attacks`), e.g. ``"pgd"``.
    model
        Classifier returning logits (N, C); run on its parameters' device.
    x
        (N, 1, D, H, W) or (N, D, H, W) subtomograms, tensor or numpy.
    y
        True labels (N,), or target labels with ``targeted=True``.
    **params
        Fields of ``get_attack_params(name)``.

    Returns
    -------
    AttackResult
    """
    return make_attack(name, **params)(model, x, y)
