"""RB3D: the residual-block subtomogram classifier.

Source: Che et al. 2018 (CB3D) section 2.1.2 and
Fig. 2: a convolution, ReLU and 2x2x2 max pool, then four bottleneck residual
blocks -- one path 1x1x1 (reduce) -> 3x3x3 -> 1x1x1 (restore), the "shortcut" path
a single 3x3x3 convolution, the two paths merged at the end of the block -- then two
fully connected layers with 50 % dropout and the output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_cryoguard.models.base import (
    CryoGuardModel,
    check_prob,
    check_widths,
    fc_head,
    kaiming_init,
)
from napari_cryoguard.models.layers import make_pool3d
from napari_cryoguard.models.registry import register_model

__all__ = ["RB3D", "RB3DParams", "BottleneckBlock3d"]


@dataclass
class RB3DParams:
    """Parameters of :class:`RB3D`.

    The paper gives the block structure but not its widths or strides; the values
    below are our choice, documented here.

    Attributes
    ----------
    stem_width
        Filters of the first 3x3x3 convolution (32).
    block_widths
        Output channels of the four residual blocks (32, 64, 64, 128).
    bottleneck_widths
        Channels inside each block's bottleneck path (16, 32, 32, 64).
    block_strides
        Stride of each block's 3x3x3 convolutions (1, 2, 1, 2): without downsampling
        the flattened 14^3 map of a 28 cube would make the first fully connected
        layer enormous; with it a 28 cube ends at 4^3 and a 16 cube at 2^3.
    fc_widths
        Two hidden fully connected layers (1024, 1024; not printed in the paper, same
        as DSRF3D-v2).
    dropout
        Dropout after each hidden fully connected layer (0.5, section 2.1.2).
    batch_norm
        Batch normalisation after every convolution in the blocks, as in the
        bottleneck blocks of He et al. that the paper cites (our choice; default on).
    drop_max
        Replace the (only, first) max pool with ``DropMax3d`` (MIRST-DM section 3.2).
    """

    stem_width: int = 32
    block_widths: tuple[int, int, int, int] = (32, 64, 64, 128)
    bottleneck_widths: tuple[int, int, int, int] = (16, 32, 32, 64)
    block_strides: tuple[int, int, int, int] = (1, 2, 1, 2)
    fc_widths: tuple[int, int] = (1024, 1024)
    dropout: float = 0.5
    batch_norm: bool = True
    drop_max: bool = False

    def __post_init__(self) -> None:
        check_widths("stem_width", (self.stem_width,))
        check_widths("block_widths", self.block_widths, 4)
        check_widths("bottleneck_widths", self.bottleneck_widths, 4)
        check_widths("block_strides", self.block_strides, 4)
        check_widths("fc_widths", self.fc_widths, 2)
        check_prob("dropout", self.dropout)


def _conv(cin: int, cout: int, k: int, stride: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm3d(cout))
    return layers


class BottleneckBlock3d(nn.Module):
    """One RB3D block: bottleneck path plus a 3x3x3 convolution shortcut, summed, ReLU.

    (N, cin, D, H, W) -> (N, cout, ceil(D/stride), ceil(H/stride), ceil(W/stride)).
    """

    def __init__(
        self, cin: int, mid: int, cout: int, stride: int = 1, batch_norm: bool = True
    ) -> None:
        super().__init__()
        bn = batch_norm
        self.path = nn.Sequential(
            *_conv(cin, mid, 1, 1, bn),
            nn.ReLU(inplace=True),
            *_conv(mid, mid, 3, stride, bn),
            nn.ReLU(inplace=True),
            *_conv(mid, cout, 1, 1, bn),
        )
        self.shortcut = nn.Sequential(*_conv(cin, cout, 3, stride, bn))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.path(x) + self.shortcut(x))


@register_model("rb3d", RB3DParams)
class RB3D(CryoGuardModel):
    """RB3D classifier (section 2.1.2, Fig. 2).

    Input (N, 1, cube, cube, cube), output logits (N, num_classes). The stem pool
    uses floor rounding (as in the paper) and the strided blocks round up (padding
    1), so no cube >= 16 collapses; the flatten size comes from a dummy forward at
    construction.
    """

    def __init__(self, num_classes: int, cube: int = 28, params: RB3DParams | None = None) -> None:
        super().__init__(num_classes, cube, params if params is not None else RB3DParams())
        p: RB3DParams = self.params
        layers: list[nn.Module] = [
            nn.Conv3d(1, p.stem_width, 3, padding=1),
            nn.ReLU(inplace=True),
            make_pool3d(2, 2, drop_max=p.drop_max),
        ]
        prev = p.stem_width
        for width, mid, stride in zip(
            p.block_widths, p.bottleneck_widths, p.block_strides, strict=True
        ):
            layers.append(BottleneckBlock3d(prev, mid, width, stride, p.batch_norm))
            prev = width
        self.features = nn.Sequential(*layers)
        flat = int(torch.Size(self._feature_shape(self.features)[1:]).numel())
        self.classifier = fc_head(flat, p.fc_widths, num_classes, p.dropout)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.classifier(torch.flatten(self.features(x), 1))
