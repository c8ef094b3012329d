"""The 3D autoencoding classifier for semi-supervised subtomogram classification.

Source: Liu et al., 3D autoencoding classifier (BMVC 2019) sections 3.1-3.2,
Fig. 2 and Algorithm 1. Three parts share one encoder:

* Encoder3D: 3x3x3 convolutions of 32 filters, each with ReLU and a 2x2x2 max pool
  (two blocks for real data, four for the simulated data, section 4), then a fully
  connected layer of 128 units whose activations carry an L1 sparsity penalty.
* Decoder3D: symmetric -- a fully connected layer back to the last pooled map, then
  per block an upsampling by 2 and a 3x3x3 convolution; the last convolution has one
  filter and no activation and returns exactly the input cube.
* Classifier3D: on the feature map of the *last max pool* (not the sparse code):
  batch normalisation, two fully connected layers, softmax (at inference only;
  ``forward`` returns logits).

The joint loss of Eq. 3 (alpha * MSE + beta * CE, plus the sparsity term) belongs to
the training code; this module provides ``forward_all`` and ``sparsity_loss`` for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.checks import check_number, check_prob, check_widths
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.models.base import CryoGuardModel
from napari_cryoguard.models.layers import make_pool3d, relu_then_pool
from napari_cryoguard.models.registry import register_model

__all__ = ["AutoencoderClassifier3D", "AutoencoderParams"]


@dataclass
class AutoencoderParams:
    """Parameters of :class:`AutoencoderClassifier3D`.

    Attributes
    ----------
    conv_widths
        Filters of the encoder's conv + pool blocks; the length is the number of
        blocks. (32, 32) is Fig. 2 (real data); the paper adds two more blocks of the
        same kind for its simulated data (``(32, 32, 32, 32)``).
    code_size
        Units of the encoder's fully connected layer, 128 (section 3.2).
    sparsity_weight
        Weight of the L1 penalty on the code activations (section 3.2 "L1
        normalization ... to encourage sparsity"; the value is not printed, 1e-4 is
        our choice). Returned by :meth:`AutoencoderClassifier3D.sparsity_loss`.
    classifier_widths
        Hidden fully connected layer(s) of Classifier3D before the output layer ("two
        fully connected layers": one hidden + output). The width is not in the text;
        128 is our choice.
    classifier_dropout
        Dropout after each hidden classifier layer; the paper mentions none (0.0).
    drop_max
        Replace the encoder's first max pool with ``DropMax3d`` (MIRST-DM 3.2).
    """

    conv_widths: tuple[int, ...] = (32, 32)
    code_size: int = 128
    sparsity_weight: float = 1e-4
    classifier_widths: tuple[int, ...] = (128,)
    classifier_dropout: float = 0.0
    drop_max: bool = False

    def __post_init__(self) -> None:
        check_widths("conv_widths", self.conv_widths)
        if not self.conv_widths:
            raise CryoGuardError("conv_widths needs at least one block")
        check_widths("code_size", (self.code_size,))
        check_widths("classifier_widths", self.classifier_widths)
        check_prob("classifier_dropout", self.classifier_dropout)
        check_number("sparsity_weight", self.sparsity_weight)


@register_model("autoencoder", AutoencoderParams)
class AutoencoderClassifier3D(CryoGuardModel):
    """Encoder3D + Decoder3D + Classifier3D (semi-supervised paper, Fig. 2).

    Pools are 2x2x2 with stride 2 and ``ceil_mode=True`` (Fig. 2's caption says
    "stride 1", but the decoder's upsampling by 2 that mirrors them implies stride 2).
    Each decoder upsampling (nearest) goes to the exact size the matching encoder
    stage had, so odd cubes round-trip: 27 -> 14 -> 7 -> 14 -> 27 (for even sizes
    this is exactly the paper's 2x upsampling). Convolutions use padding 1.

    Shapes: ``forward`` (N, 1, c, c, c) -> logits (N, num_classes); ``reconstruct``
    -> (N, 1, c, c, c); ``encode`` -> (code (N, code_size), pooled map);
    ``forward_all`` -> (logits, reconstruction, code).
    """

    def __init__(
        self, num_classes: int, cube: int = 28, params: AutoencoderParams | None = None
    ) -> None:
        super().__init__(num_classes, cube, params if params is not None else AutoencoderParams())
        p: AutoencoderParams = self.params
        # --- Encoder3D
        blocks: list[nn.Module] = []
        sizes = [cube]  # spatial size at the input of each block
        prev = 1
        for i, width in enumerate(p.conv_widths):
            pool = make_pool3d(2, 2, ceil_mode=True, drop_max=p.drop_max and i == 0)
            blocks.append(nn.Sequential(nn.Conv3d(prev, width, 3, padding=1),
                                        *relu_then_pool(pool)))
            prev = width
            sizes.append(-(-sizes[-1] // 2))
        self.encoder_blocks = nn.Sequential(*blocks)
        self._pooled_shape = (prev, sizes[-1], sizes[-1], sizes[-1])
        flat = prev * sizes[-1] ** 3
        self.encoder_fc = nn.Linear(flat, p.code_size)
        # --- Decoder3D (mirror image of the encoder)
        self.decoder_fc = nn.Linear(p.code_size, flat)
        self._upsample_sizes = tuple(sizes[-2::-1])  # e.g. (14, 28) for two blocks on 28
        dec_widths = list(p.conv_widths[-2::-1]) + [1]  # channels after each upsampling conv
        convs: list[nn.Module] = []
        cin = prev
        for cout in dec_widths:
            convs.append(nn.Conv3d(cin, cout, 3, padding=1))
            cin = cout
        self.decoder_convs = nn.ModuleList(convs)
        # --- Classifier3D
        layers: list[nn.Module] = [nn.BatchNorm3d(prev), nn.Flatten()]
        cprev = flat
        for w in p.classifier_widths:
            layers += [nn.Linear(cprev, w), nn.ReLU(inplace=True), nn.Dropout(p.classifier_dropout)]
            cprev = w
        layers.append(nn.Linear(cprev, num_classes))
        self.classifier = nn.Sequential(*layers)

    # -- parts ---------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder3D: (code (N, code_size) after ReLU, last max-pool map (N, C, d, d, d))."""
        self.check_input(x)
        pooled = self.encoder_blocks(x)
        code = F.relu(self.encoder_fc(torch.flatten(pooled, 1)))
        return code, pooled

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Decoder3D: code (N, code_size) -> volume (N, 1, cube, cube, cube)."""
        h = F.relu(self.decoder_fc(code)).view(code.shape[0], *self._pooled_shape)
        last = len(self.decoder_convs) - 1
        for j, (conv, size) in enumerate(
            zip(self.decoder_convs, self._upsample_sizes, strict=True)
        ):
            h = conv(F.interpolate(h, size=(size, size, size), mode="nearest"))
            if j < last:
                h = F.relu(h)
        return h

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Classifier3D: last max-pool map -> logits (N, num_classes)."""
        return self.classifier(pooled)

    # -- entry points --------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes); the decoder is not run."""
        self.check_input(x)
        return self.classify(self.encoder_blocks(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded volume (N, 1, cube, cube, cube)."""
        code, _ = self.encode(x)
        return self.decode(code)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, reconstruction, code) in one pass, for the joint loss (Eq. 3)."""
        code, pooled = self.encode(x)
        return self.classify(pooled), self.decode(code), code

    def sparsity_loss(self, code: torch.Tensor) -> torch.Tensor:
        """L1 sparsity penalty on the code: ``sparsity_weight * mean(|code|)`` (scalar)."""
        return self.params.sparsity_weight * code.abs().mean()
