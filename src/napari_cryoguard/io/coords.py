"""Particle pick files: RELION STAR and CSV, in and out of :class:`Picks`, losslessly.

The format is chosen by suffix (``.star`` or ``.csv``, case-insensitive). Files written
here read back bit-identically: floats are written with ``repr`` (shortest string that
round-trips a float64) and read back with Python's correctly rounded parser; dtypes of
features, the full class list and the voxel size travel in metadata.

Coordinates: ZYX <-> XYZ
    In the core a pick is ``coords[i] = (z, y, x)`` in voxel indices of the tomogram
    (numpy / napari order). Both file formats hold the same voxel values, named by axis:
    ``rlnCoordinateX = coords[:, 2]``, ``rlnCoordinateY = coords[:, 1]``,
    ``rlnCoordinateZ = coords[:, 0]`` in STAR, and columns ``z, y, x`` in CSV.
    Positions are voxels of the tomogram the picks were made in (RELION convention for
    ``rlnCoordinate*``), not Angstrom.

STAR layout written (RELION-compatible; RELION ignores the ``cryoguard*`` labels)
    ``data_cryoguard``
        Simple block: ``_cryoguardFormatVersion 1`` and ``_cryoguardVoxelSize`` (Angstrom
        per voxel of the tomogram the coordinates index into).
    ``data_cryoguard_classes`` (when ``class_names`` is set)
        Loop: ``_rlnClassNumber`` (1-based) and ``_cryoguardClassName``, one row per class,
        so unused classes and their order survive.
    ``data_cryoguard_features`` (when there are features)
        Loop: ``_cryoguardFeatureName``, ``_cryoguardFeatureDtype`` (numpy dtype string or
        ``str``), ``_cryoguardFeatureWidth`` (0 for an (N,) feature, C for (N, C)).
    ``data_particles``
        Loop, one row per pick: ``rlnCoordinateX/Y/Z``; ``rlnTomoName`` (tomogram, when
        known); ``rlnAutopickFigureOfMerit`` (score); ``rlnClassNumber`` = label + 1, so an
        unknown label (-1) is written as class 0 and any class number <= 0 reads back as -1;
        ``cryoguardClassName`` (the class name per row, for people and other tools); then
        one column per feature, named by the feature (an (N, C) feature becomes columns
        ``name[0] ... name[C-1]``).

Reading STAR files from other tools
    STAR files are parsed by :func:`read_star_blocks` (values kept as written, so the
    string ``NaN`` stays ``"NaN"``; duplicate columns, bad dtypes, class numbers above
    :data:`MAX_CLASS_NUMBER` with per-row names and feature widths above
    :data:`MAX_FEATURE_WIDTH` raise :class:`CryoGuardError`) and read by
    :func:`napari_cryoguard.io.relion.read_star_picks`: RELION 3/4/5, Warp and
    pytom-match-pick conventions, voxel sizes, tomogram names and ``rlnOrigin*``
    shifts (applied by default) are documented there, and every conversion is written
    to ``Picks.notes``. Columns not listed above become features under their own name.

STAR conventions written
    ``convention="cryoguard"`` (default): the layout above, voxel coordinates.
    ``convention="relion5"``: ``rlnCenteredCoordinateX/Y/ZAngst`` (Angstrom from the
    tomogram centre, RELION 5's rule), ``rlnTomoName``, ``rlnOpticsGroup`` and a
    ``data_optics`` block with ``rlnTomoTiltSeriesPixelSize``, plus the same cryoguard
    blocks; it needs each tomogram's shape (``tomograms=`` or ``shape=``). Feature names
    starting with ``_``, ``data_``, ``loop_``, ``global_``, ``save_`` or ``stop_`` are
    refused in STAR files (they would be read as STAR syntax).

CSV layout
    Leading comment lines ``# key: value`` hold the metadata (``voxel_size``,
    ``class_names`` and ``features`` as JSON), then one header row and one row per
    pick with columns ``z, y, x`` (voxels, required), ``score``, ``label`` (0-based, -1
    unknown), ``class_name``, ``tomo_name`` and the feature columns, each present only
    when the picks have it. Hand-made CSVs need only ``z, y, x`` (any case);
    a ``class_name`` column without ``label`` numbers the classes in order of appearance.

Strings (tomogram, class names, string features) must not contain quotes, ``#``, tabs or
newlines in STAR files (the STAR parser cannot read them back); CSV has no such limit.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from napari_cryoguard._atomic import atomic_output
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io._reading import check_finite_coords
from napari_cryoguard.io.picks import Picks, positive_voxel_size

PICK_SUFFIXES: tuple[str, ...] = (".star", ".csv")
"""Suffixes :func:`read_picks` and :func:`write_picks` understand."""

STAR_XYZ = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
STAR_TOMO = "rlnTomoName"
STAR_SCORE = "rlnAutopickFigureOfMerit"
STAR_CLASS = "rlnClassNumber"
STAR_CLASS_NAME = "cryoguardClassName"
STAR_PARTICLES_BLOCK = "particles"
STAR_META_BLOCK = "cryoguard"
STAR_CLASSES_BLOCK = "cryoguard_classes"
STAR_FEATURES_BLOCK = "cryoguard_features"
STAR_VOXEL_SIZE = "cryoguardVoxelSize"
FORMAT_VERSION = 1

CSV_ZYX = ("z", "y", "x")
CSV_SCORE, CSV_LABEL, CSV_CLASS_NAME, CSV_TOMO = "score", "label", "class_name", "tomo_name"

_RESERVED = {
    *STAR_XYZ,
    STAR_TOMO,
    STAR_SCORE,
    STAR_CLASS,
    STAR_CLASS_NAME,
    *CSV_ZYX,
    CSV_SCORE,
    CSV_LABEL,
    CSV_CLASS_NAME,
    CSV_TOMO,
}
_RESERVED_LOWER = {r.lower() for r in _RESERVED}
_STAR_BAD_CHARS = re.compile(r"[\"'#\t\r\n]")
_WIDE_COLUMN = "{name}[{j}]"


# --------------------------------------------------------------------------- helpers


def _format_column(values: np.ndarray, what: str, *, star: bool) -> list[str]:
    """Strings for one column; floats via ``repr`` so they parse back bit-identically."""
    kind = values.dtype.kind
    if kind == "f":
        return [repr(v) for v in values.astype(np.float64).tolist()]
    if kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "b":
        return ["1" if v else "0" for v in values.tolist()]
    if kind in "US":
        out = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
        if star:
            for s in out:
                if _STAR_BAD_CHARS.search(s):
                    raise CryoGuardError(
                        f"{what} value {s!r} contains a quote, '#', tab or newline, which a "
                        "STAR file cannot hold; rename it or write CSV"
                    )
        return out
    raise CryoGuardError(f"{what} has dtype {values.dtype}, which a pick file cannot hold")


def _feature_dtype_name(values: np.ndarray) -> str:
    return "str" if values.dtype.kind in "US" else values.dtype.str


def _parse_column(strings: np.ndarray, dtype: str | None, what: str) -> np.ndarray:
    """Turn a column of strings back into an array; ``dtype`` None means infer."""
    strings = np.asarray(strings, dtype=str)
    if dtype == "str":
        return strings
    if dtype is not None:
        try:
            target = np.dtype(dtype)
        except (TypeError, ValueError) as err:
            raise CryoGuardError(
                f"column {what!r}: feature dtype {dtype!r} is not a numpy dtype; expected "
                "'str' or a float, integer or bool dtype such as '<f8'"
            ) from err
        try:
            if target.kind == "f":
                return strings.astype(np.float64).astype(target)
            if target.kind in "iu":
                return strings.astype(np.int64).astype(target)
            if target.kind == "b":
                return strings.astype(np.int64) != 0
        except (ValueError, OverflowError) as err:
            raise CryoGuardError(f"column {what!r} should hold {target}: {err}") from err
        raise CryoGuardError(f"column {what!r} has unsupported dtype {dtype!r}")
    for target in (np.int64, np.float64):
        try:
            return strings.astype(target)
        except (ValueError, OverflowError):
            continue
    return strings


def _numeric(strings: np.ndarray, target: type, what: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(strings, dtype=str).astype(target)
    except (ValueError, OverflowError) as err:
        kind = "numbers" if target is np.float64 else "integers"
        raise CryoGuardError(f"{path.name}: column {what!r} must hold {kind}: {err}") from err


def _check_feature_name(name: str) -> None:
    if not name or re.search(r"[\s\"'#,]", name) or name.lower() in _RESERVED_LOWER:
        raise CryoGuardError(
            f"feature name {name!r} cannot be a pick-file column: it must be non-empty, "
            f"without spaces, quotes, '#' or ',', and not one of {sorted(_RESERVED)}"
        )


def _feature_columns(
    picks: Picks, *, star: bool
) -> tuple[dict[str, list[str]], dict[str, tuple[str, int]]]:
    """Column strings and (dtype, width) metadata for every feature."""
    columns: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, int]] = {}
    for name, values in picks.features.items():
        _check_feature_name(str(name))
        if star and re.match(r"(?i)(_|data_|loop_|global_|save_|stop_)", str(name)):
            raise CryoGuardError(
                f"feature name {name!r} cannot be a STAR column: a name starting with '_', "
                "'data_', 'loop_', 'global_', 'save_' or 'stop_' would be read as STAR syntax; "
                "rename it or write CSV"
            )
        values = np.asarray(values)
        if values.dtype.kind == "O":
            values = np.asarray(values.tolist())
            if values.dtype.kind == "O":
                raise CryoGuardError(f"feature {name!r} mixes types; a pick file cannot hold it")
        if values.ndim == 1:
            columns[name] = _format_column(values, f"feature {name!r}", star=star)
            meta[name] = (_feature_dtype_name(values), 0)
        elif values.ndim == 2 and values.shape[1] > 0:
            for j in range(values.shape[1]):
                col = _WIDE_COLUMN.format(name=name, j=j)
                columns[col] = _format_column(values[:, j], f"feature {name!r}", star=star)
            meta[name] = (_feature_dtype_name(values), int(values.shape[1]))
        else:
            raise CryoGuardError(
                f"feature {name!r} has shape {values.shape}; pick files hold (N,) or (N, C >= 1) features"
            )
    return columns, meta


def _collect_features(
    table: dict[str, np.ndarray],
    used: set[str],
    meta: dict[str, tuple[str, int]],
) -> dict[str, np.ndarray]:
    """Features from the columns not used for coordinates/scores/labels/names."""
    features: dict[str, np.ndarray] = {}
    for name, (dtype, width) in meta.items():
        if width == 0:
            if name in table:
                features[name] = _parse_column(table[name], dtype, name)
                used.add(name)
        else:
            cols = [_WIDE_COLUMN.format(name=name, j=j) for j in range(width)]
            if all(c in table for c in cols):
                parts = [_parse_column(table[c], dtype, c) for c in cols]
                features[name] = np.stack(parts, axis=1) if parts else np.empty((0, 0))
                used.update(cols)
    for col, strings in table.items():
        if col not in used:
            features[col] = _parse_column(strings, None, col)
    return features


def _check_path(path: Path, *, reading: bool) -> str:
    suffix = path.suffix.lower()
    if suffix not in PICK_SUFFIXES:
        raise CryoGuardError(
            f"{path.name}: pick files must end in {' or '.join(PICK_SUFFIXES)}, got {suffix!r}"
        )
    if reading:
        if not path.exists():
            raise CryoGuardError(f"pick file not found: {path}")
        if not path.is_file():
            raise CryoGuardError(f"not a file: {path}")
    elif not path.parent.is_dir():
        raise CryoGuardError(f"cannot write {path.name}: folder {path.parent} does not exist")
    return suffix


def _tomo_names_for_writing(picks: Picks, tomo_name: str | None) -> np.ndarray | None:
    if tomo_name is None:
        return picks.tomo_names
    if picks.tomo_names is not None and np.any(picks.tomo_names != str(tomo_name)):
        raise CryoGuardError(
            f"tomo_name={tomo_name!r} conflicts with the picks' own tomogram names "
            f"{sorted(set(picks.tomo_names.tolist()))[:5]}"
        )
    return np.full(len(picks), str(tomo_name), dtype=object).astype(str)


# --------------------------------------------------------------------------- public API


def write_picks(
    path: str | os.PathLike,
    picks: Picks,
    *,
    tomo_name: str | None = None,
    convention: str = "cryoguard",
    tomograms: Any = None,
    shape: tuple[int, int, int] | None = None,
) -> Path:
    """Write picks to a RELION STAR or a CSV file (by suffix), atomically.

    Two STAR conventions: ``"cryoguard"`` (default) writes voxel ``rlnCoordinateX/Y/Z``
    with our metadata blocks (lossless, read back as is); ``"relion5"`` writes RELION 5
    centred Angstrom coordinates ``rlnCenteredCoordinateX/Y/ZAngst`` with ``rlnTomoName``,
    ``rlnOpticsGroup`` and a ``data_optics`` block (``rlnTomoTiltSeriesPixelSize``), for
    RELION 5 and pytom-match-pick; reading it back needs the same ``tomograms=`` (see
    :mod:`napari_cryoguard.io.relion` for the centring rule).

    Parameters
    ----------
    path : str or PathLike
        ``.star`` or ``.csv`` file; replaced only once fully written.
    picks : Picks
        Coordinates are ZYX voxels; see the module docstring for the columns.
    tomo_name : str, optional
        Tomogram name for every pick, used when ``picks.tomo_names`` is None (it must
        agree with ``picks.tomo_names`` otherwise).
    convention : {"cryoguard", "relion5"}
        STAR coordinate convention (CSV files take only "cryoguard").
    tomograms : str, PathLike or mapping, optional
        For ``"relion5"``: each tomogram's geometry, as
        :func:`napari_cryoguard.io.relion.load_tomograms` takes it (a ``tomograms.star``,
        an optimisation set or ``name -> (shape_zyx, voxel_size)``).
    shape : tuple of int, optional
        For ``"relion5"`` without ``tomograms``: the (z, y, x) shape of the tomogram all
        picks belong to, at ``picks.voxel_size``.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    suffix = _check_path(path, reading=False)
    if not isinstance(picks, Picks):
        raise CryoGuardError(f"write_picks needs a Picks object, got {type(picks).__name__}")
    check_finite_coords(picks.coords, path, "to write have")
    voxel_size = positive_voxel_size(picks.voxel_size, source=path.name)
    if picks.labels is not None and np.any(picks.labels < -1):
        raise CryoGuardError(f"labels must be >= -1 (-1 = unknown), got {int(picks.labels.min())}")
    tomo_names = _tomo_names_for_writing(picks, tomo_name)
    star = suffix == ".star"
    names_per_row = picks.class_of()
    if picks.class_names is not None:
        _format_column(np.asarray(picks.class_names, dtype=str), "class name", star=star)
    feature_cols, feature_meta = _feature_columns(picks, star=star)
    if convention not in ("cryoguard", "relion5"):
        raise CryoGuardError(
            f"unknown pick-file convention {convention!r}; expected 'cryoguard' or 'relion5'"
        )
    coord_cols = optics = None
    if convention == "relion5":
        if not star:
            raise CryoGuardError(f"{path.name}: convention 'relion5' writes STAR files only")
        from napari_cryoguard.io.relion import relion5_columns

        coord_cols, optics, tomo_names = relion5_columns(
            picks, tomo_names, tomograms=tomograms, shape=shape
        )
        clash = sorted(set(feature_cols) & ({*coord_cols} | {"rlnOpticsGroup"}))
        if clash:
            raise CryoGuardError(f"features {clash} clash with RELION 5 columns; rename them")
    try:
        with atomic_output(path) as tmp:
            if star:
                _write_star(
                    tmp, picks, tomo_names, names_per_row, feature_cols, feature_meta, voxel_size,
                    coord_cols=coord_cols, optics=optics,
                )
            else:
                _write_csv(
                    tmp, picks, tomo_names, names_per_row, feature_cols, feature_meta, voxel_size
                )
    except OSError as err:
        raise CryoGuardError(f"could not write {path}: {err}") from err
    return path


