"""Read local OME-Zarr (NGFF) tomograms lazily, choosing the multiscale level.

An OME-Zarr image is a Zarr group whose attributes hold ``multiscales`` (NGFF 0.4, in
``.zattrs``; NGFF 0.5 puts them under ``"ome"`` in ``zarr.json``). Each entry of
``datasets`` is one resolution level: a Zarr array at ``path`` with its own
``coordinateTransformations`` (a ``scale`` and optionally a ``translation``), which may
be followed by transformations for all levels at the ``multiscales`` level; scales
multiply. The CryoET Data Portal stores its tomograms this way, in Angstrom, with
levels 0, 1, 2 at 1x, 2x, 4x the voxel size.

What we read
    The last three axes must be the spatial axes named z, y, x, in any order: NGFF
    lists the axes in the order of the array's dimensions, so ``axes`` x, y, z (as the
    CryoET Data Portal's own test fixture ``RUN1.zarr`` in cryoet-data-portal-backend's
    ``test_infra`` has them) means the first dimension is x; such an array is
    transposed lazily to (z, y, x), and a note says so. Leading axes of length 1 (t, c)
    are dropped. The voxel size of a level is its total ``scale`` on those axes,
    converted to Angstrom from the axes' ``unit`` (angstrom, nanometer, micrometer, ...
    as NGFF's UDUNITS-2 names). An axis without a unit is taken as Angstrom (the
    Portal's unit) and a note says so.

Translations
    A ``translation`` (the position of the first voxel's centre in world units, NGFF
    ``scale`` then ``translation``: world = index x scale + translation) is applied as
    :attr:`Tomogram.translate_zyx` (Angstrom; also kept as ``origin_zyx``): the napari
    layer is drawn there, so every level of a pyramid (whose binned levels are shifted
    by half a voxel, as ome-zarr-py and ngff-zarr write them) and the Angstrom pick
    files lie on one another in world coordinates, and
    :meth:`~napari_cryoguard.io.Picks.on_tomogram` turns Angstrom picks (copick: 0
    Angstrom at the centre of voxel 0 of the un-translated array) into this level's
    indices as ``(position - translation) / voxel size``. Picks given in voxels (RELION,
    Dynamo, ...) index the array they were made on and are not shifted. A note gives a
    non-zero translation. The CryoET Data Portal and copick write no translation.

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
    if sorted(names) != ["x", "y", "z"]:
        raise CryoGuardError(
            f"{name}: the last three axes are {names}; a tomogram needs z, y, x (in any order)"
        )
    return out


def _zyx_order(axes: list[dict]) -> tuple[int, int, int]:
    """For z, y, x: the index (among the last three axes) where each is stored."""
    names = [str(a.get("name", "")).lower() for a in axes[-3:]]
    return names.index("z"), names.index("y"), names.index("x")


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
        order = list(_zyx_order(axes))
        levels.append((str(ds["path"]), arr, scale[-3:][order], shift[-3:][order]))
    assert axes is not None
    perm = _zyx_order(axes)
    spatial = [axes[-3:][i] for i in perm]  # the z, y, x axes
    if perm != (0, 1, 2):
        stored = [str(a.get("name")) for a in axes[-3:]]
        notes.append(
            f"{name}: axes stored in the order {', '.join(stored)}; the array is read "
            "transposed to z, y, x"
        )
    factors = []
    for a in spatial:
        unit = a.get("unit")
        if unit is None:
            factors.append(1.0)
        else:
            factors.append(unit_to_angstrom(unit, f"{name} axis {a.get('name')!r} unit"))
    if any(a.get("unit") is None for a in spatial):
        notes.append(f"{name}: no unit on the z, y, x axes; Angstrom assumed (the CryoET Data "
                     "Portal's unit)")
    elif factors != [1.0, 1.0, 1.0]:
        units = [a.get("unit") for a in spatial]
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
    lead = tuple(arr.shape[:-3])
    if any(s != 1 for s in lead):
        raise CryoGuardError(
            f"{name} level {lpath!r} has shape {tuple(arr.shape)} (axes "
            f"{[a.get('name') for a in axes]}); only one time point and channel can be a "
            "tomogram"
        )
    if lead or perm != (0, 1, 2):
        arr = _Squeezed(arr, len(lead), perm)
    if int(arr.shape[-3]) == 1:
        raise CryoGuardError(
            f"{name} level {lpath!r} is a 2D image ({arr.shape[-1]} x {arr.shape[-2]}, z = 1); "
            "a tomogram needs z > 1"
        )
    vs = tuple(float(v) for v in sizes[pick])
    if max(vs) - min(vs) > 1e-3 * max(vs):
        notes.append(
            f"{name}: level {lpath!r} has voxels of {', '.join(f'{v:g}' for v in vs)} Angstrom "
            "(z, y, x), not cubic (ome-zarr-py's default Scaler bins y and x only); picks "
            "and subtomograms need cubic voxels: open a level with equal voxel sizes")
    data: Any = arr if np.dtype(arr.dtype) == np.dtype(np.float32) else LazyVolume(arr)
    origin = tuple(float(v) for v in np.asarray(shift) * factors_arr)
    if any(v != 0.0 for v in origin):
        notes.append(
            f"{name}: level {lpath!r} has a translation of {', '.join(f'{v:g}' for v in origin)} "
            "Angstrom (z, y, x): its first voxel's centre lies there; the napari layer is "
            "drawn there and Angstrom picks are placed relative to it (voxel picks are not "
            "shifted)"
        )
    stem = name
    for suf in (".zarr", ".ome"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
    parts = path.resolve().parts
    if (len(parts) >= 4 and parts[-2].startswith("VoxelSpacing")
            and parts[-4] == "ExperimentRuns"):
        # a copick project: ExperimentRuns/<run>/VoxelSpacing<size>/<type>.zarr
        notes.append(f"{name}: in a copick project; named after its run {parts[-3]!r} "
                     f"(tomogram type {stem!r}), the name copick picks give")
        stem = parts[-3]
    return Tomogram(
        data=data,
        voxel_size=vs[2],
        voxel_size_zyx=vs,  # type: ignore[arg-type]
        path=path,
        name=stem,
        shape=tuple(int(s) for s in arr.shape[-3:]),  # type: ignore[arg-type]
        origin_zyx=origin,  # type: ignore[arg-type]
        translate_zyx=origin,  # type: ignore[arg-type]
        notes=notes,
    )


class _Squeezed:
    """A lazy (Z, Y, X) view of an array with leading length-1 axes (t, c) and the
    spatial axes stored in any order.

    ``perm[i]`` is where output axis ``i`` (z, y, x) is stored among the last three
    axes. Integer and slice keys are passed to the array; the result is transposed.
    """

    def __init__(self, arr: Any, lead: int, perm: tuple[int, int, int] = (0, 1, 2)) -> None:
        self._arr = arr
        self._lead = (0,) * lead
        self._perm = tuple(perm)

    @property
    def shape(self) -> tuple[int, ...]:
        stored = tuple(int(s) for s in self._arr.shape[len(self._lead):])
        return tuple(stored[p] for p in self._perm)

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

    def _key(self, key: Any) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - (len(key) - 1))
            key = key[:i] + fill + key[i + 1:]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D volume: {len(key)}")
        return key + (slice(None),) * (3 - len(key))

    def __getitem__(self, key: Any) -> Any:
        if self._perm == (0, 1, 2):
            return self._arr[self._lead + (key if isinstance(key, tuple) else (key,))]
        key = self._key(key)
        if not all(isinstance(k, (slice, int, np.integer)) for k in key):
            return np.asarray(self)[key]
        stored: list[Any] = [slice(None)] * 3
        for i, k in enumerate(key):
            stored[self._perm[i]] = k
        out = np.asarray(self._arr[self._lead + tuple(stored)])
        kept = [self._perm[i] for i, k in enumerate(key) if isinstance(k, slice)]
        order = sorted(kept)
        return np.transpose(out, [order.index(p) for p in kept]) if len(kept) > 1 else out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self._arr[self._lead + (Ellipsis,)])
        if self._perm != (0, 1, 2):
            out = np.transpose(out, self._perm)
        return out if dtype is None else out.astype(dtype, copy=False)
