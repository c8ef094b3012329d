"""Shared base of the classifiers: the attributes checkpoints need, and input checks.

The weights of a model may be stored in the ``channels_last_3d`` memory format (the
faster one on this project's CPUs, see :mod:`napari_cryoguard.device`); that is an
internal detail: :meth:`CryoGuardModel.state_dict` always hands out contiguous tensors
(what safetensors files, fingerprints and copies expect).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from napari_cryoguard.checks import check_prob, check_widths
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "MIN_CUBE",
    "CryoGuardModel",
    "FeatureClassifier",
    "check_prob",
    "check_widths",
    "fc_head",
    "kaiming_init",
]

MIN_CUBE = 16


def fc_head(
    in_features: int, widths: Sequence[int], num_classes: int, dropout: float
) -> nn.Sequential:
    """Hidden fully connected layers (Linear + ReLU + Dropout each) and a Linear output."""
    layers: list[nn.Module] = []
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def kaiming_init(module: nn.Module) -> None:
    """He (Kaiming) normal initialisation for ReLU networks, zero biases.

    Every Conv3d/Linear gets ``kaiming_normal_(fan_in, relu)`` except the last Linear
    (the logits), which gets a small Xavier init. PyTorch's default init (uniform with
    ``a = sqrt(5)``) shrinks the signal by about a third per layer, so the eight plain
    convolutions of CB3D (no batch norm) start with logits of std ~1e-5 and do not learn
    in a reasonable time; He init keeps the activation variance (He et al. 2015, the
    init C3D-style VGG networks are trained with). Our choice: the papers do not say.
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.Linear)):
            if linears and m is linears[-1]:
                nn.init.xavier_uniform_(m.weight, gain=0.5)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _contiguous_state(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """``state_dict`` post-hook: channels-last weights are handed out contiguous."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


class CryoGuardModel(nn.Module):
    """Base class of every classifier: validates the input size and records its recipe.

    Attributes
    ----------
    arch_name : str
        Registry name (set by ``register_model``).
    params : dataclass
        The architecture's parameters; ``arch_params`` is the same as a plain dict.
    num_classes : int
    cube : int
        Edge length of the cubic subtomograms the model was built for.

    ``forward`` returns logits (N, num_classes); softmax is applied only at inference
    (``napari_cryoguard.device.predict``).
    """

    arch_name: str = ""
    params_cls: type | None = None
    #: parameter overrides per size preset (``"tiny (quick check)"``, ``"small
    #: (CPU-friendly)"``) for an architecture the built-in table of
    #: :mod:`napari_cryoguard.models.registry` does not list
    size_presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, num_classes: int, cube: int, params: Any) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise CryoGuardError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(cube, bool) or not isinstance(cube, int) or cube < MIN_CUBE:
            raise CryoGuardError(
                f"cube must be an integer >= {MIN_CUBE} voxels for {self.arch_name or 'this model'},"
                f" got {cube!r}"
            )
        if self.params_cls is not None and not isinstance(params, self.params_cls):
            raise CryoGuardError(
                f"params for {self.arch_name} must be a {self.params_cls.__name__}, "
                f"got {type(params).__name__}"
            )
        self.num_classes = num_classes
        self.cube = cube
        self.params = params
        self.register_state_dict_post_hook(_contiguous_state)

    @property
    def arch_params(self) -> dict[str, Any]:
        """The parameter dataclass as a plain dict (what checkpoints store)."""
        return dataclasses.asdict(self.params)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``CryoGuardError`` unless ``x`` is (N, 1, cube, cube, cube)."""
        expected = (1, self.cube, self.cube, self.cube)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise CryoGuardError(
                f"{self.arch_name} was built for (N, 1, {self.cube}, {self.cube}, {self.cube}) "
                f"subtomograms, got a tensor of shape {tuple(x.shape)}"
            )

    @torch.no_grad()
    def _feature_shape(self, features: nn.Module, channels: int = 1) -> torch.Size:
        """Shape of ``features`` applied to one dummy cube (used for the flatten size)."""
        was_training = features.training
        features.eval()
        try:
            out = features(torch.zeros(1, channels, self.cube, self.cube, self.cube))
        finally:
            features.train(was_training)
        if out.numel() == 0:
            raise CryoGuardError(f"cube {self.cube} is too small for {self.arch_name}")
        return out.shape


class FeatureClassifier(CryoGuardModel):
    """A :class:`CryoGuardModel` that is ``features`` (convolutions and pools), flatten,
    then a fully connected head (:func:`fc_head`): CB3D, DSRF3D-v2 and RB3D.

    Subclasses build their ``features`` layers and call :meth:`_finish`.
    """

    def _finish(self, layers: list[nn.Module], fc_widths: Sequence[int], dropout: float) -> None:
        """Set ``features`` and ``classifier`` (flatten size measured on a dummy cube)
        and initialise every weight (:func:`kaiming_init`)."""
        self.features = nn.Sequential(*layers)
        flat = int(torch.Size(self._feature_shape(self.features)[1:]).numel())
        self.classifier = fc_head(flat, fc_widths, self.num_classes, dropout)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.classifier(torch.flatten(self.features(x), 1))
