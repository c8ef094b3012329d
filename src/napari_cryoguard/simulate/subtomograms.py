"""Labelled stacks of simulated subtomograms, the papers' training data.

Che et al. 2018 (CB3D) section 2.2: for each
macromolecular complex, subtomograms containing a randomly rotated and translated
particle, imaged with CTF (Eq. 2) and a missing wedge, with noise at SNR 0.5 to 0.01,
and optionally a class with no macromolecule. The RAT paper
(``rat-regularized-adversarial-training-cb3d.txt``) uses 28^3 cubes normalised to zero
mean; here each sample is normalised to zero mean and unit variance by default.

Each sample is simulated in a box padded by the CTF's delocalisation (the real-space
reach of the CTF at Nyquist, ``lambda |dF| / (2 voxel^2)`` voxels: 5 at 10 Å, -5 µm), then
cropped to ``cube``, so the CTF ringing does not wrap around the cube. The SNR is per
subtomogram: var(signal) / var(noise) over the cropped cube is exactly ``snr`` (noise
wedge-limited like the signal, see :func:`add_noise`). Empty samples get noise at the
mean noise level of the particle samples.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_cryoguard.checks import check_float, check_positive_int
from napari_cryoguard.simulate import _common as common
from napari_cryoguard.simulate.physics import (
    add_noise,
    apply_fourier_filter,
    electron_wavelength,
    random_rotation,
)
from napari_cryoguard.simulate.templates import DEFAULT_CLASSES, load_template, template_radius

__all__ = ["EMPTY_CLASS", "SimulatedDataset", "iter_simulated_blocks", "simulate_subtomograms"]

#: Name of the no-macromolecule class (``include_empty=True``).
EMPTY_CLASS = "empty"


@dataclass
class SimulatedDataset:
    """A labelled stack of simulated subtomograms.

    Attributes
    ----------
    volumes : ndarray, shape (N, cube, cube, cube), float32
        Subtomograms (ZYX), protein bright; zero mean, unit variance each when
        normalised.
    labels : ndarray, shape (N,), int64
        Class index per sample, into ``class_names``.
    class_names : list of str
        Template names, plus ``"empty"`` last with ``include_empty``.
    voxel_size : float
        Å per voxel.
    params : dict
        JSON-serialisable parameters; ``simulate_subtomograms(**params)`` reproduces it.
    rotations : ndarray, shape (N, 3, 3)
        Rotation of each particle (identity for empty samples).
    shifts : ndarray, shape (N, 3)
        Offset (ZYX voxels) of each particle's centre of mass from the cube centre
        voxel ``cube // 2``.
    """

    volumes: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    voxel_size: float
    params: dict = field(default_factory=dict)
    rotations: np.ndarray | None = None
    shifts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.volumes)


def _ctf_pad(voxel_size: float, defocus_um: float, voltage_kv: float, cube: int) -> int:
    """Padding (voxels) covering the CTF's delocalisation at Nyquist."""
    reach = electron_wavelength(voltage_kv) * abs(defocus_um) * 1e4 / (2.0 * voxel_size**2)
    return int(min(max(math.ceil(reach) + 1, 2), cube))


def simulate_subtomograms(
    n_per_class: int = 100,
    classes: Sequence[str] = DEFAULT_CLASSES,
    cube: int = 28,
    voxel_size: float = 10.0,
    snr: float | None = 0.1,
    tilt_range: float = 60.0,
    defocus_um: float = -5.0,
    cs_mm: float = 2.0,
    voltage_kv: float = 300.0,
    shift: float = 2.0,
    seed: int | None = 0,
    normalize: bool = True,
    include_empty: bool = False,
    progress=None,
    *,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    tilt_axis: str = "y",
    mtf: str = "none",
) -> SimulatedDataset:
    """Simulate ``n_per_class`` subtomograms per class, shuffled.

    Per sample (``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt`` section 2.2): a
    uniformly random rotation, a random translation of up to ``shift`` voxels per axis,
    CTF (Eq. 2), missing wedge, then wedge-limited Gaussian noise scaled so that
    var(signal) / var(noise) over the cube equals ``snr``. The stack is filtered
    with ``rfftn`` over the last three axes (see :func:`iter_simulated_blocks` for the
    same data in blocks of bounded memory).

    Parameters
    ----------
    n_per_class : int
        Samples per class.
    classes : sequence of str
        Template names (bundled) or MRC paths.
    cube : int
        Subtomogram edge in voxels (28 in the papers).
    voxel_size : float
        Å per voxel.
    snr : float or None
        Target per-subtomogram SNR (variance ratio, > 0); ``None``: noise-free (the same
        particles as with noise for the same seed).
    tilt_range : float
        Half tilt range in degrees, in (0, 90].
    defocus_um, cs_mm, voltage_kv, amplitude_contrast, bfactor
        CTF parameters (:func:`ctf_3d`); negative defocus = underfocus.
    mtf : {"none", "sinc"}
        Detector MTF applied with the CTF (:func:`ctf_3d`): ``"none"`` (the default, as
        the data the bundled models were trained on) or ``"sinc"`` (an ideal pixel, the
        CB3D paper's section 2.2).
    shift : float
        Largest random translation per axis (voxels), uniform in ``[-shift, shift]``.
    seed : int or None
        Random seed; the same seed gives identical arrays.
    normalize : bool
        Standardise each sample to zero mean, unit variance (an all-zero sample stays 0).
    include_empty : bool
        Add the paper's no-macromolecule class ``"empty"`` (last label), ``n_per_class``
        samples of noise only.
    progress : tqdm-like object or callable, optional
        Progress reporter.

    Returns
    -------
    SimulatedDataset

    Raises
    ------
    CryoGuardError
        Unknown class, SNR <= 0, tilt range outside (0, 90], bad counts or sizes.
    """
    # locals() here are exactly the arguments: one signature for both functions
    return next(iter_simulated_blocks(**locals(), block_size=None))


