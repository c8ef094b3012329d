"""CB3D: the C3D-based subtomogram classifier.

Sources: Che et al. 2018 (CB3D) section 2.1.3 and
Fig. 3; Wu et al., RAT (IEEE BIBM 2019) section III.B (the
model RAT, AT and TRADES defend). Eight 3x3x3 convolutions with ReLU in five groups
(1, 1, 2, 2, 2 convolutions), each group closed by a max pool -- the first one
1x2x2 with stride (1, 2, 2), the others 2x2x2 -- then two fully connected layers
with 50 % dropout and the output layer (softmax at inference only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_cryoguard.checks import check_prob, check_widths
from napari_cryoguard.models.base import FeatureClassifier
from napari_cryoguard.models.layers import make_pool3d
from napari_cryoguard.models.registry import register_model

__all__ = ["CB3D", "CB3DParams"]


@dataclass
class CB3DParams:
    """Parameters of :class:`CB3D`.

    Attributes
    ----------
    conv_widths
        Filters of the five convolution groups (C3D: 64, 128, 256, 512, 512; groups
        3-5 hold two convolutions each, so eight convolutions in all). CB3D paper
        section 2.1.3, RAT section III.B.
    fc_widths
        Widths of the two hidden fully connected layers. The papers do not print
        them; 4096 is C3D's fc6/fc7 width, which CB3D inherits (our choice).
    dropout
        Dropout after each hidden fully connected layer (0.5, both papers).
    drop_max
        Replace the first max pool with :class:`~napari_cryoguard.models.layers.DropMax3d`
        (MIRST-DM section 3.2).
    """

    conv_widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    fc_widths: tuple[int, int] = (4096, 4096)
    dropout: float = 0.5
    drop_max: bool = False

    def __post_init__(self) -> None:
        check_widths("conv_widths", self.conv_widths, 5)
        check_widths("fc_widths", self.fc_widths, 2)
        check_prob("dropout", self.dropout)


@register_model("cb3d", CB3DParams)
class CB3D(FeatureClassifier):
    """CB3D classifier (CB3D paper 2.1.3 / Fig. 3; RAT paper III.B).

    Input (N, 1, cube, cube, cube), output logits (N, num_classes).

    Five pools would take a 28-voxel axis below one voxel with floor rounding
    (28 -> 14 -> 7 -> 3 -> 1 -> 0 along H and W), so every pool uses
    ``ceil_mode=True`` (28 -> 14 -> 7 -> 4 -> 2 -> 1; 16 -> 8 -> 4 -> 2 -> 1 -> 1): a
    partial window at the border is pooled over the voxels it has. This plays the
    role of the zero padding before the last pool in the original code and makes any
    cube >= 16 work. The flatten size is measured with a dummy forward at
    construction (512 x 2 x 1 x 1 for a 28 cube). Convolutions use padding 1.

    ``fast_paths`` (on in ``channels_last_3d``, set by
    :func:`napari_cryoguard.device.apply_memory_format`): every ReLU that comes right
    before a max pool runs after it (ReLU is monotonic, so the values and the input
    gradient are exactly those of the written order, as in
    :func:`~napari_cryoguard.models.layers.relu_then_pool`), on 4-8x fewer voxels. The
    modules, their order and the ``state_dict`` stay as written; a drop-max pool keeps
    the paper's order.
    """

    fast_paths = False

    def __init__(self, num_classes: int, cube: int = 28, params: CB3DParams | None = None) -> None:
        super().__init__(num_classes, cube, params if params is not None else CB3DParams())
        p: CB3DParams = self.params
        convs_per_group = (1, 1, 2, 2, 2)
        layers: list[nn.Module] = []
        prev = 1
        for group, (width, n_conv) in enumerate(zip(p.conv_widths, convs_per_group, strict=True)):
            for _ in range(n_conv):
                layers += [nn.Conv3d(prev, width, 3, padding=1), nn.ReLU(inplace=True)]
                prev = width
            kernel = (1, 2, 2) if group == 0 else (2, 2, 2)
            layers.append(
                make_pool3d(kernel, kernel, ceil_mode=True, drop_max=p.drop_max and group == 0)
            )
        self._finish(layers, p.fc_widths, p.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast_paths:
            return super().forward(x)
        self.check_input(x)
        layers = list(self.features)
        h, i = x, 0
        while i < len(layers):
            if (
                i + 1 < len(layers)
                and type(layers[i]) is nn.ReLU
                and type(layers[i + 1]) is nn.MaxPool3d
            ):
                h = layers[i](layers[i + 1](h))  # pool, then ReLU: exactly equal
                i += 2
            else:
                h = layers[i](h)
                i += 1
        return self.classifier(torch.flatten(h, 1))
