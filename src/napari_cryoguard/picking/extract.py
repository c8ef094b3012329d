"""Subtomogram extraction: cubes cut around picks, normalised per sample.

The RAT paper (Wu et al., RAT (IEEE BIBM 2019), section IV.A)
extracts 28^3 subvolumes around DoG peaks and applies zero-mean normalisation; the
project normalises each cube to zero mean and unit variance (``docs``: DESIGN.md,
"Conventions").

Cube convention
---------------
A pick at ``c`` (ZYX voxel indices, possibly sub-voxel) is rounded to ``r = floor(c + 0.5)``
and its cube spans ``r - size // 2 ... r - size // 2 + size - 1`` on each axis, so the
rounded centre sits at index ``size // 2`` of the cube: the exact centre for odd sizes, the
voxel just after the geometric centre for even sizes (index 14 of 0..27 for 28^3).

Picks whose rounded centre lies outside the volume are always skipped and counted in
``n_skipped`` (whatever ``border``). Picks whose cube only partly fits are skipped too with
``border="skip"``, or padded with ``border="pad"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from napari_cryoguard.checks import check_choice, check_positive_int
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import choices_of
from napari_cryoguard.picking.params import PAPER_CUBE

__all__ = ["BORDER_MODES", "BorderMode", "Subtomograms", "extract_subtomograms"]

#: what to do with a particle whose cube crosses the tomogram's border
BorderMode = Literal["skip", "pad"]
#: the values of ``border`` (the CLI's ``extract --border`` and the widget read them)
BORDER_MODES: tuple[str, ...] = choices_of(BorderMode)  # type: ignore[assignment]


@dataclass
class Subtomograms:
    """A stack of extracted cubes.

    Attributes
    ----------
    volumes : ndarray, shape (M, size, size, size), float32
        The cubes, ZYX each.
    index : ndarray, shape (M,), int64, or None
        For each cube, the row of the input coordinates it was cut around (``None`` when
        ``return_index=False``).
    n_skipped : int
        Input picks without a cube (outside the volume, or not fitting with
        ``border="skip"``).
    normalized : bool
        Whether each cube was normalised to zero mean, unit variance.
    size : int
        Cube edge length in voxels.
    inverted : bool
        Whether the densities were negated (``invert=True``: protein black in the
        tomogram made white, the convention of the simulator and the bundled models).
    """

    volumes: np.ndarray
    index: np.ndarray | None
    n_skipped: int
    normalized: bool
    size: int
    inverted: bool = False

    def __len__(self) -> int:
        return len(self.volumes)


def _normalize(stack: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Zero mean, unit variance per cube, in place; a constant cube becomes zeros.

    ``valid`` (same shape, bool) restricts the statistics to the voxels inside the volume
    (padded cubes); the padded voxels are set afterwards by the caller.
    """
    n = len(stack)
    if n == 0:
        return
    flat = stack.reshape(n, -1)
    if valid is None:
        mean = flat.mean(axis=1)
        flat -= mean[:, None]
        var = np.einsum("ij,ij->i", flat, flat) / np.float32(flat.shape[1])
    else:
        vflat = valid.reshape(n, -1)
        cnt = np.maximum(vflat.sum(axis=1), 1).astype(np.float32)
        mean = np.where(vflat, flat, 0).sum(axis=1) / cnt
        flat -= mean[:, None]
        dev = np.where(vflat, flat, 0)
        var = np.einsum("ij,ij->i", dev, dev) / cnt
    std = np.sqrt(var.astype(np.float64))
    # a constant cube (std exactly 0, or float32 rounding noise relative to its mean)
    # becomes zeros instead of NaN / amplified rounding errors
    flat_cube = (std == 0) | (std <= 1e-6 * np.abs(mean.astype(np.float64)))
    with np.errstate(divide="ignore"):
        scale = np.where(flat_cube, 0.0, 1.0 / std)
    flat *= scale.astype(np.float32)[:, None]