def _write_star(
    tmp, picks, tomo_names, names_per_row, feature_cols, feature_meta, voxel_size,
    *, coord_cols=None, optics=None,
) -> None:
    cols: dict[str, list[str]] = {}
    if coord_cols is None:
        cols[STAR_XYZ[0]] = _format_column(picks.coords[:, 2], "x", star=True)
        cols[STAR_XYZ[1]] = _format_column(picks.coords[:, 1], "y", star=True)
        cols[STAR_XYZ[2]] = _format_column(picks.coords[:, 0], "z", star=True)
    if tomo_names is not None:
        cols[STAR_TOMO] = _format_column(tomo_names, "tomogram name", star=True)
    if coord_cols is not None:
        cols.update(coord_cols)
    if picks.scores is not None:
        cols[STAR_SCORE] = _format_column(picks.scores, "score", star=True)
    if picks.labels is not None:
        cols[STAR_CLASS] = _format_column(np.maximum(picks.labels, -1) + 1, "label", star=True)
        if names_per_row is not None:
            cols[STAR_CLASS_NAME] = _format_column(
                np.asarray(names_per_row, dtype=str), "class name", star=True
            )
    cols.update(feature_cols)
    blocks: dict[str, Any] = {
        STAR_META_BLOCK: {
            "cryoguardFormatVersion": FORMAT_VERSION,
            STAR_VOXEL_SIZE: repr(voxel_size),
        }
    }
    if optics is not None:
        blocks["optics"] = pd.DataFrame(optics, dtype=object, columns=list(optics))
    if picks.class_names is not None:
        blocks[STAR_CLASSES_BLOCK] = pd.DataFrame(
            {
                STAR_CLASS: [str(i + 1) for i in range(len(picks.class_names))],
                STAR_CLASS_NAME: list(picks.class_names),
            },
            dtype=object,
        )
    if feature_meta:
        blocks[STAR_FEATURES_BLOCK] = pd.DataFrame(
            {
                "cryoguardFeatureName": list(feature_meta),
                "cryoguardFeatureDtype": [d for d, _ in feature_meta.values()],
                "cryoguardFeatureWidth": [str(w) for _, w in feature_meta.values()],
            },
            dtype=object,
        )
    blocks[STAR_PARTICLES_BLOCK] = pd.DataFrame(cols, dtype=object, columns=list(cols))
    starfile.write(blocks, tmp)


