"""``simclr``: contrastive pre-training of a classifier's feature extractor (NT-Xent).

Source: Sun et al., MIRST-DM (MICCAI 2022) section 3.3, Eq. (4)
(SimCLR: every sample of a minibatch of N is paired with an augmented copy; each pair is
positive, the other 2(N - 1) views are negatives), and section 4.3 (a SimCLR-pretrained
backbone improves both the generalisation and the robustness of every defense)::

    l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )

with ``sim`` the cosine similarity, averaged over all 2N ordered positive pairs.

Here both views of a subtomogram are random 3D augmentations
(:mod:`napari_cryoguard.defenses.augment`: 90-degree rotations, flips, missing-wedge
re-masking, Gaussian noise). The representation is the classifier's convolutional
feature extractor, flattened (``features`` of CB3D / DSRF3D-v2 / RB3D, the encoder
blocks of the autoencoder), followed by a projection head (Linear-ReLU-Linear, as in
SimCLR) that belongs to the defense, not to the model: it is trained with the model
(added to the trainer's optimizer in :meth:`SimCLR.setup`), stored in the checkpoint as
``extra.defense.head.*`` and restored on resume, and discarded afterwards. Labels are
not used; the classifier's fully connected layers are not trained (the trainer's
validation accuracy of a simclr run is therefore that of an untrained head).

Using a simclr checkpoint as the start of another defense
---------------------------------------------------------
The checkpoint is an ordinary classifier checkpoint whose convolutional weights are
pre-trained. From Python, load it and hand the model to :func:`train`::

    net, _ = load_checkpoint("simclr.safetensors")
    train(data, model=net, defense="mirst", out="mirst.safetensors")

(:func:`~napari_cryoguard.defenses.trainer.train` accepts a built model). The model
must have been built for the same classes and cube as the dataset of the second run.
The command line has no option for initial weights yet (``--resume`` continues the
*same* defense and its optimizer state): an ``--init CKPT`` option of ``cryoguard
train`` that loads the checkpoint's model and passes it to ``train`` has been proposed
for the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.defenses.augment import AugmentParams, augment_batch
from napari_cryoguard.defenses.base import Batch, Defense, ModelHandle, register_defense, unwrap
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import number

if TYPE_CHECKING:
    from napari_cryoguard.defenses.trainer import Trainer

__all__ = [
    "SimCLR",
    "SimCLRParams",
    "backbone_features",
    "make_projection_head",
    "nt_xent",
    "simclr_loss",
]


@dataclass
class SimCLRParams(AugmentParams):
    """Parameters of the ``simclr`` defense: the augmentations of
    :class:`~napari_cryoguard.defenses.augment.AugmentParams` (``rotate``, ``flip``,
    ``noise_std``, ``wedge_prob``, ``tilt_range``, ``tilt_axis``) and

    Attributes
    ----------
    temperature
        ``tau`` of Eq. (4): 0.5 (the SimCLR paper's CIFAR-10 value; MIRST-DM does not
        print its own).
    proj_hidden
        Width of the projection head's hidden layer: 128 (our choice for small 3D
        backbones).
    proj_dim
        Width of the projection head's output: 64 (our choice).
    """

    temperature: float = number(0.5, strict=True)
    proj_hidden: int = number(128, minimum=1, integer=True)
    proj_dim: int = number(64, minimum=1, integer=True)

    def augment_params(self) -> AugmentParams:
        """The augmentation fields as :class:`AugmentParams`."""
        return AugmentParams(**{f.name: getattr(self, f.name) for f in fields(AugmentParams)})


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss (MIRST-DM Eq. (4)) of N positive pairs ``(z1[i], z2[i])``.

    The 2N embeddings are L2-normalised; for each of them the positive is its partner
    and the other 2N - 2 are negatives (the anchor itself is excluded from the
    denominator, the indicator ``1[k != i]``). Returns the mean over the 2N anchors.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise CryoGuardError(
            f"expected two (N, d) embeddings, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / float(temperature)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def _backbone_name(plain: nn.Module) -> str:
    for name in ("features", "encoder_blocks"):
        if isinstance(getattr(plain, name, None), nn.Module):
            return name
    raise CryoGuardError(
        f"{getattr(plain, 'arch_name', type(plain).__name__)!r} has no convolutional "
        "feature extractor ('features' or 'encoder_blocks') for SimCLR pre-training"
    )


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Flattened output (N, F) of the model's convolutional feature extractor.

    Through a :class:`ModelHandle` the call goes through its engine (DDP when
    distributed), so the backbone's gradients are synchronised.
    """
    plain = unwrap(model)
    name = _backbone_name(plain)
    if isinstance(model, ModelHandle):
        out = model.engine(x, method=name)
    else:
        out = getattr(plain, name)(x)
    return torch.flatten(out, 1)


