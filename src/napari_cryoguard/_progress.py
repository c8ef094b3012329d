"""Draining the progress generators of the core (picking, prediction, attacks).

Long work in the core is a generator that yields ``(done, total)`` progress (a tuple or a
named tuple) and returns its result (STYLE.md, habit 4): the GUI runs it in a worker,
everything else drains it here.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

_R = TypeVar("_R")


def drain(gen: Generator[Any, None, _R], progress: Any = None) -> _R:
    """Run ``gen`` to the end and return its value, reporting progress on the way.

    ``progress`` is ``None``, a callable ``progress(done, total)``, or a tqdm-like object
    whose ``update(n)`` gets the increment of ``done`` (set its ``total`` yourself).
    """
    previous = 0
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is None:
            continue
        done, total = int(step[0]), int(step[1])
        if hasattr(progress, "update"):
            progress.update(done - previous)
        elif callable(progress):
            progress(done, total)
        previous = done
