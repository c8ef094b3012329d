"""Pick tables in text: the package's own CSV and CSV / TSV / whitespace tables of other tools.

What is read
------------
* **Delimiter**, sniffed from the first data lines: of comma, tab, ``|`` and ``;``, the
  one most frequent in the first line that every sampled line holds; otherwise runs of
  whitespace. ``delimiter=`` forces
  one (``"whitespace"`` for runs of blanks).
* **Header**, sniffed: the first row is a header when it names a coordinate column or
  holds a field that is not a number among its first three. A table without header is
  read as ``x y z`` (then further columns become features ``column4``, ...), the order of
  TomoTwin / crYOLO ``.coords`` files and of IMOD ``model2point`` output.
* **Coordinates** by column name, case-insensitive, punctuation ignored: ``x`` / ``y`` /
  ``z``, ``coordinate_x``, ``coord_x``, ``pos_x``, ``position_x``, ``center_x``,
  ``rlnCoordinateX`` and the same names with ``Angst`` / ``_angstrom`` appended (which
  mark the column as Angstrom), or followed by a unit in brackets as TARDIS (tardis-em)
  writes its CSV (``IDs,X [A],Y [A],Z [A]``): ``[A]`` / ``[Å]`` Angstrom, ``[nm]``
  nanometres (times 10), ``[px]`` / ``[voxel]`` voxels. napari's own points CSV
  (``axis-0``, ``axis-1``, ``axis-2``) is ZYX. Whatever the column order, :class:`Picks`
  coordinates are ZYX.
* **Units**: ``units="voxel"`` (default) or ``units="angstrom"``; Angstrom are divided by
  ``voxel_size``, which is then required. copick's CSV (``run_name,x,y,z,transform_00``
  ... ``transform_33,score,instance_id``, copick's ``write_picks_csv``) is Angstrom by
  default, and each row's translation ``transform_03/13/23`` is added to ``x y z``
  (copick's centre, as for its JSON; ``apply_shifts=False`` keeps x y z alone). Voxel coordinates are taken as 0-based voxel
  indices (a centre at an integer), as this package writes them.
* **Other columns**: score (``score``, ``confidence``, ``rlnAutopickFigureOfMerit``),
  label (``label``: 0-based, -1 unknown; ``rlnClassNumber``: 1-based), class name
  (``class_name``, ``class``, ``object``, ``pickable_object_name``), tomogram
  (``tomo_name``, ``tomo``, ``tomogram``, ``rlnTomoName``, ``run_name``, ...). The rest
  become features.
* **The package's own CSV** (written by :func:`napari_cryoguard.io.write_picks`): comment
  lines before the header carry ``# voxel_size: 10.0``, ``# class_names: ["a", "b"]`` (a
  JSON list of strings, nothing else) and ``# features: {"name": [dtype, width]}``, so
  that every column reads back with its dtype and shape.

Limits, checked before anything is allocated: at most :data:`MAX_CLASSES` classes (label
values and class-name lists) and feature widths no wider than the table. A UTF-8 byte
order mark is accepted. Repeated column names are refused, as are two columns naming the
same axis.

Everything assumed or converted is written to :attr:`Picks.notes`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io import coords as _coords
from napari_cryoguard.io._reading import check_finite_coords, read_limited_text
from napari_cryoguard.io.picks import Picks, positive_voxel_size, voxel_size_or_assumed

MAX_CLASSES = 100_000
"""Most classes a pick table may define (label values, class-name lists)."""

MAX_FILE_BYTES = 2 * 1024**3
"""Largest pick table read (bytes)."""

_DELIMITERS = {",": "comma", "\t": "tab", "|": "pipe", ";": "semicolon"}
_WIDE = re.compile(r"^(?P<name>.+)\[(?P<j>\d+)\]$")

_AXIS_STEMS = ("", "coordinate", "coord", "pos", "position", "center", "centre", "rlncoordinate")
_ANGSTROM_ENDINGS = ("angst", "angstrom", "angstroms", "ang")
_SCORE_NAMES = ("score", "confidence", "rlnautopickfigureofmerit")
_LABEL_NAMES = ("label",)
_CLASS_NUMBER_NAMES = ("rlnclassnumber",)
_CLASS_NAME_NAMES = ("classname", "class", "object", "objectname", "pickableobjectname")
_TOMO_NAMES = (
    "tomoname", "tomo", "tomogram", "tomogramname", "tomoid", "rlntomoname", "runname", "run",
    "tiltseries", "tsname",
)
_NAPARI_AXES = {"axis0": "z", "axis1": "y", "axis2": "x"}
_COPICK_SHIFTS = ("transform_03", "transform_13", "transform_23")  # x, y, z translation


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


_UNIT_IN_BRACKETS = re.compile(r"^(?P<name>.*?)[\s_]*[\[(]\s*(?P<unit>[^\])]+?)\s*[\])]\s*$")
_BRACKET_UNITS = {
    "a": 1.0, "\u00e5": 1.0, "\u212b": 1.0, "ang": 1.0, "angst": 1.0, "angstrom": 1.0,
    "angstroms": 1.0, "nm": 10.0, "nanometer": 10.0, "nanometers": 10.0, "nanometre": 10.0,
    "px": None, "pix": None, "pixel": None, "pixels": None, "voxel": None, "voxels": None,
    "vx": None,
}


def _axis_of(name: str) -> tuple[str, float | None] | None:
    """(axis, Angstrom per unit or None for voxels) a column name stands for, or None.

    A unit may follow the name in brackets, as TARDIS writes ``X [A]``: ``[A]`` / ``[Å]``
    (Angstrom), ``[nm]``, ``[px]`` / ``[voxel]``; or be appended (``xAngst``).
    """
    factor: float | None = None
    m = _UNIT_IN_BRACKETS.match(name.strip())
    if m and m.group("unit").strip().lower() in _BRACKET_UNITS:
        factor = _BRACKET_UNITS[m.group("unit").strip().lower()]
        name = m.group("name")
    n = _norm(name)
    if n in _NAPARI_AXES:
        return _NAPARI_AXES[n], factor
    for end in _ANGSTROM_ENDINGS:
        if len(n) > len(end) and n.endswith(end):
            n, factor = n[: -len(end)], 1.0
            break
    for axis in "xyz":
        for stem in _AXIS_STEMS:
            if n in (stem + axis, axis + stem) and n:
                return axis, factor
    return None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- reading text


def _split_comments(text: str) -> tuple[dict[str, str], list[str]]:
    """Metadata of the leading ``# key: value`` lines, and the data lines (no comments)."""
    meta: dict[str, str] = {}
    data: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            if not data:
                key, sep, value = stripped.lstrip("#").strip().partition(":")
                if sep and key.strip():
                    meta[key.strip()] = value.strip()
            continue
        data.append(line)
    return meta, data