def _write_csv(
    tmp, picks, tomo_names, names_per_row, feature_cols, feature_meta, voxel_size
) -> None:
    cols: dict[str, list[str]] = {}
    for j, axis in enumerate(CSV_ZYX):
        cols[axis] = _format_column(picks.coords[:, j], axis, star=False)
    if picks.scores is not None:
        cols[CSV_SCORE] = _format_column(picks.scores, "score", star=False)
    if picks.labels is not None:
        cols[CSV_LABEL] = _format_column(picks.labels, "label", star=False)
        if names_per_row is not None:
            cols[CSV_CLASS_NAME] = [str(s) for s in names_per_row]
    if tomo_names is not None:
        cols[CSV_TOMO] = _format_column(tomo_names, "tomogram name", star=False)
    cols.update(feature_cols)
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write(f"# napari-cryoguard picks, format {FORMAT_VERSION}: z,y,x in voxels (ZYX)\n")
        fh.write(f"# voxel_size: {voxel_size!r}\n")
        if picks.class_names is not None:
            fh.write(f"# class_names: {json.dumps(list(picks.class_names))}\n")
        if feature_meta:
            fh.write(f"# features: {json.dumps({k: list(v) for k, v in feature_meta.items()})}\n")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(list(cols))
        writer.writerows(zip(*cols.values(), strict=True))


