"""RELION 3/4/5 and Warp particle STAR files, in and out of :class:`Picks`.

One reader, :func:`read_star_picks`, takes every STAR particle file this package meets:
our own (``cryoguard`` convention, voxel ``rlnCoordinateX/Y/Z`` plus metadata blocks),
RELION 3/4 and Warp (voxel ``rlnCoordinateX/Y/Z``) and RELION 5 (centred Angstrom
``rlnCenteredCoordinateX/Y/ZAngst``). Everything it assumes or converts is written to
``Picks.notes``.

RELION 5 centred coordinates
    RELION 5 stores a particle as its distance in Angstrom from the tomogram's centre.
    The conversion implemented here follows RELION's own code (github.com/3dem/relion,
    commit 73f0a3c0):

    * ``src/jaz/tomography/particle_set.cpp``, ``getParticleCoordDecenteredPixel``:
      ``pixel = centred_angstrom / rlnTomoTiltSeriesPixelSize + centre``, in unbinned
      tilt-series pixels; ``setParticleCoordDecenteredPixel`` is the inverse;
    * ``src/jaz/tomography/tomogram_set.cpp`` (``loadTomogram``): ``centre = (w0/2,
      h0/2, d0/2)`` with ``w0, h0, d0 = rlnTomoSizeX/Y/Z`` of ``tomograms.star``, in
      unbinned pixels, without the ``-1`` or ``+1`` of older versions;
    * ``src/jaz/tomography/programs/reconstruct_tomogram.cpp``: voxel ``i`` of a
      tomogram reconstructed at binning ``b`` (``rlnTomoTomogramBinning``) sits at
      unbinned pixel ``i * b`` (origin 0), so its voxel size is
      ``rlnTomoTiltSeriesPixelSize * b``.

    Hence, per axis, the 0-based voxel index of the binned tomogram is::

        voxel = centred_angstrom / (pixel_size * binning) + size_unbinned / (2 * binning)

    e.g. ``rlnTomoSizeX 1000``, pixel 1.052 A, binning 4.830918: a particle at
    ``rlnCenteredCoordinateXAngst -176.94`` lies at voxel ``-176.94 / 5.0821 + 103.5 =
    68.6838``. Given a mapping ``name -> (shape_zyx, voxel_size)`` instead of a
    ``tomograms.star``, the centre is ``shape / 2`` voxels of that tomogram (the same
    rule).

    pytom-match-pick ``--relion5-compat`` (``src/pytom_tm/extract.py``, commit
    9fd5388f) writes ``(voxel - shape / 2) * voxel size`` (the rule above), but with
    ``--relion5-tomograms-star`` ``(voxel * binning - (unbinned size / 2 - 1)) * pixel``:
    such files read back ``1 / binning`` voxel higher per axis here (RELION's code is
    the reference; far below extraction's 1-voxel tolerance).

    When ``tomograms=`` is not given, :func:`tomograms_next_to` looks beside the particle
    file for the optimisation set or ``tomograms.star`` RELION writes there, and a note
    names the file used.

Origin shifts
    RELION's true particle position is the coordinate minus the origin shift
    (``ParticleSet::getPosition``: ``out -= A * offset / pixel``, where ``A`` is the
    subtomogram's rotation from ``rlnTomoSubtomogramRot/Tilt/Psi`` when the file has
    them, RELION's ZYZ Euler matrix of ``src/jaz/math/Euler_angles_relion.h``, and the
    identity otherwise). ``rlnOriginX/Y/Z`` are in pixels of the coordinates,
    ``rlnOriginX/Y/ZAngst`` in Angstrom. They are applied by default, with a note;
    ``apply_origins=False`` keeps them as features instead.

RELION 3/4 and Warp
    Tomogram names: ``rlnTomoName``, else ``rlnMicrographName`` by
    :func:`~napari_cryoguard.io.picks.tomo_key` (``TS_01.tomostar`` -> ``TS_01``).
    pytom-match-pick writes ``rec_TS_01`` (its reconstruction's name; with
    ``--relion5-compat`` ``rlnTomoName TS_01``): kept as is; ``tomograms=`` lookups and
    :meth:`Picks.for_tomogram` match either spelling, with a note. Voxel size:
    ``voxel_size=``, else the optics group's ``rlnTomoTiltSeriesPixelSize`` (RELION 4/5
    tomography, coordinates in tilt-series pixels: ``ParticleSet::getPosition``; not
    for WarpTools' ``.tomostar`` exports, in particle pixels), else its
    ``rlnImagePixelSize`` (rows of several sizes need ``voxel_size=``, converted to it),
    else ``rlnPixelSize``, else ``rlnDetectorPixelSize`` (um) * 1e4 /
    ``rlnMagnification``, else ``rlnDetectorPixelSize`` (A, pytom), else our
    ``cryoguardVoxelSize``, else ``rlnTomoTiltSeriesPixelSize`` * ``rlnTomoTomogramBinning``,
    else 1.0 with a note. Warp: "pixel coordinates in a tomogram, starting from zero at
    the center of the first voxel", the convention of :class:`Picks`.

Warp normalised coordinates
    WarpTools ``threshold_picks`` writes ``rlnCoordinateX/Y/Z`` as fractions (0..1) of the
    tomogram (``TS_1_10.00Apx_emd_15854_clean.star`` of Warp's tutorial). A file whose
    coordinates all lie in [0, 1], not all whole, is taken as normalised
    (``normalized_coords=`` forces either way) and needs ``tomograms=`` (else refused).
    Warp's writer (``WarpLib/TiltSeries/TiltSeries.MatchFull.cs``, commit 66475df8)
    stores voxel index x voxel size / physical size, so ``voxel = fraction x size``: on
    the tutorial's 348 x 474 x 78-voxel tomogram every fraction comes back whole (its
    exporter, commit 7ad2dcca, uses the unbinned size minus one pixel: under a voxel).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.checks import check_float
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io import coords as _coords
from napari_cryoguard.io._reading import pick_file
from napari_cryoguard.io.picks import Picks, positive_voxel_size, tomo_key

CENTRED = (
    "rlnCenteredCoordinateXAngst",
    "rlnCenteredCoordinateYAngst",
    "rlnCenteredCoordinateZAngst",
)
XYZ = _coords.STAR_XYZ
ORIGIN_PX = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
ORIGIN_A = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
SUBTOMO_ANGLES = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
TOMO_SIZE = ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")
TS_PIXEL = "rlnTomoTiltSeriesPixelSize"
TOMO_BINNING = "rlnTomoTomogramBinning"


class TomogramGeometry(tuple):
    """``(centre_xyz, voxel_size, tilt_series_pixel)`` of one tomogram.

    ``centre_xyz`` is RELION's tomogram centre in voxels of the binned tomogram
    (``size_unbinned / (2 * binning)``, or ``shape / 2`` for a given shape), voxel_size
    its Angstrom per voxel, ``tilt_series_pixel`` the unbinned pixel size (None when
    only the tomogram's voxel size is known).
    """

    __slots__ = ()

    def __new__(cls, centre_xyz, voxel_size, tilt_series_pixel=None):
        return super().__new__(
            cls, (np.asarray(centre_xyz, dtype=np.float64), float(voxel_size), tilt_series_pixel)
        )

    @property
    def centre_xyz(self) -> np.ndarray:
        return self[0]

    @property
    def voxel_size(self) -> float:
        return self[1]

    @property
    def tilt_series_pixel(self) -> float | None:
        return self[2]


# --------------------------------------------------------------------------- helpers


def _numbers(values: np.ndarray, label: str, path: Path) -> np.ndarray:
    return _coords._numeric(values, np.float64, label, path)


def _shape_zyx(value: Any, what: str) -> np.ndarray:
    """Three positive finite sizes (z, y, x) as float64, else a CryoGuardError."""
    try:
        shape = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CryoGuardError(f"{what} must be (z, y, x) sizes, got {value!r}") from err
    if shape.shape != (3,) or not np.all(np.isfinite(shape)) or np.any(shape <= 0):
        raise CryoGuardError(f"{what} must be three positive sizes (z, y, x), got {value!r}")
    return shape


def relion_euler_matrix(rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """RELION's ZYZ rotation matrices, shape (N, 3, 3), from angles in degrees.

    The matrix of ``Euler::anglesToMatrix3`` (``src/jaz/math/Euler_angles_relion.h``),
    which RELION applies to a particle's origin offset as ``A @ offset``.
    """
    p, t, c = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (rot, tilt, psi))
    sp, cp, st, ct, sc, cc = np.sin(p), np.cos(p), np.sin(t), np.cos(t), np.sin(c), np.cos(c)
    m = np.empty(p.shape + (3, 3))
    m[..., 0, 0] = cc * ct * cp - sc * sp
    m[..., 0, 1] = cc * ct * sp + sc * cp
    m[..., 0, 2] = -cc * st
    m[..., 1, 0] = -sc * ct * cp - cc * sp
    m[..., 1, 1] = -sc * ct * sp + cc * cp
    m[..., 1, 2] = sc * st
    m[..., 2, 0] = st * cp
    m[..., 2, 1] = st * sp
    m[..., 2, 2] = ct
    return m


def _particle_table(
    path: Path, blocks: dict[str, dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], str]:
    """The particle rows (several coordinate blocks merged) and their kind."""
    kinds = {}
    for name, cols in blocks.items():
        if all(c in cols for c in XYZ):
            kinds[name] = "voxel"
        elif all(c in cols for c in CENTRED):
            kinds[name] = "centred"
    if not kinds:
        found = "; ".join(f"data_{k}: {', '.join(v) or '(no columns)'}" for k, v in blocks.items())
        partial = [c for v in blocks.values() for c in (*XYZ, *CENTRED) if c in v]
        hint = ""
        if partial:
            missing = [c for c in (*XYZ,) if c not in partial]
            missing5 = [c for c in CENTRED if c not in partial]
            hint = (
                f" (some coordinate columns are present; missing {', '.join(missing)} for "
                f"voxel coordinates or {', '.join(missing5)} for RELION 5)"
            )
        raise CryoGuardError(
            f"{path.name}: no data block has the coordinate columns {', '.join(XYZ)} "
            f"(voxels) or {', '.join(CENTRED)} (RELION 5){hint}. "
            f"Found {found or 'no data blocks'}"
        )
    if len(set(kinds.values())) > 1:
        raise CryoGuardError(
            f"{path.name}: blocks {', '.join('data_' + k for k in kinds)} mix voxel and "
            "RELION 5 centred coordinates; split the file"
        )
    names = list(kinds)
    return _coords._merge_coordinate_blocks(path, blocks, names), kinds[names[0]]


def _optics_per_row(
    path: Path, blocks: dict, table: dict[str, np.ndarray], label: str
) -> np.ndarray | None:
    """Per-row value of an optics-group column (None when the optics block lacks it)."""
    optics = blocks.get("optics")
    if optics is None or label not in optics:
        return None
    values = _numbers(optics[label], f"data_optics {label}", path)
    if "rlnOpticsGroup" not in optics or "rlnOpticsGroup" not in table:
        if len(set(values.tolist())) == 1:
            return np.full(len(table[next(iter(table))]), values[0])
        return None
    groups = _coords._numeric(optics["rlnOpticsGroup"], np.int64, "data_optics rlnOpticsGroup", path)
    lookup = dict(zip(groups.tolist(), values.tolist(), strict=True))
    rows = _coords._numeric(table["rlnOpticsGroup"], np.int64, "rlnOpticsGroup", path)
    missing = sorted(set(rows.tolist()) - set(lookup))
    if missing:
        raise CryoGuardError(
            f"{path.name}: particles name optics group(s) {missing[:5]} that data_optics "
            f"does not list (it lists {sorted(lookup)[:5]})"
        )
    return np.array([lookup[g] for g in rows.tolist()], dtype=np.float64)


def _one_value(path: Path, values: np.ndarray, what: str, *, whose: str = "particles",
               coordinates: str = "are in") -> float:
    """The one positive value all rows share; several raise, asking for ``voxel_size=``."""
    distinct = sorted(set(np.round(values, 9).tolist()))
    if len(distinct) > 1:
        raise CryoGuardError(
            f"{path.name}: the {whose} have {len(distinct)} different {what} "
            f"({', '.join(f'{v:g}' for v in distinct[:5])}); pass voxel_size= to choose the "
            f"voxel size the coordinates {coordinates}"
        )
    return check_float(f"{path.name}: {what}", distinct[0], minimum=0.0, strict=True)


def _column_value(path: Path, blocks: dict, table: dict, label: str) -> np.ndarray | None:
    if label in table:
        return _numbers(table[label], label, path)
    for name, cols in blocks.items():
        if label in cols and len(cols[label]) == 1:
            n = len(table[next(iter(table))])
            return np.full(n, _numbers(cols[label], f"data_{name} {label}", path)[0])
    return None


def _optics_pixel_label(path: Path, blocks: dict, table: dict) -> str:
    """The optics column the coordinates are in: ``rlnTomoTiltSeriesPixelSize`` (RELION 4/5
    tomography, no tomogram binning beside it), else ``rlnImagePixelSize`` (also Warp's)."""
    optics = blocks.get("optics") or {}
    warp = any(str(v).endswith(".tomostar") for v in table.get("rlnTomoName", [])[:50])
    relion = TS_PIXEL in optics and TOMO_BINNING not in optics and "rlnTomoName" in table
    return TS_PIXEL if relion and not warp else "rlnImagePixelSize"


def _mixed_pixel_sizes(path: Path, blocks: dict, table: dict, notes: list[str], voxel_size):
    """Rows of several pixel sizes (optics, else ``rlnPixelSize``), each in its own:
    ``(rescale, voxel_size, pixel per row)`` to ``voxel_size`` (None: refused), else Nones."""
    n = len(table[XYZ[0]])
    if not n or _coords.STAR_META_BLOCK in blocks:
        return None, None, None
    label = _optics_pixel_label(path, blocks, table)
    per_row = _optics_per_row(path, blocks, table, label)
    if per_row is None and "rlnPixelSize" in table:
        per_row, label = _numbers(table["rlnPixelSize"], "rlnPixelSize", path), "rlnPixelSize"
    distinct = [] if per_row is None else sorted(set(np.round(per_row, 9).tolist()))
    if len(distinct) < 2:
        return None, None, None
    sizes = f"{len(distinct)} pixel sizes in {label} ({', '.join(f'{v:g}' for v in distinct[:5])} A)"
    if voxel_size is None:
        raise CryoGuardError(
            f"{path.name}: the particles have {sizes}, each row in its own pixels; pass "
            f"voxel_size= (e.g. {distinct[0]:g}) to convert every row to voxels of that size")
    vs = positive_voxel_size(voxel_size, source=path.name)
    notes.append(f"{path.name}: the particles have {sizes}; each row converted from its own "
                 f"pixels to {vs:g} A voxels (voxel_size=; the same place in Angstrom)")
    return per_row / vs, vs, per_row


def _voxel_size_of_voxel_star(
    path: Path, blocks: dict, table: dict, notes: list[str]
) -> float:
    """Voxel size of RELION 3/4, Warp, pytom or cryoguard voxel coordinates."""
    n = len(table[XYZ[0]])
    meta = blocks.get(_coords.STAR_META_BLOCK)
    if meta is not None and _coords.STAR_VOXEL_SIZE in meta:
        return positive_voxel_size(str(meta[_coords.STAR_VOXEL_SIZE][0]), source=path.name)
    label = _optics_pixel_label(path, blocks, table)
    per_row = _optics_per_row(path, blocks, table, label)
    if per_row is not None and n:
        vs = _one_value(path, per_row, f"optics-group pixel sizes ({label})")
        notes.append(f"voxel size {vs:g} A from the optics group's {label}" + (
            " (RELION 4/5 tomography coordinates are in tilt-series pixels)"
            if label == TS_PIXEL else ""))
        return vs
    pixel = _column_value(path, blocks, table, "rlnPixelSize")
    if pixel is not None and n:
        vs = _one_value(path, pixel, "pixel sizes (rlnPixelSize)")
        notes.append(f"voxel size {vs:g} A from rlnPixelSize")
        return vs
    detector = _column_value(path, blocks, table, "rlnDetectorPixelSize")
    if detector is None:
        detector = _optics_per_row(path, blocks, table, "rlnDetectorPixelSize")
    magnification = _column_value(path, blocks, table, "rlnMagnification")
    if magnification is None:
        magnification = _optics_per_row(path, blocks, table, "rlnMagnification")
    if detector is not None and magnification is not None and n:
        vs = _one_value(
            path, detector * 1e4 / magnification,
            "pixel sizes (rlnDetectorPixelSize * 1e4 / rlnMagnification)",
        )
        notes.append(
            f"voxel size {vs:g} A = rlnDetectorPixelSize (micrometres) * 1e4 / rlnMagnification"
        )
        return vs
    if detector is not None and n:
        vs = _one_value(path, detector, "pixel sizes (rlnDetectorPixelSize)")
        notes.append(
            f"voxel size {vs:g} A from rlnDetectorPixelSize without rlnMagnification, read "
            "as Angstrom (as pytom-match-pick writes it)"
        )
        return vs
    ts = _column_value(path, blocks, table, TS_PIXEL)
    if ts is None:
        ts = _optics_per_row(path, blocks, table, TS_PIXEL)
    if ts is not None and n:
        pixel_size = _one_value(path, ts, f"tilt-series pixel sizes ({TS_PIXEL})")
        binning = _column_value(path, blocks, table, TOMO_BINNING)
        if binning is not None:
            b = _one_value(path, binning, f"binnings ({TOMO_BINNING})")
            notes.append(
                f"voxel size {pixel_size * b:g} A = {TS_PIXEL} {pixel_size:g} x "
                f"{TOMO_BINNING} {b:g}"
            )
            return pixel_size * b
        notes.append(f"voxel size {pixel_size:g} A from {TS_PIXEL} (no binning given)")
        return pixel_size
    notes.append(f"{path.name} does not say its voxel size: assumed 1.0 A (pass voxel_size=)")
    return 1.0


# --------------------------------------------------------------------------- tomograms


def _find_tomograms_file(opt_path: Path, entry: str) -> Path:
    """Resolve a path from an optimisation set: its folder first, then the folders above.

    RELION writes paths relative to the project folder it runs in (``Tomograms/job/
    tomograms.star``); the optimisation set lies a job folder or two below it.
    """
    candidate = Path(entry)
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise CryoGuardError(f"{opt_path.name}: rlnTomoTomogramsFile {entry} does not exist")
    tried = []
    for folder in [opt_path.parent, *opt_path.parent.parents][:6]:
        p = folder / candidate
        tried.append(str(p))
        if p.is_file():
            return p
    raise CryoGuardError(
        f"{opt_path.name}: rlnTomoTomogramsFile {entry!r} not found (looked in "
        f"{', '.join(tried[:3])}, ...)"
    )


def load_tomograms(tomograms: Any, *, source: str = "tomograms=") -> dict[str, TomogramGeometry]:
    """Tomogram geometry by name, from a ``tomograms.star``, an optimisation set or a mapping.

    Parameters
    ----------
    tomograms : str, PathLike, mapping, Tomogram or list of Tomogram
        A RELION 5 ``tomograms.star`` (``rlnTomoName``, ``rlnTomoSizeX/Y/Z`` in unbinned
        pixels, ``rlnTomoTiltSeriesPixelSize``, ``rlnTomoTomogramBinning``); an
        ``optimisation_set.star`` whose ``rlnTomoTomogramsFile`` names one; a mapping
        ``name -> (shape_zyx, voxel_size)`` of tomograms in voxels; an open
        :class:`~napari_cryoguard.io.Tomogram` (or several), or the path of a tomogram
        file (``.mrc``, ``.zarr``, ...), whose name, shape and voxel size are used (only
        the header is read).

    Returns
    -------
    dict of str -> TomogramGeometry
    """
    if _is_tomogram(tomograms):
        tomograms = [tomograms]
    if isinstance(tomograms, (list, tuple)) and tomograms and all(
        _is_tomogram(t) for t in tomograms
    ):
        return load_tomograms(
            {str(t.name): (tuple(int(v) for v in t.shape), float(t.voxel_size))
             for t in tomograms},
            source=source,
        )
    if isinstance(tomograms, (str, os.PathLike)) and _is_tomogram_file(Path(tomograms)):
        from napari_cryoguard.io.mrc import read_tomogram

        with read_tomogram(tomograms) as tomo:
            return load_tomograms(
                {str(tomo.name): (tuple(int(v) for v in tomo.shape), float(tomo.voxel_size))},
                source=source,
            )
    if isinstance(tomograms, Mapping):
        out: dict[str, TomogramGeometry] = {}
        for name, value in tomograms.items():
            try:
                shape, vs = value
            except (TypeError, ValueError) as err:
                raise CryoGuardError(
                    f"{source}: tomogram {name!r} must map to (shape_zyx, voxel_size), got "
                    f"{value!r}"
                ) from err
            shape = _shape_zyx(shape, f"{source}: tomogram {name!r} shape")
            vs = positive_voxel_size(vs, f"tomogram {name!r} voxel size", source=str(source))
            out[str(name)] = TomogramGeometry(shape[::-1] / 2.0, vs)
        return out
    if not isinstance(tomograms, (str, os.PathLike)):
        raise CryoGuardError(
            f"{source} must be a tomograms.star, an optimisation_set.star or a mapping name -> "
            f"(shape_zyx, voxel_size), got {type(tomograms).__name__}"
        )
    path = Path(tomograms)
    if not path.is_file():
        raise CryoGuardError(f"{source}: tomogram file not found: {path}")
    blocks = _coords.read_star_blocks(path)
    for cols in blocks.values():
        if "rlnTomoTomogramsFile" in cols:
            inner = _find_tomograms_file(path, str(cols["rlnTomoTomogramsFile"][0]))
            return load_tomograms(inner, source=f"{path.name} -> {inner.name}")
    table = next((c for c in blocks.values() if "rlnTomoName" in c), None)
    if table is None:
        raise CryoGuardError(
            f"{path.name} is neither a tomograms.star (no rlnTomoName column) nor an "
            "optimisation set (no rlnTomoTomogramsFile)"
        )
    missing = [c for c in (*TOMO_SIZE, TS_PIXEL) if c not in table]
    if missing:
        raise CryoGuardError(
            f"{path.name}: the tomogram table lacks {', '.join(missing)}, needed to place "
            "RELION 5 centred coordinates; add them or pass tomograms= as a mapping name -> "
            "(shape_zyx, voxel_size)"
        )
    sizes = np.stack([_numbers(table[c], c, path) for c in TOMO_SIZE], axis=1)
    pixel = _numbers(table[TS_PIXEL], TS_PIXEL, path)
    if TOMO_BINNING in table:
        binning = _numbers(table[TOMO_BINNING], TOMO_BINNING, path)
    else:
        binning = np.ones(len(pixel))
    out = {}
    for name, size, px, b in zip(table["rlnTomoName"], sizes, pixel, binning, strict=True):
        check_float(f"{path.name}: {TS_PIXEL} of {name}", px, minimum=0.0, strict=True)
        check_float(f"{path.name}: {TOMO_BINNING} of {name}", b, minimum=0.0, strict=True)
        if not np.all(np.isfinite(size)) or np.any(size <= 0):
            raise CryoGuardError(f"{path.name}: tomogram {name} has sizes {size.tolist()}")
        out[str(name)] = TomogramGeometry(size / (2.0 * b), px * b, float(px))
    return out


def _is_tomogram(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("name", "shape", "voxel_size", "data"))


def _is_tomogram_file(path: Path) -> bool:
    from napari_cryoguard.io.mrc import STACK_SUFFIXES, TOMOGRAM_SUFFIXES

    suffix = path.suffix.lower()
    return suffix in TOMOGRAM_SUFFIXES and suffix not in STACK_SUFFIXES


def tomograms_next_to(path: str | os.PathLike) -> Path | None:
    """The RELION 5 optimisation set or ``tomograms.star`` lying next to a particle file.

    Looked for in the particle file's folder, in this order: the optimisation set RELION
    writes beside a refinement's data file (``run_it025_data.star`` ->
    ``run_it025_optimisation_set.star``), ``<stem>_optimisation_set.star``,
    ``optimisation_set.star``, ``<stem>_tomograms.star``, ``tomograms.star`` (WarpTools
    ``ts_export_particles`` writes ``<name>_optimisation_set.star`` and
    ``<name>_tomograms.star`` beside ``<name>.star``). An optimisation set is taken only when
    it names a tomograms file (``rlnTomoTomogramsFile``) and, if it names a particle
    file (``rlnTomoParticlesFile``), that file has this file's name.

    Returns
    -------
    Path or None
        The file found, or None.
    """
    path = Path(path)
    stem = path.stem
    names = []
    if stem.endswith("_data"):
        names.append(f"{stem[:-5]}_optimisation_set.star")
    names += [f"{stem}_optimisation_set.star", "optimisation_set.star",
              f"{stem}_tomograms.star", "tomograms.star"]
    for name in dict.fromkeys(names):
        cand = path.parent / name
        if not cand.is_file() or cand.resolve() == path.resolve():
            continue
        if name.endswith("tomograms.star"):
            return cand
        try:
            blocks = _coords.read_star_blocks(cand)
        except CryoGuardError:
            continue
        cols = next((c for c in blocks.values() if "rlnTomoTomogramsFile" in c), None)
        if cols is None:
            continue
        particles = cols.get("rlnTomoParticlesFile")
        if particles is not None and len(particles) and Path(str(particles[0])).name != path.name:
            continue
        return cand
    return None


def _lookup(name: str, geometry: dict[str, TomogramGeometry], notes: list[str]) -> str | None:
    if name in geometry:
        return name
    key = tomo_key(name)
    candidates = [key, key[4:] if key.startswith("rec_") else "rec_" + key]
    by_key = {tomo_key(k): k for k in geometry}
    for i, cand in enumerate(candidates):
        if cand in by_key:
            found = by_key[cand]
            if i == 1:
                notes.append(
                    f"particles of {name!r} placed with tomogram {found!r} (pytom-match-pick / "
                    "RELION 5 'rec_' prefix)"
                )
            return found
    return None


def _resolve(path: Path, names: list[str], geometry: dict[str, TomogramGeometry],
             notes: list[str], why: str) -> dict[str, str]:
    """Each tomogram name of the file -> its key in ``geometry`` (:func:`_lookup`); names
    not found raise, listing them and what ``geometry`` has, and ``why`` they are needed."""
    resolved = {nm: _lookup(nm, geometry, notes) for nm in names}
    missing = [nm for nm, g in resolved.items() if g is None]
    if missing:
        raise CryoGuardError(
            f"{path.name}: tomogram(s) {', '.join(repr(m) for m in missing[:8])} are not in "
            f"tomograms= (it has {', '.join(repr(k) for k in list(geometry)[:8]) or 'none'}); "
            f"{why}"
        )
    return resolved  # type: ignore[return-value]


# --------------------------------------------------------------------------- reading


def read_star_picks(
    path: str | os.PathLike,
    *,
    voxel_size: float | None = None,
    tomograms: Any = None,
    apply_origins: bool = True,
    normalized_coords: bool | None = None,
) -> Picks:
    """Read a RELION 3/4/5, Warp, pytom-match-pick or cryoguard particle STAR file.

    A STOPGAP motive list (``data_stopgap_motivelist``) is read by
    :func:`~napari_cryoguard.io.stopgap.read_stopgap_picks` instead (``apply_origins``
    is then its ``apply_shifts``).

    Parameters
    ----------
    path : str or PathLike
        The STAR file; see the module docstring for the conventions.
    voxel_size : float, optional
        Angstrom per voxel of the returned coordinates. For voxel coordinates it
        overrides what the file says; RELION 5 centred coordinates are converted to it
        (default: the tomograms' own voxel size, which must then be one value).
    tomograms : str, PathLike or mapping, optional
        Needed for RELION 5 centred coordinates: see :func:`load_tomograms`. When it is
        not given, the optimisation set or ``tomograms.star`` lying next to the file is
        used (:func:`tomograms_next_to`), with a note naming it.
    apply_origins : bool
        Subtract ``rlnOrigin*`` shifts from the coordinates (default, RELION's
        convention); ``False`` keeps them as features.
    normalized_coords : bool, optional
        Voxel coordinates are fractions of the tomogram size (WarpTools
        ``threshold_picks`` output). Default: detected, when every ``rlnCoordinate``
        lies in [0, 1] and not all are whole numbers (files of this package excepted).
        They need ``tomograms=``.

    Returns
    -------
    Picks
        ZYX voxel coordinates; ``notes`` lists what was converted or assumed.
    """
    path = pick_file(path)
    if voxel_size is not None:
        voxel_size = positive_voxel_size(voxel_size, source=path.name)
    blocks = {k: v for k, v in _coords.read_star_blocks(path).items() if v}
    from napari_cryoguard.io import stopgap  # a .star may be a STOPGAP motive list

    if stopgap.stopgap_block(blocks) is not None:
        return stopgap.read_stopgap_picks(path, voxel_size=voxel_size, blocks=blocks,
                                          apply_shifts=apply_origins)
    table, kind = _particle_table(path, blocks)
    notes: list[str] = []
    n = len(table[next(iter(table))])
    used: set[str] = set()

    tomo_names = None
    if _coords.STAR_TOMO in table:
        tomo_names = np.asarray(table[_coords.STAR_TOMO], dtype=str)
        used.add(_coords.STAR_TOMO)
    elif "rlnMicrographName" in table:
        raw = np.asarray(table["rlnMicrographName"], dtype=str)
        tomo_names = np.array([tomo_key(s) for s in raw.tolist()], dtype=str)
        if n and np.any(tomo_names != raw):
            notes.append(
                "tomogram names taken from rlnMicrographName without folders and suffixes "
                f"({str(raw[0])!r} -> {str(tomo_names[0])!r})"
            )
    if tomo_names is not None and any(s.startswith("rec_") for s in tomo_names.tolist()):
        notes.append(
            "tomogram names start with 'rec_' (pytom-match-pick names RELION 5 "
            "reconstructions rec_<tilt series>); kept as written"
        )

    rescale = None
    if kind == "centred":
        coords_xyz, vs = _centred_to_voxels(path, table, tomo_names, tomograms, voxel_size, notes)
        used.update(CENTRED)
        pixel_per_row = np.full(n, vs)
    else:
        coords_xyz = np.stack([_numbers(table[c], c, path) for c in XYZ], axis=1) if n else (
            np.zeros((0, 3))
        )
        used.update(XYZ)
        if normalized_coords is None:
            normalized_coords = (
                n > 0 and _coords.STAR_META_BLOCK not in blocks
                and bool(np.all((coords_xyz >= 0.0) & (coords_xyz <= 1.0)))
                and not bool(np.all(coords_xyz == np.round(coords_xyz)))
            )
        if normalized_coords:
            coords_xyz, vs = _normalized_to_voxels(
                path, coords_xyz, tomo_names, tomograms, voxel_size, notes
            )
        elif (mixed := _mixed_pixel_sizes(path, blocks, table, notes, voxel_size))[0] is not None:
            rescale, vs, pixel_per_row = mixed
        elif voxel_size is None:
            vs = _voxel_size_of_voxel_star(path, blocks, table, notes)
        else:
            vs = voxel_size
            notes.append(f"voxel size {vs:g} A as given (voxel_size=), not read from the file")
        if rescale is None:
            pixel_per_row = np.full(n, vs)

    if apply_origins:
        shift_xyz, used_cols = _origin_shifts(path, table, kind, pixel_per_row, coords_xyz, notes)
        if used_cols:
            coords_xyz = coords_xyz - shift_xyz
            used.update(used_cols)
    if rescale is not None:  # rows in pixels of their own optics group -> one voxel size
        coords_xyz = coords_xyz * rescale[:, None]
    if kind == "centred" and _coords.STAR_META_BLOCK in blocks and "rlnOpticsGroup" in table:
        used.add("rlnOpticsGroup")  # written by write_picks(convention="relion5")
    coords_zyx = coords_xyz[:, ::-1].copy() if n else np.zeros((0, 3))
    return _coords.star_picks_from_table(
        path, blocks, table, coords_zyx, used,
        voxel_size=vs, tomo_names=tomo_names, notes=notes,
    )


def _normalized_to_voxels(path, frac_xyz, tomo_names, tomograms, voxel_size, notes):
    """Warp's normalised coordinates (fractions of the tomogram) to voxels (XYZ)."""
    n = len(frac_xyz)
    if tomograms is None:
        raise CryoGuardError(
            f"{path.name}: every rlnCoordinateX/Y/Z lies between 0 and 1: these are coordinates "
            "normalised to the tomogram size (as WarpTools threshold_picks writes them), not "
            "voxels. Pass tomograms= a mapping name -> (shape_zyx, voxel_size) (or a "
            "tomograms.star) to convert them, or normalized_coords=False if they really are "
            "voxels"
        )
    geometry = load_tomograms(tomograms)
    if tomo_names is None:
        if len(geometry) != 1:
            raise CryoGuardError(
                f"{path.name}: normalised coordinates without a tomogram name column need "
                f"exactly one tomogram in tomograms= (it has {len(geometry)})"
            )
        tomo_names = np.full(n, next(iter(geometry)), dtype=object).astype(str)
    names = list(dict.fromkeys(tomo_names.tolist()))
    resolved = _resolve(path, names, geometry, notes,
                        "their sizes are needed to convert normalised coordinates")
    span = np.zeros((n, 3))
    tvs = np.zeros(n)
    for i, nm in enumerate(tomo_names.tolist()):
        g = geometry[resolved[nm]]
        span[i] = 2.0 * g.centre_xyz  # the tomogram's size in its voxels
        tvs[i] = g.voxel_size
    voxels, vs = _to_one_voxel_size(path, frac_xyz * span, tvs, voxel_size)
    notes.append(
        f"{path.name}: coordinates normalised to [0, 1] (WarpTools template matching) "
        f"converted to voxels of {vs:g} A: voxel = fraction x tomogram size in voxels"
    )
    return voxels, vs


def _centred_to_voxels(path, table, tomo_names, tomograms, voxel_size, notes):
    n = len(table[CENTRED[0]])
    if tomo_names is None:
        raise CryoGuardError(
            f"{path.name}: RELION 5 centred coordinates need rlnTomoName to know each "
            "particle's tomogram; the file has no rlnTomoName column"
        )
    names = list(dict.fromkeys(tomo_names.tolist()))
    found = None
    if tomograms is None:
        found = tomograms_next_to(path)
    if tomograms is None and found is None:
        shown = ", ".join(repr(s) for s in names[:8]) + (", ..." if len(names) > 8 else "")
        raise CryoGuardError(
            f"{path.name}: RELION 5 centred coordinates ({', '.join(CENTRED)}) of tomogram(s) "
            f"{shown} need each tomogram's size and pixel size, and no optimisation set or "
            "tomograms.star lies next to the file: pass tomograms= a "
            "tomograms.star, an optimisation_set.star, or a mapping name -> "
            "(shape_zyx, voxel_size)"
        )
    if found is not None:
        try:
            geometry = load_tomograms(found, source=found.name)
        except CryoGuardError as err:
            raise CryoGuardError(
                f"{path.name}: tomograms= not given, and {found.name} found next to it could "
                f"not be used: {err}"
            ) from err
        notes.append(
            f"{path.name}: tomograms= not given; tomogram sizes and pixel sizes taken from "
            f"{found.name} found next to it ({found})"
        )
    else:
        geometry = load_tomograms(tomograms)
    resolved = _resolve(path, names, geometry, notes, "give their size and pixel size")
    centred = np.stack([_numbers(table[c], c, path) for c in CENTRED], axis=1) if n else (
        np.zeros((0, 3))
    )
    centre = np.zeros((n, 3))
    tvs = np.zeros(n)
    rows = tomo_names.tolist()
    for i, nm in enumerate(rows):
        g = geometry[resolved[nm]]
        centre[i] = g.centre_xyz
        tvs[i] = g.voxel_size
    voxels = centred / tvs[:, None] + centre if n else np.zeros((0, 3))
    if voxel_size is None and n == 0:
        vs = next(iter(geometry.values())).voxel_size if geometry else 1.0
    else:
        voxels, vs = _to_one_voxel_size(path, voxels, tvs, voxel_size)
    notes.append(
        f"RELION 5 centred Angstrom coordinates converted to voxels of {vs:g} A: voxel = "
        "centred / voxel size + tomogram centre (rlnTomoSize / (2 x binning))"
    )
    return voxels, vs


def _origin_shifts(path, table, kind, pixel_per_row, coords_xyz, notes):
    """Origin shifts in the coordinates' voxels (XYZ) and the columns they came from."""
    n = len(coords_xyz)
    shift = np.zeros((n, 3))
    used: list[str] = []
    have_px = all(c in table for c in ORIGIN_PX) and kind != "centred"
    have_a = all(c in table for c in ORIGIN_A)
    partial = [c for c in (*ORIGIN_PX, *ORIGIN_A) if c in table]
    if kind == "centred" and any(c in table for c in ORIGIN_PX):
        notes.append(
            "rlnOriginX/Y/Z (pixels) in a RELION 5 centred file are kept as features "
            "(RELION 5 uses rlnOriginX/Y/ZAngst)"
        )
    if not have_px and not have_a:
        if partial:
            notes.append(
                f"origin column(s) {', '.join(partial)} without all three axes kept as features"
            )
        return shift, used
    rotation = None
    if all(c in table for c in SUBTOMO_ANGLES):
        angles = [_numbers(table[c], c, path) for c in SUBTOMO_ANGLES]
        rotation = relion_euler_matrix(*angles)
    if have_px:
        o = np.stack([_numbers(table[c], c, path) for c in ORIGIN_PX], axis=1)
        if rotation is not None:
            o = np.einsum("nij,nj->ni", rotation, o)
        shift += o
        used.extend(ORIGIN_PX)
    if have_a:
        o = np.stack([_numbers(table[c], c, path) for c in ORIGIN_A], axis=1)
        if rotation is not None:
            o = np.einsum("nij,nj->ni", rotation, o)
        # a shift of o Angstrom is o / voxel_size voxels of the returned coordinates
        shift += o / pixel_per_row[:, None]
        used.extend(ORIGIN_A)
    if np.any(shift != 0):
        notes.append(
            f"origin shifts {', '.join(used)} applied: position = coordinate - origin"
            + (" (rotated by rlnTomoSubtomogramRot/Tilt/Psi)" if rotation is not None else "")
            + "; pass apply_origins=False to keep them as features"
        )
    return shift, used


# --------------------------------------------------------------------------- writing


def relion5_columns(
    picks: Picks,
    tomo_names: np.ndarray | None,
    *,
    tomograms: Any = None,
    shape: tuple[int, int, int] | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[str]], np.ndarray]:
    """RELION 5 particle columns (centred Angstrom, optics group) and the optics table.

    The inverse of the reading rule: ``centred = x * picks.voxel_size - centre * v``,
    where ``centre`` (voxels) and ``v`` (Angstrom per voxel) are the tomogram's, from
    ``tomograms`` or from ``shape`` at the picks' voxel size.
    """
    n = len(picks)
    if tomograms is None and shape is None:
        raise CryoGuardError(
            "convention 'relion5' needs each tomogram's shape to centre the coordinates: pass "
            "tomograms= (a tomograms.star, an optimisation set or name -> (shape_zyx, "
            "voxel_size)) or shape=(z, y, x)"
        )
    if tomograms is not None:
        geometry = load_tomograms(tomograms)
    else:
        geometry = None
        shp = _shape_zyx(shape, "shape")
        single = TomogramGeometry(shp[::-1] / 2.0, picks.voxel_size)
    if tomo_names is None:
        if geometry is not None and len(geometry) == 1:
            tomo_names = np.full(n, next(iter(geometry)), dtype=object).astype(str)
        else:
            raise CryoGuardError(
                "convention 'relion5' needs rlnTomoName: the picks name no tomogram; pass "
                "tomo_name= or picks with tomo_names"
            )
    centre = np.zeros((n, 3))
    tvs = np.zeros(n)
    ts_pixel = np.zeros(n)
    notes: list[str] = []
    for i, name in enumerate(tomo_names.tolist()):
        if geometry is None:
            g = single
        else:
            key = _lookup(name, geometry, notes)
            if key is None:
                raise CryoGuardError(
                    f"tomogram {name!r} of the picks is not in tomograms= (it has "
                    f"{', '.join(repr(k) for k in list(geometry)[:8]) or 'none'})"
                )
            g = geometry[key]
        centre[i] = g.centre_xyz
        tvs[i] = g.voxel_size
        ts_pixel[i] = g.tilt_series_pixel if g.tilt_series_pixel is not None else g.voxel_size
    centred = picks.coords[:, ::-1] * picks.voxel_size - centre * tvs[:, None]
    pixels = list(dict.fromkeys(ts_pixel.tolist()))
    group = {p: i + 1 for i, p in enumerate(pixels)}
    cols = {
        CENTRED[0]: _coords._format_column(centred[:, 0], "x", star=True),
        CENTRED[1]: _coords._format_column(centred[:, 1], "y", star=True),
        CENTRED[2]: _coords._format_column(centred[:, 2], "z", star=True),
        "rlnOpticsGroup": [str(group[p]) for p in ts_pixel.tolist()],
    }
    optics = {
        "rlnOpticsGroup": [str(group[p]) for p in pixels],
        "rlnOpticsGroupName": [f"opticsGroup{group[p]}" for p in pixels],
        TS_PIXEL: [repr(float(p)) for p in pixels],
    }
    return cols, optics, tomo_names


def _to_one_voxel_size(path: Path, voxels: np.ndarray, tvs: np.ndarray,
                       voxel_size: float | None) -> tuple[np.ndarray, float]:
    """Rows in voxels of their own tomogram (``tvs`` Å each) as voxels of one size: the
    requested ``voxel_size``, else the tomograms' common one (an error if they differ)."""
    if voxel_size is not None:
        return voxels * (tvs[:, None] / voxel_size), float(voxel_size)
    _one_value(path, tvs, "voxel sizes (A)", whose="tomograms", coordinates="are converted to")
    return voxels, float(tvs[0])
