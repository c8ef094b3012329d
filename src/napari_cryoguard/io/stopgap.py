"""STOPGAP motive lists (``.star`` with ``data_stopgap_motivelist``): one particle per row.

STOPGAP (subtomogram averaging by W. Wan's lab) writes its motive lists as STAR files
whose block ``data_stopgap_motivelist`` has the columns ``motl_idx tomo_num object
subtomo_num halfset orig_x orig_y orig_z score x_shift y_shift z_shift phi psi the
class``. :func:`~napari_cryoguard.io.read_picks` sends a ``.star`` file here when it
has that block (or a loop with ``motl_idx`` and ``orig_x``); RELION columns are not
looked for.

Conventions implemented here (from STOPGAP's own code, github.com/wan-lab-vanderbilt/
STOPGAP, commit 98bda58f):

* The particle centre is ``orig + shift`` on each axis (shifts applied, said in a
  note; ``apply_shifts=False`` keeps ``orig`` and the shifts as features), as in
  ``sg_motl_stopgap_to_dynamo.m``, which writes ``orig`` as Dynamo's position and the
  shifts as Dynamo's ``dx dy dz`` (Dynamo's particle centre is ``x + dx``).
* Positions are 1-based (MATLAB): ``sg_motl_check_tomo_edges.m`` keeps positions from
  ``1 + padding`` to ``nx - padding - 1``, and ``sg_motl_stopgap_to_dynamo.m`` copies
  ``orig_x/y/z`` unchanged into Dynamo's columns 24-26 and the shifts into 4-6, which
  Dynamo counts from 1 (see :mod:`napari_cryoguard.io.dynamo`). So 1 is subtracted on
  every axis (a note says so); ``one_based=False`` skips that.
* A motive list does not carry a voxel size: ``voxel_size=`` gives it, else 1.0
  Angstrom is assumed with a note.
* ``tomo_num`` becomes ``tomo_names`` as text (``"24"``), ``class`` becomes labels
  (distinct class numbers, sorted, as labels 0, 1, ...; ``class_names`` the numbers as
  text), ``score`` the scores; ``motl_idx``, ``subtomo_num``, ``object``, ``halfset``
  and the Euler angles ``phi psi the`` are kept as features.
* A multi-reference motive list repeats each subtomogram once per class; rows with
  the same ``subtomo_num`` and ``tomo_num`` are all kept, and a note says how many
  subtomograms appear more than once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io import coords as _coords
from napari_cryoguard.io._reading import check_finite_coords, pick_file
from napari_cryoguard.io.picks import Picks, voxel_size_or_assumed

BLOCK = "stopgap_motivelist"
"""The STAR data block STOPGAP writes its motive lists in (without ``data_``)."""

COLUMNS = ("motl_idx", "tomo_num", "object", "subtomo_num", "halfset", "orig_x", "orig_y",
           "orig_z", "score", "x_shift", "y_shift", "z_shift", "phi", "psi", "the", "class")
"""The columns of a STOPGAP motive list, in STOPGAP's order."""

_NEEDED = ("tomo_num", "orig_x", "orig_y", "orig_z")
MAX_CLASSES = 100_000


def stopgap_block(blocks: dict[str, dict[str, np.ndarray]]) -> str | None:
    """The name of the STOPGAP motive-list block among STAR ``blocks``, else None."""
    if BLOCK in blocks:
        return BLOCK
    for name, cols in blocks.items():
        if "motl_idx" in cols and "orig_x" in cols:
            return name
    return None