def _sniff_delimiter(lines: list[str]) -> str | None:
    """The one of ``, \\t | ;`` most frequent in the first line that every sampled line holds."""
    sample = lines[:50]
    best, best_count = None, 0
    for d in _DELIMITERS:
        first = _count_outside_quotes(sample[0], d)
        if first > best_count and all(_count_outside_quotes(line, d) > 0 for line in sample):
            best, best_count = d, first
    return best


def _count_outside_quotes(line: str, delim: str) -> int:
    try:
        rows = list(csv.reader([line], delimiter=delim))
    except csv.Error:
        return line.count(delim)
    return len(rows[0]) - 1 if rows else 0


def _rows(path: Path, lines: list[str], delimiter: str | None) -> tuple[list[list[str]], str]:
    if delimiter is None:
        delimiter = _sniff_delimiter(lines) or "whitespace"
    if delimiter in ("whitespace", " ", "space"):
        return [line.split() for line in lines], "whitespace"
    if delimiter not in _DELIMITERS:
        raise CryoGuardError(
            f"{path.name}: delimiter {delimiter!r} not understood; use one of "
            f"{', '.join(repr(d) for d in _DELIMITERS)} or 'whitespace'"
        )
    try:
        rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter))
    except csv.Error as err:
        raise CryoGuardError(f"{path.name}: could not parse the table: {err}") from err
    return [[f.strip() for f in r] for r in rows if r], _DELIMITERS[delimiter]


# --------------------------------------------------------------------------- columns


def _parse(strings: list[str] | np.ndarray, dtype: str | None, what: str, path: Path) -> np.ndarray:
    """A column of strings as an array; ``dtype`` None infers int, then float, then str
    (the STAR reader's parser, with the file named in its errors)."""
    try:
        return _coords._parse_column(np.asarray(strings, dtype=str), dtype, what)
    except CryoGuardError as err:
        raise CryoGuardError(f"{path.name}: {err}") from None


