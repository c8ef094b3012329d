"""The one training loop, used by every defense.

:func:`train` takes a dataset (or its path), a model name and a defense name and runs
a seeded, resumable, cancellable loop over the settings of a
:class:`~napari_cryoguard.recipe.Recipe`:

* a deterministic, class-stratified train/validation split
  (:func:`~napari_cryoguard.defenses.training_data.split_indices`);
* per epoch a shuffle seeded by (seed, epoch) through a ``DistributedSampler`` (one
  process or many under ``torchrun``), batches of ``Batch(x, y, index, epoch,
  step)`` handed to the defense's loss, one optimizer step each;
* after each epoch: clean train accuracy (on a fixed subset of the training split,
  eval mode), validation loss (cross-entropy) and accuracy, and every
  ``robust_every`` epochs the validation accuracy under an attack from
  :mod:`napari_cryoguard.attacks`; then an atomic checkpoint;
* early stopping on the validation loss (the semi-supervised paper SEMI3D section 4
  and the CB3D paper section 2.3 stop on it), keeping the best weights;
* optimizer state, early-stopping state, best weights and the random-number
  generators' states in the state file beside the checkpoint
  (:mod:`~napari_cryoguard.defenses.state`), so ``resume=`` continues exactly where a
  run stopped (even mid-epoch after a cancel, by skipping the steps already done and
  restoring the generators and the partial epoch sums of the cancelled step; under DDP
  every rank's generators are gathered into the one state file and each rank takes its
  own back).

Orphan temporary files of killed writes in the output folder are removed when a run
starts, and the output path is checked (not a folder, writable) before any data is
read. The command line over this loop is :mod:`napari_cryoguard.cli.train`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryoguard._atomic import remove_orphans
from napari_cryoguard.defenses import distributed as ddp
from napari_cryoguard.defenses.base import Batch, Defense, ModelHandle, get_defense
from napari_cryoguard.defenses.events import EventWriter
from napari_cryoguard.defenses.state import (
    check_output,
    check_resume_metadata,
    checkpoint_path,
    flatten_optimizer,
    load_training_state,
    pack_rank_streams,
    pending_state_path_for,
    rank_streams,
    rng_state,
    save_state_file,
    set_rng_state,
    state_path_for,
    unflatten_optimizer,
)
from napari_cryoguard.defenses.training_data import TrainRows, as_training_dataset, split_indices
from napari_cryoguard.device import prepare_model
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.recipe import Recipe

__all__ = ["Recipe", "TrainResult", "Trainer", "train"]


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
        #: the resumed checkpoint is the final one of a run that stopped early
        self._stopped_early = False
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
        if meta.get("stopped_early"):  # e.g. killed after its last write: nothing is left
            self._stopped_early = True
            self.start_epoch, self.skip_steps = max(self.start_epoch, self.recipe.epochs), 0
            self.note(f"the run stopped early after epoch {len(self.history)}; "
                      "nothing left to train")
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
        ddp.barrier(self.ctx)  # every rank has read its state before rank 0 renames files
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
            self.optimizer.load_state_dict(unflatten_optimizer(tensors, smeta["optimizer"]))
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
        if self.skip_steps and smeta.get("rng") is not None:
            mine = rank_streams(tensors, smeta, self.rank, self.world_size)
            if mine is None:
                self.note(
                    f"resuming mid-epoch with {self.world_size} process(es) from a state saved "
                    f"by {smeta.get('world_size', 1)} without this rank's random streams: "
                    "they restart from their epoch seed, so the run may differ slightly"
                )
            else:
                self._resume_rng = mine

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
        # every rank's generators, gathered before rank 0 writes alone (a collective call:
        # every rank reaches save() at the same step)
        streams = ddp.gather_objects(self.ctx, rng_state(self.device)) if self.save_state else None
        if not self.ctx.is_main:
            return self.out
        from napari_cryoguard.models import save_checkpoint

        token = f"{self.run_id}:{self.epoch_done}:{step_in_epoch}:{time.time_ns()}"
        tensors, ometa = flatten_optimizer(self.optimizer)
        rng_meta, ranks_meta = pack_rank_streams(tensors, streams or [rng_state(self.device)])
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
            "rng_ranks": ranks_meta,
            "world_size": self.world_size,
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
                save_state_file(pending, tensors, smeta)
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
            set_rng_state(*self._resume_rng, self.device)
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
        rows = TrainRows(self.volumes, self.train_labels, self.train_index)
        sampler = DistributedSampler(
            rows, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=r.seed
        )
        batches = BatchSampler(sampler, r.batch_size, drop_last=False)
        loader = DataLoader(rows, sampler=batches, batch_size=None, num_workers=self.num_workers)
        steps = len(batches)
        base_lr = r.resolved_lr()
        epoch_times: list[float] = []
        epochs_run = 0
        stopped_early = self._stopped_early
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
            weights_epoch=weights_epoch,
            extra_meta={"restored_best": restored, "stopped_early": stopped_early},
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
        out_path = checkpoint_path(out)
        if ctx.is_main:
            check_output(out_path)
            remove_orphans(out_path.parent)  # of writes killed in an earlier run
        ds, info = as_training_dataset(dataset_or_path)

        resume_meta: dict[str, Any] | None = None
        resumed_model: nn.Module | None = None
        if resume is not None:
            from napari_cryoguard.models import load_checkpoint

            resumed_model, resume_meta = load_checkpoint(resume, device="cpu")
            resume_meta["_resume_path"] = str(resume)
            check_resume_metadata(resume_meta, str(resume))

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
