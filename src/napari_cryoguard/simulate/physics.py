"""Image-formation pieces of the subtomogram simulator, each a small pure function.

Following Che et al. 2018 (CB3D) section 2.2: density
maps are randomly rotated and translated, filtered by the contrast transfer function
(CTF, Eq. 2; spherical aberration 2 mm, defocus -5 um, 300 kV), limited by the missing
wedge of a tilt series (+-60, +-50, +-40 degrees), and noise is added at a target
signal-to-noise ratio (0.5 down to 0.01; SNR = var(signal) / var(noise)).

The paper projects, filters and back-projects; we apply the same operators directly in
3D, which is equivalent for the linear parts: the CTF as a radially symmetric 3D filter
and the tilt range as a binary wedge mask in Fourier space.

The paper also convolves the projections with the detector's modulation transfer
function (MTF, section 2.2, refs. 13 and 25, no formula given). :func:`mtf_3d` is that
step for an ideal pixel-integrating detector (``|sinc|`` per detector axis, 2/pi at
Nyquist), put into 3D by the same Fourier-slice argument; it is a switch
(``ctf_3d(..., mtf="sinc")``), **off by default** so that the default simulated data
stay as they were. Its effect, measured on noise-free, CTF- and wedge-filtered
subtomograms of the five bundled templates (100 samples, ±60°, tilt axis Y, the MTF
applied to the cube, detector pixel = voxel; ``tests/simulate/test_mtf.py``): at 10 Å,
28^3 the signal keeps a correlation of 0.999 with the one without MTF and 90 % of its
variance; at 14 Å, 16^3 0.998 and 84 %. The CTF at 5 µm underfocus already removes
most of what the MTF damps (its envelope falls near Nyquist), so after per-sample
z-scoring and noise at a set SNR the change is a slight low-pass of the signal.

Conventions
-----------
* Arrays are ZYX; the beam is along Z; Fourier masks use the ``scipy.fft.rfftn``
  layout ``(nz, ny, nx // 2 + 1)`` unless ``rfft=False``.
* Contrast: volumes are returned in the density convention of EMDB maps, protein
  **bright** (positive). Phase contrast in underfocus images makes protein dark; a
  tomogram is conventionally contrast-inverted before picking, and :func:`ctf_profile`
  returns that inverted transfer, which is positive at low frequency for underfocus
  (``defocus_um < 0``), so particles stay bright blobs.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from napari_cryoguard.checks import check_choice, check_float, check_prob
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "add_noise",
    "apply_fourier_filter",
    "ctf_3d",
    "ctf_profile",
    "electron_wavelength",
    "missing_wedge_mask",
    "mtf_3d",
    "mtf_profile",
    "random_rotation",
    "rotate_volume",
]

# CODATA constants (SI)
_H = 6.62607015e-34
_M0 = 9.1093837015e-31
_E = 1.602176634e-19
_C = 299792458.0


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# --------------------------------------------------------------------------- geometry
def random_rotation(rng=None) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (Haar measure).

    The papers rotate each density map randomly before imaging
    (``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt`` section 2.2). A unit quaternion
    with i.i.d. Gaussian components is uniform on the 3-sphere, hence the rotation it
    encodes is uniform on SO(3).

    Parameters
    ----------
    rng : numpy.random.Generator or int or None
        Random source (or a seed for one).

    Returns
    -------
    ndarray, shape (3, 3), float64
        Proper rotation (``det = +1``) acting on ZYX column vectors.
    """
    q = _as_rng(rng).standard_normal(4)
    q /= np.linalg.norm(q)
    w, a, b, c = q
    return np.array(
        [
            [1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w)],
            [2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w)],
            [2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)],
        ]
    )


