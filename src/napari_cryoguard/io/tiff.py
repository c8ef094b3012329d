"""Read TIFF stacks (ImageJ, OME-TIFF or plain multi-page) as tomograms.

Uses the optional ``tifffile`` package (``pip install napari-cryoguard[formats]``).

Axes
    The first image series must be 3D (Z, Y, X); leading axes of length 1 (time,
    channel) are dropped, anything else is refused.

Voxel size, first found wins
    1. OME-TIFF: ``PhysicalSizeZ/Y/X`` with their units (``PhysicalSize*Unit``,
       default micrometre as the OME schema says);
    2. ImageJ: ``spacing`` (Z) and the ``XResolution`` / ``YResolution`` tags (pixels per
       unit, so size = 1 / resolution), in the ImageJ ``unit`` (Angstrom, nm, micron);
       an ImageJ file without a unit is taken as Angstrom, with a note;
    3. ``voxel_size=`` given by the caller;
    4. 1.0 Angstrom, with a ``UserWarning`` and a note.

    Units are converted to Angstrom and every assumption is recorded in
    :attr:`Tomogram.notes`.

Laziness
    An uncompressed, contiguous stack is memory-mapped (``tifffile.memmap``); compressed
    or tiled files are read through tifffile's zarr store, slice by slice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io.omezarr import unit_to_angstrom


def _tifffile():
    try:
        import tifffile
    except ImportError as err:
        raise CryoGuardError(
            "reading TIFF tomograms needs the tifffile package: "
            "install napari-cryoguard[formats]"
        ) from err
    return tifffile


def _ome_voxel_size(xml: str, notes: list[str], name: str) -> tuple[float, float, float] | None:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        notes.append(f"{name}: OME metadata could not be parsed; ignored")
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    out = []
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        out.append(float(value) * unit_to_angstrom(unit, f"{name} OME PhysicalSize{axis}Unit"))
    notes.append(f"{name}: voxel size from the OME metadata (PhysicalSizeZ/Y/X), "
                 f"{tuple(round(v, 6) for v in out)} Angstrom")
    return (out[0], out[1], out[2])


def _imagej_voxel_size(tif: Any, notes: list[str], name: str) -> tuple[float, float, float] | None:
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    tags = page.tags

    def size_from(tag: str) -> float | None:
        t = tags.get(tag)
        if t is None:
            return None
        num, den = t.value
        return den / num if num > 0 and den > 0 else None

    xs, ys = size_from("XResolution"), size_from("YResolution")
    zs = float(meta["spacing"]) if meta.get("spacing") else None
    unit = str(meta.get("unit") or "").strip()
    if unit.lower() in ("", "pixel", "pixels"):
        if all(v in (None, 1.0) for v in (xs, ys, zs)):
            return None  # ImageJ's defaults: no calibration at all
        factor = 1.0
        notes.append(f"{name}: the ImageJ metadata gives no length unit; Angstrom assumed")
    else:
        factor = unit_to_angstrom(unit, f"{name} ImageJ unit")
    xs = xs if xs is not None else zs
    ys = ys if ys is not None else xs
    zs = zs if zs is not None else xs
    if xs is None or ys is None or zs is None:
        return None
    out = (float(zs) * factor, float(ys) * factor, float(xs) * factor)
    notes.append(f"{name}: voxel size from the ImageJ metadata (spacing and resolution), "
                 f"{tuple(round(v, 6) for v in out)} Angstrom")
    return out


def _check_extent(series: Any, path: Path) -> None:
    """Refuse a stack whose pixel data the header places beyond the end of the file
    (a truncated TIFF would fail only when a slice is read)."""
    size = path.stat().st_size
    if series.dataoffset is not None:  # contiguous, uncompressed
        end = int(series.dataoffset) + int(series.nbytes)
    else:
        end = 0
        for page in series.pages:
            if page is None:
                raise CryoGuardError(f"{path.name}: a page of the stack cannot be read; the "
                                     "file is truncated or corrupt")
            pairs = zip(page.dataoffsets, page.databytecounts, strict=False)
            end = max([end, *(int(o) + int(c) for o, c in pairs)])
    if end > size:
        raise CryoGuardError(f"{path.name} is truncated: its pixel data should end at byte "
                             f"{end:,} but the file has {size:,} bytes")


def read_tiff(path: str | os.PathLike, *, voxel_size: float | Sequence[float] | None = None):
    """Open a TIFF stack as a :class:`~napari_cryoguard.io.Tomogram` (ZYX).

    Parameters
    ----------
    path : str or PathLike
        A ``.tif`` / ``.tiff`` file holding a 3D stack.
    voxel_size : float or (z, y, x), optional
        Angstrom; used when the file states no voxel size. When it does and the values
        differ, the file's value is used and a note says so.

    Returns
    -------
    Tomogram
        ``data`` is a read-only memory map (float32 uncompressed files), or a
        :class:`~napari_cryoguard.io.mrc.LazyVolume` converting to float32 on access.

    Raises
    ------
    CryoGuardError
        Missing file or tifffile, not a TIFF, not a 3D stack.
    """
    from napari_cryoguard.io.mrc import LazyVolume, Tomogram, _valid_voxel_size, assumed_voxel_size

    tifffile = _tifffile()
    path = Path(path)
    if not path.is_file():
        raise CryoGuardError(f"tomogram file not found: {path}")
    name = path.name
    notes: list[str] = []
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error ...
        raise CryoGuardError(f"{name} is not a readable TIFF file: {err}") from err
    try:
        if not tif.series:
            raise CryoGuardError(f"{name} holds no image (no readable TIFF page): the file is "
                                 "truncated or corrupt")
        series = tif.series[0]
        if np.dtype(series.dtype).kind not in "biuf":
            raise CryoGuardError(f"{name} holds {np.dtype(series.dtype)} pixels; a tomogram needs "
                                 "real numbers (integer or float)")
        _check_extent(series, path)
        shape = tuple(int(s) for s in series.shape)
        axes = str(series.axes)
        squeeze = tuple(i for i, s in enumerate(shape[:-3]) if s == 1)
        if len(shape) < 3 or len(shape) - len(squeeze) != 3:
            raise CryoGuardError(
                f"{name} holds an image of shape {shape} (axes {axes}); a tomogram is a 3D "
                "Z, Y, X stack"
            )
        found = None
        assumed = False
        if tif.is_ome and tif.ome_metadata:
            found = _ome_voxel_size(tif.ome_metadata, notes, name)
        if found is None and tif.is_imagej:
            found = _imagej_voxel_size(tif, notes, name)
        if found is not None:
            vs = _valid_voxel_size(found)
            if voxel_size is not None and not np.allclose(_valid_voxel_size(voxel_size), vs,
                                                          rtol=1e-4):
                notes.append(f"{name}: the file says {vs} Angstrom; the voxel_size "
                             f"{voxel_size!r} given was not used")
        elif voxel_size is not None:
            vs = _valid_voxel_size(voxel_size)
            notes.append(f"{name}: no voxel size in the TIFF metadata; {vs[2]:g} Angstrom as given")
        else:
            vs = assumed_voxel_size(f"{name}: no voxel size in the TIFF metadata; assumed 1.0 "
                                    "Angstrom (give voxel_size= to set it)", notes)
            assumed = True
        try:
            raw: Any = tifffile.memmap(path, mode="r")
            handle = None
        except Exception:  # noqa: BLE001 - compressed or tiled: go through the zarr store
            import zarr

            store = series.aszarr()
            raw = zarr.open(store, mode="r")
            if hasattr(raw, "keys") and not hasattr(raw, "shape"):
                raw = raw["0"]
            handle = store
            notes.append(f"{name} is compressed or tiled: read slice by slice (not memory-mapped)")
        raw = raw.reshape(shape[-3:]) if isinstance(raw, np.ndarray) else raw
        if len(getattr(raw, "shape", ())) != 3:
            index = (0,) * (len(raw.shape) - 3)
            raw = raw[index] if isinstance(raw, np.ndarray) else LazyVolume(raw)[index]
    finally:
        tif.close()
    if isinstance(raw, np.ndarray) and raw.dtype == np.dtype(np.float32):
        data: Any = raw
    else:
        data = LazyVolume(raw)
    tomo = Tomogram(
        data=data,
        voxel_size=vs[2],
        voxel_size_zyx=vs,
        path=path,
        name=path.stem.removesuffix(".ome"),
        shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
        notes=notes,
        voxel_size_assumed=assumed,
    )
    if handle is not None:
        tomo._handle = handle
    return tomo
