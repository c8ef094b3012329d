"""Image-formation pieces: rotation, missing wedge, CTF, noise at a target SNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft as sfft

from napari_cryoguard import CryoGuardError
from napari_cryoguard.simulate import (
    add_noise,
    ctf_3d,
    ctf_profile,
    electron_wavelength,
    missing_wedge_mask,
    random_rotation,
    rotate_volume,
)


def test_random_rotation_is_proper_and_uniform():
    rng = np.random.default_rng(0)
    rots = np.stack([random_rotation(rng) for _ in range(2000)])
    np.testing.assert_allclose(
        rots @ rots.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rots.shape), atol=1e-10
    )
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-10)
    # uniform on SO(3): a rotated axis is uniform on the sphere, mean ~ 0, E[z^2] = 1/3
    axis = rots[:, :, 0]
    assert np.abs(axis.mean(0)).max() < 0.06
    assert (axis**2).mean(0) == pytest.approx([1 / 3] * 3, abs=0.03)
    # uniform angle distribution: trace = 1 + 2 cos(theta), E[trace] = 0
    assert abs(np.trace(rots, axis1=1, axis2=2).mean()) < 0.08


def test_rotate_volume_moves_a_point_by_the_rotation():
    vol = np.zeros((21, 21, 21), np.float32)
    vol[10, 10, 16] = 1.0  # offset +6 along X from the centre
    rot = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # (z, y, x) -> (z, x, -y)
    out = rotate_volume(vol, rot)
    assert np.unravel_index(out.argmax(), out.shape) == (10, 16, 10)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    shifted = rotate_volume(vol, np.eye(3), out_center=(10, 10, 8))
    assert np.unravel_index(shifted.argmax(), shifted.shape) == (10, 10, 14)


def _removed_fraction(tilt):
    """Fraction of the Fourier ball (|k| < Nyquist) in the missing wedge."""
    k = sfft.fftfreq(32)
    ball = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < 0.25
    return 1.0 - missing_wedge_mask((32, 32, 32), tilt, rfft=False)[ball].mean()


def test_missing_wedge_grows_as_tilt_range_shrinks():
    fractions = [_removed_fraction(t) for t in (90, 60, 50, 40)]
    assert fractions[0] == 0.0
    assert all(a < b for a, b in zip(fractions, fractions[1:], strict=False))
    # the missing double wedge spans 4 (90 - a) of 360 degrees in every (kz, kx) plane
    for tilt, f in zip((60, 50, 40), fractions[1:], strict=True):
        assert f == pytest.approx((90 - tilt) / 90, abs=0.02)


def test_missing_wedge_geometry():
    m = missing_wedge_mask((16, 16, 16), 60.0)
    assert m.shape == (16, 16, 9) and m.dtype == bool
    kz, kx = sfft.fftfreq(16)[:, None], sfft.rfftfreq(16)[None, :]
    assert m[:, 0, 0][0] and not m[1:, 0, 0].any()  # the beam axis kz is missing
    assert m[0].all()  # the kz = 0 plane is sampled
    expected = np.abs(kz) <= math.tan(math.radians(60)) * np.abs(kx) + 1e-9
    np.testing.assert_array_equal(m[:, 5, :], expected)  # independent of ky for tilt axis Y
    mx = missing_wedge_mask((16, 16, 16), 60.0, tilt_axis="x")
    ky = sfft.fftfreq(16)[None, :]
    expected_x = np.abs(kz) <= math.tan(math.radians(60)) * np.abs(ky) + 1e-9
    np.testing.assert_array_equal(mx[:, :, 4], expected_x)  # independent of kx for tilt axis X
    with pytest.raises(CryoGuardError, match="tilt axis"):
        missing_wedge_mask((8, 8, 8), 60.0, tilt_axis="z")


@pytest.mark.parametrize("bad", [0, -10, 91, 180, float("nan")])
def test_tilt_range_outside_0_90_raises(bad):
    with pytest.raises(CryoGuardError, match="tilt range"):
        missing_wedge_mask((8, 8, 8), bad)


def test_electron_wavelength_300kv():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, rel=1e-3)
    assert electron_wavelength(200.0) == pytest.approx(0.025079, rel=1e-3)


def test_ctf_positive_at_low_frequency_and_first_zero_matches_formula():
    a = 0.07
    assert ctf_profile(0.0, amplitude_contrast=a) == pytest.approx(a)
    k = np.linspace(0, 0.05, 20001)
    c = ctf_profile(k, defocus_um=-5.0, cs_mm=2.0, voltage_kv=300.0, amplitude_contrast=a)
    first_zero = k[np.argmax(c < 0)]
    # chi(k) = pi lam dF k^2 - pi/2 Cs lam^3 k^4 = pi - asin(A): quadratic in k^2
    lam, df, cs = electron_wavelength(300.0), 5e4, 2e7
    qa, qb, qc = 0.5 * math.pi * cs * lam**3, -math.pi * lam * df, math.pi - math.asin(a)
    k2 = (-qb - math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    assert first_zero == pytest.approx(math.sqrt(k2), abs=1e-5)
    assert 1 / first_zero == pytest.approx(32.0, abs=1.0)  # Å, at 5 µm underfocus
    assert np.all(c[k < first_zero] > 0)  # protein stays bright at low resolution
    # overfocus flips the contrast
    assert ctf_profile(0.01, defocus_um=+5.0) < 0


def test_ctf_3d_is_radial_and_matches_profile():
    shape, vs = (32, 40, 48), 10.0
    c = ctf_3d(shape, vs)
    assert c.shape == (32, 40, 25) and c.dtype == np.float32
    assert c[0, 0, 0] == pytest.approx(0.07, abs=1e-6)
    # along each axis, the same profile
    kx = sfft.rfftfreq(48)[5] / vs
    assert c[0, 0, 5] == pytest.approx(float(ctf_profile(kx)), abs=1e-5)
    kz = sfft.fftfreq(32)[3] / vs
    assert c[3, 0, 0] == pytest.approx(float(ctf_profile(kz)), abs=1e-5)
    full = ctf_3d((16, 16, 16), vs, rfft=False)
    np.testing.assert_allclose(full, full.transpose(2, 1, 0), atol=1e-5)
    with pytest.raises(CryoGuardError):
        ctf_3d(shape, vs, amplitude_contrast=1.5)


@pytest.mark.parametrize("snr", [0.5, 0.05])
def test_add_noise_hits_the_target_snr(snr):
    rng = np.random.default_rng(1)
    signal = np.zeros((24, 24, 24), np.float32)
    signal[8:16, 8:16, 8:16] = 1.0
    wedge = missing_wedge_mask(signal.shape, 50.0)
    noisy, noise = add_noise(signal, snr, rng, fourier_filter=wedge, return_noise=True)
    np.testing.assert_allclose(noisy - noise, signal, atol=1e-5)
    assert signal.var() / noise.var() == pytest.approx(snr, rel=1e-3)
    # noise is wedge-limited: no power in the missing wedge
    spec = np.abs(sfft.rfftn(noise)) ** 2
    assert spec[~wedge].sum() < 1e-6 * spec.sum()


def test_add_noise_batch_per_sample_and_region():
    rng = np.random.default_rng(2)
    sig = (
        rng.standard_normal((3, 16, 16, 16)).astype(np.float32)
        * np.array([1, 2, 3], np.float32)[:, None, None, None]
    )
    region = (slice(4, 12),) * 3
    noisy, noise = add_noise(sig, 0.1, rng, region=region, batch=True, return_noise=True)
    for i in range(3):
        s = sig[(i, *region)].var()
        n = noise[(i, *region)].var()
        assert s / n == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize("bad", [0, -0.1, float("inf"), "abc"])
def test_add_noise_rejects_bad_snr(bad):
    with pytest.raises(CryoGuardError, match="SNR"):
        add_noise(np.ones((4, 4, 4), np.float32), bad, 0)