def _numbers(strings, target, what: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(strings, dtype=str).astype(target)
    except (ValueError, OverflowError) as err:
        kind = "numbers" if target is np.float64 else "integers"
        raise CryoGuardError(f"{path.name}: column {what!r} must hold {kind}: {err}") from err


def _class_names_meta(value: str, path: Path) -> list[str]:
    try:
        names = json.loads(value)
    except (ValueError, RecursionError) as err:
        raise CryoGuardError(
            f"{path.name}: the '# class_names:' line must be a JSON list of strings, "
            f"got {value[:60]!r} ({err})"
        ) from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CryoGuardError(
            f"{path.name}: the '# class_names:' line must be a JSON list of strings such as "
            f'["ribosome"], got {type(names).__name__} {value[:60]!r}'
        )
    if len(names) > MAX_CLASSES:
        raise CryoGuardError(
            f"{path.name}: {len(names)} class names is more than the limit of {MAX_CLASSES}"
        )
    return names


def _features_meta(value: str, path: Path, n_columns: int) -> dict[str, tuple[str, int]]:
    try:
        raw = json.loads(value)
    except (ValueError, RecursionError) as err:
        raise CryoGuardError(f"{path.name}: bad '# features:' line: {err}") from err
    if not isinstance(raw, dict):
        raise CryoGuardError(f"{path.name}: the '# features:' line must be a JSON object")
    out: dict[str, tuple[str, int]] = {}
    for k, v in raw.items():
        if (
            not isinstance(v, list) or len(v) != 2 or not isinstance(v[0], str)
            or not isinstance(v[1], int) or isinstance(v[1], bool)
        ):
            raise CryoGuardError(
                f"{path.name}: feature {k!r} in the '# features:' line must be [dtype, width], "
                f"got {v!r}"
            )
        if not 0 <= v[1] <= n_columns:
            raise CryoGuardError(
                f"{path.name}: feature {k!r} claims width {v[1]}, but the table has only "
                f"{n_columns} columns"
            )
        out[str(k)] = (v[0], v[1])
    return out


def _classes_from_rows(
    path: Path, row_names: np.ndarray, labels: np.ndarray | None
) -> tuple[list[str], np.ndarray]:
    if labels is None:
        names = list(dict.fromkeys(row_names.tolist()))
        if len(names) > MAX_CLASSES:
            raise CryoGuardError(f"{path.name}: more than {MAX_CLASSES} distinct class names")
        lookup = {c: i for i, c in enumerate(names)}
        return names, np.array([lookup[c] for c in row_names.tolist()], dtype=np.int64)
    size = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    if size > MAX_CLASSES:
        raise CryoGuardError(
            f"{path.name}: label {size - 1} would need {size} classes, more than the limit "
            f"of {MAX_CLASSES}"
        )
    names = [f"class {i + 1}" for i in range(size)]
    for lab, nm in zip(labels.tolist(), row_names.tolist(), strict=True):
        if lab >= 0 and nm:
            names[lab] = nm
    return names, labels


def _check_labels(path: Path, labels: np.ndarray, class_names: list[str] | None) -> None:
    if len(labels) == 0:
        return
    if labels.min() < -1:
        raise CryoGuardError(
            f"{path.name}: labels must be >= -1 (-1 = unknown), found {int(labels.min())}"
        )
    if labels.max() >= MAX_CLASSES:
        raise CryoGuardError(
            f"{path.name}: label {int(labels.max())} exceeds the limit of {MAX_CLASSES} classes"
        )
    if class_names is not None and labels.max() >= len(class_names):
        raise CryoGuardError(
            f"{path.name}: label {int(labels.max())} but only {len(class_names)} class names"
        )


# --------------------------------------------------------------------------- reader


def read_table_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                     tomograms: Any = None, units: str | None = None,
                     delimiter: str | None = None, header: bool | None = None,
                     apply_shifts: bool = True) -> Picks:
    """Read picks from a CSV, TSV or whitespace table (the package's own or another tool's).

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`~napari_cryoguard.io.read_picks` (``tomograms`` is not used). The
        columns understood are in the module docstring. ``voxel_size`` overrides the
        file's ``# voxel_size:`` line and is required with ``units="angstrom"`` (or
        Angstrom column names); without either, 1.0 is assumed, with a warning and a note.
    units : {"voxel", "angstrom"}, optional
        What the coordinate columns hold; default voxels, except copick's CSV (Angstrom).
    apply_shifts : bool
        copick CSV: add each row's ``transform_03/13/23`` (Angstrom) to ``x y z``
        (default, copick's particle centre); False reads ``x y z`` alone.
    delimiter : str, optional
        ``","``, ``"\\t"``, ``"|"``, ``";"`` or ``"whitespace"``; sniffed when not given.
    header : bool, optional
        Whether the first row names the columns; sniffed when not given. Without a
        header the columns are ``x y z`` and then features ``column4``, ...

    Returns
    -------
    Picks
        ZYX voxel coordinates; ``notes`` says what was sniffed, assumed or converted.

    Raises
    ------
    CryoGuardError
        Unreadable or non-UTF-8 file, no rows, ragged rows, repeated or ambiguous column
        names, missing coordinate columns (the found ones are listed), non-numeric or
        non-finite coordinates, Angstrom without a voxel size, bad metadata lines, sizes
        over the limits.
    """
    del tomograms
    path = Path(path)
    if units not in (None, "voxel", "angstrom"):
        raise CryoGuardError(f"units must be 'voxel' or 'angstrom', got {units!r}")
    if voxel_size is not None:
        voxel_size = positive_voxel_size(voxel_size, source=path.name)
    text = read_limited_text(path, MAX_FILE_BYTES, "a pick table")
    meta, lines = _split_comments(text)
    own = text.lstrip().startswith("# napari-cryoguard picks")
    notes: list[str] = []
    if not lines:
        raise CryoGuardError(f"{path.name}: no header row and no data; expected columns z,y,x")
    rows, delim_name = _rows(path, lines, delimiter)
    first = rows[0]
    if header is None:
        header = any(_axis_of(f) for f in first) or not all(_is_number(f) for f in first[:3])
    if header:
        names = [h.strip() for h in first]
        body = rows[1:]
    else:
        if len(first) < 3:
            raise CryoGuardError(
                f"{path.name}: a table without header needs at least 3 columns (x y z), "
                f"the first row has {len(first)}"
            )
        names = ["x", "y", "z"] + [f"column{j + 1}" for j in range(3, len(first))]
        body = rows
        notes.append(
            f"{path.name} has no header row; its columns were read as x, y, z"
            + (f" and {len(first) - 3} further column(s) as features" if len(first) > 3 else "")
        )
    if not own:
        notes.append(f"{path.name}: {delim_name}-separated table")
    for i, r in enumerate(body):
        if len(r) != len(names):
            raise CryoGuardError(
                f"{path.name}: data row {i + 1} has {len(r)} fields, the header has {len(names)}"
            )
    seen: set[str] = set()
    for h in names:
        if h in seen:
            raise CryoGuardError(
                f"{path.name}: column {h!r} appears more than once in the header; "
                "each column name must be unique"
            )
        seen.add(h)
    n = len(body)
    columns = list(zip(*body, strict=True)) if body else [() for _ in names]
    table = {h: np.array(col, dtype=object) for h, col in zip(names, columns, strict=True)}
    # columns the '# features:' line declares are features, whatever their names look like
    # (a feature '_x' or 'Score' written by write_picks must not be read as x or the score)
    feature_meta = _features_meta(meta["features"], path, len(names)) if "features" in meta else {}
    declared = {c for name, (_, width) in feature_meta.items()
                for c in ([name] if width == 0 else [f"{name}[{j}]" for j in range(width)])}

    # ---- coordinates
    axes: dict[str, tuple[str, float | None]] = {}
    for h in names:
        hit = None if h in declared else _axis_of(h)
        if hit is None:
            continue
        axis, ang = hit
        if axis in axes:
            raise CryoGuardError(
                f"{path.name}: columns {axes[axis][0]!r} and {h!r} both name the {axis} "
                "coordinate; keep one"
            )
        axes[axis] = (h, ang)
    missing = [a for a in ("z", "y", "x") if a not in axes]
    if missing:
        raise CryoGuardError(
            f"{path.name}: missing coordinate column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(names) or '(none)'}"
        )
    zyx = [axes[a][0] for a in ("z", "y", "x")]
    if any(_norm(c) in _NAPARI_AXES for c in zyx):
        notes.append(f"{path.name}: napari axis-0/1/2 columns read as z, y, x")
    factors = {axes[a][1] for a in "zyx"}
    if len(factors) > 1:
        raise CryoGuardError(
            f"{path.name}: the coordinate columns are not all in the same unit "
            f"({', '.join(zyx)})"
        )
    factor = factors.pop()
    copick = set(_COPICK_SHIFTS) <= set(names) and "run_name" in names
    if copick and units is None:
        units = "angstrom"
        notes.append(f"{path.name}: copick CSV (run_name, x, y, z, transform_00..33): "
                     "coordinates in Angstrom")
    in_angstrom = units == "angstrom" or factor is not None
    used = set(zyx)
    coords = (
        np.stack([_numbers(table[c], np.float64, c, path) for c in zyx], axis=1)
        if n
        else np.zeros((0, 3))
    )
    if copick and not in_angstrom:
        notes.append(f"{path.name}: copick CSV read in voxels (units='voxel'): its "
                     "transform_03/13/23 translations (Angstrom) are not applied")
    elif copick and apply_shifts and n:
        shift = np.stack([_numbers(table[c], np.float64, c, path) for c in _COPICK_SHIFTS[::-1]],
                         axis=1)
        if np.any(shift != 0):
            coords = coords + shift  # copick: centre = location + translation (docs/geometry.md)
            notes.append(f"{path.name}: {int(np.any(shift != 0, axis=1).sum())} row(s) moved "
                         "by their transform_03/13/23 (copick's centre is x y z + the "
                         "matrix's translation, Angstrom); apply_shifts=False reads x y z alone")
    check_finite_coords(coords, path)

    lower = {_norm(h): h for h in reversed(names) if h not in used and h not in declared}

    def take(candidates: tuple[str, ...]) -> tuple[str, np.ndarray] | tuple[None, None]:
        for cand in candidates:
            col = lower.get(cand)
            if col is not None and col not in used:
                used.add(col)
                return col, table[col]
        return None, None

    # ---- metadata lines
    class_names = None
    if "class_names" in meta:
        class_names = _class_names_meta(meta["class_names"], path)

    # ---- scores, labels, names
    col, s = take(_SCORE_NAMES)
    scores = None if s is None else _numbers(s, np.float64, col, path)
    labels = None
    col, lab = take(_LABEL_NAMES)
    if lab is not None:
        labels = _numbers(lab, np.int64, col, path)
    else:
        col, num = take(_CLASS_NUMBER_NAMES)
        if num is not None:
            numbers = _numbers(num, np.int64, col, path)
            labels = np.where(numbers > 0, numbers - 1, -1).astype(np.int64)
            notes.append(f"{path.name}: {col} is 1-based; labels = {col} - 1 (0 -> unknown)")
    col, rn = take(_CLASS_NAME_NAMES)
    row_names = None if rn is None else np.asarray(rn, dtype=str)
    col_t, t = take(_TOMO_NAMES)
    tomo_names = None if t is None else np.asarray(t, dtype=str)
    if tomo_names is not None and not own and col_t is not None:
        notes.append(f"{path.name}: tomogram names from column {col_t!r}")
    if class_names is None and row_names is not None:
        class_names, labels = _classes_from_rows(path, row_names, labels)
    if labels is not None:
        _check_labels(path, labels, class_names)

    # ---- features
    features: dict[str, np.ndarray] = {}
    for name, (dtype, width) in feature_meta.items():
        if width == 0:
            if name in table and name not in used:
                features[name] = _parse(table[name], dtype, name, path)
                used.add(name)
        else:
            cols = [f"{name}[{j}]" for j in range(width)]
            if all(c in table and c not in used for c in cols):
                parts = [_parse(table[c], dtype, c, path) for c in cols]
                features[name] = np.stack(parts, axis=1)
                used.update(cols)
    for h in names:
        if h not in used:
            features[h] = _parse(table[h], None, h, path)

    # ---- voxel size and units
    if voxel_size is None and "voxel_size" in meta:
        voxel_size = positive_voxel_size(meta["voxel_size"], source=path.name)
    if in_angstrom:
        if voxel_size is None:
            raise CryoGuardError(
                f"{path.name}: coordinates are in Angstrom ({', '.join(zyx)}); give voxel_size= "
                "(Angstrom per voxel of the tomogram) to convert them to voxels"
            )
        if factor not in (None, 1.0):
            coords = coords * factor
            notes.append(
                f"{path.name}: coordinate columns in nanometres ({', '.join(zyx)}) multiplied "
                f"by {factor:g} to Angstrom"
            )
        coords = coords / voxel_size
        notes.append(
            f"{path.name}: coordinates in Angstrom divided by the voxel size {voxel_size:g} A "
            "(0 A = centre of voxel 0)"
        )
    elif voxel_size is None:
        warnings.warn(
            f"{path.name} does not say its voxel size; using 1.0 Angstrom (pass voxel_size=)",
            UserWarning,
            stacklevel=3,
        )
        voxel_size = voxel_size_or_assumed(None, path.name, notes)
    return Picks(coords=coords, scores=scores, labels=labels, class_names=class_names,
                 tomo_names=tomo_names, features=features, voxel_size=float(voxel_size),
                 notes=notes)
