"""Read TOM toolbox / AITom / PyTom ``.em`` volumes lazily (numpy memory map).

The EM format (TOM toolbox, Max Planck Institute of Biochemistry; also written by AITom
and PyTom) is a 512-byte header followed by the voxels, X fastest:

=========  ======  ==========================================================
bytes      type    meaning
=========  ======  ==========================================================
0          uint8   machine: 0 OS-9, 3 SGI, 5 Mac (big-endian); 1 VAX, 2 Convex,
                   4 (unused), 6 PC (little-endian). We read 0, 3, 5 as
                   big-endian and 1, 2, 4, 6 as little-endian.
1          uint8   general purpose (ignored)
2          uint8   not used
3          uint8   data type: 1 int8 (byte), 2 int16, 4 int32, 5 float32,
                   8 complex float32, 9 float64
4-15       int32   dimensions nx, ny, nz (in the machine's byte order)
16-95      char    comment (80 characters)
96-255     int32   40 user parameters (voltage, Cs, ..., object pixel size)
256-511    char    user data
=========  ======  ==========================================================

The array is returned as ``(nz, ny, nx)`` = ZYX. The header's "object pixel size"
parameter is written inconsistently by different tools (nm, nm x 1000, or left 0), so
it is not used: the voxel size is ``voxel_size=`` when given, else 1.0 Angstrom, and a
note in :attr:`Tomogram.notes` says which (with a ``UserWarning`` for the 1.0 guess).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_cryoguard.errors import CryoGuardError

HEADER_BYTES = 512
"""Size of the EM header."""

_DTYPES = {1: "i1", 2: "i2", 4: "i4", 5: "f4", 9: "f8"}
_TYPE_NAMES = {1: "int8", 2: "int16", 4: "int32", 5: "float32", 8: "complex64", 9: "float64"}
_BIG_ENDIAN_MACHINES = (0, 3, 5)
_LITTLE_ENDIAN_MACHINES = (1, 2, 4, 6)


def read_em(path: str | os.PathLike, *, voxel_size: float | Sequence[float] | None = None):
    """Open a ``.em`` volume lazily as a :class:`~napari_cryoguard.io.Tomogram`.

    Parameters
    ----------
    path : str or PathLike
        The ``.em`` file.
    voxel_size : float or (z, y, x), optional
        Voxel size in Angstrom (the file does not reliably store one). Without it 1.0 is
        used, with a warning and a note.

    Returns
    -------
    Tomogram
        ``data`` is a read-only float32 memory map, or a
        :class:`~napari_cryoguard.io.mrc.LazyVolume` for other data types.

    Raises
    ------
    CryoGuardError
        Missing file, a file shorter than the header or than the voxels it claims, an
        unknown machine byte or data type, complex data, a 2D image.
    """
    from napari_cryoguard.io.mrc import (
        LazyVolume,
        Tomogram,
        _valid_voxel_size,
        assumed_voxel_size,
        read_header_bytes,
    )

    path = Path(path)
    if not path.is_file():
        raise CryoGuardError(f"tomogram file not found: {path}")
    size = path.stat().st_size
    head = read_header_bytes(path, size, HEADER_BYTES, "EM")
    machine, dtype_code = head[0], head[3]
    if machine in _BIG_ENDIAN_MACHINES:
        order = ">"
    elif machine in _LITTLE_ENDIAN_MACHINES:
        order = "<"
    else:
        raise CryoGuardError(
            f"{path.name} is not an EM file: machine byte {machine} (expected 0-6, "
            "6 = PC little-endian)"
        )
    if dtype_code == 8:
        raise CryoGuardError(
            f"{path.name} holds complex numbers (EM data type 8); a tomogram needs real voxels"
        )
    if dtype_code not in _DTYPES:
        known = ", ".join(f"{k} ({v})" for k, v in _TYPE_NAMES.items() if k != 8)
        raise CryoGuardError(
            f"{path.name} has EM data type {dtype_code}, which cannot be read; supported: {known}"
        )
    nx, ny, nz = (int(v) for v in np.frombuffer(head[4:16], dtype=f"{order}i4"))
    if min(nx, ny, nz) <= 0:
        raise CryoGuardError(
            f"{path.name} has an invalid EM header: size {nx} x {ny} x {nz} (each must be > 0)"
        )
    dtype = np.dtype(order + _DTYPES[dtype_code])
    expected = HEADER_BYTES + nx * ny * nz * dtype.itemsize
    if size < expected:
        raise CryoGuardError(
            f"{path.name} is truncated: the header says {nx} x {ny} x {nz} voxels of "
            f"{_TYPE_NAMES[dtype_code]} ({expected} bytes with the header) but the file has "
            f"{size} bytes"
        )
    if nz == 1:
        raise CryoGuardError(
            f"{path.name} is a 2D image ({nx} x {ny}, nz = 1); a tomogram needs nz > 1"
            + ("; 20 values per column is the layout of a TOM / AV3 / cryoCAT motive list "
               "(one particle per column), a pick table this package does not read"
               if nx == 20 else "")
        )
    notes: list[str] = []
    if size > expected:
        notes.append(f"{path.name} is {size - expected} bytes longer than its header says; "
                     "the extra bytes were ignored")
    raw = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(nz, ny, nx))
    data = raw if dtype == np.dtype("<f4") or dtype == np.dtype("=f4") else LazyVolume(raw)
    if voxel_size is None:
        vs = assumed_voxel_size(f"{path.name}: an EM file stores no reliable voxel size; "
                                "assumed 1.0 Angstrom (give voxel_size= to set it)", notes)
    else:
        vs = _valid_voxel_size(voxel_size)
        notes.append(f"{path.name}: voxel size {vs[2]:g} Angstrom as given (EM files store none)")
    return Tomogram(
        data=data,
        voxel_size=vs[2],
        voxel_size_zyx=vs,
        path=path,
        name=path.stem,
        shape=(nz, ny, nx),
        notes=notes,
        voxel_size_assumed=voxel_size is None,
    )


def write_em(path: str | os.PathLike, data, *, big_endian: bool = False) -> Path:
    """Write a ZYX float32 volume as an ``.em`` file (tests and interchange).

    Parameters
    ----------
    path : str or PathLike
        Target file.
    data : array-like, shape (Z, Y, X)
        Converted to float32.
    big_endian : bool
        Write machine byte 5 (Mac, big-endian) instead of 6 (PC, little-endian).

    Returns
    -------
    Path
        The written file.
    """
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 3:
        raise CryoGuardError(f"an EM volume is a 3D ZYX array, got shape {arr.shape}")
    order = ">" if big_endian else "<"
    head = bytearray(HEADER_BYTES)
    head[0] = 5 if big_endian else 6
    head[3] = 5
    nz, ny, nx = arr.shape
    head[4:16] = np.array([nx, ny, nz], dtype=f"{order}i4").tobytes()
    path = Path(path)
    try:
        with open(path, "wb") as fh:
            fh.write(bytes(head))
            fh.write(arr.astype(f"{order}f4").tobytes())
    except OSError as err:
        raise CryoGuardError(f"could not write {path}: {err}") from err
    return path
