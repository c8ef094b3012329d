"""One entry point for every pick file: :func:`read_picks` chooses the reader.

The reader is chosen by suffix where the suffix says it, and by content where it does
not (a ``.txt`` holding a STAR file, a ``.json`` that is copick, CSV without header).
Each format lives in its own module and has the signature
``read(path, *, voxel_size, tomograms, **options) -> Picks``:

======================  =====================================  ==============================
format                  module                                 suffixes / content
======================  =====================================  ==============================
RELION 3/4/5, Warp,     :mod:`napari_cryoguard.io.relion`       ``.star`` (any STAR content)
cryoguard STAR
STOPGAP motive list     :mod:`napari_cryoguard.io.stopgap`      ``.star`` with
                                                               ``data_stopgap_motivelist``
CSV / TSV / text        :mod:`napari_cryoguard.io.table`        ``.csv``, ``.tsv``, ``.txt``
copick JSON             :mod:`napari_cryoguard.io.copick`       ``.json``
Dynamo table            :mod:`napari_cryoguard.io.dynamo`       ``.tbl``
IMOD point model        :mod:`napari_cryoguard.io.imod`         ``.mod``
crYOLO / TomoTwin       :mod:`napari_cryoguard.io.cbox`         ``.cbox``, ``.coords``
======================  =====================================  ==============================
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io._reading import pick_file
from napari_cryoguard.io.picks import ASSUMED_VOXEL_NOTE, Picks

# suffix -> (module, function); the function is called as read(path, voxel_size=...,
# tomograms=..., **options) and returns Picks.
_BY_SUFFIX: dict[str, tuple[str, str]] = {
    ".star": ("napari_cryoguard.io.relion", "read_star_picks"),
    ".csv": ("napari_cryoguard.io.table", "read_table_picks"),
    ".tsv": ("napari_cryoguard.io.table", "read_table_picks"),
    ".txt": ("napari_cryoguard.io.table", "read_table_picks"),
    ".json": ("napari_cryoguard.io.copick", "read_copick_picks"),
    ".tbl": ("napari_cryoguard.io.dynamo", "read_dynamo_picks"),
    ".mod": ("napari_cryoguard.io.imod", "read_imod_picks"),
    ".cbox": ("napari_cryoguard.io.cbox", "read_cbox_picks"),
    ".coords": ("napari_cryoguard.io.cbox", "read_coords_picks"),
}

READ_PICK_SUFFIXES: tuple[str, ...] = tuple(_BY_SUFFIX)
"""Suffixes :func:`read_picks` accepts (case-insensitive)."""

Tomograms = "str | os.PathLike | Mapping[str, tuple[tuple[int, int, int], float]]"


def _sniff(path: Path) -> str | None:
    """The suffix whose reader suits the file's first bytes (None when unsure)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as err:
        raise CryoGuardError(f"could not read {path}: {err}") from err
    if head.startswith(b"IMOD"):
        return ".mod"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    stripped = "\n".join(
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ).lstrip()
    if stripped.startswith("data_"):
        return ".star"
    if stripped.startswith(("{", "[")):
        return ".json"
    return None


def read_picks(
    path: str | os.PathLike,
    *,
    voxel_size: float | None = None,
    tomograms: Any = None,
    **options: Any,
) -> Picks:
    """Read particle picks written by RELION, Warp, copick, Dynamo, STOPGAP, IMOD, crYOLO or us.

    Parameters
    ----------
    path : str or PathLike
        The pick file; see the module docstring for the formats and how one is chosen.
    voxel_size : float, optional
        Angstrom per voxel of the tomogram the coordinates should index into. For formats
        in voxels it overrides what the file says; for formats in Angstrom (RELION 5,
        copick) it is the voxel size the coordinates are converted to. A voxel file
        that gives none is read at 1.0 Angstrom with a note and marked
        ``voxel_size_assumed``: put on a tomogram (:meth:`Picks.on_tomogram`), its
        coordinates are taken as that tomogram's voxel indices, not rescaled.
    tomograms : str, PathLike, mapping or Tomogram, optional
        The sizes that RELION 5 centred coordinates and WarpTools normalised (0..1)
        coordinates need: a ``tomograms.star``, an ``optimisation_set.star`` naming one,
        a mapping ``name -> (shape_zyx, voxel_size)``, an open
        :class:`~napari_cryoguard.io.Tomogram` (or a list of them) or a tomogram file's
        path. Without it, a RELION 5 file uses the optimisation set or
        ``tomograms.star`` lying next to it (with a note).
    **options
        Format-specific switches, passed to the reader (e.g. ``apply_origins=False`` for
        RELION, ``units="angstrom"`` for CSV); an option a reader does not know raises.

    Returns
    -------
    Picks
        ZYX voxel coordinates; ``notes`` says what was assumed or converted.
    """
    path = pick_file(path)
    suffix = path.suffix.lower()
    sniffed = _sniff(path)
    if sniffed is not None and suffix in (".txt", ".csv", ".tsv", ".json", "") and sniffed != suffix:
        suffix = sniffed  # content beats an ambiguous suffix
    if suffix not in _BY_SUFFIX:
        if sniffed is None:
            raise CryoGuardError(
                f"{path.name}: not a pick file this package reads (suffix {path.suffix!r}); "
                f"expected one of {', '.join(READ_PICK_SUFFIXES)}"
            )
        suffix = sniffed
    module_name, func_name = _BY_SUFFIX[suffix]
    module = importlib.import_module(module_name)
    reader = getattr(module, func_name)
    if isinstance(tomograms, Mapping):
        tomograms = dict(tomograms)
    try:
        picks = reader(path, voxel_size=voxel_size, tomograms=tomograms, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise CryoGuardError(
                f"{path.name}: option not understood for this format: {err}"
            ) from err
        raise
    if (voxel_size is None and picks.voxel_size == 1.0 and picks.origin_zyx is None
            and any(ASSUMED_VOXEL_NOTE in str(n) for n in picks.notes)):
        picks.voxel_size_assumed = True  # placed on a tomogram, its indices are that one's
    return picks