def _numbers(path: Path, table: dict, name: str) -> np.ndarray:
    try:
        out = np.asarray(table[name], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CryoGuardError(f"{path.name}: STOPGAP column {name!r} must hold numbers: "
                             f"{err}") from err
    if not np.isfinite(out).all():
        raise CryoGuardError(f"{path.name}: STOPGAP column {name!r} holds non-finite values")
    return out


def _as_text(values: np.ndarray) -> list[str]:
    return [f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in values.tolist()]


def read_stopgap_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                       tomograms: Any = None, apply_shifts: bool = True,
                       one_based: bool = True,
                       blocks: dict[str, dict[str, np.ndarray]] | None = None) -> Picks:
    """Read a STOPGAP motive list (``.star``) as voxel picks.

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`~napari_cryoguard.io.read_picks` (``tomograms`` is not used): the
        motive list; ``voxel_size`` in Angstrom (not in the file: 1.0 is assumed with a
        note when it is not given).
    apply_shifts : bool
        Add ``x_shift y_shift z_shift`` to ``orig_x orig_y orig_z`` (default); False
        keeps the shifts as features.
    one_based : bool
        Subtract 1 to turn STOPGAP's 1-based positions into 0-based indices (default).
    blocks : dict, optional
        The file's STAR blocks when already parsed (by the RELION reader that sent the
        file here).

    Returns
    -------
    Picks
        ZYX voxel coordinates, scores, labels (class), tomogram names (``tomo_num``) and
        the features ``motl_idx``, ``subtomo_num``, ``object``, ``halfset``, ``phi``,
        ``psi``, ``the``.

    Raises
    ------
    CryoGuardError
        No STOPGAP block, missing position columns, non-numeric or non-finite values.
    """
    del tomograms
    path = pick_file(path)
    if blocks is None:
        blocks = {k: v for k, v in _coords.read_star_blocks(path).items() if v}
    name = stopgap_block(blocks)
    if name is None:
        raise CryoGuardError(
            f"{path.name}: not a STOPGAP motive list (no data_{BLOCK} block, no loop with "
            "motl_idx and orig_x)"
        )
    table = blocks[name]
    missing = [c for c in _NEEDED if c not in table]
    if missing:
        raise CryoGuardError(
            f"{path.name}: the STOPGAP motive list lacks the column(s) {', '.join(missing)}"
        )
    notes: list[str] = [f"{path.name}: read as a STOPGAP motive list (data_{name})"]
    n = len(table["orig_x"])
    pos = np.stack([_numbers(path, table, f"orig_{a}") for a in "zyx"], axis=1)
    features: dict[str, np.ndarray] = {}
    shifts = [f"{a}_shift" for a in "zyx"]
    if all(s in table for s in shifts):
        shift = np.stack([_numbers(path, table, s) for s in shifts], axis=1)
        if apply_shifts:
            pos = pos + shift
            notes.append(f"{path.name}: positions are orig + shift (orig_x + x_shift, ...), "
                         "as STOPGAP computes them")
        else:
            features.update({s: shift[:, i] for i, s in enumerate(shifts)})
            notes.append(f"{path.name}: shifts x/y/z_shift not applied; kept as features")
    else:
        notes.append(f"{path.name}: no x/y/z_shift columns; positions are orig_x/y/z")
    if one_based:
        pos = pos - 1.0
        notes.append(f"{path.name}: STOPGAP positions are 1-based (MATLAB); subtracted 1 on "
                     "each axis")
    check_finite_coords(pos, path)
    scores = _numbers(path, table, "score") if "score" in table else None
    tomo_num = _numbers(path, table, "tomo_num")
    tomo_names = np.asarray(_as_text(tomo_num), dtype=str)
    notes.append(f"{path.name}: tomogram names are the tomo_num numbers "
                 f"({', '.join(dict.fromkeys(tomo_names.tolist()))})")
    labels = class_names = None
    if "class" in table:
        classes = _numbers(path, table, "class")
        distinct = np.unique(classes)
        if len(distinct) > MAX_CLASSES:
            raise CryoGuardError(
                f"{path.name}: {len(distinct)} classes, more than the limit of {MAX_CLASSES}")
        labels = np.searchsorted(distinct, classes).astype(np.int64)
        class_names = _as_text(distinct)
    for col in ("motl_idx", "subtomo_num", "object"):
        if col in table:
            features[col] = _numbers(path, table, col).astype(np.int64)
    if "halfset" in table:
        features["halfset"] = np.asarray(table["halfset"], dtype=str)
    for col in ("phi", "psi", "the"):
        if col in table:
            features[col] = _numbers(path, table, col)
    if "subtomo_num" in features and n:
        key = np.stack([tomo_num, features["subtomo_num"].astype(np.float64)], axis=1)
        _, counts = np.unique(key, axis=0, return_counts=True)
        repeated = int((counts > 1).sum())
        if repeated:
            notes.append(f"{path.name}: {repeated} subtomogram(s) appear in several rows (a "
                         "multi-reference motive list); every row is kept")
    vs = voxel_size_or_assumed(voxel_size, path.name, notes)
    return Picks(coords=pos, scores=scores, labels=labels, class_names=class_names,
                 tomo_names=tomo_names, features=features, voxel_size=float(vs), notes=notes)
