"""Atomic file output: write beside the target, then rename over it.

Every file the package writes (tomograms, picks, datasets, checkpoints, training state,
attack results, predictions) goes through :func:`atomic_output`, so a crash, a kill or a
cancelled run never leaves a half-written file behind: the target is either the old
file or the complete new one.

A process killed with SIGKILL during a write cannot remove its temporary file. Such an
orphan is named ``.<target name>.<pid>-<random>.tmp``; :func:`remove_orphans` deletes the
orphans of a folder whose writing process is gone (``atomic_output`` does it for its own
target, and a training run for its output folder when it starts), and never touches the
temporary file of a process that is still alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "remove_orphans"]

# ".<name>.<pid>-<hex>.tmp" (this module) or ".<name>.<hex>.tmp" (older versions)
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[0-9a-f]{12}\.tmp$")


def _alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this machine (or may: no permission to ask)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_orphans(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed atomic writes.

    Parameters
    ----------
    folder
        The folder to clean (a missing folder is nothing to clean).
    name
        Only the orphans of this target file name (default: of every target).

    Returns
    -------
    list of Path
        The files removed. Temporary files of a living process (this one included)
        are kept; files that cannot be removed are left silently.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        pid = m.group("pid")
        if pid is not None and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _umask() -> int:
    """The process umask (from /proc where it can be read without changing it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file is created with the process umask (like an ordinary new file, so
    checkpoints shared on a cluster keep the usual permissions: 0644 under umask 022),
    flushed to disk, then renamed with ``os.replace``; it is removed if anything fails.
    Orphans of earlier killed writes to the same target are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # some writers (safetensors) replace the file with a 0600 one of their own
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StreamingWriter:
    """Context protocol of the package's streaming writers: ``close()`` commits the output
    when the block ends normally, ``abort()`` discards it (leaving any older file intact)
    when it raises. Subclasses define both."""

    def close(self):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
