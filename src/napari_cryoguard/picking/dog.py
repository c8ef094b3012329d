"""Difference-of-Gaussian (DoG) particle picking.

The picker follows the RAT paper (Wu et al., RAT (IEEE BIBM 2019),
section IV.A): "potential structural regions" are the peaks of a Difference of Gaussian
with ``s1 = 7.0`` and ``k = 1.1``, and 28^3 subvolumes are then cut around them
(:func:`napari_cryoguard.picking.extract_subtomograms`). The semi-supervised paper
(Liu et al., 3D autoencoding classifier (BMVC 2019), section 4.1) picks the
same way.

Defaults, and choosing sigma
----------------------------
The defaults are the paper's: ``sigma1 = 7.0`` voxels and ``k = 1.1``
(:data:`~napari_cryoguard.picking.params.PAPER_SIGMA1`, ``PAPER_K``), with
``threshold = 3.0``, all declared once in
:class:`~napari_cryoguard.picking.params.DoGParams`. A DoG with ``k``
close to 1 responds best to blobs of radius about ``sqrt(3) * sigma1``, so sigma 7 suits
particles of radius ~12 voxels, which fill the paper's 28^3 cubes at 9.4 A. Match
``sigma1`` to your particles (``sigma1 ~ radius / sqrt(3)``, or give it in Angstrom with
``sigma_unit="angstrom"``); :func:`sigma_from_diameter` does it from the particle
diameter in Angstrom, ``sigma1 = diameter / (2 sqrt(3) voxel_size)``. The factor: the
DoG with ``k`` near 1 is ``(k - 1) sigma1^2`` times the Laplacian of a Gaussian, and that
scale-normalised Laplacian, at the centre of a uniform ball of radius ``r`` in 3D, is
strongest for ``sigma = r / sqrt(3)``. The simulator's default classes are smaller (radii 7-11
voxels at 10 A); for them ``SIMULATED_SIGMA1`` = 5.0 with
``SIMULATED_THRESHOLD`` = 3.5 (:mod:`napari_cryoguard.picking.params`) is right, and the demo and tests use it. Measured on
simulated tomograms (SNR 0.1, +-60 degrees; seeds of 64x200x200 with 30 particles, and
one 200x512x512 with 500): sigma 5 / threshold 3.5 gives recall 1.00 and precision
>= 0.99 within 4 voxels, while the paper's sigma 7 reaches a recall of only 0.80-0.94
at precision >= 0.95 on these small particles.

Definitions
-----------
DoG
    ``D = G(sigma1) * V - G(k * sigma1) * V``: positive on bright blobs of radius
    about ``sqrt(3) * sigma1`` voxels. ``polarity="dark"`` uses ``-D`` instead, for
    tomograms where protein is dark (black in the viewer); ``polarity="auto"`` tries both
    signs and keeps the one whose best peaks score higher
    (:func:`napari_cryoguard.picking.choose_polarity`).
Score
    The DoG response as a z-score: ``(D(peak) - mean(D)) / std(D)``, mean and standard
    deviation taken over the (masked) volume. A pick needs ``score >= threshold``.

How large volumes are handled
-----------------------------
A sigma of 5-7 voxels does not need full resolution. With ``bin_factor="auto"`` the
volume is block-mean binned by ``floor(sigma1 / 1.6)`` so that the binned ``sigma1`` is
1.6-3.2 voxels (bin 4 for the default sigma 7, bin 3 for sigma 5; bin 2 gave the same
picks for sigma 5, measured, at 2.5 times the time). The binning reads ``chunk_size`` Z-slices at a time (a
``np.memmap`` or any array-like with ``__getitem__`` works), so the full volume is never
held in float32, only one chunk and the binned volume (``bin**3`` times smaller). The box
average adds a variance of ``(bin**2 - 1) / 12`` voxels^2 per axis, which is subtracted
from ``sigma1**2`` so that the effective smoothing stays ``sigma1``. The DoG and the local
maxima (``scipy.ndimage.maximum_filter``) are computed on the binned grid in Z-chunks
with a halo wide enough to make them exact; only candidate peaks are kept. Each peak is
then refined to sub-voxel accuracy with a three-point parabola per axis on the binned DoG
and mapped back to full-resolution voxel indices (binned voxel ``i`` covers full voxels
``i*bin ... i*bin + bin - 1``, centre ``i*bin + (bin - 1) / 2``). On the simulated
tomograms above the median distance to the true centre is 0.85 voxels.

Non-finite voxels are counted chunk by chunk (cheaply, on the block sums) and raise a
:class:`~napari_cryoguard.errors.CryoGuardError` giving their number.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_cryoguard._progress import drain
from napari_cryoguard.checks import check_float, check_positive_int
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.picking.params import DoGParams

if TYPE_CHECKING:
    from napari_cryoguard.io.picks import Picks

# scipy.ndimage and the Picks class (pandas, through io) are imported where they are used,
# so that importing the picking package (for DoGParams, by the CLI's --help) stays fast.

__all__ = [
    "BLOB_RADIUS_PER_SIGMA",
    "binned_dog",
    "diameter_from_sigma",
    "dog_filter",
    "dog_preview",
    "iter_pick_particles",
    "pick_particles",
    "sigma_from_diameter",
]

#: Gaussian kernels are truncated at this many standard deviations (scipy's default).
_TRUNCATE = 4.0
#: ``bin_factor="auto"`` bins so that the binned sigma1 is at least this (binned voxels).
_AUTO_MIN_BINNED_SIGMA = 1.6
#: A DoG with k near 1 responds best to blobs of radius ``sqrt(3) * sigma1`` (3D).
BLOB_RADIUS_PER_SIGMA = math.sqrt(3.0)
#: The picker's defaults (the one place they are declared is :class:`DoGParams`).
_DEFAULTS = DoGParams()
#: Picks at most this many voxels beyond the border are moved onto it, not dropped.
_BORDER_SLACK = 2.0

Progress = tuple[int, int]


# --------------------------------------------------------------------------- sizes


def sigma_from_diameter(diameter: float, voxel_size: float = 1.0) -> float:
    """DoG ``sigma1`` in voxels for particles of ``diameter`` (Angstrom, or voxels with
    ``voxel_size=1``): ``diameter / (2 sqrt(3) voxel_size)``.

    The DoG responds best to blobs of radius ``sqrt(3) * sigma1`` (module docstring), so
    a 170 A particle at 10 A per voxel gets sigma1 = 4.9 voxels.
    """
    diameter = check_float("the particle diameter", diameter, minimum=0, strict=True)
    voxel_size = check_float("voxel_size", voxel_size, minimum=0, strict=True)
    return diameter / (2.0 * BLOB_RADIUS_PER_SIGMA * voxel_size)


def diameter_from_sigma(sigma1: float, voxel_size: float = 1.0) -> float:
    """The particle diameter (Angstrom with ``voxel_size`` in A) that ``sigma1`` voxels suit."""
    return 2.0 * BLOB_RADIUS_PER_SIGMA * float(sigma1) * float(voxel_size)


# --------------------------------------------------------------------------- helpers


def _check_sigma(sigma1: float, k: float) -> tuple[float, float]:
    """``sigma1 > 0`` and ``k > 1`` as floats (the checks of :class:`DoGParams`)."""
    return (check_float("sigma1", sigma1, minimum=0, strict=True),
            check_float("k", k, minimum=1, strict=True))


def _auto_bin(sigma1_vox: float) -> int:
    return max(1, int(math.floor(sigma1_vox / _AUTO_MIN_BINNED_SIGMA)))


def _resolve_bin(bin_factor: int | str, sigma1_vox: float) -> int:
    if isinstance(bin_factor, str):
        if bin_factor != "auto":
            raise CryoGuardError(
                f"bin_factor must be 'auto' or a positive integer, got {bin_factor!r}"
            )
        return _auto_bin(sigma1_vox)
    b = int(bin_factor)
    if b != bin_factor or b < 1:
        raise CryoGuardError(f"bin_factor must be 'auto' or a positive integer, got {bin_factor!r}")
    return b


def _binned_sigma(sigma_vox: float, b: int) -> float:
    """Sigma on the binned grid such that box average + Gaussian ~ Gaussian(sigma_vox)."""
    if b == 1:
        return float(sigma_vox)
    var = sigma_vox**2 - (b * b - 1) / 12.0
    return math.sqrt(max(var, 0.25)) / b


def _block_mean(chunk: np.ndarray, b: int) -> np.ndarray:
    """Mean over b x b x b blocks; partial blocks at the far faces average what they hold.

    One axis at a time, as ``b`` strided additions (much faster than ``np.add.reduceat``).
    Every output voxel is computed the same way whatever chunk it comes from, so chunked
    and whole-volume binning agree exactly.
    """
    out = np.asarray(chunk, dtype=np.float32)
    for axis in range(3):
        n = out.shape[axis]
        nb = -(-n // b)
        shape = list(out.shape)
        shape[axis] = nb
        acc = np.zeros(shape, dtype=np.float32)
        for offset in range(b):
            src = [slice(None)] * 3
            src[axis] = slice(offset, None, b)
            part = out[tuple(src)]
            dst = [slice(None)] * 3
            dst[axis] = slice(0, part.shape[axis])
            acc[tuple(dst)] += part
        counts = np.minimum(b, n - np.arange(nb) * b).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = nb
        acc /= counts.reshape(view)
        out = acc
    return out


def _shape_of(volume: Any) -> tuple[int, ...]:
    shape = getattr(volume, "shape", None)
    if shape is None:
        raise CryoGuardError(
            "the volume must be an array or array-like with .shape and __getitem__"
        )
    return tuple(int(s) for s in shape)


def _read(volume: Any, z0: int, z1: int) -> np.ndarray:
    """Read Z-slices ``z0:z1`` as float32 (a view for float32 memmaps / arrays)."""
    return np.asarray(volume[z0:z1], dtype=np.float32)


def _count_nonfinite(a: np.ndarray) -> int:
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _dog_block(block: np.ndarray, s1: float, k: float) -> np.ndarray:
    """``G(s1) - G(k s1)``, the second Gaussian as a further blur of the first.

    ``G(k s1) = G(sqrt(k^2 - 1) s1) * G(s1)`` (variances add), which needs a much
    shorter kernel than blurring the input with ``k s1`` again.
    """
    from scipy import ndimage

    g1 = ndimage.gaussian_filter(block, s1, mode="reflect", truncate=_TRUNCATE, output=np.float32)
    s_extra = math.sqrt(k * k - 1.0) * s1
    g2 = ndimage.gaussian_filter(g1, s_extra, mode="reflect", truncate=_TRUNCATE, output=np.float32)
    g1 -= g2
    return g1


def _dog_radius(s1: float, k: float) -> int:
    """How far (voxels) a DoG output depends on its input, see :func:`_dog_block`."""
    s_extra = math.sqrt(k * k - 1.0) * s1
    return int(_TRUNCATE * s1 + 0.5) + int(_TRUNCATE * s_extra + 0.5)


# --------------------------------------------------------------------------- public API


def dog_filter(
    volume: Any,
    sigma1: float = _DEFAULTS.sigma1,
    k: float = _DEFAULTS.k,
    *,
    bin_factor: int = 1,
) -> np.ndarray:
    """Difference of Gaussian of a volume, bright blobs positive.

    ``G(sigma1) * V - G(k * sigma1) * V`` with Gaussians truncated at 4 sigma and reflecting
    borders (RAT paper, Wu et al., RAT (IEEE BIBM 2019),
    section IV.A: ``s1 = 7.0``, ``k = 1.1``, the defaults; see the module
    docstring). Separable filtering; the second Gaussian is
    obtained as a further blur of the first by ``sqrt(k^2 - 1) * sigma1``.

    Parameters
    ----------
    volume : array-like, shape (Z, Y, X)
        The tomogram (read whole into float32: use :func:`pick_particles` for volumes
        larger than memory).
    sigma1 : float
        Smaller Gaussian's standard deviation in full-resolution voxels.
    k : float
        Ratio of the two sigmas, > 1.
    bin_factor : int
        Block-mean bin the volume by this factor first (sigma compensated for the box
        average). The result then has the binned shape ``ceil(shape / bin_factor)``; for
        display scale it by ``bin_factor`` and translate by ``(bin_factor - 1) / 2``.

    Returns
    -------
    ndarray, float32
        The DoG response, same shape as the volume (or the binned shape).

    Raises
    ------
    CryoGuardError
        A volume that is not 3D, or holds non-finite voxels (their number is given).
    """
    vol = np.asarray(volume, dtype=np.float32)
    return binned_dog(vol, sigma1, k, bin_factor=bin_factor, chunk_size=max(1, len(vol)))


def iter_pick_particles(
    volume: Any,
    sigma1: float = _DEFAULTS.sigma1,
    k: float = _DEFAULTS.k,
    *,
    sigma_unit: str = _DEFAULTS.sigma_unit,
    voxel_size: float = 1.0,
    threshold: float = _DEFAULTS.threshold,
    min_distance: float | None = _DEFAULTS.min_distance,
    max_picks: int | None = _DEFAULTS.max_picks,
    border: int | None = _DEFAULTS.border,
    mask: np.ndarray | None = None,
    polarity: str = _DEFAULTS.polarity,
    bin_factor: int | str = "auto",
    chunk_size: int = 64,
) -> Generator[Progress, None, Picks]:
    """Pick particles as peaks of a Difference of Gaussian, yielding progress.

    Method and defaults from the RAT paper
    (Wu et al., RAT (IEEE BIBM 2019), section IV.A: DoG with
    ``s1 = 7.0``, ``k = 1.1``, then 28^3 subvolumes), which are the defaults; the module
    docstring says how to choose ``sigma1`` for other particle sizes and describes the
    binned, chunked computation.

    Parameters
    ----------
    volume : array-like, shape (Z, Y, X)
        The tomogram: an ndarray, a ``np.memmap`` (e.g. ``read_tomogram(path).data``) or
        any array-like whose ``__getitem__`` returns numbers; read ``chunk_size``
        Z-slices at a time, never whole.
    sigma1 : float
        Smaller Gaussian's standard deviation, in ``sigma_unit`` (the paper's value,
        ``PAPER_SIGMA1`` = 7.0 voxels, is the default).
    k : float
        ``sigma2 = k * sigma1``; must be > 1.
    sigma_unit : {"voxel", "angstrom"}
        Unit of ``sigma1``; Angstrom is divided by ``voxel_size``.
    voxel_size : float
        Voxel size in Angstrom; copied to the returned picks.
    threshold : float
        Minimum score. The score is the DoG response at the peak as a z-score,
        ``(D - mean(D)) / std(D)`` over the volume (over ``mask`` if given); the default
        3.0 keeps responses 3 standard deviations above the mean (with sigma 5 on the
        simulator, 3.5 is better: 3.0 lets noise peaks in on large tomograms, precision
        0.96 instead of 0.99 on 200x512x512).
    min_distance : float, optional
        Non-maximum suppression radius in full-resolution voxels: of two picks closer
        than this, only the higher-scoring one is kept. Default ``2 * sigma1`` (in
        voxels; 14 for the default), below the smallest centre-to-centre distance of
        non-overlapping particles of the radius the DoG is tuned to (``2 sqrt(3) sigma1``).
    max_picks : int, optional
        Keep at most this many picks, the best-scoring ones.
    border : int, optional
        Picks whose rounded centre is closer than ``border`` voxels to a face are dropped.
        Default 14, half of the 28^3 cube, so that every pick can be extracted whole at
        the default cube size. A refined centre at most 2 voxels beyond the border (the
        localisation error, larger along Z with the missing wedge) is moved onto it
        instead of being dropped.
    mask : ndarray of bool, shape (Z, Y, X), optional
        Picks only where True (judged at the rounded centre); the score statistics are
        taken over the masked region.
    polarity : {"bright", "dark", "auto"}
        What the particles look like in the viewer: "bright" (protein white: the
        simulator, density maps, many shared tomograms that were already inverted) or
        "dark" (protein black, as reconstructed from raw micrographs; the DoG is
        negated). Which one holds depends on the processing, not only on the source, so
        look at the tomogram. "auto" tries both and keeps the sign whose best peaks
        stand out more (:func:`napari_cryoguard.picking.choose_polarity`, which also
        says which sign it chose and by how much).
    bin_factor : "auto" or int
        Bin before filtering; "auto" bins by ``floor(sigma1 / 1.6)`` (in voxels; 3 for the
        default). 1 filters at full resolution (slower, same picks within a
        voxel).
    chunk_size : int
        Full-resolution Z-slices read at a time (rounded down to a multiple of the bin
        factor). At bin 1 it is also the core of each filtered chunk.

    Yields
    ------
    (done, total)
        Progress: one step per chunk read or filtered, and a last one after peak
        refinement (napari's ``thread_worker`` passes them to ``yielded``).

    Returns
    -------
    Picks
        ``coords`` (N, 3) float64 ZYX full-resolution voxel indices (sub-voxel), ``scores``
        (N,) z-scores, sorted by descending score; ``voxel_size`` set. Empty (N = 0, not
        an error) when nothing reaches the threshold, the mask is empty, or the volume is
        constant. Returned as ``StopIteration.value`` (napari's ``thread_worker`` passes
        it to ``returned``; :func:`pick_particles` drains the generator and returns it).

    Raises
    ------
    CryoGuardError
        Non-finite voxels (the message gives their number), sigma1 <= 0, k <= 1, unknown
        polarity or sigma unit, a mask of another shape, a volume too small for the
        border or the bin factor.
    """
    # ---------------------------------------------------------------- validation
    p = DoGParams(sigma1=sigma1, k=k, sigma_unit=sigma_unit, threshold=threshold,
                  min_distance=min_distance, max_picks=max_picks, border=border,
                  polarity=polarity)
    voxel_size = check_float("voxel_size", voxel_size, minimum=0, strict=True)
    s1, k, polarity, threshold = p.sigma1_voxels(voxel_size), p.k, p.polarity, p.threshold
    shape = _shape_of(volume)
    if len(shape) != 3:
        raise CryoGuardError(f"picking needs a 3D ZYX volume, got shape {shape}")
    b = _resolve_bin(bin_factor, s1)
    border, min_distance, max_picks = p.border_voxels, p.min_distance_voxels(voxel_size), p.max_picks
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if min(shape) <= 2 * border:
        raise CryoGuardError(
            f"volume {shape} is too small to pick in: every axis must be longer than "
            f"{2 * border} voxels, so that a {2 * border}^3 cube around a pick fits inside it"
        )
    bshape = tuple(-(-n // b) for n in shape)
    if min(bshape) < 3:
        raise CryoGuardError(
            f"volume {shape} is too small for bin factor {b} (binned shape {bshape}); "
            "bin less or use a smaller sigma1 (particle diameter)"
        )
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise CryoGuardError(f"mask shape {mask.shape} does not match the volume {shape}")
        mask = mask.astype(bool, copy=False)
    if polarity == "auto":
        from napari_cryoguard.picking.polarity import choose_polarity

        polarity = choose_polarity(volume, s1, k, border=border, min_distance=min_distance,
                                   chunk_size=chunk_size).polarity

    from scipy.ndimage import maximum_filter

    from napari_cryoguard.io.picks import Picks

    nz = shape[0]
    # -------------------------------------------------- stage A: bin (chunked read)
    if b > 1:
        step = max(b, (chunk_size // b) * b)
        n_a = -(-nz // step)
    else:
        step = 0
        n_a = 0
    sb = _binned_sigma(s1, b)
    halo = _dog_radius(sb, k)
    h = max(1, int(min_distance / (b * math.sqrt(3.0))))  # max-filter half-width (binned)
    halo_b = halo + h + 1
    core_b = bshape[0] if b > 1 else chunk_size
    n_b = -(-bshape[0] // core_b)
    total = n_a + n_b + 1
    done = 0

    nonfinite = 0
    if b > 1:
        source: Any = np.empty(bshape, dtype=np.float32)
        bmask = None if mask is None else np.empty(bshape, dtype=bool)
        for z0 in range(0, nz, step):
            z1 = min(nz, z0 + step)
            chunk = _read(volume, z0, z1)
            with np.errstate(invalid="ignore", over="ignore"):
                blocks = _block_mean(chunk, b)
            if not np.isfinite(blocks).all():
                bad = _count_nonfinite(chunk)
                if bad == 0:
                    raise CryoGuardError(
                        f"volume values overflow float32 when binned (Z {z0}-{z1}); rescale it"
                    )
                nonfinite += bad
            source[z0 // b : z0 // b + blocks.shape[0]] = blocks
            if bmask is not None:
                bmask[z0 // b : z0 // b + blocks.shape[0]] = (
                    _block_mean(mask[z0:z1].astype(np.float32), b) >= 0.5
                )
            del chunk, blocks
            done += 1
            yield (done, total)
        if nonfinite:
            raise CryoGuardError(
                f"the volume has {nonfinite} non-finite voxels (NaN or Inf); fix or mask them "
                "before picking"
            )
    else:
        source = volume
        bmask = mask

    # ------------------------------------- stage B: DoG + local maxima (chunked, exact)
    sign = np.float32(-1.0 if polarity == "dark" else 1.0)
    nbz = bshape[0]
    s_sum = 0.0
    s_sq = 0.0
    s_n = 0
    cand_idx: list[np.ndarray] = []
    cand_val: list[np.ndarray] = []
    cand_off: list[np.ndarray] = []
    for c0 in range(0, nbz, core_b):
        c1 = min(nbz, c0 + core_b)
        e0 = max(0, c0 - halo_b)
        e1 = min(nbz, c1 + halo_b)
        block = _read(source, e0, e1)
        if b == 1:
            bad = _count_nonfinite(block[c0 - e0 : c1 - e0])
            nonfinite += bad
            if bad:
                done += 1
                yield (done, total)
                continue
        dog = _dog_block(block, sb, k)
        del block
        if sign < 0:
            np.negative(dog, out=dog)
        core = dog[c0 - e0 : c1 - e0]
        if bmask is None:
            vals = core
        else:
            vals = core[np.asarray(bmask[c0:c1], dtype=bool)]
        s_sum += float(np.sum(vals, dtype=np.float64))
        s_sq += float(np.sum(np.square(vals, dtype=np.float64)))
        s_n += int(vals.size)
        del vals
        mf = maximum_filter(dog, size=2 * h + 1, mode="nearest")
        peak = dog == mf
        del mf
        pz, py, px = np.nonzero(peak[c0 - e0 : c1 - e0])
        del peak
        pz = pz + (c0 - e0)  # index into the extended block
        idx = np.stack([pz, py, px], axis=1)
        cand_val.append(dog[pz, py, px].astype(np.float64))
        cand_off.append(_parabola_offsets(dog, idx))
        idx[:, 0] += e0
        cand_idx.append(idx)
        del dog
        done += 1
        yield (done, total)
    if nonfinite:
        raise CryoGuardError(
            f"the volume has {nonfinite} non-finite voxels (NaN or Inf); fix or mask them "
            "before picking"
        )

    # --------------------------------------------------- stage C: score, refine, NMS
    empty = Picks(coords=np.zeros((0, 3)), scores=np.zeros(0), voxel_size=voxel_size)
    done += 1
    if s_n == 0 or not cand_idx:
        yield (done, total)
        return empty
    mean = s_sum / s_n
    var = max(s_sq / s_n - mean * mean, 0.0)
    std = math.sqrt(var)
    if std <= 1e-12 * max(1.0, abs(mean)):
        yield (done, total)
        return empty
    idx = np.concatenate(cand_idx)
    val = np.concatenate(cand_val)
    off = np.concatenate(cand_off)
    scores = (val - mean) / std
    keep = scores >= threshold
    idx, off, scores = idx[keep], off[keep], scores[keep]
    coords = (idx + off) * b + (b - 1) / 2.0
    # border and mask are judged at the rounded full-resolution centre; a refined centre
    # that lies at most _BORDER_SLACK voxels (about the localisation error at SNR 0.1,
    # larger along Z with the missing wedge) beyond the border is moved onto it rather
    # than dropped, so a particle sitting right at the border is still picked
    lo = np.full(3, float(border))
    hi = np.array(shape, dtype=np.float64) - max(border, 1)
    tol = max(_BORDER_SLACK, b / 2.0)
    inside = np.all((coords >= lo - tol) & (coords <= hi + tol), axis=1)
    coords, scores = np.clip(coords[inside], lo, hi), scores[inside]
    r = np.floor(coords + 0.5).astype(np.int64)
    if mask is not None and len(r):
        ok = mask[r[:, 0], r[:, 1], r[:, 2]]
        coords, scores = coords[ok], scores[ok]
    order = np.argsort(-scores, kind="stable")
    coords, scores = coords[order], scores[order]
    keep_idx = _greedy_nms(coords, min_distance)
    coords, scores = coords[keep_idx], scores[keep_idx]
    if max_picks is not None:
        coords, scores = coords[: int(max_picks)], scores[: int(max_picks)]
    yield (done, total)
    return Picks(coords=coords, scores=scores, voxel_size=voxel_size)


def pick_particles(volume: Any, *args: Any,
                   progress: Callable[[int, int], Any] | None = None, **kwargs: Any) -> Picks:
    """Pick particles as peaks of a Difference of Gaussian: :func:`iter_pick_particles`
    run to its end, ``progress(done, total)`` called at each of its steps.

    The parameters, defaults (:class:`DoGParams`, the RAT paper's) and the result are
    those of :func:`iter_pick_particles`.
    """
    return drain(iter_pick_particles(volume, *args, **kwargs), progress)


# help() and editors show the generator's parameters (and ``progress``) for pick_particles
_sig = inspect.signature(iter_pick_particles)
pick_particles.__signature__ = _sig.replace(  # type: ignore[attr-defined]
    parameters=[*_sig.parameters.values(),
                inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None,
                                  annotation="Callable[[int, int], Any] | None")],
    return_annotation="Picks")
del _sig


# --------------------------------------------------------------------------- internals


def _parabola_offsets(dog: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-voxel offsets (in [-0.5, 0.5]) of peaks from a 3-point parabola per axis."""
    off = np.zeros(idx.shape, dtype=np.float64)
    if len(idx) == 0:
        return off
    f0 = dog[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    for axis in range(3):
        n = dog.shape[axis]
        lo = idx.copy()
        hi = idx.copy()
        lo[:, axis] = np.maximum(idx[:, axis] - 1, 0)
        hi[:, axis] = np.minimum(idx[:, axis] + 1, n - 1)
        fm = dog[lo[:, 0], lo[:, 1], lo[:, 2]].astype(np.float64)
        fp = dog[hi[:, 0], hi[:, 1], hi[:, 2]].astype(np.float64)
        curv = fm - 2.0 * f0 + fp
        interior = (idx[:, axis] > 0) & (idx[:, axis] < n - 1) & (curv < 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(interior, 0.5 * (fm - fp) / np.where(curv == 0, -1.0, curv), 0.0)
        off[:, axis] = np.clip(d, -0.5, 0.5)
    return off


def _greedy_nms(coords: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept by greedy NMS; ``coords`` must be sorted by descending score."""
    n = len(coords)
    if n == 0 or radius <= 0:
        return np.arange(n)
    from scipy.spatial import cKDTree

    tree = cKDTree(coords)
    pairs = tree.query_pairs(r=radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n)
    neighbours: dict[int, list[int]] = {}
    for i, j in pairs:
        neighbours.setdefault(int(i), []).append(int(j))
        neighbours.setdefault(int(j), []).append(int(i))
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in neighbours.get(i, ()):
            if j > i:
                suppressed[j] = True
    return np.asarray(keep, dtype=np.int64)


def _preview_bin(shape: tuple[int, ...], s1: float, max_voxels: int) -> int:
    b = _auto_bin(s1)
    n = int(np.prod(shape))
    while n / b**3 > max_voxels:
        b += 1
    return b


def binned_dog(volume: Any, sigma1: float, k: float = _DEFAULTS.k, *, bin_factor: int = 1,
               chunk_size: int = 64) -> np.ndarray:
    """The DoG (bright blobs positive) on the grid binned by ``bin_factor``.

    :func:`dog_filter` with the volume read and block-mean binned ``chunk_size``
    Z-slices at a time (a memory-mapped tomogram is never read whole); non-finite voxels
    raise a :class:`CryoGuardError` giving their number. ``sigma1`` is in
    full-resolution voxels.
    """
    sigma1, k = _check_sigma(sigma1, k)
    shape = _shape_of(volume)
    if len(shape) != 3:
        raise CryoGuardError(f"the DoG needs a 3D ZYX volume, got shape {shape}")
    b = _resolve_bin(bin_factor, sigma1)
    if b == 1:
        vol = np.asarray(volume, dtype=np.float32)
    else:
        step = max(b, (int(chunk_size) // b) * b)
        vol = np.empty(tuple(-(-n // b) for n in shape), dtype=np.float32)
        for z0 in range(0, shape[0], step):
            with np.errstate(invalid="ignore", over="ignore"):
                blocks = _block_mean(_read(volume, z0, min(shape[0], z0 + step)), b)
            vol[z0 // b : z0 // b + blocks.shape[0]] = blocks
    if not np.isfinite(vol).all():
        bad = _count_nonfinite(vol) if b == 1 else _count_nonfinite(np.asarray(volume))
        raise CryoGuardError(
            f"the volume has {bad} non-finite voxels (NaN or Inf); fix or mask them first"
            if bad else "volume values overflow float32 when binned; rescale it"
        )
    return _dog_block(vol, _binned_sigma(sigma1, b), k)


def dog_preview(
    volume: Any,
    sigma1: float = _DEFAULTS.sigma1,
    k: float = _DEFAULTS.k,
    *,
    sigma_unit: str = _DEFAULTS.sigma_unit,
    voxel_size: float = 1.0,
    polarity: str = _DEFAULTS.polarity,
    max_voxels: int = 32_000_000,
) -> tuple[np.ndarray, int]:
    """The DoG response as the picker sees it, for display: ``(response, bin_factor)``.

    Binned like :func:`pick_particles` with ``bin_factor="auto"`` (more if the volume
    would still exceed ``max_voxels``), read in Z-chunks, and sign-flipped for
    ``polarity="dark"``, so that bright means "particle" either way (``"auto"`` flips it
    when :func:`~napari_cryoguard.picking.choose_polarity` chooses dark; call that first
    to know which). Show it with scale ``bin_factor`` times the tomogram's and a
    translate of ``(bin_factor - 1) / 2`` voxels.
    """
    p = DoGParams(sigma1=sigma1, k=k, sigma_unit=sigma_unit, polarity=polarity)
    voxel_size = check_float("voxel_size", voxel_size, minimum=0, strict=True)
    s1, k, polarity = p.sigma1_voxels(voxel_size), p.k, p.polarity
    shape = _shape_of(volume)
    if len(shape) != 3:
        raise CryoGuardError(f"the DoG needs a 3D ZYX volume, got shape {shape}")
    b = _preview_bin(shape, s1, max_voxels)
    response = binned_dog(volume, s1, k, bin_factor=b)
    if polarity == "auto":
        from napari_cryoguard.picking.polarity import polarity_from_dog

        polarity = polarity_from_dog(response, b, s1).polarity
    if polarity == "dark":
        np.negative(response, out=response)
    return response, b
