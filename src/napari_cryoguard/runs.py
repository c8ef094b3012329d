"""Background training runs: launch ``cryoguard train`` as a process and follow its events.

Training never runs in the GUI process (DESIGN.md, "Conventions"): :class:`TrainRun`
starts ``python -m napari_cryoguard.cli train ... --events <run>/events.jsonl`` in its
own run folder, and :meth:`TrainRun.poll` reads the JSON-lines events the process
appends (see :mod:`napari_cryoguard.defenses.events`) into a small state: progress,
per-epoch metrics, ETA, checkpoint path, status. :meth:`TrainRun.cancel` sends SIGTERM,
which the trainer turns into a clean stop (the current step finishes, a checkpoint
marked ``cancelled`` is written). Qt-free: the Train widget polls it from a timer, and
the same object works from a script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_cryoguard.errors import CryoGuardError

#: Where runs go unless told otherwise (override with the environment variable).
RUNS_ENV = "CRYOGUARD_RUNS_DIR"


def default_runs_dir() -> Path:
    """``$CRYOGUARD_RUNS_DIR`` or ``~/.napari-cryoguard/runs``."""
    env = os.environ.get(RUNS_ENV)
    return Path(env) if env else Path.home() / ".napari-cryoguard" / "runs"


def train_command(*, data: str | None = None, simulate: dict | None = None, model: str = "cb3d",
                  defense: str = "standard", model_params: dict | None = None,
                  defense_params: dict | None = None, epochs: int = 10, batch_size: int = 16,
                  lr: float | None = None, optimizer: str = "adam", device: str = "auto",
                  robust_every: int = 0, seed: int = 0, out: str | Path,
                  events: str | Path) -> list[str]:
    """The ``cryoguard train`` argument list for these settings (no interpreter prefix)."""
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
    checkpoint: Path | None = None
    message: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    _offset: int = 0
    _partial: str = ""

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
        runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = runs_dir / f"{stamp}-{label}"
        n = 1
        while folder.exists():
            n += 1
            folder = runs_dir / f"{stamp}-{label}-{n}"
        folder.mkdir(parents=True)
        run = cls(name=folder.name, folder=folder, argv=[])
        run.argv = train_command(out=run.out_path, events=run.events_path, **settings)
        (folder / "command.json").write_text(json.dumps(run.argv))
        return run

    def start(self) -> None:
        """Launch the training process (its stderr goes to ``train.log``)."""
        cmd = [sys.executable, "-m", "napari_cryoguard.cli", *self.argv]
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                            cwd=self.folder)
        finally:
            log.close()
        self.status = "running"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self) -> None:
        """Ask the process to stop cleanly (SIGTERM: it finishes the step and checkpoints)."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            self.message = "cancelling..."

    def poll(self) -> list[dict]:
        """Read the events appended since the last call; update the state; return them."""
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
                    new.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        for ev in new:
            self._apply(ev)
        if self.process is not None and self.process.poll() is not None and self.status == "running":
            code = self.process.returncode
            self.status = "failed"
            tail = self.log_path.read_text(errors="replace")[-500:] if self.log_path.exists() else ""
            self.message = f"training process exited with status {code} without finishing: {tail}"
        return new

    def _apply(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "start":
            self.config = ev.get("config", {})
        elif kind == "step":
            self.epoch = int(ev.get("epoch", self.epoch))
            self.step = int(ev.get("step", 0))
            self.steps_per_epoch = int(ev.get("steps_per_epoch", 0))
            self.epochs = int(ev.get("epochs", self.epochs))
        elif kind == "epoch":
            self.epochs = int(ev.get("epochs", self.epochs))
            metrics = dict(ev.get("metrics", {}))
            metrics.setdefault("epoch", ev.get("epoch"))
            self.history.append(metrics)
            self.eta_seconds = ev.get("eta_seconds")
        elif kind == "checkpoint":
            self.checkpoint = Path(ev["path"])
        elif kind == "done":
            self.status = "done"
            self.checkpoint = Path(ev.get("path", self.out_path))
            self.eta_seconds = 0
        elif kind == "cancelled":
            self.status = "cancelled"
            self.checkpoint = Path(ev.get("path", self.out_path))
        elif kind == "error":
            self.status = "error"
            self.message = str(ev.get("message", "training failed"))
        elif kind == "note":
            self.message = str(ev.get("message", ""))

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] over all epochs."""
        if self.status == "done":
            return 1.0
        if not self.epochs:
            return 0.0
        within = self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0
        done_epochs = max(self.epoch - 1, 0) + within
        return min(1.0, done_epochs / self.epochs)

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
