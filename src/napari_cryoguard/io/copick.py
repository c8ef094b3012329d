"""copick picks (``<user>_<session>_<object>.json``): points in Angstrom, one object per file.

A copick picks file (the ``CopickPicksFile`` model of copick) is a JSON object with
``pickable_object_name``, ``user_id``, ``session_id``, ``run_name`` (the tomogram),
``voxel_spacing`` (often null), ``unit`` (``"angstrom"``) and ``points``: a list of
``{"location": {"x", "y", "z"}, "transformation_": 4x4, "instance_id", "score"}``.

Conventions implemented here:

* ``location`` is the particle centre in Angstrom from the centre of the tomogram's first
  voxel, so voxel index = location / voxel size, with no half-voxel shift. Checked in
  copick's own tools: copick-utils (github.com/copick/copick-utils,
  ``src/copick_utils/converters/segmentation_from_picks.py``, commit 35823f9f,
  ``from_picks``) paints each pick as a sphere centred at ``location / voxel_spacing``
  on the grid ``np.indices(shape)`` of the (z, y, x) volume, i.e. voxel ``i`` of that
  array is at ``i * voxel_spacing`` Angstrom; and copick itself, reading CryoET Data
  Portal point annotations (voxel indices) as picks (github.com/copick/copick,
  ``src/copick/impl/cryoet_data_portal.py``, commit e3537cbe), sets ``location.x =
  portal x * voxel_spacing`` (likewise y, z) with no offset; the Portal's ingestion
  does the inverse (github.com/chanzuckerberg/cryoet-data-portal-backend,
  ``ingestion_tools/scripts/common/point_converter.py``, ``_from_copick``, commit
  f8782213: voxel = location / spacing, rotation = ``transformation_[:3, :3]``).
* ``voxel_size=`` is the voxel size of the tomogram the coordinates should index; when
  it is not given, that of the tomogram given as ``tomograms=`` (a
  :class:`~napari_cryoguard.io.Tomogram` or a tomogram file, e.g. the run's OME-Zarr),
  else the file's ``voxel_spacing`` is used, with a note; when none is there the
  reader refuses (a guess would misplace every pick).
* The picks' :attr:`~napari_cryoguard.io.Picks.origin_zyx` is ``(0, 0, 0)``: copick's
  frame (its ``docs/geometry.md``: physical = voxel x spacing). A tomogram given as
  ``tomograms=`` whose OME-Zarr level has a ``translation`` gets the picks at
  ``(location - translation) / voxel size`` (:meth:`~napari_cryoguard.io.Picks.on_tomogram`
  does the same later for picks read without it), with a note.
* ``transformation_`` (row-major 4x4, object space -> tomogram space) holds the
  orientation ``R = T[:3, :3]`` and a translation ``t = T[:3, 3]`` in Angstrom. copick's
  own convention (its ``docs/geometry.md``, section 2.3 "Relationship Between Position
  and Transform", commit 369fb631) is that the particle centre is ``location + t`` (the
  translation carries refined shifts, e.g. Dynamo's ``dx dy dz`` that copick's
  ``dynamo_to_copick_transform`` stores there), and copick's RELION exporter
  (``copick/util/relion.py``, ``picks_to_df_relion``, commit eaa2ec68) writes
  ``points += transforms[:, :3, 3]``. This reader does the same: the voxel position is
  ``(location + t) / voxel size``, with a note naming how many points were shifted;
  ``apply_shifts=False`` keeps ``location`` alone. The rotation is never applied to the
  position: when some point's matrix is not the identity the 16 values (as in the file)
  are kept as the feature ``copick_transformation`` (N, 16).
* The object name is the class (``class_names = [pickable_object_name]``, labels 0);
  ``run_name`` fills ``tomo_names`` (when it is null, as in files the CryoET Data
  Portal ingests, and the file lies in a copick project at
  ``ExperimentRuns/<run>/Picks/``, the run folder's name is used, with a note);
  ``score`` and ``instance_id`` are kept.

A JSON list of such objects (several objects or runs in one file) is read as their
concatenation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io._reading import read_limited
from napari_cryoguard.io.picks import Picks, positive_voxel_size

MAX_FILE_BYTES = 512 * 1024**2
"""Largest copick JSON read (bytes)."""

_IDENTITY = np.eye(4).ravel()


def _number(value: Any, what: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CryoGuardError(f"{path.name}: {what} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise CryoGuardError(f"{path.name}: {what} is not finite ({value!r})")
    return v


def _one_object(path: Path, obj: Any, index: int) -> dict[str, Any]:
    where = "" if index < 0 else f" (entry {index})"
    if not isinstance(obj, dict):
        raise CryoGuardError(
            f"{path.name}{where}: expected a copick picks object, got {type(obj).__name__}"
        )
    if "points" not in obj or "pickable_object_name" not in obj:
        raise CryoGuardError(
            f"{path.name}{where}: not a copick picks file: needs 'pickable_object_name' and "
            f"'points', found keys {sorted(obj)[:12]}"
        )
    unit = obj.get("unit", "angstrom")
    if unit is not None and str(unit).lower() not in ("angstrom", "a", "angstroms"):
        raise CryoGuardError(
            f"{path.name}{where}: unit {unit!r} not understood; copick picks are in 'angstrom'"
        )
    points = obj["points"] or []
    if not isinstance(points, list):
        raise CryoGuardError(f"{path.name}{where}: 'points' must be a list")
    name = obj["pickable_object_name"]
    if not isinstance(name, str):
        raise CryoGuardError(
            f"{path.name}{where}: 'pickable_object_name' must be a string, got {name!r}"
        )
    run = obj.get("run_name")
    xyz = np.empty((len(points), 3))
    scores = np.ones(len(points))
    inst = np.zeros(len(points), dtype=np.int64)
    mats = np.tile(_IDENTITY, (len(points), 1))
    for i, p in enumerate(points):
        if not isinstance(p, dict) or not isinstance(p.get("location"), dict):
            raise CryoGuardError(f"{path.name}{where}: point {i} has no 'location' object")
        loc = p["location"]
        for j, a in enumerate("xyz"):
            if a not in loc:
                raise CryoGuardError(f"{path.name}{where}: point {i} location lacks {a!r}")
            xyz[i, j] = _number(loc[a], f"point {i} location.{a}", path)
        if p.get("score") is not None:
            scores[i] = _number(p["score"], f"point {i} score", path)
        if p.get("instance_id") is not None:
            inst[i] = int(_number(p["instance_id"], f"point {i} instance_id", path))
        t = p.get("transformation_", p.get("transformation"))
        if t is not None:
            m = np.asarray(t, dtype=object)
            if m.shape != (4, 4):
                raise CryoGuardError(f"{path.name}{where}: point {i} transformation is not 4x4")
            mats[i] = [_number(v, f"point {i} transformation", path) for v in m.ravel()]
    return {
        "xyz": xyz, "scores": scores, "instance": inst, "mats": mats, "name": name,
        "run": None if run is None else str(run), "spacing": obj.get("voxel_spacing"),
    }


def _run_from_folder(path: Path) -> str | None:
    """The run of a file at ``.../ExperimentRuns/<run>/Picks/<file>.json`` (copick's layout)."""
    parts = path.resolve().parts
    if len(parts) >= 4 and parts[-2] == "Picks" and parts[-4] == "ExperimentRuns":
        return parts[-3]
    return None


def _project_spacings(path: Path) -> list[float]:
    """The voxel sizes of the ``VoxelSpacing<size>`` folders of the copick run a file at
    ``ExperimentRuns/<run>/Picks/`` belongs to (empty elsewhere)."""
    if _run_from_folder(path) is None:
        return []
    out = []
    try:
        for d in path.resolve().parent.parent.iterdir():
            if d.is_dir() and d.name.startswith("VoxelSpacing"):
                try:
                    v = float(d.name[len("VoxelSpacing"):])
                except ValueError:
                    continue
                if np.isfinite(v) and v > 0:
                    out.append(v)
    except OSError:
        return []
    return sorted(out)


def read_copick_picks(path: str | os.PathLike, *, voxel_size: float | None = None,
                      tomograms: Any = None, apply_shifts: bool = True) -> Picks:
    """Read a copick picks JSON file (Angstrom) as voxel picks.

    Parameters
    ----------
    path, voxel_size, tomograms
        As for :func:`~napari_cryoguard.io.read_picks`: the ``.json`` picks file (one
        object, or a list of them); ``voxel_size`` of the tomogram to index into
        defaults to that of ``tomograms`` when it is one tomogram (a ``Tomogram`` or a
        tomogram file; other values are not used), else to the file's
        ``voxel_spacing`` (one of them is required). A tomogram's OME-Zarr translation
        is applied.
    apply_shifts : bool
        Add the translation column of each ``transformation_`` (Angstrom) to its
        ``location``, copick's convention for the particle centre (default); False
        reads ``location`` alone.

    Returns
    -------
    Picks
        ZYX voxel coordinates, class = object name, tomogram = run name, scores, and
        features ``instance_id`` (and ``copick_transformation`` when not identity).

    Raises
    ------
    CryoGuardError
        Not JSON, not copick picks, non-numeric or non-finite values, unit not Angstrom,
        no voxel size known.
    """
    path = Path(path)
    tomo = _one_tomogram(tomograms)
    raw = read_limited(path, MAX_FILE_BYTES, "a picks file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CryoGuardError(f"{path.name} is not valid JSON: {err}") from err
    objs = [_one_object(path, o, i) for i, o in enumerate(data)] if isinstance(data, list) else [
        _one_object(path, data, -1)
    ]
    notes: list[str] = []
    if voxel_size is None and tomo is not None:
        voxel_size = float(tomo.voxel_size)
        notes.append(f"{path.name}: voxel size {voxel_size:g} A taken from tomogram "
                     f"{tomo.name!r}")
    if voxel_size is None:
        spacings = {float(o["spacing"]) for o in objs if isinstance(o["spacing"], (int, float))}
        folders = _project_spacings(path)
        if len(spacings) == 1:
            voxel_size = spacings.pop()
            notes.append(
                f"{path.name}: voxel size {voxel_size:g} A taken from the file's voxel_spacing"
            )
        elif not spacings and len(folders) == 1:
            voxel_size = folders[0]
            notes.append(
                f"{path.name}: voxel size {voxel_size:g} A taken from the run's only "
                f"tomogram folder VoxelSpacing{voxel_size:.3f} (copick project layout)"
            )
        else:
            seen = (f" (its run has tomograms at {', '.join(f'{v:g}' for v in folders)} A)"
                    if folders else "")
            raise CryoGuardError(
                f"{path.name}: copick picks are in Angstrom and the file gives "
                f"{'no' if not spacings else 'several'} voxel_spacing{seen}; pass "
                "voxel_size= (Angstrom per voxel of the tomogram) to convert them to voxels"
            )
    voxel_size = positive_voxel_size(voxel_size, source=path.name)
    class_names = list(dict.fromkeys(o["name"] for o in objs))
    lookup = {c: i for i, c in enumerate(class_names)}
    if not objs:
        raise CryoGuardError(f"{path.name}: an empty list holds no copick picks")
    xyz = np.concatenate([o["xyz"] for o in objs])
    mats = np.concatenate([o["mats"] for o in objs])
    labels = np.concatenate([np.full(len(o["xyz"]), lookup[o["name"]], np.int64) for o in objs])
    scores = np.concatenate([o["scores"] for o in objs])
    inst = np.concatenate([o["instance"] for o in objs])
    tomo_names = None
    folder_run = _run_from_folder(path)
    if folder_run is not None and any(o["run"] is None for o in objs):
        for o in objs:
            if o["run"] is None:
                o["run"] = folder_run
        notes.append(
            f"{path.name}: run_name is null; tomogram {folder_run!r} taken from the copick "
            "project folder (ExperimentRuns/<run>/Picks)"
        )
    if any(o["run"] is not None for o in objs):
        tomo_names = np.concatenate(
            [np.full(len(o["xyz"]), o["run"] or "", dtype=object) for o in objs]
        ).astype(str)
    features: dict[str, np.ndarray] = {"instance_id": inst}
    not_identity = ~np.isclose(mats, _IDENTITY).all(axis=1)
    shift = mats[:, [3, 7, 11]]
    shifted = np.abs(shift).max(axis=1) > 0 if len(mats) else np.zeros(0, bool)
    if not_identity.any():
        features["copick_transformation"] = mats
        notes.append(
            f"{path.name}: {int(not_identity.sum())} point(s) carry an orientation "
            "(transformation_); kept as feature copick_transformation (row-major 4x4); the "
            "rotation is not applied to the positions"
        )
    if shifted.any() and apply_shifts:
        xyz = xyz + shift
        notes.append(
            f"{path.name}: {int(shifted.sum())} transformation(s) have a translation part; "
            "added to location (copick's particle centre is location + translation, in "
            "Angstrom); apply_shifts=False reads location alone"
        )
    elif shifted.any():
        notes.append(
            f"{path.name}: {int(shifted.sum())} transformation(s) have a translation part; "
            "not applied (apply_shifts=False): positions are the 'location' values only"
        )
    coords = xyz[:, ::-1] / voxel_size
    notes.append(
        f"{path.name}: copick locations in Angstrom divided by {voxel_size:g} A per voxel "
        "(x, y, z -> z, y, x voxel indices)"
    )
    picks = Picks(coords=coords, scores=scores, labels=labels, class_names=class_names,
                  tomo_names=tomo_names, features=features, voxel_size=voxel_size,
                  notes=notes, origin_zyx=(0.0, 0.0, 0.0))
    if tomo is not None:
        picks = picks.at_voxel_size(voxel_size, origin_zyx=getattr(tomo, "translate_zyx", None),
                                    source=path.name)
    return picks


def _one_tomogram(tomograms: Any):
    """The tomogram ``tomograms=`` names when it is one (a Tomogram or a tomogram file),
    else None (a mapping or a tomograms.star, which copick picks do not need)."""
    from napari_cryoguard.io.relion import _is_tomogram, _is_tomogram_file

    if tomograms is None or isinstance(tomograms, (dict, list, tuple)):
        return None
    if _is_tomogram(tomograms):
        return tomograms
    if isinstance(tomograms, (str, os.PathLike)) and _is_tomogram_file(Path(tomograms)):
        from napari_cryoguard.io.mrc import read_tomogram

        tomo = read_tomogram(tomograms)
        tomo.close()  # only its voxel size, name and translation are used
        return tomo
    return None
