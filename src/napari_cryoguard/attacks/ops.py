"""Tensor helpers of the attacks: inputs, norms and balls, bounds, losses, gradients.

Public so that defenses (which generate adversarial examples while training) and new
attacks use the same building blocks as the built-in attacks:

* inputs: :func:`as_batch`, :func:`as_labels`, :func:`check_logits`,
  :func:`model_device`, :func:`model_layout`;
* norms and balls: :func:`flat_norm`, :func:`per_sample`, :func:`project`,
  :func:`normalized_step`, :func:`random_start`, :func:`make_generator`;
* value bounds: :func:`resolve_bounds`, :func:`clamp`, :func:`box_rows`;
* objectives and gradients: :func:`other_max`, :func:`margin`, :func:`objective`,
  :func:`input_gradient`, :func:`zero_gradient_mask`.

Shapes: batches are (N, 1, D, H, W) float32, per-sample values (N,). Norms are
``"linf"`` or ``"l2"`` (:data:`napari_cryoguard.params.Norm`; ``flat_norm`` also
takes ``"l1"``), losses ``"ce"`` or ``"margin"`` (:data:`napari_cryoguard.params.Loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "Bounds",
    "Box",
    "as_batch",
    "as_labels",
    "box_rows",
    "check_logits",
    "clamp",
    "flat_norm",
    "input_gradient",
    "make_generator",
    "margin",
    "model_device",
    "model_layout",
    "normalized_step",
    "objective",
    "other_max",
    "per_sample",
    "project",
    "random_start",
    "resolve_bounds",
    "zero_gradient_mask",
]

#: value bounds as a user gives them: None, ``"sample"`` or ``(lo, hi)``
Bounds = tuple[float, float] | str | None
#: value bounds resolved against a batch (:func:`resolve_bounds`): tensors or None
Box = tuple[torch.Tensor, torch.Tensor] | None


# --------------------------------------------------------------------------- inputs
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


def project(delta: torch.Tensor, norm: str, eps: float | torch.Tensor) -> torch.Tensor:
    """Project a perturbation batch onto the ``norm`` ball of radius ``eps``.

    ``eps``: one radius, or a tensor (N,) of one radius per sample (IMA's margins).
    """
    if isinstance(eps, torch.Tensor):
        e = per_sample(eps, delta.dim())
        if norm == "linf":
            return torch.maximum(torch.minimum(delta, e), -e)
    elif norm == "linf":
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


# --------------------------------------------------------------------------- the model
def model_layout(model: nn.Module) -> torch.memory_format:
    """The memory format of the model's weights (batches are converted to it once)."""
    from napari_cryoguard.device import model_memory_format

    return model_memory_format(model)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_logits(logits: torch.Tensor, n: int, y: torch.Tensor) -> None:
    """Raise unless ``logits`` is (n, C) and every label is a class of the model."""
    if logits.dim() != 2 or logits.shape[0] != n:
        raise CryoGuardError(
            f"the model returned shape {tuple(logits.shape)}, expected logits ({n}, C)"
        )
    c = logits.shape[1]
    if bool((y < 0).any()) or bool((y >= c).any()):
        raise CryoGuardError(f"labels must be in [0, {c - 1}] for a {c}-class model")
