"""Tests for subtomogram extraction (cube convention, normalisation, borders)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.io.picks import Picks
from napari_cryoguard.picking import Subtomograms, extract_subtomograms


@pytest.mark.parametrize("size", [7, 8, 28, 29])
def test_delta_lands_at_cube_centre(size):
    vol = np.zeros((40, 50, 60), np.float32)
    centre = (17, 23, 31)
    vol[centre] = 5.0
    # sub-voxel coordinates round to the delta's voxel
    sub = extract_subtomograms(vol, [[17.3, 22.6, 31.0]], size, normalize=False)
    assert sub.volumes.shape == (1, size, size, size)
    assert sub.volumes.dtype == np.float32
    peak = np.unravel_index(np.argmax(sub.volumes[0]), sub.volumes[0].shape)
    assert peak == (size // 2,) * 3
    assert sub.volumes[0].sum() == pytest.approx(5.0)


def test_cube_matches_slicing_convention():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(30, 30, 30)).astype(np.float32)
    sub = extract_subtomograms(vol, [[15, 14, 16]], 10, normalize=False)
    np.testing.assert_array_equal(sub.volumes[0], vol[10:20, 9:19, 11:21])


def test_normalisation_zero_mean_unit_variance_and_constant_cube():
    rng = np.random.default_rng(1)
    vol = (rng.normal(size=(40, 40, 40)) * 3 + 100).astype(np.float32)
    vol[:20, :20, :20] = 7.0  # constant region
    coords = np.array([[10.0, 10, 10], [30, 30, 30]])
    sub = extract_subtomograms(vol, coords, 12)
    assert sub.normalized
    assert np.all(np.isfinite(sub.volumes))
    np.testing.assert_array_equal(sub.volumes[0], 0.0)
    assert abs(sub.volumes[1].mean()) < 1e-4
    assert sub.volumes[1].std() == pytest.approx(1.0, abs=1e-3)
    raw = extract_subtomograms(vol, coords, 12, normalize=False)
    assert not raw.normalized
    assert raw.volumes[1].mean() == pytest.approx(100, abs=1.0)


def test_skip_and_pad_counts_and_outside_picks():
    vol = np.arange(20 * 20 * 20, dtype=np.float32).reshape(20, 20, 20)
    coords = np.array(
        [
            [10, 10, 10],  # fits
            [2, 10, 10],  # crosses the low Z face
            [10, 19, 10],  # crosses the high Y face
            [-3, 5, 5],  # outside the volume
            [10, 10, 25],  # outside the volume
        ],
        dtype=float,
    )
    skip = extract_subtomograms(vol, coords, 8)
    assert len(skip) == 1 and skip.n_skipped == 4
    np.testing.assert_array_equal(skip.index, [0])

    pad = extract_subtomograms(vol, coords, 8, border="pad", normalize=False, pad_value=-1.0)
    assert len(pad) == 3 and pad.n_skipped == 2
    np.testing.assert_array_equal(pad.index, [0, 1, 2])
    # pick at z=2: cube spans z=-2..5, so the first two planes are padding
    np.testing.assert_array_equal(pad.volumes[1][:2], -1.0)
    np.testing.assert_array_equal(pad.volumes[1][2:], vol[0:6, 6:14, 6:14])
    # pick at y=19: cube spans y=15..22, the last 3 rows are padding
    np.testing.assert_array_equal(pad.volumes[2][:, 5:], -1.0)
    np.testing.assert_array_equal(pad.volumes[2][:, :5], vol[6:14, 15:20, 6:14])


def test_pad_normalises_over_inside_voxels_only():
    rng = np.random.default_rng(2)
    vol = (rng.normal(size=(30, 30, 30)) * 2 + 50).astype(np.float32)
    sub = extract_subtomograms(vol, [[1, 15, 15], [15, 15, 15]], 10, border="pad", pad_value=0.0)
    cube = sub.volumes[0]
    inside = cube[4:]  # z from -4..5: first 4 planes padded
    np.testing.assert_array_equal(cube[:4], 0.0)
    assert abs(inside.mean()) < 1e-4
    assert inside.std() == pytest.approx(1.0, abs=1e-3)
    full = sub.volumes[1]
    assert full.std() == pytest.approx(1.0, abs=1e-3)


def test_empty_coordinates_and_picks_input():
    vol = np.zeros((10, 10, 10), np.float32)
    sub = extract_subtomograms(vol, np.zeros((0, 3)), 4)
    assert isinstance(sub, Subtomograms)
    assert sub.volumes.shape == (0, 4, 4, 4) and sub.n_skipped == 0
    picks = Picks(coords=[[5.0, 5, 5]])
    sub = extract_subtomograms(vol, picks, 4, return_index=False)
    assert len(sub) == 1 and sub.index is None


def test_from_memmap(tmp_path):
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(24, 24, 24)).astype(np.float32)
    path = tmp_path / "v.raw"
    vol.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=vol.shape)
    coords = rng.uniform(5, 19, (6, 3))
    a = extract_subtomograms(mm, coords, 9)
    b = extract_subtomograms(vol, coords, 9)
    np.testing.assert_array_equal(a.volumes, b.volumes)


def test_errors():
    vol = np.zeros((10, 10, 10), np.float32)
    with pytest.raises(CryoGuardError, match="border"):
        extract_subtomograms(vol, [[5, 5, 5]], 4, border="wrap")
    with pytest.raises(CryoGuardError, match="size"):
        extract_subtomograms(vol, [[5, 5, 5]], 0)
    with pytest.raises(CryoGuardError, match=r"\(N, 3\)"):
        extract_subtomograms(vol, [[5, 5]], 4)
    with pytest.raises(CryoGuardError, match="3D"):
        extract_subtomograms(np.zeros((10, 10)), [[5, 5, 5]], 4)
    bad = vol.copy()
    bad[5, 5, 5] = np.nan
    bad[6, 5, 5] = np.inf
    with pytest.raises(CryoGuardError, match="2 non-finite"):
        extract_subtomograms(bad, [[5, 5, 5]], 4)


@pytest.mark.parametrize("normalize", [False, True])
def test_invert_makes_protein_black_white(normalize):
    """A dark particle (protein black, as in raw tomograms) becomes a bright one; the
    padding keeps its value; the stack says it was inverted."""
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(20, 20, 20)).astype(np.float32)
    vol[8:12, 8:12, 8:12] -= 5.0  # a dark blob
    coords = [[10, 10, 10], [1, 10, 10]]  # the second one padded at the border
    plain = extract_subtomograms(vol, coords, 8, normalize=normalize, border="pad",
                                 pad_value=0.5)
    inv = extract_subtomograms(vol, coords, 8, normalize=normalize, border="pad",
                               pad_value=0.5, invert=True)
    assert inv.inverted and not plain.inverted
    assert inv.volumes[0, 4, 4, 4] > inv.volumes[0].mean() + 1.0  # the blob is bright now
    np.testing.assert_allclose(inv.volumes[0], -plain.volumes[0], atol=1e-5)
    padded = np.zeros((8, 8, 8), bool)
    padded[:3] = True  # the cube around z = 1 starts at z = -3: its first 3 planes are padding
    assert np.all(inv.volumes[1][padded] == np.float32(0.5))
    np.testing.assert_allclose(inv.volumes[1][~padded], -plain.volumes[1][~padded], atol=1e-5)
