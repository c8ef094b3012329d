"""The defense registry, the :class:`Defense` base class and the :class:`Batch` it sees.

A defense is the training objective of the one loop in
:mod:`napari_cryoguard.defenses.trainer`. Following the TRADES reference code (see
STYLE.md), its loss is a pure function ``loss(model, batch, params) -> (loss,
logs)`` that takes the device from the batch and never calls ``.cuda()``. Around it
a :class:`Defense` subclass adds what a pure function cannot hold: per-sample state
beside the dataset (IMA margins, indexed by ``batch.index``), epoch hooks, and the
tensors that ride along in the checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import Registry

if TYPE_CHECKING:
    from napari_cryoguard.defenses.trainer import Trainer

__all__ = [
    "DEFENSES",
    "Batch",
    "Defense",
    "ModelHandle",
    "available_defenses",
    "defense_params_class",
    "get_defense",
    "make_defense_params",
    "masked_cross_entropy",
    "register_defense",
    "unwrap",
]

_T = TypeVar("_T", bound=type)


@dataclass
class Batch:
    """One training step's data, already on the training device.

    Attributes
    ----------
    x : Tensor, (N, 1, D, H, W) float32
        Subtomograms (normalised as the dataset is).
    y : Tensor, (N,) int64
        Class labels; -1 marks an unlabelled sample (semi-supervised training).
    index : Tensor, (N,) int64
        Row of each sample in the full dataset, to address per-sample state.
    epoch : int
        0-based epoch.
    step : int
        0-based step within the epoch.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    epoch: int = 0
    step: int = 0

    @property
    def device(self) -> torch.device:
        """The device the batch (and the model) live on."""
        return self.x.device

    @property
    def labelled(self) -> torch.Tensor:
        """Boolean mask (N,) of samples with a label."""
        return self.y >= 0