def rotate_volume(
    vol: np.ndarray,
    rotation: np.ndarray,
    *,
    output_shape: tuple[int, int, int] | None = None,
    center: np.ndarray | None = None,
    out_center: np.ndarray | None = None,
    order: int = 1,
) -> np.ndarray:
    """Rotate a volume about its centre with :func:`scipy.ndimage.affine_transform`.

    A point at offset ``p`` (ZYX voxels) from ``center`` in ``vol`` moves to
    ``out_center + rotation @ p`` in the output (linear interpolation by default,
    zero outside).

    Parameters
    ----------
    vol : ndarray, shape (D, H, W)
        Volume to rotate.
    rotation : ndarray, shape (3, 3)
        Rotation matrix acting on ZYX vectors (e.g. from :func:`random_rotation`).
    output_shape : tuple of int, optional
        Shape of the result (default: ``vol.shape``).
    center : array-like of 3 floats, optional
        Rotation centre in ``vol`` (default: the geometric centre ``(n - 1) / 2``).
    out_center : array-like of 3 floats, optional
        Where that centre lands in the output (default: the output's geometric centre);
        a fractional value places the volume with sub-voxel precision.
    order : int
        Spline order of the interpolation (1 = trilinear).

    Returns
    -------
    ndarray, float32
    """
    vol = np.asarray(vol, dtype=np.float32)
    rot = np.asarray(rotation, dtype=np.float64)
    if rot.shape != (3, 3):
        raise CryoGuardError(f"rotation must be a 3x3 matrix, got shape {rot.shape}")
    out_shape = tuple(vol.shape) if output_shape is None else tuple(int(s) for s in output_shape)
    c_in = (np.asarray(vol.shape, float) - 1) / 2 if center is None else np.asarray(center, float)
    c_out = (
        (np.asarray(out_shape, float) - 1) / 2
        if out_center is None
        else np.asarray(out_center, float)
    )
    inv = rot.T  # output -> input: i = R^T (o - c_out) + c_in
    return ndimage.affine_transform(
        vol,
        inv,
        offset=c_in - inv @ c_out,
        output_shape=out_shape,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=order > 1,
        output=np.float32,
    )


# --------------------------------------------------------------------------- Fourier grids
def _check_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise CryoGuardError(f"need a 3D shape (Z, Y, X), got {shape}")
    return shape