def read_picks(path: str | os.PathLike, *, voxel_size: float | None = None) -> Picks:
    """Read a pick file of any supported format: :func:`napari_cryoguard.io.read_picks`."""
    from napari_cryoguard.io.readers import read_picks as _read

    return _read(path, voxel_size=voxel_size)


# --------------------------------------------------------------------------- STAR reading


STAR_MAX_BYTES = 256 * 1024 * 1024
"""Largest STAR file read (bytes); larger files are refused before reading."""

MAX_CLASS_NUMBER = 100_000
"""Largest ``rlnClassNumber`` for which class names are built from per-row names."""

MAX_FEATURE_WIDTH = 65_536
"""Largest ``cryoguardFeatureWidth`` (columns of one (N, C) feature)."""


def _star_tokens(line: str, path: Path, lineno: int) -> list[str]:
    """Split one STAR line into values: whitespace-separated, quotes group, ``#`` comments."""
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            break
        if c in "\"'":
            j = i + 1
            while j < n and not (line[j] == c and (j + 1 == n or line[j + 1].isspace())):
                j += 1
            if j >= n:
                raise CryoGuardError(f"{path.name}: line {lineno} has an unclosed {c} quote")
            out.append(line[i + 1 : j])
            i = j + 1
            continue
        j = i
        while j < n and not line[j].isspace():
            j += 1
        out.append(line[i:j])
        i = j
    return out