class Defense:
    """Base class of a training defense, created by :func:`get_defense`.

    Subclasses set nothing by hand: :func:`register_defense` fills ``name`` and
    ``params_cls``. They override :meth:`loss` (usually delegating to a module-level
    pure function) and, if needed, the hooks below. All hooks are no-ops here.

    Attributes
    ----------
    params
        The parameter dataclass instance.
    needs_forward_all : bool
        Class attribute: the defense needs a model with ``forward_all`` (the
        autoencoder); :meth:`setup` refuses any other model.
    ddp_find_unused_parameters : bool or None
        Class attribute: whether DDP must look for parameters the loss leaves unused.
        None (default) lets the trainer decide (True only for an autoencoder trained
        without its reconstruction branch).
    """

    name: ClassVar[str] = ""
    params_cls: ClassVar[type | None] = None
    needs_forward_all: ClassVar[bool] = False
    ddp_find_unused_parameters: ClassVar[bool | None] = None

    def __init__(self, params: Any) -> None:
        self.params = params

    # -- the objective ------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss of ``batch`` and a dict of float logs."""
        raise NotImplementedError

    # -- hooks ----------------------------------------------------------------
    def setup(self, trainer: Trainer) -> None:
        """Called once before training, after the train/validation split.

        May check the model (``unwrap(trainer.model)``), allocate per-sample state of
        length ``trainer.num_samples`` and edit ``trainer.labels`` (the training
        labels, a numpy int64 array over the whole dataset; -1 = unlabelled). It
        runs again, identically, when a run is resumed, before
        :meth:`load_state_tensors`.
        """
        if self.needs_forward_all and not hasattr(unwrap(trainer.model), "forward_all"):
            arch = getattr(unwrap(trainer.model), "arch_name", type(trainer.model).__name__)
            raise CryoGuardError(
                f"the {self.name!r} defense needs a model with a reconstruction branch "
                f"(forward_all), e.g. 'autoencoder'; {arch!r} has none"
            )

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Called at the start of every epoch (``trainer.epoch`` is 0-based)."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """Called after every epoch's training steps, before validation.

        Under DDP each rank only saw its shard: combine per-sample state here with
        ``trainer.all_reduce_tensor``.
        """

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Per-sample state to store in the checkpoint (``extra.defense.<key>``)."""
        return {}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (on resume)."""

    # -- description ------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}`` for checkpoints and events."""
        return {"name": self.name, "params": dataclasses.asdict(self.params)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


#: Every defense, by name. Built-in defenses live one per module of this package and
#: are found by importing its modules (all but the infrastructure ones named here).
DEFENSES: Registry[type[Defense]] = Registry(
    "defense",
    package="napari_cryoguard.defenses",
    private=("base", "trainer", "events", "distributed", "state", "training_data"),
    base=Defense,
    need_defaults=True,
)
_REGISTRY = DEFENSES.entries


def register_defense(name: str, params_cls: type) -> Callable[[_T], _T]:
    """Class decorator: register a :class:`Defense` subclass under ``name``.

    Parameters
    ----------
    name
        Registry name (lower case, ``_`` for separators), e.g. ``"trades"``.
    params_cls
        A dataclass whose fields all have defaults (from the paper).
    """
    return DEFENSES.register(name, params_cls)


def available_defenses() -> list[str]:
    """Names of all registered defenses, sorted."""
    return DEFENSES.names()


def defense_params_class(name: str) -> type:
    """The parameter dataclass of defense ``name`` (for forms and CLI options)."""
    return DEFENSES.params_class(name)


def make_defense_params(name: str, **params: Any) -> Any:
    """Build defense ``name``'s parameter dataclass; unknown keys raise, listing valid ones.

    JSON lists become tuples (unless the field's default is a list).
    """
    return DEFENSES.make_params(name, **params)


def get_defense(name: str, **params: Any) -> Defense:
    """A ready defense: ``get_defense("semi", labelled_fraction=0.1)``.

    Raises
    ------
    CryoGuardError
        Unknown name (the message lists the known defenses) or parameter (it lists
        the valid ones), or a value the dataclass rejects.
    """
    return DEFENSES.get(name)(make_defense_params(name, **params))


# --------------------------------------------------------------------------- models


class _Dispatch(nn.Module):
    """Route ``forward(x, method=...)`` to a method of the wrapped model.

    DistributedDataParallel only synchronises gradients of work done through its
    own ``forward``; this lets ``forward_all`` (the autoencoder's joint output) pass
    through it too.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, method: str = "forward") -> Any:
        if method == "forward":
            return self.inner(x)
        return getattr(self.inner, method)(x)


class ModelHandle(nn.Module):
    """What a defense's loss receives as ``model`` during training.

    Calling it returns logits; ``forward_all(x)`` returns the autoencoder's
    ``(logits, reconstruction, code)``; both go through DistributedDataParallel when
    the run is distributed. Other attributes (``num_classes``, ``cube``,
    ``sparsity_loss``...) are those of the underlying classifier, which
    :func:`unwrap` (or ``.module``) returns. Generate adversarial examples on
    ``unwrap(model)`` (with ``torch.autograd.grad`` w.r.t. the input) *before* the
    forward pass of the loss, and compute the whole loss for one backward pass.
    """

    def __init__(self, model: nn.Module, engine: nn.Module | None = None) -> None:
        super().__init__()
        self.engine = engine if engine is not None else _Dispatch(model)

    @property
    def module(self) -> nn.Module:
        """The plain classifier (no DDP, no dispatch)."""
        engine = self.engine
        if isinstance(engine, nn.parallel.DistributedDataParallel):
            engine = engine.module
        return engine.inner  # type: ignore[union-attr,return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, reconstruction, code)`` of an autoencoding classifier."""
        if not hasattr(self.module, "forward_all"):
            raise CryoGuardError(
                f"{getattr(self.module, 'arch_name', type(self.module).__name__)!r} has no "
                "reconstruction branch (forward_all)"
            )
        return self.engine(x, method="forward_all")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain classifier behind a :class:`ModelHandle`, DDP wrapper or dispatch."""
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(model, ModelHandle):
            model = model.module
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, _Dispatch):
            model = model.inner
        else:
            break
    return model


# --------------------------------------------------------------------------- shared loss


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the labelled samples (``y >= 0``) and their count.

    With no labelled sample the loss is ``0 * logits.sum()`` (zero, but still
    connected to the graph so ``backward`` and DDP behave).
    """
    mask = y >= 0
    count = int(mask.sum().item())
    if count == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(logits[mask].float(), y[mask]), count
