"""DSRF3D-v2: the VGG-like "deep small receptive field" subtomogram classifier.

Source: Che et al. 2018 (CB3D) section 2.1.1 and
Fig. 1: three sets of two 3x3x3 convolutions (ReLU) and a 2x2x2 max pool with
stride 2, then two fully connected layers of 1024 units with 70 % dropout after
each, then the output layer (softmax at inference only).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from napari_cryoguard.checks import check_prob, check_widths
from napari_cryoguard.models.base import FeatureClassifier
from napari_cryoguard.models.layers import make_pool3d
from napari_cryoguard.models.registry import register_model

__all__ = ["DSRF3DV2", "DSRF3DV2Params"]


@dataclass
class DSRF3DV2Params:
    """Parameters of :class:`DSRF3DV2`.

    Attributes
    ----------
    conv_widths
        Filters of the three convolution sets (two convolutions each). Fig. 1 starts
        with 32 filters; the text does not print the others, so we double per set
        as in VGG (32, 64, 128).
    fc_widths
        The two hidden fully connected layers, 1024 each (Fig. 1, "FC-1024").
    dropout
        Dropout after each hidden fully connected layer, 0.7 (section 2.1.1).
    drop_max
        Replace the first max pool with ``DropMax3d`` (MIRST-DM section 3.2).
    """

    conv_widths: tuple[int, int, int] = (32, 64, 128)
    fc_widths: tuple[int, int] = (1024, 1024)
    dropout: float = 0.7
    drop_max: bool = False

    def __post_init__(self) -> None:
        check_widths("conv_widths", self.conv_widths, 3)
        check_widths("fc_widths", self.fc_widths, 2)
        check_prob("dropout", self.dropout)


@register_model("dsrf3d_v2", DSRF3DV2Params)
class DSRF3DV2(FeatureClassifier):
    """DSRF3D-v2 classifier (section 2.1.1, Fig. 1).

    Input (N, 1, cube, cube, cube), output logits (N, num_classes). Convolutions use
    padding 1; the three pools use the paper's floor rounding (28 -> 14 -> 7 -> 3,
    16 -> 8 -> 4 -> 2), which never collapses a cube >= 16. The flatten size is
    measured with a dummy forward at construction.
    """

    def __init__(
        self, num_classes: int, cube: int = 28, params: DSRF3DV2Params | None = None
    ) -> None:
        super().__init__(num_classes, cube, params if params is not None else DSRF3DV2Params())
        p: DSRF3DV2Params = self.params
        layers: list[nn.Module] = []
        prev = 1
        for i, width in enumerate(p.conv_widths):
            for _ in range(2):
                layers += [nn.Conv3d(prev, width, 3, padding=1), nn.ReLU(inplace=True)]
                prev = width
            layers.append(make_pool3d(2, 2, drop_max=p.drop_max and i == 0))
        self._finish(layers, p.fc_widths, p.dropout)
