"""Work off the Qt thread: worker threads wired to a widget, user errors shown as
notifications, and the garbage collector kept quiet during big imports."""

from __future__ import annotations

import threading
from contextlib import contextmanager


def show_error(exc: BaseException) -> None:
    """Show an error as a napari notification (never raise into Qt's event loop)."""
    from napari.utils.notifications import show_error as _show

    _show(str(exc))


class Failure:
    """A user-caused error (:class:`CryoGuardError`) carried back from a worker thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"


def guarded(fn, *args, **kwargs):
    """Run ``fn`` (a function or a generator function) inside a worker, as a generator.

    Progress values a generator yields pass through; its return value (or the function's)
    is returned. A :class:`~napari_cryoguard.CryoGuardError` — bad input the user can fix —
    comes back as a :class:`Failure` for the widget to show as a notification, instead of
    an exception in the Qt event loop; so does an ``OSError`` (an output folder that cannot
    be written, a disk that is full), as one sentence naming the path. Anything else is a
    bug and propagates.
    """
    import inspect

    from napari_cryoguard.errors import CryoGuardError, os_error

    try:
        result = fn(*args, **kwargs)
        if inspect.isgenerator(result):
            result = yield from result
        return result
    except CryoGuardError as exc:
        return Failure(exc)
    except OSError as exc:  # disk full, read-only, a file where a folder goes: the user's to fix
        return Failure(os_error(exc))


def start_worker(widget, fn, *args, on_return, on_yield=None, buttons=(), **kwargs):
    """Start ``guarded(fn, ...)`` in a napari thread worker and wire it to ``widget``.

    ``buttons`` are disabled while it runs; ``on_return`` gets the result, while a
    :class:`Failure` goes to ``widget.show_failure``. The worker is kept as
    ``widget._worker`` (tests and Cancel use it).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(guarded, fn, *args, _start_thread=False, **kwargs)

    def returned(result):
        if isinstance(result, Failure):
            widget.show_failure(result.error)
        else:
            on_return(result)

    def finished():
        widget._busy = False
        for b in buttons:
            b.enabled = True

    if on_yield is not None:
        worker.yielded.connect(on_yield)
    worker.returned.connect(returned)
    worker.errored.connect(widget.show_failure)
    worker.finished.connect(finished)
    for b in buttons:
        b.enabled = False
    widget._worker = worker
    widget._busy = True  # until `finished` (tests and benchmarks wait on it)
    worker.start()
    return worker


_GC_LOCK = threading.Lock()
_GC_USERS = 0
_GC_WAS_ENABLED = True
_GC_THAWED = False


@contextmanager
def quiet_gc():
    """Keep big imports and model loads (in a worker) out of the garbage collector's full passes.

    Python's cyclic garbage collector makes a full pass over every tracked object (all
    of napari, Qt wrappers, vispy, torch: 0.4-0.8 s with the GIL held, so the event loop
    freezes too) once the objects that survived the young generations since the last
    full pass exceed a quarter of the old generation. Importing torch alone adds that
    many; the freeze then hit a later, unrelated step (the third "Attack particle", or
    Evaluate). Inside this block the collector is paused; at its end every object that
    exists is moved to the permanent generation (``gc.freeze()``), which full passes
    skip: later passes only look at what was made since, and take milliseconds.

    What is frozen is only freed by reference counting. napari layers hold reference
    cycles, so :func:`thaw_gc` (connected to the viewer's layer removals by
    :class:`ModelPicker`) gives the frozen objects back to the collector when a layer is
    removed: its memory is then freed by the next full pass, as without this, and
    nothing is frozen again.
    """
    import gc

    global _GC_USERS, _GC_WAS_ENABLED
    with _GC_LOCK:
        if _GC_USERS == 0:
            _GC_WAS_ENABLED = gc.isenabled()
            gc.disable()
        _GC_USERS += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_USERS -= 1
            if _GC_USERS == 0:
                if not _GC_THAWED:
                    gc.freeze()
                if _GC_WAS_ENABLED:
                    gc.enable()


def import_quietly(*modules: str) -> None:
    """Import ``modules`` inside :func:`quiet_gc` (from a worker or render thread):
    matplotlib's ~10^5 long-lived objects then stay out of later full passes, which a
    worker's allocations can set off while the event loop waits for the GIL (Evaluate
    stalled 56-88 ms so)."""
    import importlib
    import sys

    if all(m in sys.modules for m in modules):
        return
    with quiet_gc():
        for m in modules:
            importlib.import_module(m)


def thaw_gc(event=None) -> None:
    """Give what :func:`quiet_gc` froze back to the garbage collector (a layer was removed:
    its memory can only be freed by a full pass)."""
    import gc

    global _GC_THAWED
    with _GC_LOCK:
        _GC_THAWED = True  # from now on, the collector as Python runs it
        if gc.get_freeze_count():
            gc.unfreeze()
