"""Simulated tomograms with ground-truth particle positions and classes.

Particles (bundled templates, see :mod:`napari_cryoguard.simulate.templates`) are
placed at random non-overlapping positions with random 3D rotations and random classes,
then imaged as in Che et al. 2018 (CB3D) section 2.2:
CTF (Eq. 2; -5 µm defocus, Cs 2 mm, 300 kV), missing wedge (+-60 degrees by default),
Gaussian noise at a target SNR = var(signal) / var(noise).

Noise model. The noise is white Gaussian noise limited to the same sampled wedge as
the signal (a reconstruction from the tilt series fills only that wedge, for noise as
for signal); it is not CTF-filtered (shot noise is added to the recorded images, after
the optics). Its scale is set *after* filtering so that the variance ratio is exact.

Where the SNR is measured. The signal variance is measured over the union of the
particle cubes (``cube``^3 boxes around each particle, the boxes a picker would extract),
and so is the noise variance: subtomograms extracted at the true positions then have
about the target SNR, whatever the particle density of the tomogram.

Contrast: protein bright (positive), as in EMDB maps; the CTF used is positive at low
frequency (see :mod:`napari_cryoguard.simulate.physics`). The volume is left in those
units (template maximum 1 before imaging), not standardised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_cryoguard.checks import check_float, check_positive_int
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io.picks import Picks
from napari_cryoguard.simulate import _common as common
from napari_cryoguard.simulate.physics import add_noise, apply_fourier_filter, random_rotation
from napari_cryoguard.simulate.templates import DEFAULT_CLASSES, load_template, template_radius

__all__ = ["SimulatedTomogram", "simulate_tomogram"]

#: Candidate positions tried per batch / batches tried per particle before giving up.
_BATCH = 64
_MAX_BATCHES = 60


@dataclass
class SimulatedTomogram:
    """A simulated tomogram and its ground truth.

    Attributes
    ----------
    volume : ndarray, shape (Z, Y, X), float32
        The tomogram, protein bright.
    coords : ndarray, shape (N, 3), float64
        True particle centres (centre of mass as placed), ZYX voxels.
    labels : ndarray, shape (N,), int64
        Class index per particle, into ``class_names``.
    class_names : list of str
        Template names of the classes.
    voxel_size : float
        Å per voxel.
    params : dict
        JSON-serialisable parameters; ``simulate_tomogram(**params)`` reproduces the volume.
    rotations : ndarray, shape (N, 3, 3), float64
        Rotation applied to each particle's template (ZYX convention).
    """

    volume: np.ndarray
    coords: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    voxel_size: float
    params: dict = field(default_factory=dict)
    rotations: np.ndarray | None = None

    def to_picks(self) -> Picks:
        """The ground truth as :class:`~napari_cryoguard.io.picks.Picks` (score 1 each)."""
        return Picks(
            coords=self.coords.copy(),
            scores=np.ones(len(self.coords)),
            labels=self.labels.copy(),
            class_names=list(self.class_names),
            voxel_size=float(self.voxel_size),
        )


def _place(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    radii: np.ndarray,
    margin: float,
    min_separation: float | None,
) -> np.ndarray:
    """Random sequential placement of non-overlapping spheres (centres >= margin from
    every face). Raises CryoGuardError with the number that fitted when stuck."""
    n = len(radii)
    low = np.full(3, margin)
    high = np.asarray(shape, float) - margin
    coords = np.empty((n, 3))
    for i in range(n):
        need = radii[i] + radii[:i] if min_separation is None else np.full(i, min_separation)
        for _ in range(_MAX_BATCHES):
            cand = rng.uniform(low, high, size=(_BATCH, 3))
            if i == 0:
                coords[0] = cand[0]
                break
            d2 = ((cand[:, None, :] - coords[None, :i, :]) ** 2).sum(-1)
            ok = np.all(d2 >= need[None, :] ** 2, axis=1)
            if ok.any():
                coords[i] = cand[np.argmax(ok)]
                break
        else:
            sep = (
                f"a separation of {min_separation:g} voxels"
                if min_separation is not None
                else f"particle radii of {radii.min():.1f} to {radii.max():.1f} voxels"
            )
            raise CryoGuardError(
                f"could place only {i} of {n} particles without overlap in a "
                f"{'x'.join(map(str, shape))} volume ({sep}, centres at least {margin:g} "
                f"voxels from the border); ask for at most about {i} particles or a larger volume"
            )
    return coords


def simulate_tomogram(
    shape: Sequence[int] = (64, 256, 256),
    n_particles: int = 40,
    classes: Sequence[str] = DEFAULT_CLASSES,
    voxel_size: float = 10.0,
    snr: float | None = 0.1,
    tilt_range: float = 60.0,
    defocus_um: float = -5.0,
    cs_mm: float = 2.0,
    voltage_kv: float = 300.0,
    min_separation: float | None = None,
    seed: int | None = 0,
    cube: int = 28,
    progress=None,
    *,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    tilt_axis: str = "y",
) -> SimulatedTomogram:
    """Simulate a tomogram of randomly placed, rotated particles with ground truth.

    Steps (``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt`` section 2.2): random class
    per particle, random non-overlapping position, uniform random rotation; sum of the
    rotated templates; CTF (Eq. 2); missing wedge; wedge-limited Gaussian noise at
    ``snr`` measured over the particle cubes (see the module docstring).

    Parameters
    ----------
    shape : (Z, Y, X)
        Tomogram shape in voxels.
    n_particles : int
        Number of particles (>= 1).
    classes : sequence of str
        Template names (bundled, see :func:`list_templates`) or MRC paths.
    voxel_size : float
        Å per voxel (templates are rescaled from 10 Å).
    snr : float or None
        Target SNR (variance ratio, > 0); ``None`` gives the noise-free tomogram (same
        particles as the noisy one with the same seed).
    tilt_range : float
        Half tilt range in degrees, in (0, 90]; 90 = no missing wedge.
    defocus_um, cs_mm, voltage_kv, amplitude_contrast, bfactor
        CTF parameters (:func:`ctf_3d`); negative defocus = underfocus (paper's sign).
    min_separation : float, optional
        Minimum distance between particle centres in voxels; default: the sum of the
        two particles' radii (:func:`template_radius`), i.e. no overlap.
    seed : int or None
        Random seed; the same seed gives identical arrays.
    cube : int
        Subtomogram edge: centres stay at least ``ceil(cube / 2)`` voxels from every
        face so each particle can be extracted, and the SNR is measured over these cubes.
    progress : tqdm-like object or callable, optional
        Progress reporter (``update(n)``, or ``progress(done, total, stage)``).
    tilt_axis : {"y", "x"}
        Tilt axis; the beam is along Z.

    Returns
    -------
    SimulatedTomogram

    Raises
    ------
    CryoGuardError
        Bad parameter (unknown class, SNR <= 0, tilt range outside (0, 90], volume
        smaller than a cube) or too many particles to place (the message says how many
        fitted).
    """
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"shape must be three integers (Z, Y, X), got {shape!r}") from exc
    if len(shape) != 3:
        raise CryoGuardError(f"shape must be three integers (Z, Y, X), got {shape!r}")
    cube = check_positive_int("cube", cube, 4)
    if min(shape) < cube:
        raise CryoGuardError(f"tomogram shape {shape} is smaller than one {cube}^3 cube")
    n_particles = check_positive_int("n_particles", n_particles, 1)
    classes = common.resolve_classes(classes)
    imaging = common.Imaging(voxel_size, snr, tilt_range, defocus_um, cs_mm, voltage_kv,
                             amplitude_contrast, bfactor, tilt_axis)
    voxel_size, snr = imaging.voxel_size, imaging.snr
    if min_separation is not None:
        min_separation = check_float("min_separation", min_separation, minimum=0.0)
    rng, noise_rng, seed = common.seed_streams(seed)
    params = {"shape": list(shape), "n_particles": n_particles, "classes": list(classes),
              **imaging.record(), "min_separation": min_separation, "seed": seed, "cube": cube}
    json.dumps(params)  # must stay serialisable

    templates = [load_template(c, voxel_size) for c in classes]
    class_radii = np.array([template_radius(c, voxel_size) for c in classes])
    prog = common.Progress(progress, n_particles + 3)

    labels = rng.integers(len(classes), size=n_particles).astype(np.int64)
    margin = float(math.ceil(cube / 2))
    coords = _place(rng, shape, class_radii[labels], margin, min_separation)
    rotations = np.stack([random_rotation(rng) for _ in range(n_particles)])

    signal = np.zeros(shape, dtype=np.float32)
    for pos, lab, rot in zip(coords, labels, rotations, strict=True):
        common.splat(signal, templates[lab], rot, pos)
        prog.step("placing particles")

    filt, wedge = imaging.filters(shape)  # CTF then missing wedge, one Fourier filter
    signal = apply_fourier_filter(signal, filt)
    del filt
    prog.step("CTF and missing wedge")

    if snr is not None:
        region = np.zeros(shape, dtype=bool)
        h = cube // 2
        for a in np.rint(coords).astype(int):
            region[tuple(slice(max(c - h, 0), c - h + cube) for c in a)] = True
        # noise: wedge-limited, not CTF-filtered; variances measured over the particle cubes
        volume = add_noise(signal, snr, noise_rng, fourier_filter=wedge, region=region)
    else:
        volume = signal
    prog.step("noise")
    prog.step("done")

    return SimulatedTomogram(
        volume=np.ascontiguousarray(volume, dtype=np.float32),
        coords=coords,
        labels=labels,
        class_names=common.class_display_names(classes),
        voxel_size=voxel_size,
        params=params,
        rotations=rotations,
    )