def _freq_axes(shape, rfft: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies in cycles per voxel along Z, Y, X, broadcastable (float32)."""
    nz, ny, nx = shape
    kz = sfft.fftfreq(nz).astype(np.float32)[:, None, None]
    ky = sfft.fftfreq(ny).astype(np.float32)[None, :, None]
    kx = (sfft.rfftfreq(nx) if rfft else sfft.fftfreq(nx)).astype(np.float32)[None, None, :]
    return kz, ky, kx


def check_tilt_range(tilt_range: float) -> float:
    """Validate a tilt range (degrees, the half-range ``a`` of ``+-a``) in (0, 90]."""
    t = check_float("tilt range (degrees)", tilt_range, minimum=0.0, strict=True)
    if t > 90.0:
        raise CryoGuardError(
            f"tilt range must be in (0, 90] degrees (the a of +-a; 90 = no missing wedge), got {tilt_range!r}"
        )
    return t


def _check_tilt_axis(tilt_axis: str) -> str:
    """``"y"`` or ``"x"`` (any case); the beam is along Z."""
    axis = str(tilt_axis).lower()
    check_choice("tilt axis (beam along z)", axis, ("y", "x"))
    return axis


def missing_wedge_mask(
    shape: tuple[int, int, int],
    tilt_range: float = 60.0,
    tilt_axis: str = "y",
    *,
    rfft: bool = True,
) -> np.ndarray:
    """Fourier-space mask of the frequencies a single-axis tilt series samples.

    A tilt series over ``+-tilt_range`` degrees about the Y axis (beam along Z) samples
    the central sections whose normals lie within ``tilt_range`` of Z; in the (kz, kx)
    plane they fill a double wedge around the kx axis. The mask keeps

        ``|k_z| <= tan(tilt_range) * |k_x|``   (tilt axis Y; ``|k_y|`` for tilt axis X)

    and zeroes the un-sampled *missing wedge* around the beam axis ``k_z``. The
    ``k_z = 0`` plane is always kept; ``tilt_range = 90`` keeps everything. Tilt ranges
    of the paper: 60, 50, 40 degrees
    (``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt`` section 2.2).

    Parameters
    ----------
    shape : tuple of 3 ints
        Real-space volume shape (Z, Y, X).
    tilt_range : float
        Half tilt range ``a`` in degrees, in (0, 90].
    tilt_axis : {"y", "x"}
        Tilt axis (the beam is always Z).
    rfft : bool
        Return the ``rfftn`` half layout ``(nz, ny, nx // 2 + 1)`` (default) or the full
        ``fftn`` layout.

    Returns
    -------
    ndarray of bool
    """
    shape = _check_shape(shape)
    t = check_tilt_range(tilt_range)
    axis = _check_tilt_axis(tilt_axis)
    kz, ky, kx = _freq_axes(shape, rfft)
    out_shape = (shape[0], shape[1], kx.shape[2])
    if t >= 90.0:
        return np.ones(out_shape, dtype=bool)
    lateral = np.abs(kx) if axis == "y" else np.abs(ky)
    keep = np.abs(kz) <= math.tan(math.radians(t)) * lateral + 1e-9
    return np.broadcast_to(keep, out_shape).copy()


# --------------------------------------------------------------------------- CTF
def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV.

    ``lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2)))``; 0.0197 Å at 300 kV.
    """
    v = check_float("voltage (kV)", voltage_kv, minimum=0.0, strict=True) * 1e3
    p = math.sqrt(2.0 * _M0 * _E * v * (1.0 + _E * v / (2.0 * _M0 * _C**2)))
    return _H / p * 1e10


def _check_ctf_params(voxel_size, cs_mm, amplitude_contrast, bfactor) -> None:
    check_float("voxel size (Å)", voxel_size, minimum=0.0, strict=True)
    check_float("spherical aberration (mm)", cs_mm, minimum=0.0)
    check_float("amplitude contrast", amplitude_contrast, minimum=0.0)
    check_prob("amplitude contrast", amplitude_contrast)
    check_float("B-factor (Å^2)", bfactor, minimum=0.0)


def ctf_profile(
    k: np.ndarray | float,
    defocus_um: float = -5.0,
    cs_mm: float = 2.0,
    voltage_kv: float = 300.0,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
) -> np.ndarray:
    """Radial contrast transfer function at spatial frequency ``k`` (1/Å).

    Eq. 2 of ``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt`` (Eq. 2.20 of Frank's book)
    in physical units, with amplitude contrast and an optional envelope:

        ``chi(k) = pi * lambda * dF * k^2 - (pi / 2) * Cs * lambda^3 * k^4``
        ``CTF(k) = [sqrt(1 - A^2) sin(chi) + A cos(chi)] * exp(-B k^2 / 4)``

    where ``dF = -defocus_um`` (µm -> Å) is the underfocus: the paper's sign, defocus
    -5 µm, means 5 µm underfocus. ``lambda`` is the relativistic wavelength
    (:func:`electron_wavelength`), ``Cs`` the spherical aberration (2 mm in the paper),
    ``A`` the amplitude contrast.

    Sign: this is the contrast-*inverted* transfer (protein bright, density
    convention). For underfocus it equals ``A > 0`` at ``k = 0`` and rises to 1 before
    the first zero at ``chi = pi - asin(A)``, so low-resolution particle images keep
    their sign.

    Returns
    -------
    ndarray (float64 for scalar/float64 input, else the input's float type)
    """
    _check_ctf_params(1.0, cs_mm, amplitude_contrast, bfactor)
    check_float("defocus (µm)", defocus_um)
    k = np.asarray(k)
    if not np.issubdtype(k.dtype, np.floating):
        k = k.astype(np.float64)
    lam = electron_wavelength(voltage_kv)
    df = -float(defocus_um) * 1e4  # Å, positive = underfocus
    cs = float(cs_mm) * 1e7  # Å
    k2 = k * k
    chi = (math.pi * lam * df) * k2 - (0.5 * math.pi * cs * lam**3) * (k2 * k2)
    out = np.sin(chi + math.asin(float(amplitude_contrast)))
    if bfactor > 0:
        out = out * np.exp(-(float(bfactor) / 4.0) * k2)
    return out


#: Detector MTF models of :func:`mtf_profile`.
MTF_MODELS = ("none", "sinc")


def mtf_profile(f: np.ndarray | float, model: str = "sinc") -> np.ndarray:
    """Detector modulation transfer function along one detector axis.

    ``f`` is the spatial frequency in cycles per detector pixel (0.5 = Nyquist).

    ``"sinc"``: an ideal detector that integrates the signal over square pixels, whose
    MTF is the Fourier transform of the pixel's box, ``|sin(pi f) / (pi f)|`` (1 at
    ``f = 0``, 2/pi = 0.637 at Nyquist). Real detectors lie below it (charge spreading
    in scintillator-coupled CCDs, ref. 25 of the CB3D paper, measures such curves);
    the paper gives no formula, so this is the model-free lower bound on blurring,
    our choice. ``"none"``: 1 everywhere.

    Returns
    -------
    ndarray (float64 for scalar/float64 input, else the input's float type)
    """
    check_choice("MTF model", model, MTF_MODELS)
    f = np.asarray(f)
    if not np.issubdtype(f.dtype, np.floating):
        f = f.astype(np.float64)
    if model == "none":
        return np.ones_like(f)
    return np.abs(np.sinc(f))


def mtf_3d(
    shape: tuple[int, int, int],
    voxel_size: float,
    detector_pixel: float | None = None,
    model: str = "sinc",
    tilt_axis: str = "y",
    *,
    rfft: bool = True,
) -> np.ndarray:
    """The detector MTF of every projection of a tilt series as a 3D Fourier filter.

    A projection at tilt ``theta`` about the tilt axis (Y: detector axes Y and the
    tilted X) fills, by the Fourier-slice theorem, the central plane spanned by
    ``k_y`` and ``(cos theta, sin theta)`` in ``(k_x, k_z)``. On that plane the
    detector's separable MTF is ``M(k_y p) * M(sqrt(k_x^2 + k_z^2) p)`` with ``p`` the
    detector pixel, whatever ``theta``, so direct Fourier inversion of the filtered
    projections gives that 3D filter (inside the sampled wedge; multiply by
    :func:`missing_wedge_mask` as usual). Section 2.2 of the CB3D paper.

    Parameters
    ----------
    shape : tuple of 3 ints
        Real-space shape (Z, Y, X).
    voxel_size : float
        Å per voxel of the volume.
    detector_pixel : float, optional
        Å per detector pixel at the specimen (default: ``voxel_size``, an unbinned
        reconstruction; a tomogram binned by b has ``voxel_size / b``).
    model : str
        :func:`mtf_profile` model (``"sinc"`` or ``"none"``).
    tilt_axis : str
        ``"y"`` (default) or ``"x"``, as in :func:`missing_wedge_mask`.
    rfft : bool
        ``rfftn`` half layout (default) or full ``fftn`` layout.

    Returns
    -------
    ndarray, float32, shape ``(nz, ny, nx // 2 + 1)`` (rfft) or ``shape``, in [0, 1]
    """
    shape = _check_shape(shape)
    voxel_size = check_float("voxel size (Å)", voxel_size, minimum=0.0, strict=True)
    pixel = voxel_size if detector_pixel is None else check_float(
        "detector pixel (Å)", detector_pixel, minimum=0.0, strict=True)
    axis = _check_tilt_axis(tilt_axis)
    kz, ky, kx = _freq_axes(shape, rfft)
    scale = np.float32(pixel / voxel_size)  # cycles per voxel -> cycles per detector pixel
    along, k_other = (ky, kx) if axis == "y" else (kx, ky)
    tilted = np.sqrt(k_other**2 + kz**2) * scale
    out = mtf_profile(along * scale, model) * mtf_profile(tilted, model)
    return np.broadcast_to(out, kz.shape[:1] + ky.shape[1:2] + kx.shape[2:]).astype(np.float32)


def ctf_3d(
    shape: tuple[int, int, int],
    voxel_size: float,
    defocus_um: float = -5.0,
    cs_mm: float = 2.0,
    voltage_kv: float = 300.0,
    amplitude_contrast: float = 0.07,
    bfactor: float = 0.0,
    *,
    rfft: bool = True,
    mtf: str = "none",
    detector_pixel: float | None = None,
    tilt_axis: str = "y",
) -> np.ndarray:
    """The CTF as a radially symmetric 3D Fourier filter of a volume.

    Evaluates :func:`ctf_profile` at ``|k|`` of every Fourier voxel of a ``shape``
    volume with ``voxel_size`` Å voxels (paper defaults: defocus -5 µm, i.e. 5 µm
    underfocus; Cs 2 mm; 300 kV; ``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt``
    section 2.2, Eq. 2). Amplitude contrast 0.07 is the usual value for vitreous
    ice; the B-factor envelope ``exp(-B k^2 / 4)`` is off by default, as in Eq. 2.

    Parameters
    ----------
    shape : tuple of 3 ints
        Real-space shape (Z, Y, X).
    voxel_size : float
        Å per voxel.
    rfft : bool
        ``rfftn`` half layout (default) or full ``fftn`` layout.
    mtf : str
        Also apply the detector MTF (:func:`mtf_3d`): ``"none"`` (default: the CTF
        alone, as before the switch existed) or ``"sinc"``.
    detector_pixel, tilt_axis
        Passed to :func:`mtf_3d` (used only with an MTF).

    Returns
    -------
    ndarray, float32, shape ``(nz, ny, nx // 2 + 1)`` (rfft) or ``shape``
        Multiply a volume's spectrum by it; positive at low frequency (protein bright).
    """
    shape = _check_shape(shape)
    voxel_size = float(voxel_size)
    _check_ctf_params(voxel_size, cs_mm, amplitude_contrast, bfactor)
    kz, ky, kx = _freq_axes(shape, rfft)
    inv = np.float32(1.0 / voxel_size)
    k = np.sqrt((kz * inv) ** 2 + (ky * inv) ** 2 + (kx * inv) ** 2)
    out = ctf_profile(k, defocus_um, cs_mm, voltage_kv, amplitude_contrast, bfactor).astype(
        np.float32, copy=False
    )
    if mtf != "none":
        out *= mtf_3d(shape, voxel_size, detector_pixel, mtf, tilt_axis, rfft=rfft)
    else:
        check_choice("MTF model", mtf, MTF_MODELS)
    return out


# --------------------------------------------------------------------------- filtering and noise
def apply_fourier_filter(vol: np.ndarray, fourier_filter: np.ndarray) -> np.ndarray:
    """Multiply the spectrum of a volume (or a stack, filtered over its last 3 axes) by an
    rfft-layout filter, with ``scipy.fft`` on all cores; returns float32."""
    vol = np.asarray(vol, dtype=np.float32)
    axes = (-3, -2, -1)
    spec = sfft.rfftn(vol, axes=axes, workers=-1)
    spec *= fourier_filter
    return sfft.irfftn(spec, s=vol.shape[-3:], axes=axes, workers=-1).astype(np.float32, copy=False)


def _region_view(arr: np.ndarray, region, batch: bool) -> np.ndarray:
    """Voxels of ``arr`` inside ``region``: (N, M) for a batch, (M,) otherwise."""
    lead = (slice(None),) if batch else ()
    if region is None:
        sub = arr
    elif isinstance(region, tuple):
        sub = arr[lead + region]
    else:
        mask = np.asarray(region, dtype=bool)
        if mask.shape != arr.shape[-3:]:
            raise CryoGuardError(
                f"noise region mask has shape {mask.shape}, volume {arr.shape[-3:]}"
            )
        sub = arr[..., mask]
    return sub.reshape(len(arr), -1) if batch else sub.reshape(-1)


def add_noise(
    signal: np.ndarray,
    snr: float,
    rng=None,
    *,
    fourier_filter: np.ndarray | None = None,
    region=None,
    batch: bool = False,
    signal_variance: float | np.ndarray | None = None,
    return_noise: bool = False,
):
    """Add Gaussian noise at a target signal-to-noise ratio ``SNR = var(signal) / var(noise)``.

    The variance ratio is the papers' definition (SNR levels 0.5, 0.1, 0.05, 0.03, 0.01
    of ``dsrf3d-rb3d-cb3d-subtomogram-classifiers.txt`` section 2.2). White Gaussian
    noise is drawn, optionally filtered (``fourier_filter``, rfft layout: pass the
    missing-wedge mask, because a reconstruction from the tilt series fills only the
    sampled wedge, for noise as for signal; filtered noise is drawn directly as its
    Fourier transform), and *then* scaled so that the ratio of the variances measured
    over ``region`` is exactly ``snr``.

    Parameters
    ----------
    signal : ndarray, shape (D, H, W), or (N, D, H, W) with ``batch=True``
        Noise-free signal (already CTF- and wedge-filtered).
    snr : float
        Target variance ratio, > 0.
    rng : numpy.random.Generator or int or None
        Random source.
    fourier_filter : ndarray, optional
        rfft-layout filter applied to the white noise over the last 3 axes.
    region : None, tuple of slices or bool mask of shape (D, H, W)
        Where both variances are measured (None: everywhere). For a tomogram, the union
        of the particle cubes, so extracted subtomograms have about the target SNR.
    batch : bool
        First axis indexes samples; each sample gets its own noise scale (per-sample SNR).
    signal_variance : float or ndarray (N,), optional
        Use this signal variance instead of measuring it (e.g. for empty samples).
    return_noise : bool
        Also return the scaled noise.

    Returns
    -------
    noisy : ndarray, float32 (same shape as ``signal``)
    noise : ndarray, float32 (only with ``return_noise``)
    """
    snr = check_snr(snr)
    if snr is None:
        raise CryoGuardError("add_noise needs an SNR > 0")
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != (4 if batch else 3):
        raise CryoGuardError(
            f"signal must be {'4D (N, D, H, W)' if batch else '3D'}, got shape {signal.shape}"
        )
    gen = _as_rng(rng)
    if fourier_filter is None:
        noise = gen.standard_normal(signal.shape, dtype=np.float32)
    else:
        # The spectrum of white Gaussian noise is itself white complex Gaussian noise:
        # draw it directly in the rfft layout (one inverse FFT instead of two FFTs).
        spec_shape = (*signal.shape[:-1], signal.shape[-1] // 2 + 1)
        spec = gen.standard_normal((*spec_shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
        spec *= fourier_filter
        noise = sfft.irfftn(spec, s=signal.shape[-3:], axes=(-3, -2, -1), workers=-1)
        noise = noise.astype(np.float32, copy=False)
        del spec
    if signal_variance is None:
        var_s = _region_view(signal, region, batch).var(axis=-1, dtype=np.float64)
    else:
        var_s = np.broadcast_to(
            np.asarray(signal_variance, np.float64), (len(signal),) if batch else ()
        )
    var_n = _region_view(noise, region, batch).var(axis=-1, dtype=np.float64)
    scale = np.sqrt(np.divide(var_s / snr, var_n, out=np.zeros_like(var_n), where=var_n > 0))
    scale = scale.astype(np.float32).reshape((-1, 1, 1, 1) if batch else ())
    noise *= scale
    if return_noise:
        return signal + noise, noise
    noise += signal  # reuse the buffer: a tomogram is large
    return noise


def check_snr(snr) -> float | None:
    """Validate an SNR: ``None`` (noise-free) or a finite number > 0 (a variance ratio)."""
    return None if snr is None else check_float("SNR", snr, minimum=0.0, strict=True)
