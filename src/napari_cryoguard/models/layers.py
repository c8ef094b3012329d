"""Layers shared by the classifiers: the drop-max pool of MIRST-DM and CPU fast paths.

Source: Sun et al., MIRST-DM (MICCAI 2022), section 3.2
("Drop-Max Layer"): in every pooling window the maximum is removed and the second
largest value is passed on, so that a perturbation that pushes one voxel up cannot
travel through the pooling layer on its own. The paper replaces only the *first*
max-pooling layer of a network; every model here exposes that as ``drop_max=True``.

CPU fast paths (same parameters, same values to float32 rounding, the same random
numbers): :func:`flatten_linear` (flatten + a large first fully connected layer on
oneDNN's inner product, the gradient handed back in the activation's memory format,
the weight gradient written into a reused buffer), :func:`dropout_as_contiguous`
(dropout whose mask is drawn exactly as for a contiguous tensor) and :func:`relu_cat`
(ReLU of a channel concatenation, its gradient handed back dense).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "DropMax3d",
    "drop_max_pool3d",
    "dropout_as_contiguous",
    "flatten_linear",
    "make_pool3d",
    "relu_cat",
    "relu_then_pool",
]

_IntOr3 = int | Sequence[int]


def _triple(value: _IntOr3, name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        out = (value, value, value)
    else:
        out = tuple(int(v) for v in value)
        if len(out) != 3:
            raise CryoGuardError(f"{name} must be an int or three ints, got {value!r}")
    return out  # type: ignore[return-value]


def _pool_out_size(length: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Output length of one axis, with the same rule as ``torch.nn.MaxPool3d``."""
    span = d * (k - 1) + 1
    room = length + 2 * p - span
    if room < 0:
        raise CryoGuardError(
            f"pooling window of {span} voxels (with padding {p}) does not fit an axis of {length}"
        )
    out = (-(-room // s) if ceil_mode else room // s) + 1
    # as in PyTorch: the last window must start inside the input or the left padding
    if ceil_mode and (out - 1) * s >= length + p:
        out -= 1
    return out


def drop_max_pool3d(
    x: torch.Tensor,
    kernel_size: _IntOr3,
    stride: _IntOr3 | None = None,
    padding: _IntOr3 = 0,
    dilation: _IntOr3 = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """Second-largest pooling over 3D windows (functional form of :class:`DropMax3d`).

    Parameters
    ----------
    x
        (N, C, D, H, W) or (C, D, H, W) tensor.
    kernel_size, stride, padding, dilation, ceil_mode
        As in ``torch.nn.MaxPool3d``; ``stride`` defaults to ``kernel_size``. Padding
        is implicit ``-inf`` (it never wins), exactly as for max pooling.

    Returns
    -------
    torch.Tensor
        Same shape as ``nn.MaxPool3d`` would give. Each value is the second largest
        element of its window (with ties, the maximum itself when it occurs twice).
        A window holding a single real element (kernel of one voxel, or the edge of a
        ``ceil_mode`` window) passes that element unchanged.

    Notes
    -----
    Vectorised with ``Tensor.unfold`` + ``topk(2)``: the gradient flows only to the
    element that was selected (the second largest), like max pooling routes it to
    the maximum. MIRST-DM, section 3.2.
    """
    unbatched = x.dim() == 4
    if unbatched:
        x = x.unsqueeze(0)
    if x.dim() != 5:
        raise CryoGuardError(
            f"drop-max pooling needs a (N, C, D, H, W) tensor, got {tuple(x.shape)}"
        )
    k = _triple(kernel_size, "kernel_size")
    s = k if stride is None else _triple(stride, "stride")
    p = _triple(padding, "padding")
    d = _triple(dilation, "dilation")
    spans = [d[i] * (k[i] - 1) + 1 for i in range(3)]
    outs = [_pool_out_size(x.shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(3)]
    # pad left by p, right by whatever the last window needs (never negative)
    pads: list[int] = []
    for i in (2, 1, 0):  # F.pad lists the last axis first
        right = max(0, (outs[i] - 1) * s[i] + spans[i] - x.shape[2 + i] - p[i])
        pads += [p[i], right]
    if any(pads):
        x = F.pad(x, pads, mode="constant", value=float("-inf"))
    win = x.unfold(2, spans[0], s[0]).unfold(3, spans[1], s[1]).unfold(4, spans[2], s[2])
    win = win[:, :, : outs[0], : outs[1], : outs[2], :: d[0], :: d[1], :: d[2]]
    n_in_window = k[0] * k[1] * k[2]
    win = win.reshape(*win.shape[:5], n_in_window)
    if n_in_window == 1:
        out = win[..., 0]
    else:
        top = win.topk(2, dim=-1).values
        first, second = top[..., 0], top[..., 1]
        # only one real value in the window: pass it on instead of -inf
        out = torch.where(torch.isneginf(second), first, second)
    return out.squeeze(0) if unbatched else out


class DropMax3d(nn.Module):
    """Drop-max pooling (MIRST-DM section 3.2): pass each window's second largest value.

    A drop-in replacement for ``torch.nn.MaxPool3d`` with the same ``kernel_size``,
    ``stride``, ``padding``, ``dilation`` and ``ceil_mode`` arguments (``return_indices``
    is not supported). Differentiable: the gradient reaches the selected element.

    Shapes: (N, C, D, H, W) -> (N, C, D', H', W') with MaxPool3d's output sizes.

    Examples
    --------
    >>> x = torch.tensor([3.0, 7.0, 1.0, 5.0, 2.0, 8.0, 6.0, 4.0]).reshape(1, 1, 2, 2, 2)
    >>> DropMax3d(2)(x).item()
    7.0
    """

    def __init__(
        self,
        kernel_size: _IntOr3,
        stride: _IntOr3 | None = None,
        padding: _IntOr3 = 0,
        dilation: _IntOr3 = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = _triple(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _triple(stride, "stride")
        self.padding = _triple(padding, "padding")
        self.dilation = _triple(dilation, "dilation")
        self.ceil_mode = bool(ceil_mode)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise CryoGuardError("kernel_size, stride and dilation must be >= 1")
        for k, p in zip(self.kernel_size, self.padding, strict=True):
            if p < 0 or p > k // 2:
                raise CryoGuardError(f"padding {p} must be between 0 and half the kernel ({k})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_max_pool3d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


def make_pool3d(
    kernel_size: _IntOr3,
    stride: _IntOr3 | None = None,
    *,
    ceil_mode: bool = False,
    drop_max: bool = False,
) -> nn.Module:
    """A max-pooling layer, or :class:`DropMax3d` with the same geometry if ``drop_max``."""
    if drop_max:
        return DropMax3d(kernel_size, stride, ceil_mode=ceil_mode)
    return nn.MaxPool3d(kernel_size, stride, ceil_mode=ceil_mode)


def relu_then_pool(pool: nn.Module) -> list[nn.Module]:
    """``[ReLU, pool]`` for a drop-max pool, ``[pool, ReLU]`` for a max pool.

    ReLU is monotonic, so ``maxpool(relu(x)) == relu(maxpool(x))`` exactly, with the same
    input gradient (the same argmax wins; a non-positive maximum gets none either way);
    after the pool the ReLU runs on 4-8x fewer voxels of the largest activation map.
    DropMax3d (the second largest value) keeps the paper's order.
    """
    if type(pool) is nn.MaxPool3d:
        return [pool, nn.ReLU(inplace=True)]
    return [nn.ReLU(inplace=True), pool]


# --------------------------------------------------------------------------- CPU fast paths
_CL = torch.channels_last_3d
_LINEAR_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)
#: Smallest ``in_features`` for which :func:`flatten_linear` uses oneDNN (the 87808 x 256
#: layer of RB3D took 0.5x MKL's time forward and backward; small layers keep ``F.linear``).
FAST_LINEAR_MIN_FEATURES = 4096
#: id(weight) -> (weak reference to it, buffer, the buffer's reference counts when free)
_GRAD_BUFFERS: dict[int, tuple[weakref.ref, torch.Tensor, tuple[int, int]]] = {}


def _buffer_counts(buf: torch.Tensor) -> tuple[int, int]:
    storage = buf.untyped_storage()
    return int(_USE_COUNT(storage._cdata)), sys.getrefcount(storage)  # type: ignore[misc]


def _weight_grad_out(weight: torch.Tensor) -> torch.Tensor | None:
    """A tensor to write ``weight``'s gradient into: a view of a buffer kept per weight.

    Every training step with ``zero_grad(set_to_none=True)`` otherwise allocates the
    gradient afresh, and for a large layer (90 MB for RB3D's 87808 x 256) the page faults
    of that fresh memory cost 3-4x the matrix product itself. The buffer is reused only
    when nothing but this cache references its storage (the previous gradient was let
    go of: ``.grad`` set to None and no other tensor, view or storage object of it
    alive); otherwise None (a fresh tensor, as PyTorch does). The returned view has no
    other reference, so autograd takes it as ``.grad`` without copying.
    """
    if _USE_COUNT is None:
        return None
    key = id(weight)
    entry = _GRAD_BUFFERS.get(key)
    if entry is not None and entry[0]() is weight:
        _, buf, free = entry
        same = (buf.shape, buf.dtype, buf.device) == (weight.shape, weight.dtype, weight.device)
        if same and _buffer_counts(buf) == free:
            return buf.view(weight.shape)
        if same:
            return None
    buf = torch.empty_like(weight, memory_format=torch.contiguous_format)
    ref = weakref.ref(weight, lambda _r, key=key: _GRAD_BUFFERS.pop(key, None))
    _GRAD_BUFFERS[key] = (ref, buf, _buffer_counts(buf))
    return buf.view(weight.shape)


def _will_run(ctx, i: int) -> bool:
    """Whether this backward pass needs the gradient of input ``i`` of a Function.

    ``ctx.needs_input_grad`` only says the input requires a gradient; under
    ``torch.autograd.grad(loss, x)`` (every attack) the weight's gradient is not asked
    for, and the engine would throw it away after it was computed.
    """
    if not ctx.needs_input_grad[i]:
        return False
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    try:
        node = ctx.next_functions[i][0]
        return node is not None and (will_run is None or bool(will_run(node)))
    except (AttributeError, IndexError, RuntimeError):  # pragma: no cover - other builds
        return True


class _FlattenLinear(torch.autograd.Function):
    """``F.linear(torch.flatten(h, 1), weight, bias)`` with oneDNN's inner product."""

    @staticmethod
    def forward(ctx, h, weight, bias):  # type: ignore[override]
        flat = h.reshape(h.shape[0], -1)  # a channels-last h: the copy flatten makes too
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        ctx.channels_last = (
            h.dim() == 5 and not h.is_contiguous() and h.is_contiguous(memory_format=_CL)
        )
        return _LINEAR_POINTWISE(flat, weight, bias, "none", [], "")  # type: ignore[misc]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        h, weight = ctx.saved_tensors
        gh = gw = gb = None
        if torch.is_grad_enabled():  # a double backward: differentiable plain operations
            if ctx.needs_input_grad[0]:
                gh = (grad @ weight).view(h.shape)
            if ctx.needs_input_grad[1]:
                gw = grad.t() @ h.reshape(h.shape[0], -1)
            if ctx.needs_input_grad[2] and ctx.has_bias:
                gb = grad.sum(0)
            return gh, gw, gb
        grad = grad.contiguous()
        if _will_run(ctx, 0):
            gh = _LINEAR_POINTWISE(grad, weight.t(), None, "none", [], "")  # type: ignore[misc]
            gh = gh.view(h.shape)
            if ctx.channels_last:  # in h's own format: the ReLU before is then 40x faster
                gh = gh.contiguous(memory_format=_CL)
        if _will_run(ctx, 1):
            flat = h.reshape(h.shape[0], -1)
            out = _weight_grad_out(weight)
            gw = grad.t() @ flat if out is None else torch.mm(grad.t(), flat, out=out)
        if ctx.has_bias and _will_run(ctx, 2):
            gb = grad.sum(0)
        return gh, gw, gb


def _fast_linear_ok(h: torch.Tensor, linear: nn.Linear) -> bool:
    w = linear.weight
    return (
        _LINEAR_POINTWISE is not None
        and h.device.type == "cpu"
        and w.device.type == "cpu"
        and h.dtype == torch.float32
        and w.dtype == torch.float32
        and w.is_contiguous()
        and linear.in_features >= FAST_LINEAR_MIN_FEATURES
        and h.shape[0] >= 2  # one sample: MKL's product was the faster one
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def flatten_linear(h: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(torch.flatten(h, 1))``, on the CPU's fast path for a large layer.

    The same parameters and the same sums (float32, in oneDNN's order: about 1e-7
    relative to ``F.linear``). For a float32 CPU batch of two or more and a layer of at
    least :data:`FAST_LINEAR_MIN_FEATURES` inputs it runs oneDNN's inner product
    (forward and input gradient 0.4-0.7x MKL's time for 4096-87808 inputs, 256-1024
    outputs, batch 16-64, one thread, torch 2.13; slower for a single sample), hands the
    input gradient back in ``h``'s memory format (a ``channels_last_3d`` activation
    otherwise gets a contiguous gradient, and the ReLU that made it then runs its
    backward 40x slower on the mismatched strides), and writes the weight gradient into
    a buffer kept per weight when the previous gradient is no longer referenced
    (:func:`_weight_grad_out`). A double backward (``create_graph=True``) differentiates
    plain operations. Anything else: ``linear(torch.flatten(h, 1))``.
    """
    if not _fast_linear_ok(h, linear):
        return linear(torch.flatten(h, 1))
    return _FlattenLinear.apply(h, linear.weight, linear.bias)


def dropout_as_contiguous(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask PyTorch draws for a contiguous ``x``.

    On the CPU, ``F.dropout`` draws its Bernoulli mask in ``x``'s memory order, so a
    ``channels_last_3d`` activation gets a different mask than the same values stored
    contiguously, from the same seed. Here the mask is always drawn as for a contiguous
    tensor (``torch.empty(shape).bernoulli_(1 - p)``, divided by ``1 - p``: PyTorch's own
    steps), then put into ``x``'s format, so a model gives the results of its contiguous
    copy in training mode too; the multiplications run on matching strides. Other
    devices: ``F.dropout``.
    """
    if x.device.type != "cpu":  # PyTorch's own kernels (fused on CUDA) elsewhere
        return F.dropout(x, p, training)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    q = 1.0 - p
    noise = torch.empty(x.shape, dtype=x.dtype, device=x.device).bernoulli_(q)
    noise.div_(q)
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=_CL):
        noise = noise.contiguous(memory_format=_CL)
    return x * noise


class _ReluCat(torch.autograd.Function):
    """``relu(cat([a, b], 1))``; the gradients handed back dense in the output's format."""

    @staticmethod
    def forward(ctx, a, b):  # type: ignore[override]
        out = torch.cat([a, b], dim=1).relu_()
        ctx.save_for_backward(out)
        ctx.split = a.shape[1]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward: differentiable in ``grad``
            g = grad * (out > 0)
        else:
            g = torch.ops.aten.threshold_backward(grad, out, 0)
        fmt = (
            _CL
            if out.dim() == 5 and not out.is_contiguous() and out.is_contiguous(memory_format=_CL)
            else torch.contiguous_format
        )
        s = ctx.split
        return g[:, :s].contiguous(memory_format=fmt), g[:, s:].contiguous(memory_format=fmt)


def relu_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``relu(torch.cat([a, b], 1))`` with one ReLU backward and dense gradients.

    ``relu(cat([relu(a), b]))`` (RB3D's concatenation block, whose shortcut has its own
    ReLU) equals ``relu_cat(a, b)`` exactly, with exactly the same gradients: the outer
    ReLU's mask on the shortcut's channels is the inner one's. In ``channels_last_3d``
    the channel slices of the concatenation's gradient are strided views, and the ReLU
    backward and convolutions that would take them run on mismatched strides; here the
    one ReLU backward runs on the whole output and each part is handed back as a dense
    tensor in the output's memory format.
    """
    return _ReluCat.apply(a, b)
