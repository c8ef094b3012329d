"""The package's one error type for problems a user can cause."""

from __future__ import annotations


class CryoGuardError(Exception):
    """A clear, user-facing error: bad input file, wrong checkpoint, impossible parameter.

    Widgets show it as a napari notification and the CLI prints its message and exits
    with status 2; neither shows a traceback for it. Anything else is a bug.
    """