def iter_simulated_blocks(
    *args: Any, block_size: int | None = 256, **kwargs: Any
) -> Iterator[SimulatedDataset]:
    """:func:`simulate_subtomograms` in blocks of ``block_size`` samples, so memory is
    bounded by the block (a padded float32 box per sample), not the data set.

    Takes :func:`simulate_subtomograms`' arguments (the same names and defaults; an
    unknown one raises ``TypeError`` here). The blocks, concatenated in order, are
    exactly the arrays of :func:`simulate_subtomograms` with the same arguments (the
    random streams are consumed in the same order; every step after placing is per
    sample). Each block is a :class:`SimulatedDataset` with the full ``params`` and
    ``class_names``. ``block_size=None`` makes one block. With ``include_empty`` the
    empty samples' noise level is the mean over *all* particle samples, so the whole set
    is one block then.
    """
    bound = inspect.signature(simulate_subtomograms).bind(*args, **kwargs)
    bound.apply_defaults()
    return _blocks(bound.arguments, block_size)


def _blocks(args: Mapping[str, Any], block_size: int | None) -> Iterator[SimulatedDataset]:
    """The generator behind :func:`iter_simulated_blocks` (``args``: every argument of
    :func:`simulate_subtomograms`, by name)."""
    n_per_class = check_positive_int("n_per_class", args["n_per_class"], 1)
    cube = check_positive_int("cube", args["cube"], 4)
    classes = common.resolve_classes(args["classes"])
    imaging = common.Imaging.from_arguments(args)
    shift = check_float("shift", args["shift"], minimum=0.0)
    rng, noise_rng, seed = common.seed_streams(args["seed"])
    normalize, include_empty = bool(args["normalize"]), bool(args["include_empty"])
    voxel_size, snr = imaging.voxel_size, imaging.snr
    params = {"n_per_class": n_per_class, "classes": list(classes), "cube": cube,
              **imaging.record(), "shift": shift, "seed": seed, "normalize": normalize,
              "include_empty": include_empty}
    json.dumps(params)

    pad = _ctf_pad(voxel_size, imaging.defocus_um, imaging.voltage_kv, cube)
    box = cube + 2 * pad
    shape = (box, box, box)
    filt, wedge = imaging.filters(shape)

    templates = [load_template(c, voxel_size) for c in classes]
    for c in classes:
        r = template_radius(c, voxel_size)
        if r + shift > cube / 2:
            warnings.warn(
                f"template {c!r} (radius {r:.1f} voxels at {voxel_size:g} Å) plus a shift of "
                f"{shift:g} does not fit a {cube}^3 cube: particles will be cut",
                stacklevel=2,
            )

    n_classes = len(classes) + (1 if include_empty else 0)
    labels = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class))
    n = len(labels)
    empty = labels == len(classes)

    if block_size is None or include_empty:
        block = max(n, 1)
    else:
        block = check_positive_int("block_size", block_size, 1)
    n_blocks = max(1, -(-n // block))
    prog = common.Progress(args["progress"], n + 2 * n_blocks)
    names = common.class_display_names(classes) + ([EMPTY_CLASS] if include_empty else [])
    centre = pad + cube // 2
    crop = (slice(pad, pad + cube),) * 3
    for lo in range(0, max(n, 1), block):
        hi = min(lo + block, n)
        m = hi - lo
        lab_b, empty_b = labels[lo:hi], empty[lo:hi]
        rotations = np.tile(np.eye(3), (m, 1, 1))
        shifts = np.zeros((m, 3))
        signal = np.zeros((m, *shape), dtype=np.float32)
        for i, lab in enumerate(lab_b):
            if not empty_b[i]:
                rotations[i] = random_rotation(rng)
                shifts[i] = rng.uniform(-shift, shift, size=3)
                common.splat(signal[i], templates[lab], rotations[i], centre + shifts[i])
            prog.step("placing particles")

        signal = apply_fourier_filter(signal, filt)
        prog.step("CTF and missing wedge")

        if snr is not None and m:
            var_s = signal[(slice(None), *crop)].reshape(m, -1).var(axis=1, dtype=np.float64)
            if empty_b.any():
                var_s[empty_b] = var_s[~empty_b].mean() if (~empty_b).any() else 1.0
            signal = add_noise(
                signal,
                snr,
                noise_rng,
                fourier_filter=wedge,
                region=crop,
                batch=True,
                signal_variance=var_s,
            )
        prog.step("noise")

        volumes = np.ascontiguousarray(signal[(slice(None), *crop)])
        del signal
        if normalize and m:
            flat = volumes.reshape(m, -1)
            mean = flat.mean(axis=1, dtype=np.float64)
            std = flat.std(axis=1, dtype=np.float64)
            std[std == 0] = 1.0
            volumes -= mean.astype(np.float32)[:, None, None, None]
            volumes /= std.astype(np.float32)[:, None, None, None]

        yield SimulatedDataset(volumes=volumes, labels=lab_b, class_names=list(names),
                               voxel_size=voxel_size, params=params, rotations=rotations,
                               shifts=shifts)
