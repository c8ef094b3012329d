"""The one training loop, used by every defense, and the ``cryoguard train`` command.

:func:`train` takes a dataset (or its path), a model name and a defense name and runs
a seeded, resumable, cancellable loop:

* a deterministic, class-stratified train/validation split (``val_fraction``, 0.2 as
  the 80/20 split of Wu et al., RAT (IEEE BIBM 2019)
  section IV.B and Che et al. 2018 (CB3D)
  section 3);
* per epoch a shuffle seeded by (seed, epoch) through a ``DistributedSampler`` (one
  process or many under ``torchrun``), batches of ``Batch(x, y, index, epoch,
  step)`` handed to the defense's loss, one optimizer step each;
* after each epoch: clean train accuracy (on a fixed subset of the training split,
  eval mode), validation loss (cross-entropy) and accuracy, and every
  ``robust_every`` epochs the validation accuracy under an attack from
  :mod:`napari_cryoguard.attacks`; then an atomic checkpoint;
* early stopping on the validation loss (the semi-supervised paper section 4 and
  the CB3D paper section 2.3 stop on it), keeping the best weights;
* optimizer state, early-stopping state, best weights and the random-number
  generators' states in a second atomic file, ``<out stem>.state.safetensors``, so
  ``resume=`` continues exactly where a run stopped (even mid-epoch after a cancel, by
  skipping the steps already done and restoring the generators and the partial epoch
  sums of the cancelled step).

The checkpoint and its state file are one consistent pair: both carry the same
``state_token``. The state is written first to ``<stem>.state.pending.safetensors``,
then the checkpoint, then the pending file is renamed over the state file; a kill at
any point leaves a checkpoint whose token is held by one of the two state files, and
:meth:`Trainer.restore` loads the one that matches (with a note when it had to take
the pending one). Orphan temporary files of killed writes in the output folder are
removed when a run starts, and the output path is checked (not a folder, writable)
before any data is read.

Defaults: Adam at lr 1e-4 and batch size 16 (RAT paper section IV.B; the
semi-supervised paper section 4 also uses Adam at 1e-4); ``optimizer="sgd"`` is SGD
with Nesterov momentum 0.9 at lr 0.005 (CB3D paper section 2.3; its Keras-style
learning-rate decay of 1e-7 per step is negligible and left out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryoguard._atomic import atomic_output, remove_orphans
from napari_cryoguard._train_parser import OPTIMIZERS as _OPTIMIZERS
from napari_cryoguard._train_parser import SCHEDULES as _SCHEDULES
from napari_cryoguard._train_parser import build_parser
from napari_cryoguard.defenses import distributed as ddp
from napari_cryoguard.defenses.base import Batch, Defense, ModelHandle, get_defense
from napari_cryoguard.defenses.events import EventWriter
from napari_cryoguard.device import prepare_model
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "Recipe",
    "TrainResult",
    "Trainer",
    "build_parser",
    "load_training_state",
    "parse_simulate_spec",
    "pending_state_path_for",
    "split_indices",
    "state_path_for",
    "train",
    "train_main",
]

STATE_KEY = "cryoguard_state"
_DEFAULT_LR = {"adam": 1e-4, "sgd": 0.005}


# --------------------------------------------------------------------------- recipe


@dataclass
class Recipe:
    """How to train: optimizer, schedule, split, early stopping, robust evaluation.

    Attributes
    ----------
    optimizer
        ``"adam"`` (RAT paper IV.B; semi-supervised paper section 4) or ``"sgd"``
        (SGD, Nesterov momentum 0.9: CB3D paper section 2.3).
    lr
        Learning rate; ``None`` picks 1e-4 for Adam and 0.005 for SGD (the papers').
    weight_decay
        L2 weight decay added by the optimizer (0: the papers use none).
    momentum
        SGD (Nesterov) momentum, 0.9.
    adam_betas
        Adam's (beta1, beta2); (0.9, 0.999) is Adam's default (RAT); the
        semi-supervised paper uses (0.9, 0.99).
    epochs
        Total epochs (a resumed run trains up to this count).
    batch_size
        Samples per step *per process* (16, RAT paper IV.B); under DDP the
        effective batch is ``batch_size * world_size``.
    schedule
        Learning-rate schedule per epoch: ``"none"``, ``"cosine"`` (to 0 at the last
        epoch) or ``"step"`` (times ``gamma`` every ``step_size`` epochs).
    step_size, gamma
        For ``"step"``; ``step_size`` 0 means a third of ``epochs``.
    val_fraction
        Fraction of each class held out for validation (0.2); 0 trains on all.
    patience
        Early stopping: stop after this many epochs without a lower validation loss,
        and keep the best weights (0 = off).
    seed
        Seeds the split, the shuffling, the initial weights and dropout.
    robust_every
        Every this many epochs, measure the validation accuracy under
        ``robust_attack`` (0 = off).
    robust_attack, robust_params
        Attack name and parameters for :func:`napari_cryoguard.attacks.run_attack`.
    robust_samples
        At most this many validation samples are attacked (attacks are costly).
    train_eval_samples
        Clean train accuracy is measured on a fixed subset of this many training
        samples, in eval mode.
    amp
        float16 mixed precision (CUDA only; a no-op elsewhere).
    """

    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    adam_betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 20
    batch_size: int = 16
    schedule: str = "none"
    step_size: int = 0
    gamma: float = 0.1
    val_fraction: float = 0.2
    patience: int = 0
    seed: int = 0
    robust_every: int = 0
    robust_attack: str = "pgd"
    robust_params: dict[str, Any] = field(default_factory=dict)
    robust_samples: int = 128
    train_eval_samples: int = 512
    amp: bool = False

    def __post_init__(self) -> None:
        self.optimizer = str(self.optimizer).strip().lower()
        if self.optimizer not in _OPTIMIZERS:
            raise CryoGuardError(
                f"unknown optimizer {self.optimizer!r}; known: {', '.join(_OPTIMIZERS)}"
            )
        self.schedule = str(self.schedule).strip().lower()
        if self.schedule not in _SCHEDULES:
            raise CryoGuardError(
                f"unknown schedule {self.schedule!r}; known: {', '.join(_SCHEDULES)}"
            )
        if self.lr is not None and not float(self.lr) > 0:
            raise CryoGuardError(f"lr must be > 0, got {self.lr!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CryoGuardError(f"{name} must be a positive integer, got {v!r}")
        for name in ("patience", "robust_every", "step_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise CryoGuardError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("robust_samples", "train_eval_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CryoGuardError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise CryoGuardError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.patience > 0 and float(self.val_fraction) == 0.0:
            raise CryoGuardError("early stopping (patience > 0) needs val_fraction > 0")
        if float(self.weight_decay) < 0:
            raise CryoGuardError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.robust_params, dict):
            raise CryoGuardError("robust_params must be a dict of attack parameters")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if len(self.adam_betas) != 2:
            raise CryoGuardError(f"adam_betas needs two values, got {self.adam_betas!r}")
        self.val_fraction = float(self.val_fraction)
        self.amp = bool(self.amp)

    def resolved_lr(self) -> float:
        """The learning rate in use (the optimizer's paper default if ``lr`` is None)."""
        return float(self.lr) if self.lr is not None else _DEFAULT_LR[self.optimizer]

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the base learning rate at 0-based ``epoch``."""
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, self.epochs)))
        if self.schedule == "step":
            size = self.step_size or max(1, self.epochs // 3)
            return float(self.gamma) ** (epoch // size)
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the resolved ``lr``."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["lr"] = self.resolved_lr()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> Recipe:
        """Build from a stored dict (unknown keys ignored) with ``overrides`` applied."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise CryoGuardError(
                f"unknown recipe option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(overrides)
        if isinstance(kw.get("adam_betas"), list):
            kw["adam_betas"] = tuple(kw["adam_betas"])
        return cls(**kw)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    checkpoint : Path
        The checkpoint written last (``out``).
    history : list of dict
        One metrics dict per completed epoch (including epochs before a resume).
    best_epoch : int or None
        1-based epoch with the lowest validation loss (None without validation).
    metrics : dict
        Metrics of the last epoch (with ``best_epoch``).
    epochs_run : int
        Epochs completed by this call.
    cancelled, stopped_early : bool
    state_path : Path or None
        The optimizer-state file beside the checkpoint.
    """

    checkpoint: Path
    history: list[dict[str, Any]]
    best_epoch: int | None
    metrics: dict[str, Any]
    epochs_run: int
    cancelled: bool = False
    stopped_early: bool = False
    state_path: Path | None = None


# --------------------------------------------------------------------------- data


def split_indices(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-stratified train/validation split.

    Each class keeps ``round(val_fraction * n_c)`` samples for validation (at least
    one, and at most ``n_c - 1``, when ``val_fraction > 0`` and ``n_c >= 2``);
    unlabelled samples (-1) always train.

    Returns
    -------
    (train_index, val_index)
        Sorted int64 row indices.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0x5B1])
    train: list[np.ndarray] = [np.flatnonzero(labels < 0)]
    val: list[np.ndarray] = []
    for c in np.unique(labels[labels >= 0]):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = 0
        if val_fraction > 0 and len(rows) >= 2:
            k = min(len(rows) - 1, max(1, int(round(val_fraction * len(rows)))))
        val.append(rows[:k])
        train.append(rows[k:])
    tr = np.sort(np.concatenate(train)).astype(np.int64)
    va = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    return tr, va


def _as_dataset(data: Any) -> tuple[Any, dict[str, Any]]:
    """A :class:`~napari_cryoguard.data.SubtomogramDataset` and a description of it."""
    from napari_cryoguard.data import SubtomogramDataset, load_dataset

    if isinstance(data, (str, os.PathLike)):
        ds = load_dataset(data)
        info: dict[str, Any] = {"path": str(Path(data).resolve())}
    elif isinstance(data, SubtomogramDataset):
        ds = data
        info = {"in_memory": True, **({"meta": ds.meta} if ds.meta else {})}
    elif hasattr(data, "volumes") and hasattr(data, "labels"):  # SimulatedDataset
        params = dict(getattr(data, "params", {}) or {})
        ds = SubtomogramDataset(
            volumes=data.volumes,
            labels=data.labels,
            class_names=getattr(data, "class_names", None),
            voxel_size=float(getattr(data, "voxel_size", 1.0)),
            normalized=bool(params.get("normalize", True)),
            meta={"simulated": params} if params else {},
        )
        info = {"simulated": params} if params else {"in_memory": True}
    else:
        raise CryoGuardError(
            f"cannot train on a {type(data).__name__}: give a dataset path, a "
            "SubtomogramDataset or a simulated dataset"
        )
    if ds.labels is None:
        raise CryoGuardError("the dataset has no labels; training needs labelled subtomograms")
    if len(ds) < 2:
        raise CryoGuardError(f"the dataset has {len(ds)} subtomogram(s); training needs >= 2")
    if ds.num_classes < 2:
        raise CryoGuardError(
            f"the dataset has {ds.num_classes} class(es); a classifier needs at least 2"
        )
    if not (ds.labels >= 0).any():
        raise CryoGuardError("every sample of the dataset is unlabelled (-1)")
    if "path" not in info:  # load_dataset has checked a file already
        from napari_cryoguard.data import require_finite

        require_finite(ds.volumes, "the training subtomograms")
    info.update(n=len(ds), cube=ds.cube, num_classes=ds.num_classes)
    return ds, info


class _Rows(torch.utils.data.Dataset):
    """Training rows of the dataset; ``ds[list_of_positions]`` returns a whole batch."""

    def __init__(self, volumes: torch.Tensor, labels: torch.Tensor, rows: np.ndarray) -> None:
        self.volumes = volumes
        self.labels = labels
        self.rows = torch.as_tensor(rows, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.rows[torch.as_tensor(positions, dtype=torch.int64)]
        return self.volumes[idx].unsqueeze(1), self.labels[idx], idx


# --------------------------------------------------------------------------- state file


def state_path_for(checkpoint: str | os.PathLike[str]) -> Path:
    """``a/b.safetensors`` -> ``a/b.state.safetensors`` (optimizer state, best weights)."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(f"{stem}.state.safetensors")


def pending_state_path_for(checkpoint: str | os.PathLike[str]) -> Path:
    """``a/b.safetensors`` -> ``a/b.state.pending.safetensors``.

    The state of a checkpoint being written; renamed to :func:`state_path_for` once
    the checkpoint is in place. Found after a kill between the two renames, it is the
    state that belongs to the (new) checkpoint.
    """
    p = state_path_for(checkpoint)
    return p.with_name(p.name[: -len(".safetensors")] + ".pending.safetensors")


def _checkpoint_path(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


def _check_output(path: Path) -> None:
    """Refuse an output path that cannot be written, before any training is done."""
    if path.is_dir():
        raise CryoGuardError(f"the output {path} is a folder; give a .safetensors file path")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CryoGuardError(
            f"cannot write the checkpoint {path}: {exc.strerror or exc} (in {parent})"
        ) from exc
    for p in (state_path_for(path), pending_state_path_for(path)):
        if p.is_dir():
            raise CryoGuardError(f"{p} is a folder; the training state is written there")


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The states of torch's, numpy's and Python's global generators (tensors, JSON)."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if device.type == "cuda" and torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device).clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    version, pstate, gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": {"version": version, "state": list(pstate), "gauss": gauss},
    }
    return tensors, meta


def _set_rng_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device
) -> None:
    """Put the generators back in the state :func:`_rng_state` recorded."""
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    if "rng.cuda" in tensors and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"].to(torch.uint8), device)
    if "rng.numpy" in tensors and "numpy" in meta:
        n = meta["numpy"]
        keys = tensors["rng.numpy"].numpy().astype(np.uint32)
        state = (n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached"]))
        np.random.set_state(state)  # noqa: NPY002
    if "python" in meta:
        py = meta["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (tensors ``opt.<param>.<key>``, JSON for the rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, d in (meta.get("scalars") or {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(meta)})


def load_training_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a ``.state.safetensors`` file: (tensors, JSON metadata). Never unpickles."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})[STATE_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise CryoGuardError(f"{path} is not a readable training-state file: {exc}") from exc
    return tensors, meta


# --------------------------------------------------------------------------- the loop


def _mix_seed(*parts: int) -> int:
    s = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(s.generate_state(1, dtype=np.uint32)[0])


def _cancel_checker(cancel: Any) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return lambda: bool(cancel.is_set())
    if callable(cancel):
        return lambda: bool(cancel())
    raise CryoGuardError("cancel must be a threading.Event-like object or a callable")


class Trainer:
    """State of one training run; defenses' hooks receive it.

    Attributes a defense may use: ``model`` (the :class:`ModelHandle`; ``unwrap``
    it for the plain classifier), ``defense``, ``recipe``, ``dataset``, ``labels``
    (numpy int64 training labels over the whole dataset, -1 = unlabelled; editable
    in ``Defense.setup``), ``train_index`` / ``val_index`` (numpy rows),
    ``num_samples``, ``epoch`` (0-based, current), ``history``, ``device``,
    ``rank``, ``world_size``, and the methods :meth:`note` and
    :meth:`all_reduce_tensor`.
    """

    def __init__(
        self,
        dataset: Any,
        dataset_info: dict[str, Any],
        model: nn.Module,
        defense: Defense,
        recipe: Recipe,
        ctx: ddp.DistContext,
        events: EventWriter,
        out: Path,
        cancel: Callable[[], bool],
        num_workers: int = 0,
        save_state: bool = True,
    ) -> None:
        self.dataset = dataset
        self.dataset_info = dataset_info
        self.defense = defense
        self.recipe = recipe
        self.ctx = ctx
        self.device = ctx.device
        self.events = events
        self.out = out
        self.state_path = state_path_for(out)
        self.save_state = bool(save_state)
        self._cancel = cancel
        self.num_workers = int(num_workers)
        self.num_samples = len(dataset)
        self.rank, self.world_size = ctx.rank, ctx.world_size
        # the device's memory format (channels_last_3d on the CPU) and cudnn.benchmark on CUDA,
        # before the optimizer and any DDP wrapper are built around the model
        self.raw_model = prepare_model(model, self.device)
        engine: nn.Module | None = None
        if ctx.distributed:
            from napari_cryoguard.defenses.base import _Dispatch

            ids = [self.device.index] if self.device.type == "cuda" else None
            unused = defense.ddp_find_unused_parameters
            if unused is None:  # e.g. plain CE on the autoencoder leaves its decoder idle
                unused = hasattr(self.raw_model, "forward_all") and not defense.needs_forward_all
            engine = nn.parallel.DistributedDataParallel(
                _Dispatch(self.raw_model), device_ids=ids, find_unused_parameters=bool(unused)
            )
        self.model = ModelHandle(self.raw_model, engine)
        self.train_index, self.val_index = split_indices(
            dataset.labels, recipe.val_fraction, recipe.seed
        )
        if len(self.train_index) == 0:
            raise CryoGuardError("no samples left for training after the validation split")
        self.labels = np.array(dataset.labels, dtype=np.int64, copy=True)
        self.volumes = torch.from_numpy(np.ascontiguousarray(dataset.volumes, dtype=np.float32))
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_val = math.inf
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.run_id = uuid.uuid4().hex
        self.start_epoch = 0
        self.skip_steps = 0
        #: (tensors, meta) of the generators at a cancelled step, restored at resume
        self._resume_rng: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        #: the cancelled epoch's loss sums so far (summed over ranks), for its history
        self._resume_partial: dict[str, Any] | None = None
        self._robust_disabled = False
        lr = recipe.resolved_lr()
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        if recipe.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=lr, betas=recipe.adam_betas, weight_decay=recipe.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params,
                lr=lr,
                momentum=recipe.momentum,
                nesterov=recipe.momentum > 0,
                weight_decay=recipe.weight_decay,
            )
        use_scaler = recipe.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        defense.setup(self)
        self.train_labels = torch.from_numpy(self.labels)
        rng = np.random.default_rng([recipe.seed, 0x7EA])
        known = self.train_index[self.labels[self.train_index] >= 0]
        if len(known) > recipe.train_eval_samples:
            known = np.sort(rng.choice(known, recipe.train_eval_samples, replace=False))
        self.train_eval_index = known

    # -- helpers for defenses ------------------------------------------------
    def note(self, message: str) -> None:
        """Emit a ``note`` event (and print it on stderr via the CLI's sink)."""
        self.events.emit("note", message=message)

    def all_reduce_tensor(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or ``"max"``) a tensor across DDP ranks in place; identity in one process."""
        if self.ctx.distributed:
            import torch.distributed as dist

            red = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
            if self.device.type == "cuda" or tensor.device.type == "cpu":
                dist.all_reduce(tensor, op=red)
            else:
                tmp = tensor.cpu()
                dist.all_reduce(tmp, op=red)
                tensor.copy_(tmp)
        return tensor

    # -- resume ---------------------------------------------------------------
    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's metadata (+ its state file, if it matches)."""
        self.history = [dict(h) for h in meta.get("history", [])]
        self.start_epoch = int(meta.get("epoch", len(self.history)))
        self.skip_steps = int(meta.get("step_in_epoch", 0))
        self.run_id = str(meta.get("run_id", self.run_id))
        extra = meta.get("extra_tensors", {}) or {}
        prefix = "defense."
        dstate = {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}
        if dstate:
            self.defense.load_state_tensors({k: v.to(self.device) for k, v in dstate.items()})
        partial = meta.get("partial_epoch")
        if self.skip_steps and isinstance(partial, dict) and self.ctx.is_main:
            self._resume_partial = partial
        token = meta.get("state_token")
        src = meta.get("_resume_path")
        spath = state_path_for(src) if src else None
        pending = pending_state_path_for(src) if src else None
        found = [p for p in (spath, pending) if p is not None and p.is_file()]
        if not found:
            self.note(f"no optimizer state found next to {src}; the optimizer starts afresh")
            return
        chosen = None
        for candidate in found:
            tensors, smeta = load_training_state(candidate)
            if token is not None and smeta.get("state_token") == token:
                chosen = candidate
                break
        if chosen is None:
            self.note(f"{spath.name} does not belong to this checkpoint; optimizer starts afresh")
            return
        with contextlib.suppress(OSError):
            if not self.ctx.is_main:
                pass
            elif chosen == pending:
                self.note(
                    f"took the optimizer state of {Path(str(src)).name} from {pending.name} "
                    "(the previous run stopped between writing the checkpoint and its state)"
                )
                os.replace(pending, spath)  # the pair is complete again
            elif pending is not None and pending.is_file():
                os.unlink(pending)  # the state of a checkpoint that was never written
        try:
            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, smeta["optimizer"]))
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CryoGuardError(f"{spath}: optimizer state does not fit this run: {exc}") from exc
        tstate = smeta.get("trainer", {})
        best = tstate.get("best_val")
        self.best_val = math.inf if best is None else float(best)
        self.best_epoch = tstate.get("best_epoch")
        self.bad_epochs = int(tstate.get("bad_epochs", 0))
        best_w = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best_w or None
        scaler = smeta.get("scaler")
        if scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(scaler)
        rng_t = {k: v for k, v in tensors.items() if k.startswith("rng.")}
        if self.skip_steps and rng_t and smeta.get("rng") is not None:
            if self.world_size > 1:
                self.note("resuming mid-epoch under DDP: the random streams of the ranks "
                          "restart from their epoch seed, so the run may differ slightly")
            else:
                self._resume_rng = (rng_t, dict(smeta["rng"]))

    # -- checkpointing --------------------------------------------------------
    def _metadata(self, cancelled: bool, step_in_epoch: int, weights_epoch: int) -> dict:
        ds = self.dataset
        d = self.defense.describe()
        training = {
            **self.recipe.to_dict(),
            "defense": d["name"],
            "defense_params": d["params"],
            "dataset": self.dataset_info,
            "n_train": int(len(self.train_index)),
            "n_val": int(len(self.val_index)),
            "world_size": self.world_size,
        }
        metrics = dict(self.history[-1]) if self.history else {}
        metrics["best_epoch"] = self.best_epoch
        return {
            "class_names": ds.class_names
            if ds.class_names is not None
            else [f"class {i}" for i in range(ds.num_classes)],
            "voxel_size": ds.voxel_size,
            "normalization": "zscore" if ds.normalized else "none",
            "training": training,
            "metrics": metrics,
            "defense": d["name"],
            "defense_params": d["params"],
            "history": self.history,
            "epoch": self.epoch_done,
            "step_in_epoch": step_in_epoch,
            "weights_epoch": weights_epoch,
            "best_epoch": self.best_epoch,
            "cancelled": cancelled,
            "run_id": self.run_id,
        }

    def save(
        self,
        *,
        cancelled: bool = False,
        step_in_epoch: int = 0,
        weights_epoch: int | None = None,
        extra_meta: Mapping[str, Any] | None = None,
        partial: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the state, then the checkpoint (rank 0 only); emit ``checkpoint``.

        ``weights_epoch`` records which epoch's weights the file holds (the best one
        after early stopping; the last completed one otherwise). ``partial`` (a
        cancelled epoch's loss sums so far) goes into the checkpoint, and the
        generators' states into the state file, so that a resume continues the epoch
        exactly. The state goes to the pending file first and is renamed over the
        state file once the checkpoint is in place (see the module docstring).
        """
        if not self.ctx.is_main:
            return self.out
        from napari_cryoguard.models import save_checkpoint

        token = f"{self.run_id}:{self.epoch_done}:{step_in_epoch}:{time.time_ns()}"
        tensors, ometa = _flatten_optimizer(self.optimizer)
        rng_t, rng_meta = _rng_state(self.device)
        tensors.update(rng_t)
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        smeta = {
            "state_token": token,
            "optimizer": ometa,
            "trainer": {
                "best_val": None if math.isinf(self.best_val) else self.best_val,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
            },
            "rng": rng_meta,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        meta = self._metadata(
            cancelled, step_in_epoch, self.epoch_done if weights_epoch is None else weights_epoch
        )
        meta.update(extra_meta or {})
        meta["state_token"] = token
        if partial is not None:
            meta["partial_epoch"] = dict(partial)
        extra = {f"defense.{k}": v for k, v in self.defense.state_tensors().items()}
        pending = pending_state_path_for(self.out)
        written = False
        try:
            if self.save_state:
                _atomic_save_tensors(pending, tensors, smeta)
            path = save_checkpoint(self.out, self.raw_model, meta, extra_tensors=extra)
            written = True
            if self.save_state:
                os.replace(pending, self.state_path)
        except OSError as exc:
            if not written:  # the old checkpoint and its state stay the consistent pair
                with contextlib.suppress(OSError):
                    os.unlink(pending)
            raise CryoGuardError(
                f"cannot write the checkpoint {self.out}: {exc.strerror or exc}"
            ) from exc
        self.events.emit("checkpoint", path=str(path), epoch=self.epoch_done)
        return path

    # -- evaluation -----------------------------------------------------------
    def _shard(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.rank :: self.world_size]

    @torch.no_grad()
    def _clean_eval(self, rows: np.ndarray) -> tuple[float, float, float]:
        """(loss sum, correct, count) of the plain model on ``rows`` (this rank's shard)."""
        model = self.raw_model
        loss_sum = correct = 0.0
        rows = self._shard(rows)
        bs = max(self.recipe.batch_size, 32)
        for s in range(0, len(rows), bs):
            idx = torch.as_tensor(rows[s : s + bs])
            x = self.volumes[idx].unsqueeze(1).to(self.device)
            y = torch.as_tensor(self.dataset.labels[idx.numpy()]).to(self.device)
            from napari_cryoguard.device import autocast_context

            with autocast_context(self.device, self.recipe.amp):
                logits = model(x)
            loss_sum += float(
                nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
            )
            correct += float((logits.argmax(1) == y).sum().item())
        return loss_sum, correct, float(len(rows))

    def _robust_eval(self, rows: np.ndarray) -> tuple[float, float] | None:
        """(correct under attack, count) on this rank's shard; None if unavailable."""
        if self._robust_disabled:
            return None
        try:
            from napari_cryoguard.attacks import run_attack
        except ImportError as exc:
            self._robust_disabled = True
            self.note(f"robust evaluation skipped: attacks unavailable ({exc})")
            return None
        rows = self._shard(rows[: self.recipe.robust_samples])
        model = self.raw_model
        correct = 0.0
        bs = max(self.recipe.batch_size, 32)
        for s in range(0, len(rows), bs):
            idx = torch.as_tensor(rows[s : s + bs])
            x = self.volumes[idx].unsqueeze(1).to(self.device)
            y = torch.as_tensor(self.dataset.labels[idx.numpy()]).to(self.device)
            res = run_attack(self.recipe.robust_attack, model, x, y, **self.recipe.robust_params)
            # robust = right on the clean sample AND on its adversarial version
            ok = (res.pred_before.to(y.device) == y) & (res.pred_after.to(y.device) == y)
            correct += float(ok.sum().item())
        return correct, float(len(rows))

    def _evaluate(self, epoch: int) -> dict[str, float]:
        was = self.raw_model.training
        self.raw_model.eval()
        try:
            _, tr_ok, tr_n = self._clean_eval(self.train_eval_index)
            va_loss, va_ok, va_n = self._clean_eval(self.val_index)
            tr_ok, tr_n, va_loss, va_ok, va_n = ddp.all_reduce_sum(
                self.ctx, [tr_ok, tr_n, va_loss, va_ok, va_n]
            )
            out: dict[str, float] = {}
            out["train_acc"] = tr_ok / tr_n if tr_n else math.nan
            if va_n:
                out["val_loss"] = va_loss / va_n
                out["val_acc"] = va_ok / va_n
            r = self.recipe
            if r.robust_every and (epoch + 1) % r.robust_every == 0 and len(self.val_index):
                got = self._robust_eval(self.val_index)
                flag = ddp.all_reduce_max(self.ctx, 0.0 if got is None else 1.0)
                if flag and got is not None:
                    ok, n = ddp.all_reduce_sum(self.ctx, list(got))
                    out["robust_acc"] = ok / n if n else math.nan
            return out
        finally:
            self.raw_model.train(was)

    # -- training -------------------------------------------------------------
    @property
    def epoch_done(self) -> int:
        """Number of completed epochs."""
        return len(self.history)

    def _cancelled(self) -> bool:
        flag = 1.0 if self._cancel() else 0.0
        return ddp.all_reduce_max(self.ctx, flag) > 0

    def _apply_resume_rng(self) -> None:
        if self._resume_rng is not None:
            _set_rng_state(*self._resume_rng, self.device)
            self._resume_rng = None

    def run(self, progress: Callable[[dict], None] | None = None) -> TrainResult:
        """Train from ``start_epoch`` to ``recipe.epochs``; see :func:`train`."""
        from torch.utils.data import BatchSampler, DataLoader
        from torch.utils.data.distributed import DistributedSampler

        from napari_cryoguard.device import autocast_context

        r = self.recipe
        if r.robust_every and not self._robust_disabled:
            # fail now, not after the first epochs, on an unknown attack or parameter
            try:
                from napari_cryoguard.attacks import make_attack
            except ImportError as exc:
                self._robust_disabled = True
                self.note(f"robust evaluation skipped: attacks unavailable ({exc})")
            else:
                make_attack(r.robust_attack, **r.robust_params)
        rows = _Rows(self.volumes, self.train_labels, self.train_index)
        sampler = DistributedSampler(
            rows, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=r.seed
        )
        batches = BatchSampler(sampler, r.batch_size, drop_last=False)
        loader = DataLoader(rows, sampler=batches, batch_size=None, num_workers=self.num_workers)
        steps = len(batches)
        base_lr = r.resolved_lr()
        epoch_times: list[float] = []
        epochs_run = 0
        stopped_early = False
        for epoch in range(self.start_epoch, r.epochs):
            self.epoch = epoch
            t0 = time.monotonic()
            torch.manual_seed(_mix_seed(r.seed, epoch, self.rank, 0xD0))
            sampler.set_epoch(epoch)
            for g in self.optimizer.param_groups:
                g["lr"] = base_lr * r.lr_factor(epoch)
            self.model.train()
            self.defense.on_epoch_start(self)
            skip = self.skip_steps if epoch == self.start_epoch else 0
            sums: dict[str, float] = {}
            loss_sum = count = 0.0
            if skip and self._resume_partial is not None:
                part = self._resume_partial
                loss_sum = float(part.get("loss_sum", 0.0))
                count = float(part.get("count", 0.0))
                sums = {str(k): float(v) for k, v in (part.get("sums") or {}).items()}
            self._resume_partial = None
            for step, (x, y, idx) in enumerate(loader):
                if step < skip:
                    continue
                if step == skip:
                    self._apply_resume_rng()  # the streams as they were after the last step
                batch = Batch(
                    x=x.to(self.device, non_blocking=True),
                    y=y.to(self.device, non_blocking=True),
                    index=idx.to(self.device, non_blocking=True),
                    epoch=epoch,
                    step=step,
                )
                with autocast_context(self.device, r.amp):
                    loss, logs = self.defense.loss(self.model, batch)
                if not torch.isfinite(loss.detach()).all():
                    raise CryoGuardError(
                        f"the training loss became {float(loss.detach().item())} at epoch "
                        f"{epoch + 1}, step {step + 1}; try a lower learning rate"
                    )
                # attacks inside the loss may have left gradients on the weights
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                n = float(x.shape[0])
                value = float(loss.detach().item())
                loss_sum += value * n
                count += n
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                self.events.step(epoch + 1, step + 1, steps, value, epochs=r.epochs)
                if self._cancelled():
                    keys = sorted(sums)
                    red = ddp.all_reduce_sum(
                        self.ctx, [loss_sum, count, *[sums[k] for k in keys]]
                    )
                    partial = {
                        "loss_sum": red[0],
                        "count": red[1],
                        "sums": dict(zip(keys, red[2:], strict=True)),
                    }
                    path = self.save(cancelled=True, step_in_epoch=step + 1, partial=partial)
                    self.events.emit("cancelled", path=str(path), epoch=epoch + 1, step=step + 1)
                    ddp.barrier(self.ctx)
                    return TrainResult(
                        checkpoint=path,
                        history=list(self.history),
                        best_epoch=self.best_epoch,
                        metrics=dict(self.history[-1]) if self.history else {},
                        epochs_run=epochs_run,
                        cancelled=True,
                        state_path=self.state_path if self.ctx.is_main and self.save_state else None,
                    )
            self._apply_resume_rng()  # cancelled at the epoch's last step: nothing ran above
            self.skip_steps = 0
            keys = sorted(sums)
            red = ddp.all_reduce_sum(self.ctx, [loss_sum, count, *[sums[k] for k in keys]])
            total = red[1]
            self.defense.on_epoch_end(self)
            metrics: dict[str, Any] = {"epoch": epoch + 1}
            if total:  # (a resumed epoch with every step done before: no sums to show)
                metrics["train_loss"] = red[0] / total
                for k, v in zip(keys, red[2:], strict=True):
                    metrics[f"train_{k}"] = v / total
            metrics.update(self._evaluate(epoch))
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            metrics["seconds"] = time.monotonic() - t0
            improved = False
            if "val_loss" in metrics and metrics["val_loss"] < self.best_val:
                self.best_val = float(metrics["val_loss"])
                self.best_epoch = epoch + 1
                self.bad_epochs = 0
                improved = True
            elif "val_loss" in metrics:
                self.bad_epochs += 1
            if improved and r.patience > 0:
                self.best_state = {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in self.raw_model.state_dict().items()
                }
            self.history.append(metrics)
            epochs_run += 1
            epoch_times.append(metrics["seconds"])
            eta = float(np.mean(epoch_times)) * (r.epochs - epoch - 1)
            self.events.emit(
                "epoch", epoch=epoch + 1, epochs=r.epochs, metrics=metrics, eta_seconds=eta
            )
            if progress is not None:
                progress(metrics)
            if r.patience > 0 and self.bad_epochs >= r.patience:
                stopped_early = True
                self.note(
                    f"early stopping after epoch {epoch + 1}: no lower validation loss for "
                    f"{r.patience} epoch(s); keeping epoch {self.best_epoch}"
                )
                break
            if epoch + 1 < r.epochs:
                self.save()
        weights_epoch = self.epoch_done
        if r.patience > 0 and self.best_state is not None and self.best_epoch != self.epoch_done:
            self.raw_model.load_state_dict(self.best_state)
            weights_epoch = int(self.best_epoch or self.epoch_done)
        restored = weights_epoch != self.epoch_done
        path = self.save(
            weights_epoch=weights_epoch, extra_meta={"restored_best": True} if restored else None
        )
        final = dict(self.history[-1]) if self.history else {}
        final["best_epoch"] = self.best_epoch
        self.events.emit(
            "done",
            path=str(path),
            metrics=final,
            best_epoch=self.best_epoch,
            epochs_run=epochs_run,
            stopped_early=stopped_early,
        )
        ddp.barrier(self.ctx)
        return TrainResult(
            checkpoint=path,
            history=list(self.history),
            best_epoch=self.best_epoch,
            metrics=final,
            epochs_run=epochs_run,
            stopped_early=stopped_early,
            state_path=self.state_path if self.ctx.is_main and self.save_state else None,
        )


def train(
    dataset_or_path: Any,
    model: str | nn.Module | None = None,
    defense: str | Defense | None = None,
    *,
    model_params: Mapping[str, Any] | None = None,
    defense_params: Mapping[str, Any] | None = None,
    recipe: Recipe | None = None,
    device: str | torch.device = "auto",
    out: str | os.PathLike[str] | None = None,
    events: Any = None,
    resume: str | os.PathLike[str] | None = None,
    cancel: Any = None,
    num_workers: int = 0,
    progress: Callable[[dict], None] | None = None,
    save_state: bool = True,
    **recipe_kwargs: Any,
) -> TrainResult:
    """Train a classifier with a defense; the one loop behind ``cryoguard train``.

    Parameters
    ----------
    dataset_or_path
        A ``.npz`` dataset path (:func:`napari_cryoguard.data.load_dataset`), a
        :class:`~napari_cryoguard.data.SubtomogramDataset`, or the output of
        :func:`napari_cryoguard.simulate.simulate_subtomograms`. Labels -1 are
        unlabelled (used by defenses that can, e.g. ``semi``; ignored by CE).
    model
        Architecture name (default ``"cb3d"``; see
        :func:`napari_cryoguard.models.available_models`), or a model made by
        ``build_model`` (e.g. pre-trained) with the dataset's classes and cube.
    defense
        Defense name (default ``"standard"``; see :func:`available_defenses`) or a
        :class:`Defense` instance.
    model_params, defense_params
        Fields of the architecture's / defense's parameter dataclass.
    recipe, **recipe_kwargs
        A :class:`Recipe`, and/or its fields as keywords (applied on top).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``; under torchrun each rank uses
        ``cuda:<LOCAL_RANK>`` (or the CPU with gloo).
    out
        Checkpoint path (``.safetensors``; required). Rewritten atomically after
        every epoch; ``<stem>.state.safetensors`` beside it holds the optimizer
        state. With early stopping the final file holds the best-validation weights
        (``metadata["weights_epoch"]``).
    events
        Where JSON-lines events go: a path, ``"-"`` (stdout), a callable receiving
        each event dict, an :class:`EventWriter`, or None.
    resume
        A checkpoint written by this function: training continues after its last
        completed epoch (or step, if it was cancelled) with the same optimizer
        state, split and shuffling. Model, defense and recipe default to the
        checkpoint's; ``recipe_kwargs`` (e.g. a larger ``epochs``) override.
    cancel
        A ``threading.Event``-like object or a callable returning True to stop. It
        is checked after every step: the step finishes, a checkpoint marked
        ``"cancelled": true`` is written, a ``cancelled`` event is emitted and the
        function returns (``result.cancelled``).
    num_workers
        DataLoader worker processes (0: load in this process; the data is in memory).
    progress
        Optional callable receiving each epoch's metrics dict.
    save_state
        Write ``<stem>.state.safetensors`` (optimizer state, best weights) beside the
        checkpoint, for an exact ``resume``. ``False`` leaves the checkpoint alone (a
        resume then starts the optimizer afresh, and says so).

    Returns
    -------
    TrainResult

    Raises
    ------
    CryoGuardError
        Bad dataset, unknown model/defense/parameter, a checkpoint that does not fit,
        a non-finite loss. An ``error`` event is emitted first.

    Notes
    -----
    Seeding: ``recipe.seed`` fixes the split, the initial weights, the per-epoch
    order (``DistributedSampler`` seeded with (seed, epoch)) and the dropout stream
    (torch's global generator is reseeded from (seed, epoch, rank) each epoch), so a
    run resumed from a checkpoint follows the same path as an uninterrupted one.
    """
    if isinstance(events, EventWriter):
        writer = events
    else:
        writer = EventWriter(events, enabled=events is not None)
    ctx: ddp.DistContext | None = None
    try:
        ctx = ddp.init_distributed(device)
        if not ctx.is_main:
            writer = EventWriter(None, enabled=False)
        if out is None:
            raise CryoGuardError("train() needs out=: where to write the checkpoint")
        out_path = _checkpoint_path(out)
        if ctx.is_main:
            _check_output(out_path)
            remove_orphans(out_path.parent)  # of writes killed in an earlier run
        ds, info = _as_dataset(dataset_or_path)

        resume_meta: dict[str, Any] | None = None
        resumed_model: nn.Module | None = None
        if resume is not None:
            from napari_cryoguard.models import load_checkpoint

            resumed_model, resume_meta = load_checkpoint(resume, device="cpu")
            resume_meta["_resume_path"] = str(resume)
            if "history" not in resume_meta or "defense" not in resume_meta:
                raise CryoGuardError(
                    f"{resume} was not written by the training loop (no history); "
                    "it cannot be resumed"
                )

        # ---- recipe
        if recipe is None:
            base = dict(resume_meta.get("training", {})) if resume_meta else {}
            recipe = Recipe.from_dict(base, **recipe_kwargs)
        elif recipe_kwargs:
            recipe = Recipe.from_dict(recipe.to_dict() | {"lr": recipe.lr}, **recipe_kwargs)

        # ---- defense
        if isinstance(defense, Defense):
            dfn = defense
        else:
            name = defense
            dparams = dict(defense_params or {})
            if resume_meta is not None:
                stored = str(resume_meta["defense"])
                if name is not None and str(name).strip().lower() != stored:
                    raise CryoGuardError(
                        f"{resume} was trained with defense {stored!r}, not {name!r}"
                    )
                name = stored
                dparams = {**dict(resume_meta.get("defense_params") or {}), **dparams}
            dfn = get_defense(name or "standard", **dparams)

        # ---- model
        torch.manual_seed(_mix_seed(recipe.seed, 0x30DE1))
        if resume_meta is not None:
            assert resumed_model is not None
            if isinstance(model, str) and model.strip().lower() != str(resume_meta["arch"]):
                raise CryoGuardError(
                    f"{resume} holds a {resume_meta['arch']!r} model, not {model!r}"
                )
            net = resumed_model
        elif isinstance(model, nn.Module):
            net = model
        else:
            from napari_cryoguard.models import build_model

            net = build_model(model or "cb3d", ds.num_classes, ds.cube, **dict(model_params or {}))
        if getattr(net, "num_classes", ds.num_classes) != ds.num_classes:
            raise CryoGuardError(
                f"the model has {net.num_classes} classes but the dataset {ds.num_classes}"
            )
        if getattr(net, "cube", ds.cube) != ds.cube:
            raise CryoGuardError(
                f"the model takes {net.cube}^3 subtomograms but the dataset has {ds.cube}^3"
            )

        trainer = Trainer(
            ds,
            info,
            net,
            dfn,
            recipe,
            ctx,
            writer,
            out_path,
            _cancel_checker(cancel),
            num_workers=num_workers,
            save_state=save_state,
        )
        if resume_meta is not None:
            trainer.restore(resume_meta)
        writer.emit(
            "start",
            config={
                "model": getattr(net, "arch_name", type(net).__name__),
                "model_params": dict(getattr(net, "arch_params", {}) or {}),
                "defense": dfn.describe(),
                "recipe": recipe.to_dict(),
                "dataset": info,
                "n_train": int(len(trainer.train_index)),
                "n_val": int(len(trainer.val_index)),
                "device": str(ctx.device),
                "world_size": ctx.world_size,
                "out": str(out_path),
                "resume": None if resume is None else str(resume),
                "start_epoch": trainer.start_epoch,
            },
        )
        return trainer.run(progress)
    except Exception as exc:
        if not getattr(exc, "_cryoguard_reported", False):
            writer.emit("error", message=str(exc), type=type(exc).__name__)
            with contextlib.suppress(AttributeError, TypeError):
                exc._cryoguard_reported = True  # type: ignore[attr-defined]
        raise
    finally:
        if ctx is not None:
            ddp.shutdown_distributed(ctx)
        if not isinstance(events, EventWriter):
            writer.close()


# --------------------------------------------------------------------------- CLI


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _split_top(spec: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_SIM_ALIASES = {"tilt": "tilt_range", "n": "n_per_class", "defocus": "defocus_um"}


def parse_simulate_spec(spec: str) -> dict[str, Any]:
    """``"n_per_class=50,snr=0.1,tilt=60,cube=28,seed=1"`` -> keyword arguments.

    ``tilt`` means ``tilt_range``; ``classes`` takes a JSON list or names joined by
    ``+``. Keys are checked against :func:`simulate_subtomograms`'s signature.
    """
    from napari_cryoguard.simulate import simulate_subtomograms

    valid = [
        p.name
        for p in inspect.signature(simulate_subtomograms).parameters.values()
        if p.name != "progress"
    ]
    kw: dict[str, Any] = {}
    for item in _split_top(spec):
        key, sep, raw = item.partition("=")
        key = _SIM_ALIASES.get(key.strip(), key.strip())
        if not sep or key not in valid:
            raise CryoGuardError(
                f"bad --simulate item {item!r}; use key=value with keys: "
                f"{', '.join(valid)} (tilt = tilt_range)"
            )
        value = _parse_value(raw.strip())
        if key == "classes" and isinstance(value, str):
            value = [c for c in value.replace(";", "+").split("+") if c]
        kw[key] = value
    return kw


def _resolve_sets(
    items: Sequence[str], model_name: str, defense_name: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set`` items -> (model params, defense params, recipe options).

    A plain key is looked up in the defense's dataclass, then the model's, then the
    recipe's; ``model.``, ``defense.`` and ``recipe.`` prefixes force the target.
    """
    from napari_cryoguard.defenses.base import defense_params_class
    from napari_cryoguard.models import model_params_class

    dfields = {f.name for f in dataclasses.fields(defense_params_class(defense_name))}
    mfields = {f.name for f in dataclasses.fields(model_params_class(model_name))}
    rfields = {f.name for f in dataclasses.fields(Recipe)}
    mp: dict[str, Any] = {}
    dp: dict[str, Any] = {}
    rp: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CryoGuardError(f"--set expects key=value, got {item!r}")
        value = _parse_value(raw.strip())
        if key.startswith("model."):
            mp[key[6:]] = value
        elif key.startswith("defense."):
            dp[key[8:]] = value
        elif key.startswith("recipe."):
            rp[key[7:]] = value
        elif key in dfields:
            dp[key] = value
        elif key in mfields:
            mp[key] = value
        elif key in rfields:
            rp[key] = value
        else:
            raise CryoGuardError(
                f"unknown --set key {key!r}. Defense {defense_name!r}: "
                f"{', '.join(sorted(dfields)) or '(none)'}; model {model_name!r}: "
                f"{', '.join(sorted(mfields))}; recipe: {', '.join(sorted(rfields))}"
            )
    return mp, dp, rp


class _ProgressSink:
    """Feeds events to an EventWriter and draws progress on stderr (rank 0)."""

    def __init__(self, writer: EventWriter, show: bool) -> None:
        self.writer = writer
        self.show = show
        self.bar = show and sys.stderr.isatty()

    def __call__(self, record: dict) -> None:
        self.writer.write(record)
        if not self.show:
            return
        kind = record.get("event")
        if kind == "step" and self.bar:
            frac = record["step"] / max(1, record["steps_per_epoch"])
            bar = "#" * int(24 * frac)
            print(
                f"\repoch {record['epoch']}/{record.get('epochs', '?')} [{bar:<24}] "
                f"{record['step']}/{record['steps_per_epoch']} loss {record['loss']:.4f}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        elif kind == "epoch":
            m = record["metrics"]
            parts = [
                f"{k} {m[k]:.4f}"
                for k in ("train_loss", "train_acc", "val_loss", "val_acc", "robust_acc")
                if isinstance(m.get(k), (int, float))
            ]
            eta = record.get("eta_seconds") or 0.0
            lead = "\r" if self.bar else ""
            print(
                f"{lead}epoch {record['epoch']}/{record['epochs']}: {', '.join(parts)}"
                f" (eta {eta:.0f} s)" + " " * 8,
                file=sys.stderr,
                flush=True,
            )
        elif kind in ("note", "cancelled"):
            msg = record.get("message") or f"cancelled; checkpoint {record.get('path')}"
            print(("\n" if self.bar else "") + f"{kind}: {msg}", file=sys.stderr, flush=True)


def _list_params() -> str:
    from napari_cryoguard.defenses.base import available_defenses, defense_params_class
    from napari_cryoguard.models import available_models, model_params_class

    def fmt(cls: type) -> str:
        return ", ".join(
            f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else f"{f.name}=..."
            for f in dataclasses.fields(cls)
        )

    lines = ["models:"]
    lines += [f"  {m}: {fmt(model_params_class(m))}" for m in available_models()]
    lines.append("defenses:")
    lines += [f"  {d}: {fmt(defense_params_class(d))}" for d in available_defenses()]
    lines.append(f"recipe: {fmt(Recipe)}")
    return "\n".join(lines)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cryoguard train`` (and ``python -m napari_cryoguard.defenses.trainer``).

    Returns the exit status: 0 on success or clean cancel, 2 on a
    :class:`~napari_cryoguard.CryoGuardError` (message on stderr, an ``error``
    event, and with ``--json`` a ``{"ok": false, "error": ...}`` line).
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.list:
        print(_list_params())
        return 0
    is_main = int(os.environ.get("RANK", "0")) == 0
    writer = EventWriter(args.events, enabled=args.events is not None and is_main)
    sink = _ProgressSink(writer, show=is_main and not args.quiet)
    cancel = threading.Event()
    previous: dict[int, Any] = {}

    def _on_signal(signum: int, frame: Any) -> None:
        if cancel.is_set():  # a second signal: stop now
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        cancel.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    t0 = time.monotonic()
    try:
        try:
            result = _run_cli(args, sink, cancel)
        except CryoGuardError as exc:
            if not getattr(exc, "_cryoguard_reported", False):
                sink.writer.emit("error", message=str(exc), type="CryoGuardError")
            if is_main:
                print(f"cryoguard train: error: {exc}", file=sys.stderr, flush=True)
                if args.json:
                    print(
                        json.dumps({"command": "train", "ok": False, "error": str(exc)}), flush=True
                    )
            return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.close()
    if is_main and args.json:
        print(
            json.dumps(
                {
                    "command": "train",
                    "ok": True,
                    "checkpoint": str(result.checkpoint),
                    "epochs_run": result.epochs_run,
                    "epochs": len(result.history),
                    "best_epoch": result.best_epoch,
                    "cancelled": result.cancelled,
                    "stopped_early": result.stopped_early,
                    "metrics": result.metrics,
                    "seconds": round(time.monotonic() - t0, 3),
                },
                default=str,
            ),
            flush=True,
        )
    return 0


def _stored_data(
    resume: str, stored: Mapping[str, Any]
) -> tuple[str | None, dict[str, Any] | None]:
    """The training data a checkpoint names: (dataset path, None) or (None, simulation)."""
    training = stored.get("training")
    info = training.get("dataset") if isinstance(training, Mapping) else None
    if isinstance(info, Mapping):
        path = info.get("path")
        if isinstance(path, str) and path:
            if not Path(path).is_file():
                raise CryoGuardError(
                    f"{resume} was trained on {path}, which is no longer there; "
                    "give the data with --data DATASET"
                )
            return path, None
        sim = info.get("simulated")
        if isinstance(sim, Mapping) and sim:
            return None, dict(sim)
    raise CryoGuardError(
        f"{resume} does not say where its training data is (it was in memory); "
        "give it with --data DATASET or --simulate SPEC"
    )


def _run_cli(args: argparse.Namespace, sink: _ProgressSink, cancel: threading.Event) -> TrainResult:
    from napari_cryoguard.models import load_checkpoint, tiny_params

    stored: dict[str, Any] = {}
    init_model = None
    if args.resume:
        _, stored = load_checkpoint(args.resume, device="cpu")
    if args.init:
        if args.resume:
            raise CryoGuardError("--init and --resume exclude each other")
        init_model, init_meta = load_checkpoint(args.init, device="cpu")
        stored = {"arch": init_meta["arch"]}
        if args.model and args.model.replace("-", "_") != init_meta["arch"]:
            raise CryoGuardError(f"--init {args.init} holds a {init_meta['arch']!r} model, "
                                 f"not {args.model!r}")
    model_name = args.model or stored.get("arch") or "cb3d"
    defense_name = args.defense or stored.get("defense") or "standard"
    mp, dp, rp = _resolve_sets(args.sets, model_name, defense_name)
    if args.resume or init_model is not None:
        if mp:
            raise CryoGuardError("model parameters cannot change when resuming or starting "
                                 "from --init (--set model.*)")
    elif args.tiny:
        mp = {**tiny_params(model_name), **mp}
    for opt, key in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("optimizer", "optimizer"),
        ("weight_decay", "weight_decay"),
        ("schedule", "schedule"),
        ("val_fraction", "val_fraction"),
        ("patience", "patience"),
        ("seed", "seed"),
        ("robust_every", "robust_every"),
        ("robust_attack", "robust_attack"),
        ("amp", "amp"),
    ):
        value = getattr(args, opt)
        if value is not None:
            rp[key] = value
    sim_kw: dict[str, Any] | None = None
    data: Any = args.data
    if args.data is None and args.simulate is None:
        if not args.resume:
            raise CryoGuardError("give the training data: --data DATASET or --simulate SPEC")
        data, sim_kw = _stored_data(args.resume, stored)
    if args.simulate is not None:
        sim_kw = parse_simulate_spec(args.simulate)
    if sim_kw is not None:
        from napari_cryoguard.simulate import simulate_subtomograms

        try:
            data = simulate_subtomograms(**sim_kw)
        except (TypeError, ValueError) as exc:
            raise CryoGuardError(f"simulating the data {sim_kw!r}: {exc}") from exc
    out = args.out or args.resume or f"cryoguard-{model_name}-{defense_name}.safetensors"
    if args.step_interval < 0:
        raise CryoGuardError(f"--step-interval must be >= 0, got {args.step_interval!r}")
    return train(
        data,
        model=init_model if init_model is not None else model_name,
        defense=defense_name,
        model_params=mp,
        defense_params=dp,
        device=args.device,
        out=out,
        events=EventWriter(sink, step_interval=args.step_interval),
        resume=args.resume,
        cancel=cancel,
        num_workers=args.num_workers,
        save_state=not args.no_state,
        **rp,
    )


if __name__ == "__main__":
    # run the installed module's copy so classes are the package's own
    from napari_cryoguard.defenses.trainer import train_main as _train_main

    sys.exit(_train_main(sys.argv[1:]))
