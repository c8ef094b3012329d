"""Dynamo tables (``.tbl``): one particle per row, columns by Dynamo's table convention.

Read with the ``dynamotable`` library (``pip install napari-cryoguard[formats]``).

Columns used (1-based, as Dynamo numbers them): 1 ``tag``, 4-6 ``dx dy dz`` (shifts
found by alignment), 10 ``cc`` (score), 20 ``tomo`` (tomogram index), 22 ``class``,
24-26 ``x y z`` (the position the particle was cropped at), 36 ``apix`` (Angstrom per
pixel, when present and non-zero).

Conventions implemented here:

* The particle centre is ``x + dx``, ``y + dy``, ``z + dz`` (shifts applied, said in a
  note; ``apply_shifts=False`` keeps the raw ``x y z`` and the shifts as features).
* Dynamo is MATLAB: voxel indices start at 1 (the first voxel's centre is 1). The
  position is converted to 0-based indices by subtracting 1 on every axis; a note says
  so. ``one_based=False`` skips that for tables made by tools that write 0-based ones.
  Sources: Dynamo's wiki page "Volume center" (wiki.dynamo.biozentrum.unibas.ch,
  ``Volume_center``): "Dynamo uses the convention of counting pixels with the index 1,
  (not 0) ... the first pixel is V[1,1,1]", and a template is placed at pixel ``r`` of
  a volume by putting its centre pixel there; the "Table convention" page (``dthelp``):
  column 4-6 "x/y/z shift from center (in pixels)", 24-26 "x/y/z coordinate in original
  volume", so the particle sits at pixel ``x + dx`` (1-based). Beware that public
  Dynamo-to-RELION converters often copy ``x + dx`` into ``rlnCoordinateX`` without
  the -1, which puts such STAR files one voxel off this reader's result.
* The tomogram index (column 20) becomes ``tomo_names`` as text (``"1"``, ``"2"``, ...);
  when a Dynamo table map (``<table>.doc``, lines ``index path``) lies next to the table
  the tomogram file names are used instead.
* The class (column 22) becomes labels: the distinct class numbers, sorted, map to
  labels 0, 1, ...; ``class_names`` are the numbers as text.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io._reading import check_finite_coords, optional_library, read_limited
from napari_cryoguard.io.picks import Picks, positive_voxel_size, voxel_size_or_assumed

MAX_FILE_BYTES = 2 * 1024**3
MAX_CLASSES = 100_000


def _table_map(path: Path) -> dict[int, str]:
    doc = path.with_suffix(".doc")
    out: dict[int, str] = {}
    if not doc.is_file():
        return out
    try:
        lines = doc.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            try:
                out[int(float(parts[0]))] = parts[1].strip()
            except (ValueError, OverflowError):
                continue
    return out


def _check_rectangular(path: Path, raw: bytes) -> None:
    """Every row of a Dynamo table has the same number of columns (pandas would fill a
    short row with NaN, or shift a long one into the wrong columns)."""
    width = None
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        n = len(line.split())
        if n == 0:
            continue
        if width is None:
            width = n
        elif n != width:
            raise CryoGuardError(
                f"{path.name}: line {lineno} has {n} columns, the first row {width}; every row "
                "of a Dynamo table has the same columns"
            )


def read_dynamo_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                      tomograms: Any = None, apply_shifts: bool = True,
                      one_based: bool = True) -> Picks:
    """Read a Dynamo ``.tbl`` table as voxel picks.

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`~napari_cryoguard.io.read_picks` (``tomograms`` is not used); the
        table. ``voxel_size`` overrides column 36 (``apix``); without either, 1.0 is
        assumed with a note.
    apply_shifts : bool
        Add ``dx dy dz`` to ``x y z`` (default); False keeps them as features.
    one_based : bool
        Subtract 1 to turn Dynamo's 1-based indices into 0-based ones (default).

    Returns
    -------
    Picks
        ZYX voxel coordinates, scores (``cc``), labels (class), tomogram names, and the
        features ``tag``, ``tdrot``, ``tilt``, ``narot``.

    Raises
    ------
    CryoGuardError
        ``dynamotable`` missing, unreadable table, fewer than 26 columns, non-numeric or
        non-finite positions.
    """
    del tomograms
    path = Path(path)
    dynamotable = optional_library("dynamotable")
    raw = read_limited(path, MAX_FILE_BYTES, "a table")
    notes: list[str] = []
    if not raw.strip():
        df = None
    else:
        _check_rectangular(path, raw)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = dynamotable.read(str(path))
        except Exception as err:  # pandas raises many kinds on malformed text
            why = " ".join(str(err).split())  # pandas' text has line breaks; the CLI prints one
            raise CryoGuardError(f"{path.name}: could not parse the Dynamo table: {why}") from err
        if df.shape[1] < 26:
            raise CryoGuardError(
                f"{path.name}: a Dynamo table has at least 26 columns (x y z are 24-26), "
                f"this one has {df.shape[1]}"
            )

    def col(name: str, what: str) -> np.ndarray:
        values = df[name].to_numpy()
        if values.dtype.kind == "c" or values.dtype.kind == "O":
            # Dynamo sometimes writes complex numbers (0+1.2e-06i) in unused columns
            try:
                values = np.array([complex(str(v).replace("i", "j")).real for v in values])
            except ValueError as err:
                raise CryoGuardError(
                    f"{path.name}: column {what} must hold numbers: {err}"
                ) from err
        try:
            out = values.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise CryoGuardError(f"{path.name}: column {what} must hold numbers: {err}") from err
        return out

    if df is None:
        vs = 1.0 if voxel_size is None else positive_voxel_size(voxel_size)
        return Picks(
            coords=np.zeros((0, 3)), voxel_size=vs, notes=[f"{path.name} holds no particles"]
        )
    x, y, z = col("x", "24 (x)"), col("y", "25 (y)"), col("z", "26 (z)")
    dx, dy, dz = col("dx", "4 (dx)"), col("dy", "5 (dy)"), col("dz", "6 (dz)")
    features: dict[str, np.ndarray] = {"tag": col("tag", "1 (tag)").astype(np.int64)}
    for name, num in (("tdrot", 7), ("tilt", 8), ("narot", 9)):
        features[name] = col(name, f"{num} ({name})")
    if apply_shifts:
        x, y, z = x + dx, y + dy, z + dz
        notes.append(f"{path.name}: positions are x+dx, y+dy, z+dz (Dynamo columns 24-26 plus 4-6)")
    else:
        features.update(dx=dx, dy=dy, dz=dz)
        notes.append(f"{path.name}: shifts dx, dy, dz not applied; kept as features")
    coords = np.stack([z, y, x], axis=1)
    if one_based:
        coords = coords - 1.0
        notes.append(f"{path.name}: Dynamo indices are 1-based (MATLAB); subtracted 1 on each axis")
    check_finite_coords(coords, path)
    scores = col("cc", "10 (cc)")
    tomo_idx = col("tomo", "20 (tomo)")
    classes = col("class", "22 (class)")
    for values, what in ((tomo_idx, "20 (tomo)"), (classes, "22 (class)")):
        if not np.isfinite(values).all():
            raise CryoGuardError(f"{path.name}: column {what} holds non-finite values")
    tmap = _table_map(path)
    names = [
        tmap.get(int(t), f"{int(t)}") if float(t).is_integer() else f"{t:g}"
        for t in tomo_idx.tolist()
    ]
    tomo_names = np.asarray(names, dtype=str)
    notes.append(
        f"{path.name}: tomogram names from column 20 (tomo)"
        + (f" mapped through {path.with_suffix('.doc').name}" if tmap else " as the index numbers")
    )
    distinct = np.unique(classes)
    if len(distinct) > MAX_CLASSES:
        raise CryoGuardError(
            f"{path.name}: {len(distinct)} classes, more than the limit of {MAX_CLASSES}"
        )
    labels = np.searchsorted(distinct, classes).astype(np.int64)
    class_names = [f"{int(c)}" if float(c).is_integer() else f"{c:g}" for c in distinct.tolist()]
    if voxel_size is not None:
        voxel_size = positive_voxel_size(voxel_size)
    else:
        apix = col("apix", "36 (apix)") if "apix" in df.columns else np.zeros(0)
        positive = np.unique(apix[apix > 0]) if len(apix) else apix
        if len(positive) == 1:
            voxel_size = float(positive[0])
            notes.append(f"{path.name}: voxel size {voxel_size:g} A from column 36 (apix)")
        else:
            voxel_size = voxel_size_or_assumed(None, path.name, notes)
    return Picks(coords=coords, scores=scores, labels=labels, class_names=class_names,
                 tomo_names=tomo_names, features=features, voxel_size=float(voxel_size),
                 notes=notes)
