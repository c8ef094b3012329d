"""Pooling layers shared by the classifiers: the drop-max layer of MIRST-DM.

Source: Sun et al., MIRST-DM (MICCAI 2022), section 3.2
("Drop-Max Layer"): in every pooling window the maximum is removed and the second
largest value is passed on, so that a perturbation that pushes one voxel up cannot
travel through the pooling layer on its own. The paper replaces only the *first*
max-pooling layer of a network; every model here exposes that as ``drop_max=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.errors import CryoGuardError

__all__ = ["DropMax3d", "drop_max_pool3d", "make_pool3d", "relu_then_pool"]

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
