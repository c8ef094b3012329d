"""The package's one error type for problems a user can cause."""

from __future__ import annotations


class CryoGuardError(Exception):
    """A clear, user-facing error: bad input file, wrong checkpoint, impossible parameter.

    Widgets show it as a napari notification and the CLI prints its message and exits
    with status 2; neither shows a traceback for it. Anything else is a bug.
    """


def os_error(exc: OSError, *, output: bool = True) -> CryoGuardError:
    """An ``OSError`` (disk full, read-only, a folder where a file goes, a file where a folder
    goes, permissions) as the package's one-line error, naming the path; ``output``: the
    sentence adds that earlier outputs were left as they were (the writers are atomic)."""
    where = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or exc.__class__.__name__
    tail = "; earlier outputs were left as they were" if output else ""
    return CryoGuardError(f"{where}: {what} (errno {exc.errno}){tail}")
