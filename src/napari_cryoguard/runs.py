"""Background training runs: launch ``cryoguard train`` as a process and follow its events.

Training never runs in the GUI process (DESIGN.md, "Conventions"): :class:`TrainRun`
starts ``python -m napari_cryoguard.cli train ... --events <run>/events.jsonl`` in its
own run folder, and :meth:`TrainRun.poll` reads the JSON-lines events the process
appends (see :mod:`napari_cryoguard.defenses.events`) into a small state: progress per
step, the loss of every step reported, per-epoch metrics, an ETA from the step timing,
checkpoint path, status. Lines it does not understand are skipped, and a path an event
names is taken only when it lies inside the run folder. :meth:`TrainRun.cancel` sends SIGTERM, which the trainer turns
into a clean stop (the current step finishes, one checkpoint marked ``cancelled`` is
written). :attr:`TrainRun.version` grows whenever new events arrived, so a viewer
redraws only then. Qt-free: the Train widget polls it from a timer, and the same object
works from a script.

The run folder is always absolute (also for a relative ``$CRYOGUARD_RUNS_DIR``), its
``command.json`` is written when the process starts and holds exactly the ``cryoguard``
arguments it runs with, and the child runs as ``python -P`` (or ``-I``), so a file in the
run folder (its working directory), say ``numpy.py``, cannot shadow a module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_cryoguard.errors import CryoGuardError, os_error
from napari_cryoguard.recipe import Recipe

#: Where runs go unless told otherwise (override with the environment variable).
RUNS_ENV = "CRYOGUARD_RUNS_DIR"


def default_runs_dir() -> Path:
    """``$CRYOGUARD_RUNS_DIR`` or ``~/.napari-cryoguard/runs``."""
    env = os.environ.get(RUNS_ENV)
    folder = Path(env).expanduser() if env else Path.home() / ".napari-cryoguard" / "runs"
    return folder.absolute()


#: The placeholder a run created before its dataset file exists may carry.
PENDING_DATA = "pending"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


#: the recipe's defaults, the ones :func:`train_command` starts from
_RECIPE = Recipe()


def train_command(*, data: str | None = None, simulate: dict | None = None, model: str = "cb3d",
                  defense: str = "standard", model_params: dict | None = None,
                  defense_params: dict | None = None, epochs: int = _RECIPE.epochs,
                  batch_size: int = _RECIPE.batch_size, lr: float | None = _RECIPE.lr,
                  optimizer: str = _RECIPE.optimizer, device: str = "auto",
                  robust_every: int = _RECIPE.robust_every, seed: int = _RECIPE.seed,
                  out: str | Path, events: str | Path, step_interval: float | None = None,
                  save_state: bool = True, init: str | Path | None = None) -> list[str]:
    """The ``cryoguard train`` argument list for these settings (no interpreter prefix).

    The training settings default to :class:`~napari_cryoguard.recipe.Recipe`'s.

    ``step_interval`` (seconds between step events; 0 = every step) and
    ``save_state=False`` (no ``.state.safetensors`` beside the checkpoint) map to
    ``--step-interval`` and ``--no-state``; ``init`` (a checkpoint whose model and weights
    the run starts from; no ``model_params`` then) to ``--init``.
    """
    if init is not None and model_params:
        raise CryoGuardError("a run that starts from a checkpoint takes its model from it: "
                             "no model parameters")
    if (data is None) == (simulate is None):
        raise CryoGuardError("give exactly one of a dataset file or simulation settings")
    argv = ["train"]
    if data is not None:
        argv += ["--data", str(data)]
    else:
        argv += ["--simulate", ",".join(f"{k}={v}" for k, v in simulate.items())]
    argv += ["--model", model, "--defense", defense]
    for prefix, params in (("model.", model_params or {}), ("defense.", defense_params or {})):
        for key, value in params.items():
            argv += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    argv += ["--epochs", str(int(epochs)), "--batch-size", str(int(batch_size)),
             "--optimizer", optimizer, "--device", device, "--seed", str(int(seed)),
             "--out", str(out), "--events", str(events)]
    if lr is not None:
        argv += ["--lr", repr(float(lr))]
    if robust_every:
        argv += ["--robust-every", str(int(robust_every))]
    if step_interval is not None:
        argv += ["--step-interval", repr(float(step_interval))]
    if not save_state:
        argv.append("--no-state")
    if init is not None:
        argv += ["--init", str(Path(init).expanduser().absolute())]
    return argv


@dataclass
class TrainRun:
    """One background training process and what its events said so far."""

    name: str
    folder: Path
    argv: list[str]
    process: subprocess.Popen | None = None
    status: str = "created"  # created, running, done, cancelled, error, failed
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    eta_seconds: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: (global step, loss) of every step event, in order
    losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    message: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    #: grows by one whenever :meth:`poll` applied new events or the status changed
    version: int = 0
    cancel_requested: bool = False
    _offset: int = 0
    _partial: str = ""
    _t_start: float | None = None
    _start_step: int = 0
    _t_step: float | None = None

    @property
    def events_path(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def out_path(self) -> Path:
        return self.folder / "model.safetensors"

    @property
    def log_path(self) -> Path:
        return self.folder / "train.log"

    @classmethod
    def create(cls, runs_dir: str | Path | None = None, label: str = "run", **settings) -> TrainRun:
        """A new run folder and the command for ``settings`` (see :func:`train_command`)."""
        runs_dir = (Path(runs_dir).expanduser().absolute() if runs_dir is not None
                    else default_runs_dir())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = runs_dir / f"{stamp}-{label}"
        n = 1
        while folder.exists():
            n += 1
            folder = runs_dir / f"{stamp}-{label}-{n}"
        folder.mkdir(parents=True)
        run = cls(name=folder.name, folder=folder, argv=[])
        run.argv = train_command(out=run.out_path, events=run.events_path, **settings)
        if run.data_path is not None and str(run.data_path) != PENDING_DATA:
            run.set_data(run.data_path)  # absolute, like every path of the command
        return run

    def _write_command(self) -> None:
        from napari_cryoguard._atomic import atomic_output

        with atomic_output(self.folder / "command.json") as tmp:
            tmp.write_text(json.dumps(self.argv))

    def set_data(self, path: str | Path) -> None:
        """Point the command at the dataset file ``path`` (a run created with ``data=``)."""
        if "--data" not in self.argv:
            raise CryoGuardError("this run simulates its data; it takes no dataset file")
        self.argv[self.argv.index("--data") + 1] = str(Path(path).expanduser().absolute())
        self._write_command()

    @property
    def data_path(self) -> Path | None:
        """The dataset file the run trains on (None when it simulates its data)."""
        return Path(self.argv[self.argv.index("--data") + 1]) if "--data" in self.argv else None

    @property
    def defense(self) -> str:
        """The defense named in the command (``standard`` when none is)."""
        return self.argv[self.argv.index("--defense") + 1] if "--defense" in self.argv else "standard"

    def start(self, threads: int | None = None, nice: int = 0) -> None:
        """Launch the training process (its stderr goes to ``train.log``).

        ``threads`` caps the CPU threads of the process (``OMP_NUM_THREADS``), and
        ``nice`` lowers its priority (POSIX), so that a viewer running beside it on the
        same CPU stays responsive.
        """
        data = self.data_path
        if data is not None and str(data) == PENDING_DATA:
            raise CryoGuardError(f"run {self.name} has no dataset file yet; call set_data first")
        # -P (Python >= 3.11) keeps the working directory (the run folder) off sys.path;
        # -I also does, and drops PYTHON* variables, for older interpreters
        safe = "-P" if sys.version_info >= (3, 11) else "-I"
        cmd = [sys.executable, safe, "-m", "napari_cryoguard.cli", *self.argv]
        env = None
        if threads:
            env = dict(os.environ)
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(int(threads))
        try:
            self._write_command()  # exactly what runs
            log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        except OSError as exc:  # disk full, read-only: nothing starts, no empty run is left
            self._discard()
            raise os_error(exc) from exc
        try:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                            cwd=self.folder, env=env)
        finally:
            log.close()
        if nice and hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, self.process.pid, int(nice))
            except OSError:  # not permitted here: run at normal priority
                pass
        self.status = "running"

    def _discard(self) -> None:
        """Remove what :meth:`start` made of a run that could not start (and the run
        folder when nothing else is in it)."""
        for p in (self.log_path, self.folder / "command.json"):
            with contextlib.suppress(OSError):
                if p.is_file():
                    p.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self) -> None:
        """Ask the process to stop cleanly (SIGTERM: it finishes the step and checkpoints)."""
        if self.running and not self.cancel_requested:
            self.process.send_signal(signal.SIGTERM)
            self.cancel_requested = True
            self.version += 1

    def poll(self) -> list[dict]:
        """Read the events appended since the last call; update the state; return them."""
        exited = self.process is not None and self.process.poll() is not None
        new = self._read_events()  # after the exit check: nothing written before it is missed
        for ev in new:
            try:
                self._apply(ev)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
                continue  # a line of a shape this reader does not know: skip it
        if new:
            self.version += 1
        if exited and self.status == "running" and self.cancel_requested:
            # stopped before the trainer could take the signal (still importing)
            self.status = "cancelled"
            self.version += 1
        elif exited and self.status == "running":
            code = self.process.returncode
            self.status = "failed"
            tail = self.log_path.read_text(errors="replace")[-500:] if self.log_path.exists() else ""
            self.message = f"training process exited with status {code} without finishing: {tail}"
            self.version += 1
        return new

    def _read_events(self) -> list[dict]:
        new: list[dict] = []
        if self.events_path.exists():
            with open(self.events_path, encoding="utf-8") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
                self._offset = fh.tell()
            text = self._partial + chunk
            lines = text.split("\n")
            self._partial = lines.pop()  # an unfinished last line waits for the next poll
            for line in lines:
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    continue
                if isinstance(ev, dict):
                    new.append(ev)
        return new

    def _path(self, value: Any) -> Path | None:
        """A path an event names, if it is a file path inside the run folder."""
        if not isinstance(value, str) or not value or "\0" in value:
            return None
        p = Path(value)
        if not p.is_absolute():
            p = self.folder / p
        return p if _inside(p, self.folder) else None

    def _set_checkpoint(self, value: Any, default: Path | None = None) -> None:
        p = self._path(value) if value is not None else default
        if p is not None:
            self.checkpoint = p

    def _apply(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "start":
            config = ev.get("config", {})
            if not isinstance(config, dict):
                return
            self.config = config
            recipe = self.config.get("recipe", {}) or {}
            if not isinstance(recipe, dict):
                recipe = {}
            self.epochs = int(recipe.get("epochs", self.epochs) or self.epochs)
            n_train = int(self.config.get("n_train", 0) or 0)
            world = max(1, int(self.config.get("world_size", 1) or 1))
            batch = max(1, int(recipe.get("batch_size", 1) or 1))
            if n_train:
                self.steps_per_epoch = math.ceil(math.ceil(n_train / world) / batch)
            start_epoch = int(self.config.get("start_epoch", 0) or 0)
            self.epoch = start_epoch
            self._start_step = start_epoch * self.steps_per_epoch
            self._t_start = _time_of(ev)
        elif kind == "step":
            self.epoch = int(ev.get("epoch", self.epoch))
            self.step = int(ev.get("step", 0))
            self.steps_per_epoch = int(ev.get("steps_per_epoch", self.steps_per_epoch))
            self.epochs = int(ev.get("epochs", self.epochs))
            loss = ev.get("loss")
            if isinstance(loss, (int, float)):
                self.losses.append((self.global_step, float(loss)))
            self._t_step = _time_of(ev)
            self._update_eta()
        elif kind == "epoch":
            self.epochs = int(ev.get("epochs", self.epochs))
            metrics = dict(ev.get("metrics", {}))
            metrics.setdefault("epoch", ev.get("epoch"))
            self.history.append(metrics)
            self.epoch = int(ev.get("epoch", self.epoch))
            self.step = self.steps_per_epoch
            self._t_step = _time_of(ev)  # the epoch's evaluation counts in the step rate
            self._update_eta()
        elif kind == "checkpoint":
            self._set_checkpoint(ev.get("path"))
        elif kind == "done":
            self.status = "done"
            self._set_checkpoint(ev.get("path"), self.out_path)
            self.eta_seconds = 0
            self.message = ""
        elif kind == "cancelled":
            self.status = "cancelled"
            self._set_checkpoint(ev.get("path"), self.out_path)
            self.epoch = int(ev.get("epoch", self.epoch))
            self.step = int(ev.get("step", self.step))
            self.eta_seconds = None
            self.message = ""
        elif kind == "error":
            self.status = "error"
            self.message = str(ev.get("message", "training failed"))
            self.eta_seconds = None
        elif kind == "note":
            self.message = str(ev.get("message", ""))

    @property
    def total_steps(self) -> int:
        """Steps of the whole run (0 until the first events tell)."""
        return self.steps_per_epoch * self.epochs

    @property
    def global_step(self) -> int:
        """Steps done over all epochs (1-based count of the last step reported)."""
        return max(self.epoch - 1, 0) * self.steps_per_epoch + self.step if self.epoch else 0

    def _update_eta(self) -> None:
        """Remaining steps times the mean time per step since training started."""
        done = self.global_step - self._start_step
        if self._t_start is None or self._t_step is None or done <= 0 or not self.total_steps:
            return
        per_step = max(self._t_step - self._t_start, 0.0) / done
        self.eta_seconds = per_step * max(self.total_steps - self.global_step, 0)

    def state_line(self) -> str:
        """One true sentence about the run: what it is doing, or how it ended."""
        where = (f"epoch {self.epoch}/{self.epochs}, step {self.step}/{self.steps_per_epoch}"
                 if self.steps_per_epoch else "")
        if self.status == "created":
            return "not started"
        if self.status == "running":
            if not self.steps_per_epoch:
                head = "starting (building the data and the model)"
            elif not self.global_step:
                head = (f"running: first step of {self.epochs} epoch(s) x "
                        f"{self.steps_per_epoch} steps")
            else:
                head = f"running: {where}"
                if self.eta_seconds is not None:
                    head += f", ETA {_duration(self.eta_seconds)}"
            return head + (" - cancelling after this step..." if self.cancel_requested else "")
        ck = self.checkpoint.name if self.checkpoint is not None else "no checkpoint"
        if self.status == "done":
            last = self.history[-1] if self.history else {}
            acc = last.get("val_acc")
            n_val = self.config.get("n_val")
            acc_s = f", validation accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""
            if acc_s and n_val:
                acc_s += f" on {n_val} held-out subtomograms"
            return f"done: {len(self.history)} epoch(s){acc_s}; checkpoint {ck}{self._chance_note()}"
        if self.status == "cancelled":
            return f"cancelled at {where or 'the start'}; checkpoint {ck}"
        return f"failed: {self.message or 'the training process stopped'}"

    def _chance_note(self) -> str:
        """A warning when no epoch's validation accuracy rose clearly above chance (the
        run did not learn: e.g. IMA from scratch when the first model predicts one class)."""
        dataset = self.config.get("dataset") or {}
        k = dataset.get("num_classes") if isinstance(dataset, dict) else None
        accs = [h.get("val_acc") for h in self.history]
        accs = [a for a in accs if isinstance(a, (int, float))]
        if not k or int(k) < 2 or not accs:
            return ""
        chance = 1.0 / int(k)
        n_val = int(self.config.get("n_val") or 0)
        # two binomial standard deviations of a guessing model's accuracy on n_val
        slack = max(0.05, 2.0 * (chance * (1.0 - chance) / n_val) ** 0.5 if n_val else 0.05)
        if max(accs) > chance + slack:
            return ""
        return (f". Warning: the validation accuracy never rose above chance ({chance:.2f} "
                f"for {int(k)} classes): the model did not learn. Try more epochs or data, "
                "or a 'standard' run first and then this defense 'start from' it")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] over all epochs."""
        if self.status == "done":
            return 1.0
        if not self.total_steps:
            return 0.0
        return min(1.0, self.global_step / self.total_steps)

    def loss_series(self) -> tuple[list[int], list[float]]:
        """(global step, loss) of every step reported so far."""
        return [s for s, _ in self.losses], [v for _, v in self.losses]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metric over the epochs that report it."""
        xs, ys = [], []
        for m in self.history:
            v = m.get(key)
            if isinstance(v, (int, float)):
                xs.append(int(m.get("epoch", len(xs) + 1)))
                ys.append(float(v))
        return xs, ys

    def wait(self, timeout: float | None = None) -> str:
        """Block until the process ends (for scripts and tests); return the final status."""
        if self.process is not None:
            self.process.wait(timeout=timeout)
        self.poll()
        return self.status


def _time_of(ev: dict) -> float:
    t = ev.get("time")
    return float(t) if isinstance(t, (int, float)) else time.time()


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
