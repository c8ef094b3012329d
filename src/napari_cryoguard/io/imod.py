"""IMOD models (``.mod``): every point of every contour is one pick.

Read with the ``imodmodel`` library (``pip install napari-cryoguard[formats]``).

Conventions implemented here:

* Model points are x, y, z in pixels of the image the model was made on. 3dmod puts
  x = y = 0 at the *edge* of the first pixel and z = 0 at the *centre* of the first
  section, so the 0-based voxel index is ``(z, y - 0.5, x - 0.5)``. A note says so;
  ``pixel_centres=False`` keeps the raw values. Sources: imodmodel's
  ``docs/z_coordinate_system_note.md`` (github.com/teamtomo/imodmodel, commit
  577c952b): "3dmod places (0,0,0) at the bottom left corner in XY planes, but in the
  center of the first Z-plane"; and PEET's MATLAB helper ``index2ImodPoints.m`` by
  IMOD/PEET's Rick Gaudette (github.com/rgaudette/src,
  ``Matlab/VolumeAveraging/index2ImodPoints.m``, commit 7b262fa2): IMOD point = MATLAB
  index - (0.5, 0.5, 1), "the center of an IMOD voxel is on 1/2 index values for X and
  Y and unit index values for Z"; with 0-based index = MATLAB index - 1 that is
  x = i + 0.5, y = j + 0.5, z = k. (The CryoET Data Portal's ingestion takes model points
  as voxel indices unchanged, so Portal annotations made from IMOD models sit half a
  voxel higher in x and y than this reader puts the same model.)
* Labels are the object names: each distinct name, in file order, is one class (objects
  sharing a name share a label); an unnamed object is ``object <n>`` (1-based, as 3dmod
  numbers them). The 1-based object number is kept as the feature ``object`` and the
  contour index within its object as ``contour``. The contour index within its object is kept as the
  feature ``contour``, the 1-based object number as ``object``.
* Before ``imodmodel`` parses the file, its chunks are walked with bounds checks: a count
  the file cannot hold (a contour of 2**30 points in a 500-byte file) or a file cut
  before its ``IEOF`` marker is refused, since the library would build gigabytes or loop.
* Voxel size: ``voxel_size=`` when given, else the model header's ``pixelsize`` with its
  ``units`` (0 = pixels, i.e. unknown; -10 = Angstrom, -9 = nm, -6 = micron, ...) when
  that says a physical size, else 1.0 with a note. A header ``zscale`` other than 1 is
  named in a note (the z values are left as section indices).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io._reading import optional_library, read_limited
from napari_cryoguard.io.picks import Picks, positive_voxel_size

MAX_FILE_BYTES = 256 * 1024**2
MAX_CLASSES = 100_000

# IMOD model header ``units``: the power of ten of a metre (0 = pixels, no physical size)
_UNIT_EXPONENT_TO_ANGSTROM = {
    -12: 1e-2, -10: 1.0, -9: 10.0, -6: 1e4, -3: 1e7, -2: 1e8, 1: 1e10, 3: 1e13,
}
_UNIT_WORDS = {
    -12: "pm", -10: "Angstrom", -9: "nm", -6: "micron", -3: "mm", -2: "cm", 1: "m", 3: "km",
}


# byte sizes of the fixed parts of an IMOD model file (big endian, see IMOD's binary spec)
_ID = 8
_MODEL_HEADER = struct.calcsize(">128s4iI4i6f3i2ifi i3f".replace(" ", ""))
_OBJECT_HEADER = struct.calcsize(">64s16IiIi i3fi8B2i".replace(" ", ""))
_CONTOUR_HEADER = 16  # psize, flags, time, surf
_MESH_HEADER = 16  # vsize, lsize, flags, time (short), surf (short)
_FIXED_CHUNKS = {"IMAT": 4 + 16, "MINX": 4 + 72, "SLAN": 4 + 60}  # size word + payload
_STORAGE_CHUNKS = ("MOST", "OBST", "COST", "MEST")


def _check_structure(path: Path, raw: bytes) -> None:
    """Walk the chunks of an IMOD model and refuse counts the file cannot hold.

    ``imodmodel`` trusts every count in the file: a contour that claims 2**31 points
    builds a format string of gigabytes, and a file cut before its ``IEOF`` marker makes
    it loop for ever. This walk follows the same chunks with bounds checks, so that the
    library only ever sees a file whose counts fit in its size.
    """
    size = len(raw)
    pos = _ID + _MODEL_HEADER
    if size < pos + 4:
        raise CryoGuardError(
            f"{path.name}: an IMOD model of {size} bytes is too short for its header"
        )
    objects = contours = meshes = 0
    last_psize = 0

    def need(n: int, what: str) -> None:
        if n < 0 or pos + n > size:
            raise CryoGuardError(
                f"{path.name}: {what} at byte {pos} needs {n} bytes, the file has {size - pos} "
                "left; the model is cut or corrupt"
            )

    def word(signed: bool = True) -> int:
        need(4, "a count")
        return int.from_bytes(raw[pos : pos + 4], "big", signed=signed)

    while True:
        need(4, "a chunk tag")
        tag = raw[pos : pos + 4].decode("latin-1")
        pos += 4
        if tag == "IEOF":
            return
        if tag == "OBJT":
            need(_OBJECT_HEADER, "an object header")
            pos += _OBJECT_HEADER
            objects += 1
            contours = meshes = 0
        elif tag in ("CONT", "MESH", "IMAT", "OBST") and not objects:
            raise CryoGuardError(f"{path.name}: a {tag} chunk comes before any object")
        elif tag == "CONT":
            need(_CONTOUR_HEADER, "a contour header")
            last_psize = word()
            pos += _CONTOUR_HEADER
            need(12 * last_psize, f"a contour of {last_psize} points")
            pos += 12 * last_psize
            contours += 1
        elif tag == "MESH":
            need(_MESH_HEADER, "a mesh header")
            vsize = word()
            lsize = int.from_bytes(raw[pos + 4 : pos + 8], "big", signed=True)
            pos += _MESH_HEADER
            need(12 * vsize, f"a mesh of {vsize} vertices")
            pos += 12 * vsize
            need(4 * lsize, f"a mesh of {lsize} indices")
            pos += 4 * lsize
            meshes += 1
        elif tag in _FIXED_CHUNKS:
            need(_FIXED_CHUNKS[tag], f"a {tag} chunk")
            pos += _FIXED_CHUNKS[tag]
        elif tag in _STORAGE_CHUNKS:
            if (tag == "COST" and not contours) or (tag == "MEST" and not meshes):
                raise CryoGuardError(f"{path.name}: a {tag} chunk has nothing to belong to")
            n = word()
            if n % 12:
                raise CryoGuardError(f"{path.name}: {tag} chunk size {n} is not a multiple of 12")
            pos += 4
            need(n, f"a {tag} chunk")
            pos += n
        elif tag == "SIZE":
            if not contours:
                raise CryoGuardError(f"{path.name}: a SIZE chunk comes before any contour")
            need(4 + 4 * last_psize, "a SIZE chunk")
            pos += 4 + 4 * last_psize
        else:
            n = word(signed=False)
            pos += 4
            need(n, f"a {tag!r} chunk")
            pos += n


def _outside_notes(path: Path, xyz: np.ndarray, header: Any, minx: Any) -> list[str]:
    """Notes for points outside the image the model was saved on (``xmax ymax zmax`` of
    the header; x, y in [0, max], z in [-0.5, max - 0.5]) and for 3dmod's model-to-image
    rotation (``MINX`` ``crot``), which this reader does not apply."""
    out = []
    size = [int(getattr(header, k, 0) or 0) for k in ("xmax", "ymax", "zmax")]
    if len(xyz) and all(v > 0 for v in size):
        lo, hi = np.array([0.0, 0.0, -0.5]), np.array(size, dtype=float) - [0.0, 0.0, 0.5]
        bad = int(np.sum(np.any((xyz < lo) | (xyz > hi), axis=1)))
        if bad:
            out.append(f"{path.name}: {bad} of {len(xyz)} points lie outside the image the "
                       f"model was saved on ({size[0]} x {size[1]} x {size[2]}, x y z)")
    crot = np.asarray(getattr(minx, "crot", (0.0, 0.0, 0.0)) or (0.0, 0.0, 0.0), dtype=float)
    if minx is not None and np.all(np.isfinite(crot)) and np.any(np.abs(crot) > 1e-6):
        out.append(f"{path.name}: the model was saved on an image rotated by "
                   f"{', '.join(f'{v:g}' for v in crot)} degrees (3dmod MINX crot, x y z); "
                   "points are read as stored, not rotated back")
    return out


def read_imod_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                    tomograms: Any = None, pixel_centres: bool = True) -> Picks:
    """Read the points of an IMOD model as voxel picks.

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`~napari_cryoguard.io.read_picks` (``tomograms`` is not used): the
        ``.mod`` file; ``voxel_size`` overrides the model header.
    pixel_centres : bool
        Shift x and y by -0.5 so that pixel centres are at integers (default).

    Returns
    -------
    Picks
        ZYX voxel coordinates, labels per object, class names, features ``object`` and
        ``contour``.

    Raises
    ------
    CryoGuardError
        ``imodmodel`` missing, not an IMOD model, unreadable, non-finite points.
    """
    del tomograms
    path = Path(path)
    imodmodel = optional_library("imodmodel")
    raw = read_limited(path, MAX_FILE_BYTES, "a model")
    if not raw.startswith(b"IMOD"):
        raise CryoGuardError(f"{path.name} is not an IMOD model (it does not start with 'IMOD')")
    _check_structure(path, raw)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = imodmodel.ImodModel.from_file(path)
    except Exception as err:  # the binary parser raises many kinds on broken files
        raise CryoGuardError(f"{path.name}: could not parse the IMOD model: {err}") from err
    notes: list[str] = []
    xyz_parts, labels_parts, contour_parts, object_parts = [], [], [], []
    class_names: list[str] = []
    for i, obj in enumerate(model.objects):
        name = (obj.header.name or "").strip() or f"object {i + 1}"
        for j, contour in enumerate(obj.contours):
            pts = np.asarray(contour.points, dtype=np.float64).reshape(-1, 3)
            if not len(pts):
                continue
            if name not in class_names:
                if len(class_names) >= MAX_CLASSES:
                    raise CryoGuardError(f"{path.name}: more than {MAX_CLASSES} named objects")
                class_names.append(name)
            xyz_parts.append(pts)
            labels_parts.append(np.full(len(pts), class_names.index(name), np.int64))
            contour_parts.append(np.full(len(pts), j, np.int64))
            object_parts.append(np.full(len(pts), i + 1, np.int64))
    xyz = np.concatenate(xyz_parts) if xyz_parts else np.zeros((0, 3))
    if not np.isfinite(xyz).all():
        raise CryoGuardError(f"{path.name}: the model holds non-finite points")
    coords = xyz[:, ::-1].copy()
    if pixel_centres:
        coords[:, 1:] -= 0.5
        notes.append(
            f"{path.name}: IMOD x, y count from the pixel edge and z from the first section's "
            "centre; voxel index = (z, y - 0.5, x - 0.5)"
        )
    header = model.header
    notes.extend(_outside_notes(path, xyz, header, getattr(model, "minx", None)))
    zscale = float(getattr(header, "zscale", 1.0) or 1.0)
    if not np.isclose(zscale, 1.0):
        notes.append(
            f"{path.name}: the model header has zscale {zscale:g}; z kept as section indices"
        )
    if voxel_size is not None:
        voxel_size = positive_voxel_size(voxel_size)
    else:
        units = int(getattr(header, "units", 0) or 0)
        pixsize = float(getattr(header, "pixelsize", 0.0) or 0.0)
        if units in _UNIT_EXPONENT_TO_ANGSTROM and np.isfinite(pixsize) and pixsize > 0:
            voxel_size = pixsize * _UNIT_EXPONENT_TO_ANGSTROM[units]
            notes.append(
                f"{path.name}: voxel size {voxel_size:g} A from the model header "
                f"(pixel size {pixsize:g} {_UNIT_WORDS[units]})"
            )
        else:
            voxel_size = 1.0
            notes.append(
                f"{path.name}: the model header gives no physical pixel size (units = pixels); "
                "assumed 1.0 Angstrom (pass voxel_size=)"
            )
    return Picks(
        coords=coords,
        labels=np.concatenate(labels_parts) if labels_parts else np.zeros(0, np.int64),
        class_names=class_names,
        features={
            "object": np.concatenate(object_parts) if object_parts else np.zeros(0, np.int64),
            "contour": np.concatenate(contour_parts) if contour_parts else np.zeros(0, np.int64),
        },
        voxel_size=float(voxel_size),
        notes=notes,
    )
