"""JSON-lines training events: what ``cryoguard train`` streams to the widget.

Training runs as a separate process (DESIGN.md, "Conventions") whose progress is a
stream of JSON objects, one per line, each flushed as soon as it is written. Every
event has ``"event"`` (its type) and ``"time"`` (Unix seconds). The types:

==============  =====================================================================
``start``       ``config``: model, defense, recipe, dataset, device, world size
``step``        ``epoch`` (1-based), ``step`` (1-based within the epoch),
                ``steps_per_epoch``, ``loss``; throttled to at most one every
                ``step_interval`` seconds (0.5 by default) plus the last step of each
                epoch
``epoch``       ``epoch``, ``epochs``, ``metrics`` (dict of floats), ``eta_seconds``
``checkpoint``  ``path``, ``epoch``
``note``        ``message`` (e.g. "robust evaluation skipped: attacks unavailable")
``done``        ``path``, ``metrics`` (final), ``best_epoch``, ``epochs_run``,
                ``stopped_early``
``cancelled``   ``path``, ``epoch``, ``step``
``error``       ``message``
==============  =====================================================================

A reader should ignore keys and event types it does not know.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["EVENT_TYPES", "EventWriter", "read_events"]

#: The event types :class:`EventWriter` emits.
EVENT_TYPES = ("start", "step", "epoch", "checkpoint", "note", "done", "cancelled", "error")


def _clean(obj: Any) -> Any:
    """Make ``obj`` strict-JSON friendly: non-finite floats become None, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _clean(obj.item())
        except (TypeError, ValueError, RuntimeError):
            return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


class EventWriter:
    """Write training events as JSON lines to a file, stdout, or a callback.

    Parameters
    ----------
    target
        ``None`` (events are dropped), a path (appended to, created with its
        folder), ``"-"`` (stdout), an open text stream, or a callable receiving each
        event dict.
    enabled
        ``False`` drops every event (used on DDP ranks other than 0).
    step_interval
        Minimum seconds between two ``step`` events (the last step of an epoch is
        always written).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[str] | Callable[[dict], Any] | None = None,
        *,
        enabled: bool = True,
        step_interval: float = 0.5,
    ) -> None:
        self.enabled = enabled and target is not None
        self.step_interval = float(step_interval)
        self._last_step = -math.inf
        self._callback: Callable[[dict], Any] | None = None
        self._stream: IO[str] | None = None
        self._owns_stream = False
        self.path: Path | None = None
        if not self.enabled:
            return
        if callable(target) and not hasattr(target, "write"):
            self._callback = target  # type: ignore[assignment]
        elif hasattr(target, "write"):
            self._stream = target  # type: ignore[assignment]
        elif str(target) == "-":
            self._stream = sys.stdout
        else:
            self.path = Path(target)  # type: ignore[arg-type]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = _ends_torn(self.path)
            self._stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._owns_stream = True
            if torn:  # a killed run's half-written last line: end it, so ours stay whole
                self._stream.write("\n")
                self._stream.flush()

    def emit(self, event: str, **fields: Any) -> dict[str, Any] | None:
        """Write one event; returns the dict written (None when disabled)."""
        if not self.enabled:
            return None
        record = {"event": event, "time": time.time(), **_clean(fields)}
        self.write(record)
        return record

    def write(self, record: Mapping[str, Any]) -> None:
        """Write an already built event dict as it is (one flushed line)."""
        if not self.enabled:
            return
        if self._callback is not None:
            self._callback(dict(record))
        elif self._stream is not None:
            self._stream.write(json.dumps(_clean(record), allow_nan=False) + "\n")
            self._stream.flush()

    def step(
        self, epoch: int, step: int, steps_per_epoch: int, loss: float, **fields: Any
    ) -> dict[str, Any] | None:
        """A throttled ``step`` event (always written for the last step of an epoch)."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if step < steps_per_epoch and now - self._last_step < self.step_interval:
            return None
        self._last_step = now
        return self.emit(
            "step", epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, loss=loss, **fields
        )

    def close(self) -> None:
        """Close the file if this writer opened it."""
        if self._owns_stream and self._stream is not None:
            self._stream.close()
        self._stream = None
        self._callback = None
        self.enabled = False

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    """Whether ``path`` exists and its last byte is not a newline (a killed writer)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:
        return False


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse a JSON-lines events file (a partial last line is ignored)."""
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
