"""Detector MTF (CB3D paper section 2.2): the profile, the 3D filter, the switch, its effect."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.simulate import simulate_subtomograms
from napari_cryoguard.simulate.physics import (
    apply_fourier_filter,
    ctf_3d,
    mtf_3d,
    mtf_profile,
)


def test_sinc_profile_values_by_hand():
    assert mtf_profile(0.0) == pytest.approx(1.0)
    assert mtf_profile(0.5) == pytest.approx(2 / math.pi)  # Nyquist
    assert mtf_profile(0.25) == pytest.approx(math.sin(math.pi / 4) / (math.pi / 4))
    assert mtf_profile(-0.25) == pytest.approx(mtf_profile(0.25))
    np.testing.assert_array_equal(mtf_profile(np.array([0.1, 0.4]), "none"), [1.0, 1.0])
    with pytest.raises(CryoGuardError, match="MTF model"):
        mtf_profile(0.1, "gauss")


def test_3d_filter_is_the_separable_mtf_on_every_tilt_plane():
    shape = (8, 8, 8)
    m = mtf_3d(shape, 10.0, rfft=False)
    assert m.shape == shape and m.dtype == np.float32
    assert m[0, 0, 0] == pytest.approx(1.0)
    # voxel (kz, ky, kx) = (2/8, 1/8, 3/8) cycles per voxel, detector pixel = voxel
    want = math.sin(math.pi / 8) / (math.pi / 8)  # along the tilt axis Y: 1/8
    f = math.hypot(3 / 8, 2 / 8)
    want *= math.sin(math.pi * f) / (math.pi * f)
    assert m[2, 1, 3] == pytest.approx(want, rel=1e-5)
    # the same |(kx, kz)| in another direction (another tilt) gets the same value
    assert m[3, 1, 2] == pytest.approx(want, rel=1e-5)
    # tilt axis X swaps the roles of X and Y
    mx = mtf_3d(shape, 10.0, tilt_axis="x", rfft=False)
    assert mx[2, 3, 1] == pytest.approx(want, rel=1e-5)
    # a binned tomogram: detector pixel half the voxel -> frequencies halved
    mb = mtf_3d(shape, 10.0, detector_pixel=5.0, rfft=False)
    assert mb[0, 4, 0] == pytest.approx(math.sin(math.pi / 4) / (math.pi / 4), rel=1e-5)
    # rfft layout is the first half of the full one
    np.testing.assert_allclose(mtf_3d(shape, 10.0), m[:, :, :5], rtol=1e-6)
    with pytest.raises(CryoGuardError, match="detector pixel"):
        mtf_3d(shape, 10.0, detector_pixel=0.0)


def test_ctf_switch_default_off_and_sinc_multiplies():
    shape = (12, 12, 12)
    plain = ctf_3d(shape, 10.0)
    np.testing.assert_array_equal(plain, ctf_3d(shape, 10.0, mtf="none"))
    with_mtf = ctf_3d(shape, 10.0, mtf="sinc")
    np.testing.assert_allclose(with_mtf, plain * mtf_3d(shape, 10.0), rtol=1e-6, atol=1e-7)
    with pytest.raises(CryoGuardError, match="MTF model"):
        ctf_3d(shape, 10.0, mtf="bad")


def test_measured_effect_on_simulated_subtomograms():
    """The numbers quoted in the physics module's docstring (10 Å, 28^3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        d = simulate_subtomograms(
            n_per_class=20, cube=28, voxel_size=10.0, snr=None, normalize=False, seed=0
        )
    v = d.volumes.astype(np.float64)
    m = apply_fourier_filter(v, mtf_3d((28, 28, 28), 10.0)).astype(np.float64)
    v0 = v - v.mean(axis=(1, 2, 3), keepdims=True)
    m0 = m - m.mean(axis=(1, 2, 3), keepdims=True)
    corr = (v0 * m0).sum((1, 2, 3)) / np.sqrt((v0**2).sum((1, 2, 3)) * (m0**2).sum((1, 2, 3)))
    ratio = m0.var(axis=(1, 2, 3)) / v0.var(axis=(1, 2, 3))
    assert corr.min() > 0.998 and corr.mean() == pytest.approx(0.999, abs=5e-4)
    assert ratio.mean() == pytest.approx(0.90, abs=0.01) and ratio.max() < 1.0


def test_simulated_subtomograms_take_the_mtf_switch():
    """simulate_subtomograms(mtf="sinc") filters with the detector MTF: the noise-free
    particles stay strongly correlated with the MTF-free ones but lose high frequencies
    (lower variance before normalisation); the default is unchanged and records no mtf."""
    from napari_cryoguard.simulate import simulate_subtomograms

    kw = dict(n_per_class=2, cube=24, snr=None, seed=5, normalize=False)
    plain = simulate_subtomograms(**kw)
    sinc = simulate_subtomograms(mtf="sinc", **kw)
    assert "mtf" not in plain.params and sinc.params["mtf"] == "sinc"
    np.testing.assert_array_equal(plain.labels, sinc.labels)
    for a, b in zip(plain.volumes, sinc.volumes, strict=True):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert 0.95 < r < 1.0 - 1e-6
        assert b.var() < a.var()
