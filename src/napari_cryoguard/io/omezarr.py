"""Read local OME-Zarr (NGFF) tomograms lazily, choosing the multiscale level.

An OME-Zarr image is a Zarr group whose attributes hold ``multiscales`` (NGFF 0.4, in
``.zattrs``; NGFF 0.5 puts them under ``"ome"`` in ``zarr.json``). Each entry of
``datasets`` is one resolution level: a Zarr array at ``path`` with its own
``coordinateTransformations`` (a ``scale`` and optionally a ``translation``), which may
be followed by transformations for all levels at the ``multiscales`` level; scales
multiply. The CryoET Data Portal stores its tomograms this way, in Angstrom, with
levels 0, 1, 2 at 1x, 2x, 4x the voxel size.

What we read
    The last three axes must be spatial z, y, x (``axes`` names); leading axes of
    length 1 (t, c) are dropped. The voxel size of a level is its total ``scale`` on
    those axes, converted to Angstrom from the axes' ``unit`` (angstrom, nanometer,
    micrometer, ... as NGFF's UDUNITS-2 names). An axis without a unit is taken as
    Angstrom (the Portal's unit) and a note says so. The ``translation`` is kept as
    :attr:`Tomogram.origin_zyx` (Angstrom) but, as for MRC origins, not applied.

Which level
    ``voxel_size=None`` opens level 0 (full resolution). A requested voxel size opens
    the level whose X voxel size is nearest to it on a log scale (10 Angstrom asked, levels
    at 7.5, 15, 30: 7.5 is taken, |log 0.75| < |log 1.5|); a note names the level.

Laziness
    ``data`` is the ``zarr.Array`` itself (float32) or a
    :class:`~napari_cryoguard.io.mrc.LazyVolume` around it (other dtypes): chunks are
    read only when sliced; nothing is loaded at opening.

Needs the optional ``zarr`` package (``pip install napari-cryoguard[formats]``).
Format reference: OME-NGFF 0.4 specification, "multiscales" metadata.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError

_UNITS_TO_ANGSTROM = {
    "angstrom": 1.0,
    "å": 1.0,
    "a": 1.0,
    "nanometer": 10.0,
    "nm": 10.0,
    "micrometer": 1e4,
    "micron": 1e4,
    "µm": 1e4,
    "μm": 1e4,
    "um": 1e4,
    "\\u00b5m": 1e4,
    "millimeter": 1e7,
    "mm": 1e7,
    "picometer": 1e-2,
    "pm": 1e-2,
    "meter": 1e10,
    "m": 1e10,
}


def unit_to_angstrom(unit: str, where: str) -> float:
    """Angstrom per ``unit`` (NGFF / UDUNITS names, ImageJ and OME abbreviations).

    Raises :class:`CryoGuardError` naming ``where`` for a unit that is not a length.
    """
    key = str(unit).strip().lower()
    if key not in _UNITS_TO_ANGSTROM:
        raise CryoGuardError(
            f"{where}: unknown length unit {unit!r}; expected one of angstrom, nanometer, "
            "micrometer (or Å, nm, µm)"
        )
    return _UNITS_TO_ANGSTROM[key]


def _zarr():
    try:
        import zarr
    except ImportError as err:
        raise CryoGuardError(
            "reading OME-Zarr tomograms needs the zarr package: install napari-cryoguard[formats]"
        ) from err
    return zarr


def _scale_of(transforms: Any, ndim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Total scale and translation of a list of NGFF coordinate transformations."""
    scale = np.ones(ndim)
    shift = np.zeros(ndim)
    if transforms is not None and not isinstance(transforms, list):
        raise CryoGuardError(f"{where}: coordinateTransformations must be a list, got {transforms!r}")
    for t in transforms or []:
        if not isinstance(t, dict):
            raise CryoGuardError(f"{where}: a coordinateTransformation is not an object: {t!r}")
        kind = t.get("type")
        if kind == "identity":
            continue
        if kind not in ("scale", "translation"):
            raise CryoGuardError(
                f"{where}: coordinateTransformation type {kind!r} is not supported "
                "(expected scale or translation)"
            )
        if "path" in t and kind not in t:
            raise CryoGuardError(f"{where}: {kind} stored in a separate array is not supported")
        try:
            values = np.asarray(t.get(kind), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise CryoGuardError(f"{where}: {kind} {t.get(kind)!r} is not a list of numbers") from err
        if values.shape != (ndim,) or not np.all(np.isfinite(values)):
            raise CryoGuardError(
                f"{where}: {kind} {t.get(kind)!r} must hold {ndim} finite numbers (one per axis)"
            )
        if kind == "scale":
            shift = shift * values
            scale = scale * values
        else:
            shift = shift + values
    return scale, shift


def _multiscales(attrs: dict, name: str) -> dict:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")  # NGFF 0.5
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise CryoGuardError(
            f"{name} is not an OME-Zarr image: its Zarr attributes have no 'multiscales' list"
        )
    return ms[0]


def _axes(ms: dict, ndim: int, name: str) -> list[dict]:
    axes = ms.get("axes")
    if axes is None:  # NGFF 0.1/0.2: always t, c, z, y, x
        axes = ["t", "c", "z", "y", "x"][-ndim:]
    if not isinstance(axes, list):
        raise CryoGuardError(f"{name}: multiscales 'axes' must be a list, got {axes!r}")
    out = []
    for a in axes:
        out.append({"name": a} if isinstance(a, str) else dict(a) if isinstance(a, dict) else {})
    if len(out) != ndim:
        raise CryoGuardError(f"{name}: multiscales lists {len(out)} axes, the arrays have {ndim}")
    names = [str(a.get("name", "")).lower() for a in out[-3:]]
    if names != ["z", "y", "x"]:
        raise CryoGuardError(
            f"{name}: the last three axes are {names}; a tomogram needs z, y, x"
        )
    return out


def read_omezarr(path: str | os.PathLike, *, voxel_size: float | Sequence[float] | None = None):
    """Open a local OME-Zarr tomogram lazily as a :class:`~napari_cryoguard.io.Tomogram`.

    Parameters
    ----------
    path : str or PathLike
        The OME-Zarr folder (``.zarr``), holding the ``multiscales`` group.
    voxel_size : float or (z, y, x), optional
        Angstrom: open the level nearest to it (by X voxel size, log scale). Default:
        level 0.

    Returns
    -------
    Tomogram
        ``name`` is the folder name without ``.zarr`` / ``.ome.zarr``; ``notes`` say
        which level was opened and any unit assumed.

    Raises
    ------
    CryoGuardError
        Missing folder or zarr, no multiscales, axes other than (.., z, y, x), unknown
        units, bad transformations, a missing level array.
    """
    from napari_cryoguard.io.mrc import LazyVolume, Tomogram, _valid_voxel_size

    zarr = _zarr()
    path = Path(path)
    name = path.name
    if not path.exists():
        raise CryoGuardError(f"tomogram folder not found: {path}")
    if not path.is_dir():
        raise CryoGuardError(f"{name} is not an OME-Zarr folder (a .zarr must be a directory)")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs.asdict())
    except Exception as err:  # zarr raises many kinds on a folder that is not a group
        raise CryoGuardError(f"{name} is not a readable Zarr group: {err}") from err
    ms = _multiscales(attrs, name)
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise CryoGuardError(f"{name}: multiscales has no 'datasets' (resolution levels)")
    notes: list[str] = []
    levels = []
    axes = None
    for i, ds in enumerate(datasets):
        if not isinstance(ds, dict) or "path" not in ds:
            raise CryoGuardError(f"{name}: multiscales dataset {i} has no 'path'")
        try:
            arr = group[str(ds["path"])]
        except Exception as err:  # KeyError, FileNotFoundError, zarr errors
            raise CryoGuardError(f"{name}: level {ds['path']!r} is listed but cannot be opened: "
                                 f"{err}") from err
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise CryoGuardError(f"{name}: level {ds['path']!r} is not an array")
        ndim = len(arr.shape)
        if ndim < 3:
            raise CryoGuardError(f"{name}: level {ds['path']!r} has shape {arr.shape}; a "
                                 "tomogram needs (z, y, x)")
        axes = _axes(ms, ndim, name)
        where = f"{name} level {ds['path']!r}"
        scale, shift = _scale_of(ds.get("coordinateTransformations"), ndim, where)
        top_scale, top_shift = _scale_of(ms.get("coordinateTransformations"), ndim, name)
        scale, shift = scale * top_scale, shift * top_scale + top_shift
        levels.append((str(ds["path"]), arr, scale[-3:], shift[-3:]))
    assert axes is not None
    factors = []
    for a in axes[-3:]:
        unit = a.get("unit")
        if unit is None:
            factors.append(1.0)
        else:
            factors.append(unit_to_angstrom(unit, f"{name} axis {a.get('name')!r} unit"))
    if any(a.get("unit") is None for a in axes[-3:]):
        notes.append(f"{name}: no unit on the z, y, x axes; Angstrom assumed (the CryoET Data "
                     "Portal's unit)")
    elif factors != [1.0, 1.0, 1.0]:
        units = [a.get("unit") for a in axes[-3:]]
        notes.append(f"{name}: axis units {units} converted to Angstrom")
    factors_arr = np.asarray(factors)
    sizes = [np.asarray(lv[2]) * factors_arr for lv in levels]
    for (lpath, _, _, _), vs in zip(levels, sizes, strict=True):
        if np.any(vs <= 0):
            raise CryoGuardError(f"{name} level {lpath!r}: scale {tuple(vs)} must be positive")
    if voxel_size is None:
        pick = 0
    else:
        want = _valid_voxel_size(voxel_size)[2]
        pick = min(range(len(levels)), key=lambda i: abs(math.log(sizes[i][2] / want)))
        notes.append(
            f"{name}: opened level {levels[pick][0]!r} at {sizes[pick][2]:g} Angstrom, the "
            f"nearest of {len(levels)} levels ({', '.join(f'{s[2]:g}' for s in sizes)} "
            f"Angstrom) to the {want:g} Angstrom asked for"
        )
    lpath, arr, _, shift = levels[pick]
    if len(arr.shape) > 3:
        lead = tuple(arr.shape[:-3])
        if any(s != 1 for s in lead):
            raise CryoGuardError(
                f"{name} level {lpath!r} has shape {tuple(arr.shape)} (axes "
                f"{[a.get('name') for a in axes]}); only one time point and channel can be a "
                "tomogram"
            )
        arr = _Squeezed(arr, len(lead))
    if int(arr.shape[-3]) == 1:
        raise CryoGuardError(
            f"{name} level {lpath!r} is a 2D image ({arr.shape[-1]} x {arr.shape[-2]}, z = 1); "
            "a tomogram needs z > 1"
        )
    vs = tuple(float(v) for v in sizes[pick])
    data: Any = arr if np.dtype(arr.dtype) == np.dtype(np.float32) else LazyVolume(arr)
    stem = name
    for suf in (".zarr", ".ome"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
    return Tomogram(
        data=data,
        voxel_size=vs[2],
        voxel_size_zyx=vs,  # type: ignore[arg-type]
        path=path,
        name=stem,
        shape=tuple(int(s) for s in arr.shape[-3:]),  # type: ignore[arg-type]
        origin_zyx=tuple(float(v) for v in np.asarray(shift) * factors_arr),  # type: ignore[arg-type]
        notes=notes,
    )


class _Squeezed:
    """A lazy (Z, Y, X) view of an array with leading length-1 axes (t, c)."""

    def __init__(self, arr: Any, lead: int) -> None:
        self._arr = arr
        self._lead = (0,) * lead

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._arr.shape[len(self._lead):])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._arr.dtype)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        return self._arr[self._lead + key]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self._arr[self._lead + (Ellipsis,)])
        return out if dtype is None else out.astype(dtype, copy=False)
