"""The attack contract: parameters, the result object, the base class and the registry.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "Attack",
    "AttackParams",
    "AttackResult",
    "available_attacks",
    "get_attack_class",
    "get_attack_params",
    "make_attack",
    "register_attack",
    "run_attack",
]

Bounds = tuple[float, float] | str | None
_NORMS = ("linf", "l2")


# --------------------------------------------------------------------------- params
def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise ``CryoGuardError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise CryoGuardError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )


def check_number(
    name: str, value: Any, *, minimum: float = 0.0, strict: bool = False, integer: bool = False
) -> None:
    """Raise ``CryoGuardError`` unless ``value`` is a finite number >= (or >) ``minimum``."""
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise CryoGuardError(f"{name} must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise CryoGuardError(f"{name} must be {op} {minimum}, got {value!r}")


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
    eps_unit: str = "normalized"

    def __post_init__(self) -> None:
        from napari_cryoguard.attacks.units import check_eps_unit

        check_eps_unit(self.eps_unit)
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


# --------------------------------------------------------------------------- helpers
def as_batch(
    x: Any,
    device: torch.device | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """(N, 1, D, H, W) float32 copy of ``x`` ((N, D, H, W) or 5D, tensor or numpy).

    ``memory_format``: that of the model's weights
    (:func:`napari_cryoguard.device.model_memory_format`), so the batch is converted
    once here rather than by every layer.
    """
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dim() == 4:
        t = t.unsqueeze(1)
    if t.dim() != 5 or t.shape[1] != 1:
        raise CryoGuardError(
            f"expected subtomograms of shape (N, D, H, W) or (N, 1, D, H, W), got {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise CryoGuardError("no subtomograms to attack (empty batch)")
    if t.is_complex() or t.dtype == torch.bool:
        raise CryoGuardError(f"subtomograms must be real numbers, got dtype {t.dtype}")
    out = t.to(device=device, dtype=torch.float32, copy=True)
    if memory_format is not None:  # once per batch (no copy for one channel)
        from napari_cryoguard.device import to_model_layout

        out = to_model_layout(out, memory_format)
    if not torch.isfinite(out).all():
        raise CryoGuardError("subtomograms contain NaN or infinite values")
    return out


def as_labels(y: Any, n: int, device: torch.device | None = None) -> torch.Tensor:
    """(N,) int64 labels on ``device``."""
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    t = t.reshape(-1)
    if t.numel() == 1 and n > 1:
        t = t.expand(n)
    if t.numel() != n:
        raise CryoGuardError(f"expected {n} labels, got {t.numel()}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise CryoGuardError("labels must be integers")
    return t.to(device=device, dtype=torch.long).clone()


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm (N,) of a batch: ``"linf"``, ``"l2"`` or ``"l1"``."""
    f = t.flatten(1)
    if norm == "linf":
        return f.abs().amax(dim=1)
    if norm == "l2":
        return torch.linalg.vector_norm(f, ord=2, dim=1)
    if norm == "l1":
        return f.abs().sum(dim=1)
    raise CryoGuardError(f"unknown norm {norm!r}; use 'linf' or 'l2'")


def per_sample(v: torch.Tensor, ndim: int = 5) -> torch.Tensor:
    """Reshape a (N,) tensor to broadcast against (N, 1, D, H, W)."""
    return v.reshape(-1, *([1] * (ndim - 1)))