def make_projection_head(in_features: int, hidden: int, out: int) -> nn.Sequential:
    """SimCLR's projection head ``g``: Linear - ReLU - Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out))


def simclr_loss(
    model: nn.Module,
    batch: Batch,
    params: SimCLRParams,
    head: nn.Module,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """NT-Xent of two augmented views of the batch through backbone + ``head``.

    One forward pass of the backbone scores both views (2N samples). Labels are
    ignored.

    Returns
    -------
    (loss, logs)
        Logs: ``nt_xent`` and ``pos_sim`` (mean cosine similarity of the positive
        pairs' projections).
    """
    n = batch.x.shape[0]
    aug = params.augment_params()
    v1 = augment_batch(batch.x, aug, generator)
    v2 = augment_batch(batch.x, aug, generator)
    z = head(backbone_features(model, torch.cat([v1, v2])).float())
    loss = nt_xent(z[:n], z[n:], params.temperature)
    with torch.no_grad():
        pos = F.cosine_similarity(z[:n].float(), z[n:].float(), dim=1).mean()
    return loss, {"nt_xent": float(loss.detach().item()), "pos_sim": float(pos.item())}


@register_defense("simclr", SimCLRParams)
class SimCLR(Defense):
    """SimCLR pre-training of the feature extractor (MIRST-DM Eq. (4)); see :func:`simclr_loss`.

    :meth:`setup` builds the projection head on the trainer's device, sized by a dummy
    forward of the backbone, and adds its parameters to the trainer's optimizer (as a
    second parameter group, so optimizer state and resume cover it). Under DDP its
    gradients are averaged across ranks by hooks.
    """

    # the classifier's fully connected layers get no gradient
    ddp_find_unused_parameters = True

    def __init__(self, params: SimCLRParams) -> None:
        super().__init__(params)
        self.head: nn.Module | None = None

    def build_head(self, model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
        """Create (and return) the projection head for ``model``'s backbone."""
        plain = unwrap(model)
        name = _backbone_name(plain)
        cube = int(plain.cube)
        backbone = getattr(plain, name)
        was = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                p = next(plain.parameters())
                probe = torch.zeros(1, 1, cube, cube, cube, device=p.device, dtype=p.dtype)
                width = int(torch.flatten(backbone(probe), 1).shape[1])
        finally:
            backbone.train(was)
        self.head = make_projection_head(width, self.params.proj_hidden, self.params.proj_dim)
        self.head.to(device)
        return self.head

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        head = self.build_head(trainer.model, trainer.device)
        trainer.optimizer.add_param_group({"params": list(head.parameters())})
        if trainer.world_size > 1:
            world = float(trainer.world_size)

            def _average(grad: torch.Tensor) -> torch.Tensor:
                g = grad.detach().clone()
                trainer.all_reduce_tensor(g)
                return g / world

            for prm in head.parameters():
                prm.register_hook(_average)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.head is None:
            self.build_head(model, batch.device)
        assert self.head is not None
        self.head.train(unwrap(model).training)
        return simclr_loss(model, batch, self.params, self.head)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.head is None:
            return {}
        return {f"head.{k}": v.detach().to("cpu") for k, v in self.head.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        state = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
        if not state:
            return
        if self.head is None:
            raise CryoGuardError("the simclr projection head must be built (setup) before loading")
        try:
            self.head.load_state_dict(state)
        except RuntimeError as exc:
            raise CryoGuardError(f"the stored SimCLR projection head does not fit: {exc}") from exc
