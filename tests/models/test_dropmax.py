"""DropMax3d (MIRST-DM section 3.2): second-largest pooling, shapes and gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.models import DropMax3d, drop_max_pool3d


def _brute_force(x: np.ndarray, k, s, p, d, ceil_mode) -> np.ndarray:
    """Loop over output positions; the shape comes from nn.MaxPool3d."""
    ref_shape = nn.MaxPool3d(k, s, p, d, ceil_mode=ceil_mode)(torch.from_numpy(x)).shape
    out = np.empty(ref_shape, dtype=x.dtype)
    n, c, od, oh, ow = ref_shape
    for b, ch, i, j, m in itertools.product(range(n), range(c), range(od), range(oh), range(ow)):
        vals = []
        for a, bb, cc in itertools.product(range(k[0]), range(k[1]), range(k[2])):
            z = i * s[0] - p[0] + a * d[0]
            y = j * s[1] - p[1] + bb * d[1]
            w = m * s[2] - p[2] + cc * d[2]
            if 0 <= z < x.shape[2] and 0 <= y < x.shape[3] and 0 <= w < x.shape[4]:
                vals.append(x[b, ch, z, y, w])
        vals.sort(reverse=True)
        out[b, ch, i, j, m] = vals[1] if len(vals) > 1 else vals[0]
    return out


def test_two_cube_window_passes_second_largest_and_routes_gradient_there():
    values = torch.tensor([3.0, 7.0, 1.0, 5.0, 2.0, 8.0, 6.0, 4.0]).reshape(1, 1, 2, 2, 2)
    x = values.clone().requires_grad_(True)
    out = DropMax3d(2)(x)
    assert out.shape == (1, 1, 1, 1, 1)
    assert out.item() == 7.0
    out.sum().backward()
    expected = torch.zeros(8)
    expected[1] = 1.0  # the 7 sits at flat index 1
    assert torch.equal(x.grad.reshape(-1), expected)


def test_four_cube_hand_computed():
    # x[z, y, w] = 16 z + 4 y + w: in each 2x2x2 window the maximum sits at
    # (z0+1, y0+1, w0+1) and the second largest at (z0+1, y0+1, w0), one less.
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 4, 4, 4).requires_grad_(True)
    out = DropMax3d(kernel_size=2, stride=2)(x)
    expected = torch.tensor([[[20.0, 22.0], [28.0, 30.0]], [[52.0, 54.0], [60.0, 62.0]]])
    assert torch.equal(out[0, 0], expected)
    out.sum().backward()
    grad = x.grad[0, 0]
    picked = torch.zeros(64)
    picked[expected.reshape(-1).long()] = 1.0
    assert torch.equal(grad.reshape(-1), picked)


def test_ceil_mode_edge_window_with_one_voxel_passes_it_through():
    x = torch.arange(27, dtype=torch.float32).reshape(1, 1, 3, 3, 3)
    out = DropMax3d(2, ceil_mode=True)(x)
    assert out.shape == (1, 1, 2, 2, 2)
    # window at the origin: {0,1,3,4,9,10,12,13} -> 12
    assert out[0, 0, 0, 0, 0].item() == 12.0
    # window starting at w=2 holds {2,5,11,14} -> 11
    assert out[0, 0, 0, 0, 1].item() == 11.0
    # corner window holds only voxel (2,2,2) = 26
    assert out[0, 0, 1, 1, 1].item() == 26.0


def test_tied_maximum_is_passed():
    x = torch.full((1, 1, 2, 2, 2), 5.0)
    x[0, 0, 0, 0, 0] = 1.0
    assert DropMax3d(2)(x).item() == 5.0


@pytest.mark.parametrize(
    ("k", "s", "p", "d", "ceil_mode"),
    [
        ((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), False),
        ((1, 2, 2), (1, 2, 2), (0, 0, 0), (1, 1, 1), True),
        ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), False),
        ((3, 2, 3), (2, 1, 3), (1, 0, 1), (1, 1, 1), True),
        ((2, 2, 2), (1, 1, 1), (0, 0, 0), (2, 1, 2), False),
    ],
)
def test_matches_brute_force_and_maxpool_shape(k, s, p, d, ceil_mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 5, 6, 7)).astype(np.float32) - 3.0  # all negative-ish
    got = DropMax3d(k, s, p, d, ceil_mode)(torch.from_numpy(x)).numpy()
    want = _brute_force(x, k, s, p, d, ceil_mode)
    assert got.shape == want.shape
    assert np.isfinite(got).all()  # padding never leaks out
    np.testing.assert_array_equal(got, want)


def test_differs_from_max_pool_and_never_exceeds_it():
    x = torch.randn(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    dm = drop_max_pool3d(x, 2)
    mp = nn.functional.max_pool3d(x, 2)
    assert dm.shape == mp.shape
    assert (dm <= mp).all()
    assert (dm < mp).any()


def test_gradient_is_one_hot_per_window_on_random_input():
    x = torch.randn(1, 2, 6, 6, 6, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    out = DropMax3d(2)(x)
    out.sum().backward()
    # each non-overlapping window contributes exactly one unit of gradient
    per_window = x.grad.reshape(1, 2, 3, 2, 3, 2, 3, 2).sum(dim=(3, 5, 7))
    assert torch.equal(per_window, torch.ones_like(per_window))
    assert torch.equal(x.grad[x.grad != 0], torch.ones(out.numel()))


def test_unbatched_input_and_errors():
    x = torch.randn(3, 4, 4, 4)
    assert DropMax3d(2)(x).shape == (3, 2, 2, 2)
    with pytest.raises(CryoGuardError):
        DropMax3d(2)(torch.randn(4, 4, 4))
    with pytest.raises(CryoGuardError):
        DropMax3d(2, padding=2)
    with pytest.raises(CryoGuardError):
        DropMax3d((2, 2))