def resolve_bounds(bounds: Bounds, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Lower/upper bound tensors broadcastable to ``x``, or None for no clamp."""
    if bounds is None:
        return None
    if bounds == "sample":
        f = x.flatten(1)
        return per_sample(f.amin(1)), per_sample(f.amax(1))
    lo, hi = (float(v) for v in bounds)  # validated by AttackParams
    if bool((x < lo).any()) or bool((x > hi).any()):
        raise CryoGuardError(
            f"the input has values in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside "
            f"bounds ({lo:g}, {hi:g}); clip the data to the bounds first, or use "
            "bounds='sample' or bounds=None"
        )
    return x.new_tensor(lo), x.new_tensor(hi)


def clamp(x: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Clamp to the value box (no-op for None)."""
    if box is None:
        return x
    return torch.maximum(torch.minimum(x, box[1]), box[0])


def box_rows(
    box: tuple[torch.Tensor, torch.Tensor] | None, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The value box restricted to some rows (per-sample bounds are (N, 1, 1, 1, 1))."""
    if box is None:
        return None
    lo, hi = box
    return (lo[rows] if lo.dim() else lo, hi[rows] if hi.dim() else hi)


def project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project a perturbation batch onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = flat_norm(delta, "l2")
    factor = torch.where(n > eps, eps / n.clamp_min(1e-30), torch.ones_like(n))
    return delta * per_sample(factor, delta.dim())


def normalized_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size: sign (L-inf) or g / ||g||_2 (L2)."""
    if norm == "linf":
        return grad.sign()
    n = flat_norm(grad, "l2")
    return grad / per_sample(torch.where(n > 0, n, torch.ones_like(n)), grad.dim())


def random_start(
    x: torch.Tensor, norm: str, eps: float, gen: torch.Generator | None
) -> torch.Tensor:
    """A random perturbation in the ``norm`` ball: uniform (L-inf) or uniform in the L2 ball."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    d = g[0].numel()
    r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return normalized_step(g, "l2") * per_sample(r * eps, x.dim())


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A seeded ``torch.Generator`` on ``device`` (None: the global RNG)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def other_max(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``labels`` (N,)."""
    masked = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return masked.amax(dim=1)


def margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Carlini-Wagner margin, positive when the attack has succeeded (N,).

    Untargeted: ``max_{j != y} z_j - z_y``; targeted: ``z_t - max_{j != t} z_j``.
    """
    z = logits.gather(1, labels[:, None]).squeeze(1)
    if targeted:
        return z - other_max(logits, labels)
    return other_max(logits, labels) - z


def objective(
    logits: torch.Tensor, labels: torch.Tensor, loss: str, targeted: bool
) -> torch.Tensor:
    """Per-sample quantity an attack ascends (N,): cross-entropy or CW margin.

    ``"ce"``: ``CE(z, y)`` untargeted, ``-CE(z, t)`` targeted. ``"margin"``: :func:`margin`
    (the margin loss of IMA's 100-PGD evaluation and of CW, IMA paper "Evaluation").
    """
    if loss == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return -ce if targeted else ce
    if loss == "margin":
        return margin(logits, labels, targeted)
    raise CryoGuardError(f"unknown loss {loss!r}; use 'ce' or 'margin'")


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of ``fn(model(x)).sum()`` w.r.t. ``x``, logits), input gradient only."""
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    (grad,) = torch.autograd.grad(fn(logits).sum(), xg)
    return grad, logits.detach()


def zero_gradient_mask(grad: torch.Tensor) -> torch.Tensor:
    """Bool (N,): samples whose input gradient is exactly zero everywhere."""
    return grad.flatten(1).abs().amax(dim=1) == 0


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
            device = _model_device(model)
            xb = as_batch(x, device, _model_layout(model))
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


def _model_layout(model: nn.Module) -> torch.memory_format:
    from napari_cryoguard.device import model_memory_format

    return model_memory_format(model)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_logits(logits: torch.Tensor, n: int, y: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != n:
        raise CryoGuardError(
            f"the model returned shape {tuple(logits.shape)}, expected logits ({n}, C)"
        )
    c = logits.shape[1]
    if bool((y < 0).any()) or bool((y >= c).any()):
        raise CryoGuardError(f"labels must be in [0, {c - 1}] for a {c}-class model")


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Attack]] = {}
_A = TypeVar("_A", bound=type[Attack])


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def register_attack(name: str, params_cls: type[AttackParams]) -> Callable[[_A], _A]:
    """Class decorator: register an :class:`Attack` subclass under ``name``.

    Sets ``cls.name`` and ``cls.params_cls``; ``params_cls`` must be a dataclass
    (normally a subclass of :class:`AttackParams`, which supplies ``bounds``).
    """
    if not dataclasses.is_dataclass(params_cls) or "bounds" not in {
        f.name for f in dataclasses.fields(params_cls)
    }:
        raise TypeError(f"params_cls of attack {name!r} must be a dataclass with a bounds field")
    key = _key(name)

    def decorator(cls: _A) -> _A:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"an attack named {key!r} is already registered")
        cls.name = key
        cls.params_cls = params_cls
        _REGISTRY[key] = cls
        return cls

    return decorator


def _ensure_builtin() -> None:
    # importing the modules runs their @register_attack decorators
    from napari_cryoguard.attacks import (  # noqa: F401
        apgd,
        bpgd,
        cw,
        deepfool,
        gradient,
        noise,
        square,
    )


def available_attacks() -> list[str]:
    """Names of all registered attacks, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_attack_class(name: str) -> type[Attack]:
    """The :class:`Attack` subclass registered as ``name``."""
    _ensure_builtin()
    key = _key(name)
    if key not in _REGISTRY:
        raise CryoGuardError(f"unknown attack {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def get_attack_params(name: str) -> type[AttackParams]:
    """The parameter dataclass of attack ``name`` (for GUI forms and CLI options)."""
    return get_attack_class(name).params_cls


def build_params(params_cls: type[AttackParams], name: str, params: dict[str, Any]) -> AttackParams:
    """Instantiate ``params_cls`` from keywords, rejecting unknown names clearly."""
    fields = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise CryoGuardError(
            f"unknown parameter(s) {', '.join(unknown)} for attack {name!r}; "
            f"valid: {', '.join(f.name for f in dataclasses.fields(params_cls))}"
        )
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        return params_cls(**clean)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"invalid parameters for attack {name!r}: {exc}") from exc


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
