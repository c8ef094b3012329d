"""RB3D: the residual-block subtomogram classifier.

Source: Che et al. 2018 (CB3D) section 2.1.2 and
Fig. 2: a convolution, ReLU and 2x2x2 max pool, then four bottleneck residual
blocks -- one path 1x1x1 (reduce) -> 3x3x3 -> 1x1x1 (restore), the "shortcut" path
a single 3x3x3 convolution, the two paths merged at the end of the block -- then two
fully connected layers with 50 % dropout and the output layer.

Two block variants (:attr:`RB3DParams.variant`):

``"paper"`` (default)
    The block of the authors' published Keras code (``Cresnet`` in the paper's code
    repository), which fills in what the text leaves open: the two paths are
    *concatenated* along the channels (not summed), the shortcut convolution and the
    first two path convolutions have a ReLU, the restoring 1x1x1 convolution has none
    and is followed by dropout 0.7, then a ReLU after the concatenation; no batch
    normalisation, no strides (a 28 cube stays at 14^3 after the stem pool, so the
    first fully connected layer is large: 14^3 x 32 inputs at the default widths). The
    authors' widths: stem 32; per block shortcut 16, path 16 -> 32 -> 16, so 32
    channels out.
``"residual-bn"``
    This package's earlier block: the paths *summed* (a residual addition), batch
    normalisation after every convolution, strides (1, 2, 1, 2), no in-block dropout,
    widths 32/64/64/128. Checkpoints saved before the variants existed store no
    ``variant`` and load as ``"residual-bn"``
    (:func:`napari_cryoguard.models.checkpoint.load_checkpoint`).

Departures from the paper and the authors' code (both variants): padding ``same``
everywhere (as the authors' code), He initialisation (Keras used Glorot uniform),
the width arguments are ours to change (the defaults of ``"paper"`` are the authors').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_cryoguard.checks import check_prob, check_widths
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.models.base import FeatureClassifier
from napari_cryoguard.models.layers import (
    dropout_as_contiguous,
    flatten_linear,
    make_pool3d,
    relu_cat,
    relu_then_pool,
)
from napari_cryoguard.models.registry import register_model

__all__ = ["RB3D", "RB3DParams", "BottleneckBlock3d", "RB3D_VARIANTS"]

#: Block variants of :class:`RB3D` (see the module docstring).
RB3D_VARIANTS = ("paper", "residual-bn")

_PAPER_DEFAULTS = {
    "block_widths": (32, 32, 32, 32),
    "bottleneck_widths": (16, 16, 16, 16),
    "block_strides": (1, 1, 1, 1),
}
_RESIDUAL_BN_DEFAULTS = {
    "block_widths": (32, 64, 64, 128),
    "bottleneck_widths": (16, 32, 32, 64),
    "block_strides": (1, 2, 1, 2),
}


@dataclass
class RB3DParams:
    """Parameters of :class:`RB3D`.

    The paper gives the block structure but not its widths or strides; ``"paper"``
    takes them from the authors' code, ``"residual-bn"`` keeps our earlier choice. An
    empty tuple means "the variant's default" (resolved when the parameters are
    built, so a saved checkpoint stores the resolved values).

    Attributes
    ----------
    variant
        ``"paper"`` (default: concatenated paths, no batch norm, no strides, dropout
        ``block_dropout`` inside every block) or ``"residual-bn"`` (summed paths, batch
        norm, strides); see the module docstring.
    stem_width
        Filters of the first 3x3x3 convolution (32).
    block_widths
        Output channels of the four blocks. ``"paper"``: (32, 32, 32, 32), split into a
        shortcut of ``width // 2`` and a restoring 1x1x1 of ``width - width // 2``
        channels, the 3x3x3 of the path has ``width`` channels (the authors' 16 + 16,
        32). ``"residual-bn"``: (32, 64, 64, 128).
    bottleneck_widths
        Channels of each block's reducing 1x1x1 convolution. ``"paper"``: (16, 16, 16,
        16); ``"residual-bn"``: (16, 32, 32, 64), also the width of its 3x3x3.
    block_strides
        Stride of each block's 3x3x3 convolutions. ``"paper"``: (1, 1, 1, 1), as the
        authors; ``"residual-bn"``: (1, 2, 1, 2) (a 28 cube ends at 4^3, a 16 cube at 2^3).
    fc_widths
        Two hidden fully connected layers (1024, 1024; not printed in the paper, the
        authors' code).
    dropout
        Dropout after each hidden fully connected layer (0.5, section 2.1.2).
    block_dropout
        Dropout after the restoring 1x1x1 convolution of every block, ``"paper"`` only
        (0.7, the authors' code; not in the paper's text). ``"residual-bn"`` has none.
    batch_norm
        Batch normalisation after every block convolution, ``"residual-bn"`` only (as in
        the bottleneck blocks of He et al. that the paper cites; our choice, default on).
        The ``"paper"`` variant has no batch normalisation whatever this says.
    drop_max
        Replace the (only, first) max pool with ``DropMax3d`` (MIRST-DM section 3.2).
    """

    variant: str = "paper"
    stem_width: int = 32
    block_widths: tuple[int, ...] = ()
    bottleneck_widths: tuple[int, ...] = ()
    block_strides: tuple[int, ...] = ()
    fc_widths: tuple[int, int] = (1024, 1024)
    dropout: float = 0.5
    block_dropout: float = 0.7
    batch_norm: bool = True
    drop_max: bool = False

    def __post_init__(self) -> None:
        if self.variant not in RB3D_VARIANTS:
            raise CryoGuardError(
                f"RB3D variant must be one of {', '.join(RB3D_VARIANTS)}, got {self.variant!r}"
            )
        defaults = _PAPER_DEFAULTS if self.variant == "paper" else _RESIDUAL_BN_DEFAULTS
        for key, value in defaults.items():
            if not tuple(getattr(self, key)):
                setattr(self, key, value)
            else:
                setattr(self, key, tuple(getattr(self, key)))
        check_widths("stem_width", (self.stem_width,))
        check_widths("block_widths", self.block_widths, 4)
        check_widths("bottleneck_widths", self.bottleneck_widths, 4)
        check_widths("block_strides", self.block_strides, 4)
        check_widths("fc_widths", self.fc_widths, 2)
        check_prob("dropout", self.dropout)
        check_prob("block_dropout", self.block_dropout)
        if self.variant == "paper" and min(self.block_widths) < 2:
            raise CryoGuardError(
                "RB3D 'paper' block_widths must be >= 2 (a shortcut and a restoring path "
                f"of at least one channel each), got {self.block_widths}"
            )


def _conv(cin: int, cout: int, k: int, stride: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm3d(cout))
    return layers


class BottleneckBlock3d(nn.Module):
    """One RB3D block: a bottleneck path and a 3x3x3 convolution shortcut, merged, ReLU.

    ``merge="sum"`` (variant ``"residual-bn"``): path 1x1x1 ``cin -> mid`` -> 3x3x3
    ``mid -> mid`` -> 1x1x1 ``mid -> cout``, shortcut 3x3x3 ``cin -> cout``, summed;
    optional batch norm after every convolution.

    ``merge="concat"`` (variant ``"paper"``): shortcut 3x3x3 ``cin -> cout // 2`` with
    ReLU; path 1x1x1 ``cin -> mid`` ReLU -> 3x3x3 ``mid -> cout`` ReLU -> 1x1x1
    ``cout -> cout - cout // 2`` -> dropout ``dropout``; concatenated (shortcut first,
    as the authors), ReLU. No batch norm.

    (N, cin, D, H, W) -> (N, cout, ceil(D/stride), ceil(H/stride), ceil(W/stride)).

    ``fast_paths`` (set by :func:`napari_cryoguard.device.apply_memory_format`: on in
    ``channels_last_3d``): the in-block dropout draws its mask as for a contiguous
    tensor (:func:`~napari_cryoguard.models.layers.dropout_as_contiguous`), so the
    channels-last model uses the contiguous model's masks, and the shortcut's ReLU,
    the concatenation and the block's ReLU run as one
    :func:`~napari_cryoguard.models.layers.relu_cat` (exactly equal).
    """

    fast_paths = False

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        stride: int = 1,
        batch_norm: bool = True,
        merge: str = "sum",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if merge not in ("sum", "concat"):
            raise CryoGuardError(f"block merge must be 'sum' or 'concat', got {merge!r}")
        self.merge = merge
        if merge == "sum":
            bn = batch_norm
            self.path = nn.Sequential(
                *_conv(cin, mid, 1, 1, bn),
                nn.ReLU(inplace=True),
                *_conv(mid, mid, 3, stride, bn),
                nn.ReLU(inplace=True),
                *_conv(mid, cout, 1, 1, bn),
            )
            self.shortcut = nn.Sequential(*_conv(cin, cout, 3, stride, bn))
        else:
            short = cout // 2
            path: list[nn.Module] = [
                *_conv(cin, mid, 1, 1, False),
                nn.ReLU(inplace=True),
                *_conv(mid, cout, 3, stride, False),
                nn.ReLU(inplace=True),
                *_conv(cout, cout - short, 1, 1, False),
            ]
            if dropout > 0:
                path.append(nn.Dropout(dropout))
            self.path = nn.Sequential(*path)
            self.shortcut = nn.Sequential(
                *_conv(cin, short, 3, stride, False), nn.ReLU(inplace=True)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge == "sum":
            return self.act(self.path(x) + self.shortcut(x))
        if not self.fast_paths:
            return self.act(torch.cat([self.shortcut(x), self.path(x)], dim=1))
        h = x
        for layer in self.path:
            if type(layer) is nn.Dropout:  # the mask of the contiguous model, in any format
                h = dropout_as_contiguous(h, layer.p, layer.training)
            else:
                h = layer(h)
        if len(self.shortcut) == 2 and type(self.shortcut[1]) is nn.ReLU:
            # act(cat([relu(s), h])) == relu_cat(s, h): one ReLU for both, exactly
            return relu_cat(self.shortcut[0](x), h)
        return self.act(torch.cat([self.shortcut(x), h], dim=1))


@register_model("rb3d", RB3DParams)
class RB3D(FeatureClassifier):
    """RB3D classifier (section 2.1.2, Fig. 2), block variant ``params.variant``.

    Input (N, 1, cube, cube, cube), output logits (N, num_classes). The stem pool
    uses floor rounding (as in the paper) and the strided blocks round up (padding
    1), so no cube >= 16 collapses; the flatten size comes from a dummy forward at
    construction. Departures from the paper: see the module docstring.

    ``fast_paths`` (on in ``channels_last_3d``, see
    :func:`napari_cryoguard.device.apply_memory_format`): the flatten and the first fully
    connected layer run as :func:`~napari_cryoguard.models.layers.flatten_linear`.
    """

    fast_paths = False

    def __init__(self, num_classes: int, cube: int = 28, params: RB3DParams | None = None) -> None:
        super().__init__(num_classes, cube, params if params is not None else RB3DParams())
        p: RB3DParams = self.params
        layers: list[nn.Module] = [
            nn.Conv3d(1, p.stem_width, 3, padding=1),
            *relu_then_pool(make_pool3d(2, 2, drop_max=p.drop_max)),
        ]
        prev = p.stem_width
        for width, mid, stride in zip(
            p.block_widths, p.bottleneck_widths, p.block_strides, strict=True
        ):
            if p.variant == "paper":
                block = BottleneckBlock3d(
                    prev, mid, width, stride, False, merge="concat", dropout=p.block_dropout
                )
            else:
                block = BottleneckBlock3d(prev, mid, width, stride, p.batch_norm, merge="sum")
            layers.append(block)
            prev = width
        self._finish(layers, p.fc_widths, p.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; the large first fully connected layer through
        :func:`~napari_cryoguard.models.layers.flatten_linear` (the CPU's fast path)."""
        if not self.fast_paths:
            return super().forward(x)
        self.check_input(x)
        first, *rest = self.classifier
        h = flatten_linear(self.features(x), first)
        for layer in rest:
            h = layer(h)
        return h
