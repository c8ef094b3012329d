"""3D CNN subtomogram classifiers, the drop-max layer and self-describing checkpoints.

Architectures (by registry name): ``cb3d``, ``dsrf3d_v2``, ``rb3d``, ``autoencoder``.
All take (N, 1, cube, cube, cube) float32 (cube >= 16) and return logits
(N, num_classes).
"""

from __future__ import annotations

from napari_cryoguard.models.autoencoder import AutoencoderClassifier3D, AutoencoderParams
from napari_cryoguard.models.base import CryoGuardModel
from napari_cryoguard.models.cb3d import CB3D, CB3DParams
from napari_cryoguard.models.checkpoint import (
    bundled_models,
    load_checkpoint,
    load_default,
    save_checkpoint,
)
from napari_cryoguard.models.dsrf3d import DSRF3DV2, DSRF3DV2Params
from napari_cryoguard.models.layers import DropMax3d, drop_max_pool3d
from napari_cryoguard.models.rb3d import RB3D, RB3DParams
from napari_cryoguard.models.registry import (
    available_models,
    build_model,
    model_params_class,
    register_model,
    tiny_params,
)

__all__ = [
    "CB3D",
    "DSRF3DV2",
    "RB3D",
    "AutoencoderClassifier3D",
    "AutoencoderParams",
    "CB3DParams",
    "CryoGuardModel",
    "DSRF3DV2Params",
    "DropMax3d",
    "RB3DParams",
    "available_models",
    "build_model",
    "bundled_models",
    "drop_max_pool3d",
    "load_checkpoint",
    "load_default",
    "model_params_class",
    "register_model",
    "save_checkpoint",
    "tiny_params",
]