def _all_finite(stack: np.ndarray) -> bool:
    """Cheap finiteness test: a NaN or Inf anywhere makes a cube's sum non-finite.

    A float32 sum can also overflow on huge finite values; the caller then counts.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        sums = stack.reshape(len(stack), -1).sum(axis=1)
    return bool(np.isfinite(sums).all())


def extract_subtomograms(
    volume: Any,
    coords: Any,
    size: int = PAPER_CUBE,
    *,
    normalize: bool = True,
    border: BorderMode = "skip",
    pad_value: float = 0.0,
    return_index: bool = True,
    invert: bool = False,
) -> Subtomograms:
    """Cut cubes of ``size``^3 voxels centred on the picks.

    RAT paper (Wu et al., RAT (IEEE BIBM 2019), section IV.A):
    28^3 subvolumes around DoG picks, zero-mean normalisation. The cube convention (round
    the centre, cube from ``r - size // 2``) is in the module docstring.

    Parameters
    ----------
    volume : array-like, shape (Z, Y, X)
        The tomogram: an ndarray, a ``np.memmap`` or an array-like with ``__getitem__``
        (only the cubes are read).
    coords : array-like, shape (N, 3), or Picks
        Centres as ZYX voxel indices.
    size : int
        Cube edge in voxels, >= 1, odd or even.
    normalize : bool
        Normalise each cube to zero mean and unit variance (a constant cube becomes all
        zeros, never NaN).
    border : {"skip", "pad"}
        What to do with a pick whose cube crosses a face: skip it (counted in
        ``n_skipped``) or fill the missing voxels with ``pad_value``. Picks whose rounded
        centre is outside the volume are skipped either way.
    pad_value : float
        Value of padded voxels, in the units of the output: with ``normalize=True`` the
        statistics are taken over the voxels inside the volume only and the padding is
        then set to ``pad_value`` in normalised units (0.0 = the cube's mean); with
        ``normalize=False`` it is a raw density value.
    return_index : bool
        Fill ``Subtomograms.index`` (rows of ``coords`` that produced a cube).
    invert : bool
        Negate the densities (before normalising; padding keeps ``pad_value``): for a
        tomogram where protein is black, so that the cubes show protein white, as the
        simulator and the bundled models have it.

    Returns
    -------
    Subtomograms

    Raises
    ------
    CryoGuardError
        Bad size, unknown border mode, coordinates not (N, 3), a volume that is not 3D,
        or non-finite voxels inside the extracted cubes.
    """
    check_choice("border", border, BORDER_MODES)
    size = check_positive_int("cube size", size)
    shape = tuple(int(s) for s in getattr(volume, "shape", ()))
    if len(shape) != 3:
        raise CryoGuardError(f"extraction needs a 3D ZYX volume, got shape {shape}")
    if hasattr(coords, "coords") and not isinstance(coords, np.ndarray):
        coords = coords.coords
    c = np.asarray(coords, dtype=np.float64)
    if c.size == 0:
        c = c.reshape(0, 3)
    if c.ndim != 2 or c.shape[1] != 3:
        raise CryoGuardError(f"coordinates must have shape (N, 3) ZYX, got {c.shape}")
    finite = np.all(np.isfinite(c), axis=1)
    r = np.floor(np.where(finite[:, None], c, -1.0) + 0.5).astype(np.int64)
    dims = np.asarray(shape, dtype=np.int64)
    inside = finite & np.all((r >= 0) & (r < dims), axis=1)
    start = r - size // 2
    stop = start + size
    fits = np.all((start >= 0) & (stop <= dims), axis=1)
    keep = inside & fits if border == "skip" else inside
    rows = np.flatnonzero(keep)
    m = len(rows)
    out = np.empty((m, size, size, size), dtype=np.float32)
    is_partial = ~fits[rows] if border == "pad" else np.zeros(m, dtype=bool)
    partial_slots = np.flatnonzero(is_partial)
    valid = np.zeros((len(partial_slots), size, size, size), dtype=bool)
    pad = np.float32(pad_value)
    j = 0
    for i, row in enumerate(rows):
        s = start[row]
        if is_partial[i]:
            lo = np.maximum(s, 0)
            hi = np.minimum(s + size, dims)
            dst = tuple(slice(a - b, e - b) for a, e, b in zip(lo, hi, s, strict=True))
            out[i] = pad
            out[(i, *dst)] = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            valid[(j, *dst)] = True
            j += 1
        else:
            out[i] = volume[s[0] : s[0] + size, s[1] : s[1] + size, s[2] : s[2] + size]
    if m and not _all_finite(out):
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        if bad:  # otherwise only a float32 sum overflowed
            raise CryoGuardError(
                f"the extracted cubes contain {bad} non-finite voxels (NaN or Inf) from the volume"
            )
    if invert and m:
        np.negative(out, out=out)
        if not normalize and len(partial_slots):
            padded = out[partial_slots]  # a copy: the padding back to pad_value
            padded[~valid] = pad
            out[partial_slots] = padded
    if normalize and m:
        raw_partial = out[partial_slots]  # a copy; usually few or none
        _normalize(out)
        if len(partial_slots):
            # padded cubes: statistics over the voxels inside the volume only
            _normalize(raw_partial, valid)
            raw_partial[~valid] = pad
            out[partial_slots] = raw_partial
    return Subtomograms(
        volumes=out,
        index=rows.astype(np.int64) if return_index else None,
        n_skipped=int(len(c) - m),
        normalized=bool(normalize),
        size=size,
        inverted=bool(invert),
    )
