"""Tomogram IO (MRC, lazy) and particle pick files (RELION STAR, CSV).

See :mod:`napari_cryoguard.io.mrc` for the MRC conventions (ZYX, voxel size in
Angstrom, lazy opening) and :mod:`napari_cryoguard.io.coords` for the pick-file
columns (RELION ``rlnCoordinateX/Y/Z`` = ZYX coordinates reversed, in voxels).
"""

from __future__ import annotations

from napari_cryoguard.io.coords import PICK_SUFFIXES, write_picks
from napari_cryoguard.io.mrc import (
    STACK_SUFFIXES,
    TOMOGRAM_SUFFIXES,
    LazyVolume,
    Tomogram,
    check_finite,
    read_tomogram,
    write_tomogram,
)
from napari_cryoguard.io.picks import Picks, tomo_key
from napari_cryoguard.io.readers import READ_PICK_SUFFIXES, read_picks

__all__ = [
    "PICK_SUFFIXES",
    "READ_PICK_SUFFIXES",
    "STACK_SUFFIXES",
    "TOMOGRAM_SUFFIXES",
    "LazyVolume",
    "Picks",
    "Tomogram",
    "check_finite",
    "read_picks",
    "read_tomogram",
    "tomo_key",
    "write_picks",
    "write_tomogram",
]
