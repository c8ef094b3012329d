"""What every pick reader does the same way: read a file of bounded size, refuse
non-finite coordinates, and say which optional library a format needs.

The readers (:mod:`.relion`, :mod:`.table`, :mod:`.copick`, :mod:`.dynamo`,
:mod:`.imod`, :mod:`.cbox`) all raise :class:`~napari_cryoguard.CryoGuardError` with the
file's name, so a widget or the command line shows one readable line.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from napari_cryoguard.errors import CryoGuardError


def pick_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path` to an existing file (missing or a folder raise)."""
    path = Path(path)
    if not path.exists():
        raise CryoGuardError(f"pick file not found: {path}")
    if path.is_dir():
        raise CryoGuardError(f"{path} is a folder; give a pick file")
    return path


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``; a file over ``limit`` bytes is refused before it is read.

    ``what`` names what the file holds in the message (``"a pick table"``).
    """
    try:
        size = path.stat().st_size
        if size > limit:
            raise CryoGuardError(
                f"{path.name}: {size} bytes is more than the {limit} bytes {what} may hold"
            )
        return path.read_bytes()
    except OSError as err:
        raise CryoGuardError(f"could not read {path}: {err}") from err


def read_limited_text(path: Path, limit: int, what: str) -> str:
    """:func:`read_limited` decoded as UTF-8 (a byte order mark is accepted)."""
    raw = read_limited(path, limit, what)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CryoGuardError(
            f"{path.name} is not UTF-8 text (byte {err.start}); {what} must be text"
        ) from err


def check_finite_coords(coords: np.ndarray, path: Path, what: str = "have") -> None:
    """Every row of ``coords`` (N, 3) finite, else an error naming the first bad rows."""
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise CryoGuardError(
            f"{path.name}: {int(bad.sum())} pick(s) {what} non-finite coordinates "
            f"(rows {rows[:5].tolist()}{' ...' if len(rows) > 5 else ''})"
        )


def optional_library(name: str) -> ModuleType:
    """Import the optional library a format needs, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise CryoGuardError(
            f"reading this format needs the {name!r} library: install napari-cryoguard[formats]"
        ) from err
