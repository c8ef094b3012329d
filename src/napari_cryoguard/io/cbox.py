"""crYOLO ``.cbox`` box files and crYOLO / TomoTwin ``.coords`` files.

``.cbox`` is a STAR-like file: a ``data_cryolo`` block whose loop has ``_CoordinateX``,
``_CoordinateY``, ``_CoordinateZ``, ``_Width``, ``_Height``, ``_Depth``, ``_EstWidth``,
``_EstHeight``, ``_Confidence``, ``_NumBoxes`` (and ``_Angle``, ``_filamentid`` in newer
versions), ``<NA>`` for missing values. Conventions implemented here:

* ``_CoordinateX`` / ``_CoordinateY`` are the **lower-left corner** of the box (crYOLO
  and the converters of Scipion and pyp write centre - size / 2), so the particle centre
  is ``X + Width / 2``, ``Y + Height / 2``. ``_CoordinateZ`` is the centre's slice. A note
  says so; ``box_corner=False`` reads X, Y as centres. Checked against the reader and
  writer of crYOLO's own authors, napari-boxmanager (github.com/MPI-Dortmund/
  napari-boxmanager, ``src/box_manager/io/cbox.py``, commit f8b254ec): its reader puts
  the centre at ``_CoordinateX + _Width / 2``, ``_CoordinateY + _Height / 2`` and takes
  ``_CoordinateZ`` as is, its writer stores ``x - boxsize / 2``, ``y - boxsize / 2``
  and ``z``; the box size is ``_Width`` / ``_Height`` (``_Depth`` in 3-D), in voxels.
  (Only its filament vertices, in a separate ``data_filament_vertices`` block that
  this reader does not read, are stored as centres.)
* Coordinates are voxels of the tomogram crYOLO picked on, taken as 0-based (neither
  crYOLO's cbox nor napari-boxmanager adds or removes 1: the values index the numpy
  array of the tomogram directly).
* ``_Confidence`` becomes the score (a file whose confidences are all ``<NA>``, as
  napari-boxmanager writes manual picks, gets no scores, with a note); the other
  columns become features (``width``, ``height``, ``depth``, ``est_width``, ... as
  floats, NaN for ``<NA>``).
* crYOLO writes one file per tomogram, named after it, so ``tomo_names`` is the file
  name without suffix (said in a note; ``tomo_name=`` overrides).
* A cbox without z (2-D picking) is refused.

``.coords`` is whitespace-separated ``x y z`` per line (centres, voxels, 0-based, no
header), as TomoTwin and crYOLO write them; further columns become features.

Neither format stores a voxel size: ``voxel_size=`` or 1.0 with a note.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io._reading import read_limited_text
from napari_cryoguard.io.picks import Picks, voxel_size_or_assumed
from napari_cryoguard.io.table import read_table_picks

MAX_FILE_BYTES = 1024**3

_FEATURE_NAMES = {
    "width": "width", "height": "height", "depth": "depth", "estwidth": "est_width",
    "estheight": "est_height", "numboxes": "num_boxes", "angle": "angle",
    "filamentid": "filament_id",
}
_NA = {"<na>", "na", "nan", "none", ""}


def _cbox_loop(path: Path, text: str) -> tuple[list[str], list[list[str]]]:
    """Column labels and rows of the ``data_cryolo`` loop."""
    block = None
    labels: list[str] = []
    rows: list[list[str]] = []
    in_loop = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            if block == "cryolo" and labels:
                break
            block = line[5:].strip()
            in_loop = False
            continue
        if block != "cryolo":
            continue
        if line.startswith("loop_"):
            in_loop = True
            continue
        if line.startswith("_"):
            if rows:
                raise CryoGuardError(
                    f"{path.name}: a column label follows data rows in data_cryolo"
                )
            labels.append(line.split()[0][1:])
            continue
        if in_loop and labels:
            rows.append(line.split())
    if not labels:
        raise CryoGuardError(
            f"{path.name}: no data_cryolo loop with columns; not a crYOLO cbox file"
        )
    return labels, rows


def _floats(path: Path, values: list[str], what: str, allow_na: bool) -> np.ndarray:
    out = np.empty(len(values))
    for i, v in enumerate(values):
        if v.lower() in _NA:
            if not allow_na:
                raise CryoGuardError(f"{path.name}: row {i + 1} has no {what} ({v!r})")
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except ValueError as err:
            raise CryoGuardError(f"{path.name}: row {i + 1}: {what} {v!r} is not a number") from err
    return out


def read_cbox_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                    tomograms: Any = None, box_corner: bool = True,
                    tomo_name: str | None = None) -> Picks:
    """Read a crYOLO ``.cbox`` file (3-D) as voxel picks.

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`read_coords_picks`: the ``.cbox`` file.
    box_corner : bool
        X, Y are the lower-left box corner (crYOLO's convention, default); False reads
        them as centres.
    tomo_name : str, optional
        Tomogram name for every row; default the file name without suffix.

    Returns
    -------
    Picks
        ZYX voxel coordinates of the box centres, scores (confidence), features.

    Raises
    ------
    CryoGuardError
        Unreadable file, no ``data_cryolo`` loop, missing X/Y/Z columns, 2-D boxes (no Z),
        ragged rows, non-numeric values.
    """
    del tomograms
    path = Path(path)
    text = read_limited_text(path, MAX_FILE_BYTES, "a box file")
    labels, rows = _cbox_loop(path, text)
    for i, r in enumerate(rows):
        if len(r) != len(labels):
            raise CryoGuardError(
                f"{path.name}: row {i + 1} has {len(r)} values, the loop has {len(labels)} columns"
            )
    norm = {re.sub(r"[^0-9a-z]", "", lab.lower()): j for j, lab in enumerate(labels)}
    if len(norm) != len(labels):
        raise CryoGuardError(f"{path.name}: a column label appears twice in data_cryolo")
    missing = [a for a in ("coordinatex", "coordinatey", "coordinatez") if a not in norm]
    if missing:
        raise CryoGuardError(
            f"{path.name}: data_cryolo lacks {', '.join('_' + _label_case(m) for m in missing)}; "
            f"found {', '.join('_' + lab for lab in labels)}"
        )
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in labels]

    def column(key: str, allow_na: bool) -> np.ndarray:
        return _floats(path, list(cols[norm[key]]), labels[norm[key]], allow_na)

    x = column("coordinatex", False)
    y = column("coordinatey", False)
    try:
        z = column("coordinatez", False)
    except CryoGuardError as err:
        raise CryoGuardError(
            f"{path.name}: a 2-D cbox (no _CoordinateZ values) cannot place picks in a tomogram"
        ) from err
    notes: list[str] = []
    features: dict[str, np.ndarray] = {}
    for key, name in _FEATURE_NAMES.items():
        if key in norm:
            features[name] = column(key, True)
    if box_corner:
        w = features.get("width")
        h = features.get("height")
        if w is None or h is None or not (np.isfinite(w).all() and np.isfinite(h).all()):
            raise CryoGuardError(
                f"{path.name}: _Width and _Height are needed to find box centres from the "
                "lower-left corners (or pass box_corner=False)"
            )
        x, y = x + w / 2, y + h / 2
        notes.append(
            f"{path.name}: crYOLO X, Y are lower-left box corners; centre = X + Width/2, "
            "Y + Height/2 (Z is the centre slice)"
        )
    coords = np.stack([z, y, x], axis=1) if rows else np.zeros((0, 3))
    scores = column("confidence", True) if "confidence" in norm else None
    if scores is not None and len(scores) and np.isnan(scores).all():
        scores = None
        notes.append(f"{path.name}: every _Confidence is <NA>; the picks carry no scores")
    name = tomo_name if tomo_name is not None else path.stem
    if tomo_name is None:
        notes.append(f"{path.name}: tomogram name {name!r} taken from the file name")
    return Picks(
        coords=coords,
        scores=scores,
        tomo_names=np.full(len(coords), name, dtype=object).astype(str),
        features=features,
        voxel_size=voxel_size_or_assumed(voxel_size, path.name, notes),
        notes=notes,
    )


def _label_case(key: str) -> str:
    return {"coordinatex": "CoordinateX", "coordinatey": "CoordinateY"}.get(key, "CoordinateZ")


def read_coords_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                      tomograms: Any = None, tomo_name: str | None = None) -> Picks:
    """Read a crYOLO / TomoTwin ``.coords`` file (``x y z`` per line, voxels) as picks.

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`~napari_cryoguard.io.read_picks` (``tomograms`` is not used): the
        ``.coords`` file, whose voxel size is not recorded (without ``voxel_size``, 1.0
        Angstrom is assumed with a note).
    tomo_name : str, optional
        Tomogram name for every row; default the file name without suffix.

    Returns
    -------
    Picks
        ZYX voxel coordinates (x y z reversed), further columns as features.
    """
    del tomograms
    path = Path(path)
    notes: list[str] = []
    vs = voxel_size_or_assumed(voxel_size, path.name, notes)
    picks = read_table_picks(path, voxel_size=vs, delimiter="whitespace", header=False)
    name = tomo_name if tomo_name is not None else path.stem
    if tomo_name is None:
        notes.append(f"{path.name}: tomogram name {name!r} taken from the file name")
    picks.tomo_names = np.full(len(picks), name, dtype=object).astype(str)
    picks.voxel_size = vs
    picks.voxel_size_assumed = voxel_size is None
    picks.notes = [
        n for n in picks.notes if "separated table" not in n
    ] + [f"{path.name}: .coords columns are x y z voxel centres (0-based)"] + notes
    return picks