def read_star_blocks(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Every data block of a STAR file as ``name -> column -> array of str``.

    Values are kept exactly as written (``NaN`` stays the string ``"NaN"``); simple
    blocks become one-row tables. Duplicate block or column names, rows of the wrong
    length and files without a ``data_`` block raise :class:`CryoGuardError`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > STAR_MAX_BYTES:
            raise CryoGuardError(
                f"{path.name} is {size} bytes; STAR files larger than {STAR_MAX_BYTES} bytes "
                "are not read"
            )
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CryoGuardError(f"{path.name} is not a text STAR file: {err}") from err
    except OSError as err:
        raise CryoGuardError(f"could not read {path}: {err}") from err
    blocks: dict[str, dict[str, list[str]]] = {}
    loops: dict[str, bool] = {}
    current: str | None = None
    in_loop_header = False
    labels: list[str] = []
    values: list[str] = []

    def finish_loop() -> None:
        if current is None or not loops.get(current) or not labels:
            return
        if len(values) % len(labels):
            raise CryoGuardError(
                f"{path.name}: data_{current} has {len(values)} values, not a multiple of its "
                f"{len(labels)} columns (a row is short or long)"
            )
        cols = blocks[current]
        for k, lab in enumerate(labels):
            cols[lab] = values[k :: len(labels)]

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        low = line.lower()
        if low.startswith("data_"):
            finish_loop()
            current = line.split()[0][5:]
            if current in blocks:
                raise CryoGuardError(f"{path.name}: block data_{current} appears twice")
            blocks[current] = {}
            loops[current] = False
            labels, values, in_loop_header = [], [], False
            continue
        if current is None:
            raise CryoGuardError(
                f"{path.name} is not a STAR file: line {lineno} comes before any 'data_' block "
                "(there is no 'data_' block above it)"
            )
        if low.startswith("loop_"):
            finish_loop()
            loops[current] = True
            labels, values, in_loop_header = [], [], True
            continue
        if line.startswith("_"):
            tokens = _star_tokens(line, path, lineno)
            name = tokens[0][1:]
            if loops[current] and in_loop_header:
                if name in labels:
                    raise CryoGuardError(
                        f"{path.name}: column _{name} appears twice in data_{current}"
                    )
                labels.append(name)
                continue
            if loops[current]:
                raise CryoGuardError(
                    f"{path.name}: line {lineno}: label _{name} after the rows of the loop "
                    f"in data_{current}"
                )
            if name in blocks[current]:
                raise CryoGuardError(f"{path.name}: _{name} appears twice in data_{current}")
            if len(tokens) != 2:
                raise CryoGuardError(
                    f"{path.name}: line {lineno}: _{name} needs exactly one value, "
                    f"got {len(tokens) - 1}"
                )
            blocks[current][name] = [tokens[1]]
            continue
        if not loops[current]:
            raise CryoGuardError(
                f"{path.name}: line {lineno} holds values outside a loop in data_{current}"
            )
        in_loop_header = False
        values.extend(_star_tokens(line, path, lineno))
    finish_loop()
    if not blocks:
        raise CryoGuardError(f"{path.name} is not a STAR file: it has no 'data_' block")
    for name, cols in blocks.items():
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise CryoGuardError(
                f"{path.name}: data_{name} mixes single values and loop columns (columns of "
                f"{sorted(lengths)} rows); one block must be one table"
            )
    return {
        name: {c: np.array(v, dtype=object) for c, v in cols.items()}
        for name, cols in blocks.items()
    }


def _read_star(path: Path, voxel_size: float | None) -> Picks:
    from napari_cryoguard.io.relion import read_star_picks

    return read_star_picks(path, voxel_size=voxel_size)


def _check_format_version(path: Path, blocks: dict[str, dict[str, np.ndarray]]) -> None:
    """A cryoguard STAR of a format this version does not know is refused, not misread."""
    meta = blocks.get(STAR_META_BLOCK, {})
    key = "cryoguardFormatVersion"
    if key not in meta:
        return
    text = str(meta[key][0]).strip()
    try:
        version = int(text)
    except ValueError:
        raise CryoGuardError(f"{path.name}: _{key} is {text!r}, not a format number") from None
    if version != FORMAT_VERSION:
        raise CryoGuardError(
            f"{path.name} is cryoguard STAR format {version}; this napari-cryoguard reads "
            f"format {FORMAT_VERSION}" + (" (update the package)" if version > FORMAT_VERSION else ""))


def star_picks_from_table(
    path: Path,
    blocks: dict[str, dict[str, np.ndarray]],
    table: dict[str, np.ndarray],
    coords: np.ndarray,
    used: set[str],
    *,
    voxel_size: float,
    tomo_names: np.ndarray | None,
    notes: list[str],
) -> Picks:
    """Picks from a STAR particle table whose coordinates are already converted.

    Reads scores (``rlnAutopickFigureOfMerit``), labels (``rlnClassNumber`` - 1), class
    names (``data_cryoguard_classes`` or ``cryoguardClassName``) and features (every
    column not in ``used``, typed by ``data_cryoguard_features`` when present).
    """
    check_finite_coords(coords, path, "have")
    _check_format_version(path, blocks)
    used = set(used)
    scores = labels_arr = None
    if STAR_SCORE in table:
        scores = _numeric(table[STAR_SCORE], np.float64, STAR_SCORE, path)
        used.add(STAR_SCORE)
    if STAR_CLASS in table:
        numbers = _numeric(table[STAR_CLASS], np.int64, STAR_CLASS, path)
        labels_arr = np.where(numbers > 0, numbers - 1, -1).astype(np.int64)
        used.add(STAR_CLASS)

    class_names = None
    if STAR_CLASSES_BLOCK in blocks and STAR_CLASS_NAME in blocks[STAR_CLASSES_BLOCK]:
        cb = blocks[STAR_CLASSES_BLOCK]
        names = [str(s) for s in cb[STAR_CLASS_NAME]]
        if STAR_CLASS in cb:
            order = np.argsort(_numeric(cb[STAR_CLASS], np.int64, STAR_CLASS, path), kind="stable")
            names = [names[i] for i in order]
        class_names = names
    row_names = None
    if STAR_CLASS_NAME in table:
        row_names = np.asarray(table[STAR_CLASS_NAME], dtype=str)
        used.add(STAR_CLASS_NAME)
    if class_names is None and row_names is not None:
        class_names, labels_arr = _classes_from_rows(row_names, labels_arr, path=path)

    feature_meta: dict[str, tuple[str, int]] = {}
    fb = blocks.get(STAR_FEATURES_BLOCK)
    if fb is not None and "cryoguardFeatureName" in fb:
        n_meta = len(fb["cryoguardFeatureName"])
        dtypes = fb.get("cryoguardFeatureDtype", np.array([None] * n_meta, dtype=object))
        widths = fb.get("cryoguardFeatureWidth", np.array(["0"] * n_meta, dtype=object))
        for name, dt, w in zip(fb["cryoguardFeatureName"], dtypes, widths, strict=True):
            try:
                width = int(w)
            except (TypeError, ValueError) as err:
                raise CryoGuardError(
                    f"{path.name}: cryoguardFeatureWidth of feature {name!r} must be an "
                    f"integer, got {w!r}"
                ) from err
            if width < 0 or width > min(MAX_FEATURE_WIDTH, len(table)):
                raise CryoGuardError(
                    f"{path.name}: feature {name!r} claims width {width}; it must be between 0 "
                    f"and {min(MAX_FEATURE_WIDTH, len(table))} (the file's column count, at "
                    f"most {MAX_FEATURE_WIDTH})"
                )
            feature_meta[str(name)] = (None if dt is None else str(dt), width)
    try:
        features = _collect_features(table, used, feature_meta)
    except CryoGuardError as err:
        raise CryoGuardError(f"{path.name}: {err}") from err
    return Picks(coords=coords, scores=scores, labels=labels_arr, class_names=class_names,
                 tomo_names=tomo_names, features=features, voxel_size=voxel_size,
                 notes=list(notes))


def _merge_coordinate_blocks(path: Path, blocks: dict, names: list[str]) -> dict[str, np.ndarray]:
    if len(names) == 1:
        return dict(blocks[names[0]])
    columns = set(blocks[names[0]])
    for name in names[1:]:
        if set(blocks[name]) != columns:
            raise CryoGuardError(
                f"{path.name}: coordinate blocks data_{names[0]} and data_{name} have different "
                f"columns ({sorted(columns ^ set(blocks[name]))} differ); cannot merge them"
            )
    merged = {c: np.concatenate([blocks[b][c] for b in names]) for c in blocks[names[0]]}
    if STAR_TOMO not in merged:
        merged[STAR_TOMO] = np.concatenate(
            [np.full(len(blocks[b][STAR_XYZ[0]]), b, dtype=object) for b in names]
        )
    return merged


def _classes_from_rows(
    row_names: np.ndarray, labels: np.ndarray | None, path: Path | None = None
) -> tuple[list[str], np.ndarray]:
    """Class list from per-row class names (and labels when present)."""
    if labels is None:
        class_names: list[str] = list(dict.fromkeys(row_names.tolist()))
        lookup = {c: i for i, c in enumerate(class_names)}
        return class_names, np.array([lookup[c] for c in row_names.tolist()], dtype=np.int64)
    size = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    if size > MAX_CLASS_NUMBER:
        where = f"{path.name}: " if path is not None else ""
        raise CryoGuardError(
            f"{where}class number {size} is above the limit of {MAX_CLASS_NUMBER} classes "
            "for which per-row class names are collected; renumber the classes"
        )
    names = [f"class {i + 1}" for i in range(size)]
    for lab, nm in zip(labels.tolist(), row_names.tolist(), strict=True):
        if lab >= 0 and nm:
            names[lab] = nm
    return names, labels


# --------------------------------------------------------------------------- CSV reading
