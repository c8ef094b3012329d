"""Atomic file output: write beside the target, then rename over it.

Every file the package writes (tomograms, picks, datasets, checkpoints, training state,
attack results, predictions) goes through :func:`atomic_output`, so a crash, a kill or a
cancelled run never leaves a half-written file behind: the target is either the old
file or the complete new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file is created with the process umask (like an ordinary new file, so
    checkpoints shared on a cluster keep the usual permissions), flushed to disk, then
    renamed with ``os.replace``; it is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
