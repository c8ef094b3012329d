"""Read and write tomograms as MRC files, lazily and with clear errors.

Reading never loads the voxels: :func:`read_tomogram` validates the 1024-byte header
(and the file size it implies) and then memory-maps the data block through
``mrcfile.mmap``. A float32 file gives a read-only :class:`numpy.memmap`; any other
mode (int8, int16, uint16, float16, or non-native byte order) gives a
:class:`LazyVolume` that converts only the slices asked for to float32, which napari
displays directly and ``np.asarray`` turns into a full float32 array.

Axis order
    The data are returned in file order, ``(sections, rows, columns)`` = ZYX for every
    cryo-ET MRC file (``mapc, mapr, maps = 1, 2, 3``), exactly like ``mrcfile``'s own
    ``data``. Crystallographic maps with another axis mapping are returned in file order
    too, with a warning; nothing is transposed. ``mapc, mapr, maps`` must be a
    permutation of 1, 2, 3; anything else (e.g. 0, 0, 0) is refused.

Voxel size
    ``cella / (mx, my, mz)`` in Angstrom per *crystal* axis X, Y, Z, as in the MRC2014
    header, then put on the array axis that holds that crystal axis: columns (the last
    array axis) run along crystal axis ``mapc``, rows along ``mapr``, sections (the
    first array axis) along ``maps``. So ``voxel_size_zyx`` is always per array axis
    ``(sections, rows, columns)``; for EMD-3001 (``mapc, mapr, maps = 3, 1, 2``) it is
    ``(cella.y / my, cella.x / mx, cella.z / mz)``. Values are reported as the
    shortest decimal that reproduces the float32 header (11.4, not 11.3999996). A zero,
    negative or non-finite voxel size is replaced by the other axes' value, or 1.0 when
    none is valid, with a ``UserWarning`` naming the file. Different values on the three
    axes are kept in ``voxel_size_zyx`` and warned about once per read. Image stacks
    (``.mrcs``, or space group 0 with ``mz = 1``) take the X value for Z.

Format reference: MRC2014, Cheng et al., J. Struct. Biol. 192 (2015) 146-150; the
``mrcfile`` package (Burnley et al., Acta Cryst. D 73 (2017) 469-477) does the mapping.

Non-finite voxels
    :func:`read_tomogram` does not scan the data (that would defeat lazy opening).
    Use :func:`check_finite` where NaNs matter: picking calls it and rejects volumes
    with non-finite voxels.

Other formats
    :func:`read_tomogram` also opens OME-Zarr folders (:mod:`napari_cryoguard.io.omezarr`),
    TIFF stacks (:mod:`napari_cryoguard.io.tiff`) and TOM/AITom ``.em`` files
    (:mod:`napari_cryoguard.io.em`), chosen by suffix; all return a :class:`Tomogram`
    whose ``notes`` say what was assumed (e.g. a voxel size not in the file).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from napari_cryoguard._atomic import atomic_output
from napari_cryoguard.checks import check_positive_int
from napari_cryoguard.errors import CryoGuardError

MRC_SUFFIXES: tuple[str, ...] = (".mrc", ".map", ".rec", ".st")
"""Suffixes read as MRC tomograms (lower case; matching is case-insensitive)."""

OMEZARR_SUFFIXES: tuple[str, ...] = (".zarr",)
"""Folder suffixes read as OME-Zarr tomograms (``name.zarr``, ``name.ome.zarr``)."""

TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
"""Suffixes read as TIFF stacks."""

EM_SUFFIXES: tuple[str, ...] = (".em",)
"""Suffixes read as TOM / AITom EM files."""

_OTHER_READERS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(OMEZARR_SUFFIXES, ("napari_cryoguard.io.omezarr", "read_omezarr")),
    **dict.fromkeys(TIFF_SUFFIXES, ("napari_cryoguard.io.tiff", "read_tiff")),
    **dict.fromkeys(EM_SUFFIXES, ("napari_cryoguard.io.em", "read_em")),
}
"""Suffix -> (module, function) of the tomogram formats other than MRC; each function is
called as ``read(path, voxel_size=...)`` and returns a :class:`Tomogram`."""

TOMOGRAM_SUFFIXES: tuple[str, ...] = MRC_SUFFIXES + tuple(_OTHER_READERS)
"""File suffixes read as tomograms (lower case; matching is case-insensitive)."""

STACK_SUFFIXES: tuple[str, ...] = (".mrcs",)
"""Image-stack suffixes, read only with ``allow_stack=True``."""

WRITE_SUFFIXES: tuple[str, ...] = (".mrc", ".map", ".rec")
"""Suffixes :func:`write_tomogram` writes."""

_HEADER_BYTES = 1024
_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
_MODE_NAMES = {
    0: "int8",
    1: "int16",
    2: "float32",
    3: "complex int16",
    4: "complex float32",
    6: "uint16",
    12: "float16",
    101: "4-bit packed",
}
_MODE_ITEMSIZE = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2}
_SUPPORTED = ", ".join(f"{m} ({_MODE_NAMES[m]})" for m in _MODE_DTYPES)


class LazyVolume:
    """A read-only, array-like float32 view of a memory-mapped volume of another dtype.

    Indexing converts only the selected voxels to float32; ``np.asarray`` converts the
    whole volume. napari displays it slice by slice without loading the file.

    Parameters
    ----------
    raw : ndarray
        The memory-mapped data in the file's own dtype, shape (Z, Y, X).
    """

    def __init__(self, raw: np.ndarray) -> None:
        self._raw = raw

    @property
    def raw(self) -> np.ndarray:
        """The underlying memory map in the file's dtype (no conversion)."""
        return self._raw

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._raw.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return self._raw.ndim

    @property
    def size(self) -> int:
        return int(self._raw.size)

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 array ``np.asarray`` would create."""
        return self.size * 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray | np.float32:
        out = self._raw[key]
        if np.ndim(out) == 0:
            return np.float32(out)
        return np.array(out, dtype=np.float32)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:  # numpy's __array__ protocol asks for ValueError here
            raise ValueError("LazyVolume converts on access; a copy cannot be avoided")
        out = np.array(self._raw, dtype=np.float32)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyVolume(shape={self.shape}, file dtype={self._raw.dtype}, dtype=float32)"


@dataclass(eq=False)
class Tomogram:
    """A tomogram: ZYX float32 voxels (lazy) and its geometry.

    Attributes
    ----------
    data : numpy.memmap or LazyVolume or ndarray, shape (Z, Y, X), float32
        The voxels. Read-only memory map for float32 files, :class:`LazyVolume`
        for other modes, a plain array for :meth:`from_array`.
    voxel_size : float
        Voxel size in Angstrom along the last array axis (X for cryo-ET files; the
        napari scale uses ``voxel_size_zyx``).
    voxel_size_zyx : tuple of float
        Voxel size in Angstrom per axis, ZYX.
    path : Path or None
        The file, or ``None`` for an in-memory tomogram.
    name : str
        File stem, used as the napari layer name.
    shape : tuple of int
        ``(Z, Y, X)``.
    origin_zyx : tuple of float
        The header origin in Angstrom, ZYX (MRC2014 ``origin`` field; for OME-Zarr the
        level's ``translation``).
    translate_zyx : tuple of float
        Where the first voxel's centre lies, in Angstrom (ZYX), in the physical frame
        that Angstrom pick files (copick) and the other levels of a multiscale image
        share: the OME-Zarr ``translation``. The napari layer is drawn there and
        :meth:`~napari_cryoguard.io.Picks.on_tomogram` places Angstrom picks relative
        to it. ``(0, 0, 0)`` for MRC, TIFF and ``.em``, whose header origins tools
        write inconsistently (kept in ``origin_zyx``, not applied).
    mode : int
        The MRC mode of the file (2 = float32); 2 for other formats.
    notes : list of str
        What the reader assumed or chose, in words for the user (a voxel size not in
        the file, the multiscale level taken, a unit converted).
    voxel_size_assumed : bool
        True when the file stores no usable voxel size and 1 Angstrom was assumed; picks
        placed on it (:meth:`~napari_cryoguard.io.Picks.on_tomogram`) then keep their
        voxel coordinates instead of being rescaled by a guess.
    """

    data: Any = field(repr=False)
    voxel_size: float
    voxel_size_zyx: tuple[float, float, float]
    path: Path | None
    name: str
    shape: tuple[int, int, int]
    origin_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mode: int = 2
    translate_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)
    voxel_size_assumed: bool = False
    _handle: Any = field(default=None, repr=False)

    @classmethod
    def from_array(cls, data: Any, voxel_size: float = 1.0, name: str = "tomogram") -> Tomogram:
        """Wrap an in-memory ZYX volume (converted to float32) as a Tomogram."""
        arr = np.asarray(data, dtype=np.float32)
        if arr.ndim != 3:
            raise CryoGuardError(f"a tomogram is a 3D ZYX array, got shape {arr.shape}")
        vs = _valid_voxel_size(voxel_size)
        return cls(
            data=arr,
            voxel_size=vs[2],
            voxel_size_zyx=vs,
            path=None,
            name=name,
            shape=tuple(int(s) for s in arr.shape),
        )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or for in-memory tomograms)."""
        return self._handle is None

    def close(self) -> None:
        """Close the file handle. Arrays already taken from ``data`` stay readable."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Tomogram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _valid_voxel_size(voxel_size: float | Sequence[float]) -> tuple[float, float, float]:
    """A positive finite ZYX voxel size from a number or a ZYX triple, else CryoGuardError."""
    try:
        arr = np.asarray(voxel_size, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CryoGuardError(
            f"voxel size must be a number or (z, y, x), got {voxel_size!r}"
        ) from err
    if arr.ndim == 0:
        arr = np.repeat(arr, 3)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise CryoGuardError(
            f"voxel size must be a positive finite number or (z, y, x) in Angstrom, got {voxel_size!r}"
        )
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def read_header_bytes(path: Path, file_size: int, n: int, kind: str) -> bytes:
    """The first ``n`` bytes of a ``kind`` ("MRC", "EM") volume file; a shorter file raises."""
    if file_size < n:
        raise CryoGuardError(
            f"{path.name} is not an {kind} file: it has {file_size} bytes, fewer than the "
            f"{n}-byte {kind} header"
        )
    with open(path, "rb") as fh:
        return fh.read(n)


def assumed_voxel_size(message: str, notes: list[str]) -> tuple[float, float, float]:
    """1 Angstrom per voxel for a file that stores none: ``message`` (saying so) is added
    to ``notes`` and warned where the reader was called from."""
    notes.append(message)
    warnings.warn(message, UserWarning, stacklevel=4)
    return (1.0, 1.0, 1.0)


def _header_voxel_size(cell: float, samples: int) -> float:
    """Voxel size ``cell / samples`` from float32 header fields, as the shortest decimal.

    The header stores the cell length ``cella`` in float32, so ``cella / mx`` is only
    float32-accurate (7.3 * 9 comes back as 7.2999997). We return the shortest decimal
    ``d`` with ``float32(d * mx) == cella``: the value a writer most likely meant, and
    always within float32 precision of the header. Returns 0.0 when undefined.
    """
    cell32 = np.float32(cell)
    if samples <= 0 or not np.isfinite(cell32) or cell32 <= 0:
        return 0.0
    quotient = float(cell32) / samples
    for digits in range(1, 18):
        candidate = float(f"{quotient:.{digits}g}")
        if np.float32(candidate * samples) == cell32:
            return candidate
    return quotient


def _inspect_header(path: Path, file_size: int) -> dict[str, Any]:
    """Read and validate the 1024-byte MRC header without touching the data block.

    Returns the header fields needed later; raises CryoGuardError saying what was found.
    """
    raw = read_header_bytes(path, file_size, _HEADER_BYTES, "MRC")
    has_map_id = raw[208:211] == b"MAP"
    stamp = raw[212:214]
    # MRC2014 machine stamps: 0x44 0x41 (or 0x44 0x44) little-endian, 0x11 0x11 big-endian.
    order = ">" if stamp[:1] == b"\x11" else "<"
    header = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order))[0]
    mode = int(header["mode"])
    if mode not in _MODE_NAMES:
        swapped = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder("<" if order == ">" else ">"))[
            0
        ]
        if int(swapped["mode"]) in _MODE_NAMES:
            header, mode = swapped, int(swapped["mode"])
    nx, ny, nz = (int(header[k]) for k in ("nx", "ny", "nz"))
    nsymbt = int(header["nsymbt"])
    consistent = mode in _MODE_NAMES and min(nx, ny, nz) > 0 and nsymbt >= 0
    expected = None
    if consistent:
        if mode == 101:  # 4-bit values, each row padded to whole bytes
            data_bytes = (nx + 1) // 2 * ny * nz
        else:
            data_bytes = nx * ny * nz * _MODE_ITEMSIZE[mode]
        expected = _HEADER_BYTES + nsymbt + data_bytes
    if not has_map_id and (not consistent or expected != file_size):
        raise CryoGuardError(
            f"{path.name} is not an MRC file: no 'MAP' identifier at byte 208 and the header "
            f"does not describe this file (mode {mode}, size {nx} x {ny} x {nz}, "
            f"{file_size} bytes on disk)"
        )
    if mode in (3, 4):
        raise CryoGuardError(
            f"{path.name} holds complex numbers (MRC mode {mode}, {_MODE_NAMES[mode]}), e.g. a "
            f"Fourier transform; a tomogram needs real voxels (modes {_SUPPORTED})"
        )
    if mode not in _MODE_DTYPES:
        what = _MODE_NAMES.get(mode, "unknown")
        raise CryoGuardError(
            f"{path.name} has MRC mode {mode} ({what}), which cannot be read; "
            f"supported modes: {_SUPPORTED}"
        )
    if min(nx, ny, nz) <= 0:
        raise CryoGuardError(
            f"{path.name} has an invalid MRC header: size {nx} x {ny} x {nz} (nx, ny, nz must be > 0)"
        )
    if nsymbt < 0:
        raise CryoGuardError(
            f"{path.name} has an invalid MRC header: extended header size {nsymbt}"
        )
    assert expected is not None
    if file_size < expected:
        data_bytes = expected - _HEADER_BYTES - nsymbt
        raise CryoGuardError(
            f"{path.name} is truncated: the header says {nx} x {ny} x {nz} voxels of "
            f"{_MODE_NAMES[mode]} ({_HEADER_BYTES} header + {nsymbt} extended header + "
            f"{data_bytes} data = {expected} bytes expected) but the file has {file_size} bytes"
        )
    return {
        "has_map_id": has_map_id,
        "mode": mode,
        "nx": nx,
        "ny": ny,
        "nz": nz,
        "expected": expected,
        "ispg": int(header["ispg"]),
        "mz": int(header["mz"]),
        "axes": _axis_mapping(path, header),
    }


def _axis_mapping(path: Path, header: Any) -> tuple[int, int, int]:
    """``(mapc, mapr, maps)``: the crystal axis (1 = X, 2 = Y, 3 = Z) of the columns,
    rows and sections; CryoGuardError unless it is a permutation of 1, 2, 3."""
    axes = (int(header["mapc"]), int(header["mapr"]), int(header["maps"]))
    if sorted(axes) != [1, 2, 3]:
        raise CryoGuardError(
            f"{path.name} has an invalid MRC axis mapping: mapc, mapr, maps = {axes}; "
            "expected a permutation of 1, 2, 3 (1 = X, 2 = Y, 3 = Z)"
        )
    return axes


def read_tomogram(
    path: str | os.PathLike,
    *,
    allow_stack: bool = False,
    voxel_size: float | Sequence[float] | None = None,
) -> Tomogram:
    """Open a tomogram lazily: MRC (memory-mapped), OME-Zarr, TIFF or TOM ``.em``.

    Parameters
    ----------
    path : str or PathLike
        A ``.mrc``, ``.map``, ``.rec`` or ``.st`` file (``.mrcs`` only with
        ``allow_stack``); the suffix is matched case-insensitively. ``.st`` files are
        tilt series: they are read as (tilt, Y, X) stacks without ``allow_stack``.
        Also an OME-Zarr folder (``.zarr``, see :func:`~napari_cryoguard.io.omezarr.read_omezarr`),
        a TIFF stack (``.tif``, ``.tiff``, :func:`~napari_cryoguard.io.tiff.read_tiff`)
        or a TOM / AITom ``.em`` file (:func:`~napari_cryoguard.io.em.read_em`).
    allow_stack : bool
        Accept image stacks (``.mrcs`` files, or a header marking a stack of 2D images:
        space group 0 with ``mz == 1``) and return them as (N, Y, X).
    voxel_size : float or (z, y, x), optional
        Angstrom. For OME-Zarr: the multiscale level whose voxel size is nearest to it
        is opened (default: level 0). For TIFF and ``.em``: the voxel size to use when
        the file does not state one (when it does, the file wins and a note says so if
        they differ). Ignored for MRC files, whose header always has one.

    Returns
    -------
    Tomogram
        Holds the open file; use it as a context manager or call ``close()``.

    Raises
    ------
    CryoGuardError
        Missing file, wrong suffix, not an MRC file, truncated data, a 2D image, an
        image stack or a stack of volumes where a volume is expected, complex or
        unknown modes, an axis mapping (mapc, mapr, maps) that is not a permutation of
        1, 2, 3; for the other formats see their readers. The message says what was
        found.

    Warns
    -----
    UserWarning
        Voxel size missing or zero (1.0 is used), anisotropic voxels, a non-standard
        axis order, a file longer than its header says, or other header oddities
        that ``mrcfile`` reports.

    Notes
    -----
    The data are not scanned for NaN or infinity; see :func:`check_finite`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _OTHER_READERS:
        module, func = _OTHER_READERS[suffix]
        return getattr(importlib.import_module(module), func)(path, voxel_size=voxel_size)
    if suffix in STACK_SUFFIXES and not allow_stack:
        raise CryoGuardError(
            f"{path.name} is an image stack ({suffix}), not a tomogram; "
            "open a reconstructed tomogram (.mrc, .rec) instead (from Python: "
            "read_tomogram(..., allow_stack=True) reads the stack)"
        )
    if suffix not in TOMOGRAM_SUFFIXES + STACK_SUFFIXES:
        raise CryoGuardError(
            f"{path.name}: not a tomogram file suffix {suffix!r}; expected one of "
            f"{', '.join(TOMOGRAM_SUFFIXES)}"
        )
    if not path.exists():
        raise CryoGuardError(f"tomogram file not found: {path}")
    if not path.is_file():
        raise CryoGuardError(f"not a file: {path}")
    file_size = path.stat().st_size
    info = _inspect_header(path, file_size)
    name = path.name
    nz = info["nz"]
    if nz == 1:
        raise CryoGuardError(
            f"{name} is a 2D image ({info['nx']} x {info['ny']}, nz = 1); a tomogram needs nz > 1"
        )
    ispg = info["ispg"]
    if 401 <= ispg <= 630:
        raise CryoGuardError(
            f"{name} is a stack of volumes (space group {ispg}, nz = {nz}, mz = {info['mz']}); "
            "a single tomogram is expected"
        )
    is_stack = suffix in STACK_SUFFIXES or (ispg == 0 and info["mz"] == 1)
    info["is_stack"] = is_stack
    if is_stack and not (allow_stack or suffix == ".st"):
        raise CryoGuardError(
            f"{name} is a stack of {nz} 2D images (space group 0, mz = 1), not a volume; "
            "open a reconstructed tomogram instead (from Python: "
            "read_tomogram(..., allow_stack=True) reads the stack)"
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except Exception as err:  # mrcfile raises ValueError/OSError on bad files
            raise CryoGuardError(f"could not open {name} as MRC: {err}") from err
    try:
        tomo = _tomogram_from_mrc(mrc, path, info)
    except BaseException:
        mrc.close()
        raise
    for w in caught:
        msg = str(w.message)
        if "larger than expected" in msg or "Map ID string not found" in msg:
            continue  # reported below in our own words
        warnings.warn(f"{name}: {msg}", UserWarning, stacklevel=2)
    if not info["has_map_id"]:
        warnings.warn(
            f"{name}: no 'MAP' identifier in the header (an old MRC format); read anyway",
            UserWarning,
            stacklevel=2,
        )
    if file_size > info["expected"]:
        warnings.warn(
            f"{name} is {file_size - info['expected']} bytes longer than its header says; "
            "the extra bytes are ignored",
            UserWarning,
            stacklevel=2,
        )
    if info["axes"] != (1, 2, 3):
        msg = (
            f"{name} has axis order mapc, mapr, maps = {info['axes']}; data are returned in "
            "file order (sections, rows, columns) without transposing, with each array "
            f"axis's own voxel size (sections, rows, columns) = {tomo.voxel_size_zyx} Angstrom"
        )
        tomo.notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=2)
    vs = tomo.voxel_size_zyx
    if not np.allclose(vs, vs[2], rtol=1e-5, atol=0):
        warnings.warn(
            f"{name} has anisotropic voxels (z, y, x) = {vs} Angstrom; voxel_size uses x",
            UserWarning,
            stacklevel=2,
        )
    return tomo


def _tomogram_from_mrc(mrc: Any, path: Path, info: dict[str, Any]) -> Tomogram:
    raw = mrc.data
    if raw is None or raw.ndim != 3:
        shape = None if raw is None else raw.shape
        raise CryoGuardError(f"{path.name}: mrcfile could not map the data block (got {shape})")
    if raw.dtype == np.dtype(np.float32) and isinstance(raw, np.memmap):
        data: Any = raw
    else:
        data = LazyVolume(raw)

    header = mrc.header
    # voxel size along crystal axes X, Y, Z (1, 2, 3) ...
    crystal = {
        i + 1: _header_voxel_size(float(header.cella[axis]), int(header[m]))
        for i, (axis, m) in enumerate((("x", "mx"), ("y", "my"), ("z", "mz")))
    }
    # ... put on the array axes (sections, rows, columns) = (maps, mapr, mapc)
    mapc, mapr, maps = info["axes"]
    found = (crystal[maps], crystal[mapr], crystal[mapc])
    if info.get("is_stack"):
        found = (found[2],) + found[1:]  # sections of a stack are images: no z spacing
    valid = [v for v in found if v > 0]
    assumed = not valid
    if len(valid) < 3:
        fill = float(np.median(valid)) if valid else 1.0
        voxel_zyx = tuple(v if v > 0 else fill for v in found)
        raw_cell = tuple(float(header.cella[a]) for a in "zyx")
        raw_m = tuple(int(header[m]) for m in ("mz", "my", "mx"))
        warnings.warn(
            f"{path.name}: voxel size missing or invalid in the header (cella z, y, x = "
            f"{raw_cell}, mz, my, mx = {raw_m}); using {voxel_zyx} Angstrom",
            UserWarning,
            stacklevel=3,
        )
    else:
        voxel_zyx = found

    origin = mrc.header.origin
    by_axis = {1: float(origin["x"]), 2: float(origin["y"]), 3: float(origin["z"])}
    origin_zyx = (by_axis[maps], by_axis[mapr], by_axis[mapc])
    origin_zyx = tuple(v if np.isfinite(v) else 0.0 for v in origin_zyx)
    return Tomogram(
        data=data,
        voxel_size=float(voxel_zyx[2]),
        voxel_size_zyx=voxel_zyx,  # type: ignore[arg-type]
        path=path,
        name=path.stem,
        shape=tuple(int(s) for s in raw.shape),  # type: ignore[arg-type]
        origin_zyx=origin_zyx,  # type: ignore[arg-type]
        mode=info["mode"],
        voxel_size_assumed=assumed,
        _handle=mrc,
    )


def check_finite(data: Any, chunk: int | None = None) -> int:
    """Count the non-finite (NaN or infinite) voxels of a volume, slab by slab.

    Parameters
    ----------
    data : array-like, shape (Z, ...)
        An ndarray, memory map or :class:`LazyVolume`; read in slabs along axis 0 so a
        memory-mapped tomogram is never loaded whole.
    chunk : int, optional
        Slabs of this many sections; by default about 16 million voxels per slab.

    Returns
    -------
    int
        Number of non-finite voxels (0 for a clean volume).
    """
    shape = tuple(data.shape)
    if len(shape) == 0:
        return int(not np.isfinite(np.asarray(data)))
    n0 = shape[0]
    per_section = int(np.prod(shape[1:], dtype=np.int64)) or 1
    if chunk is None:
        chunk = max(1, (1 << 24) // per_section)
    chunk = check_positive_int("check_finite chunk", chunk)
    if isinstance(data, LazyVolume):
        data = data.raw  # integer modes are always finite; float16 checked in its own dtype
    if np.dtype(data.dtype).kind in "iub":
        return 0
    bad = 0
    for start in range(0, n0, chunk):
        block = np.asarray(data[start : start + chunk])
        bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    return bad


def write_tomogram(
    path: str | os.PathLike,
    data: Any,
    voxel_size: float | Sequence[float],
    *,
    overwrite: bool = True,
) -> Path:
    """Write a ZYX volume as a float32 (mode 2) MRC file, atomically.

    Parameters
    ----------
    path : str or PathLike
        Target ``.mrc``, ``.map`` or ``.rec`` file.
    data : array-like, shape (Z, Y, X)
        The volume; converted to float32.
    voxel_size : float or (z, y, x)
        Voxel size in Angstrom, positive and finite.
    overwrite : bool
        Replace an existing file (default). If False an existing file is an error.

    Returns
    -------
    Path
        The written file. The data go to a temporary file in the same directory that
        replaces ``path`` only when complete (``os.replace``).
    """
    path = Path(path)
    if path.suffix.lower() not in WRITE_SUFFIXES:
        raise CryoGuardError(
            f"cannot write a tomogram to {path.name}: suffix must be one of {', '.join(WRITE_SUFFIXES)}"
        )
    vs = _valid_voxel_size(voxel_size)
    if getattr(data, "ndim", np.ndim(data)) != 3:
        raise CryoGuardError(f"a tomogram is a 3D ZYX array, got shape {tuple(np.shape(data))}")
    arr = np.asarray(data, dtype=np.float32)
    if min(arr.shape) < 1:
        raise CryoGuardError(f"cannot write an empty volume of shape {arr.shape}")
    if not path.parent.is_dir():
        raise CryoGuardError(f"cannot write {path.name}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise CryoGuardError(f"{path} exists and overwrite=False")
    try:
        with atomic_output(path) as tmp, mrcfile.new(tmp, overwrite=True) as mrc:
            # header statistics only: overflow in rms or NaN voxels are not our concern here
            with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Data array contains NaN", RuntimeWarning)
                mrc.set_data(arr)
            mrc.set_volume()
            mrc.voxel_size = (vs[2], vs[1], vs[0])  # mrcfile takes x, y, z
    except OSError as err:
        raise CryoGuardError(f"could not write {path}: {err}") from err
    return path
