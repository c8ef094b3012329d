"""3D augmentations of subtomogram batches, for SimCLR's positive pairs.

Source: Sun et al., MIRST-DM (MICCAI 2022) section 3.3 (SimCLR
pairs every image with an augmented copy); the augmentations themselves are our choice
for cryo-ET subtomograms, which have no preferred orientation but a missing wedge fixed
to the microscope frame (Che et al. 2018 (CB3D)
section 2.2):

* rotations by multiples of 90 degrees about a random axis (Z, Y or X) -- exact
  permutations of the voxel grid, no interpolation;
* flips along each axis with probability 1/2;
* additive Gaussian noise;
* missing-wedge re-masking: the rotated volume's wedge points in a direction the data
  never has, so with probability ``wedge_prob`` the volume is multiplied in Fourier
  space by the wedge mask of :func:`napari_cryoguard.simulate.missing_wedge_mask`
  (the data's tilt range and axis), which removes the frequencies a real tilt series
  would not have sampled.

All functions take and return (N, 1, D, H, W) tensors (the last three axes are
spatial; rotations about an axis need the two other edges equal, true for cubes),
work on the tensor's device, never modify their input, and draw from ``generator``
(or torch's global generator when None).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from napari_cryoguard.checks import check_choice
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import check_fields, number

__all__ = [
    "AugmentParams",
    "add_gaussian_noise",
    "augment_batch",
    "missing_wedge_remask",
    "random_flip",
    "random_rot90",
    "rot90_3d",
]

#: spatial axis (0 = Z, 1 = Y, 2 = X) -> the plane of the rotation about it
_PLANES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


@dataclass
class AugmentParams:
    """Parameters of :func:`augment_batch`.

    Attributes
    ----------
    rotate
        Rotate each sample by ``k * 90`` degrees (k uniform in 0..3) about a uniformly
        chosen axis.
    flip
        Flip each spatial axis of each sample with probability 1/2.
    noise_std
        Standard deviation of the additive Gaussian noise, in normalised units (0: off).
    wedge_prob
        Probability of re-masking a sample with the missing wedge (0: off).
    tilt_range
        Half tilt range (degrees) of the wedge mask: 60 (the simulations' default).
    tilt_axis
        Tilt axis of the wedge mask, ``"y"`` or ``"x"`` (beam along Z).
    """

    rotate: bool = True
    flip: bool = True
    noise_std: float = number(0.1)
    wedge_prob: float = number(0.5, maximum=1.0)
    tilt_range: float = number(60.0, strict=True, maximum=90.0)
    tilt_axis: str = "y"

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("tilt_axis", str(self.tilt_axis).lower(), ("y", "x"))


def _check(x: torch.Tensor) -> None:
    if x.dim() != 5:
        raise CryoGuardError(f"expected a (N, 1, D, H, W) batch, got shape {tuple(x.shape)}")


def rot90_3d(x: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    """Rotate the spatial axes of ``x`` (..., D, H, W) by ``k * 90`` degrees about ``axis``.

    ``axis`` is spatial (0 = Z, 1 = Y, 2 = X); the rotation is ``torch.rot90`` in the
    plane of the two other axes (the same as ``numpy.rot90`` on those axes), an exact
    permutation of voxels.
    """
    if axis not in _PLANES:
        raise CryoGuardError(f"axis must be 0 (Z), 1 (Y) or 2 (X), got {axis!r}")
    a, b = _PLANES[axis]
    off = x.dim() - 3
    return torch.rot90(x, int(k) % 4, dims=(off + a, off + b))


def _draw(n: int, high: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device="cpu")


def random_rot90(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each sample by ``k * 90`` degrees (k in 0..3) about a random axis.

    Samples are grouped by (axis, k) so each group is one ``torch.rot90`` call.
    """
    _check(x)
    n = x.shape[0]
    axes = _draw(n, 3, generator)
    ks = _draw(n, 4, generator)
    out = x.clone()
    for axis in range(3):
        for k in (1, 2, 3):
            rows = torch.nonzero((axes == axis) & (ks == k)).flatten()
            if rows.numel():
                rows = rows.to(x.device)
                out[rows] = rot90_3d(x[rows], k, axis)
    return out


def random_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> torch.Tensor:
    """Flip each spatial axis of each sample independently with probability ``p``."""
    _check(x)
    n = x.shape[0]
    out = x
    for d in (2, 3, 4):
        u = torch.rand(n, generator=generator, device="cpu") < p
        mask = u.to(x.device).view(n, 1, 1, 1, 1)
        out = torch.where(mask, out.flip(d), out)
    return out if out is not x else x.clone()


def add_gaussian_noise(
    x: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x + std * N(0, 1)`` (a new tensor; the noise is drawn on the CPU when seeded)."""
    if std <= 0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype)
    return x + float(std) * noise.to(x.device)


@functools.lru_cache(maxsize=16)
def _wedge_mask_np(shape: tuple[int, int, int], tilt_range: float, tilt_axis: str) -> np.ndarray:
    from napari_cryoguard.simulate import missing_wedge_mask

    return missing_wedge_mask(shape, tilt_range, tilt_axis, rfft=True)


def missing_wedge_remask(
    x: torch.Tensor, tilt_range: float = 60.0, tilt_axis: str = "y"
) -> torch.Tensor:
    """Zero the missing wedge of every sample in Fourier space (rfftn over D, H, W).

    ``irfftn(rfftn(x) * M)`` with ``M = missing_wedge_mask(shape, tilt_range,
    tilt_axis)``; idempotent, and the identity for ``tilt_range = 90``.
    """
    _check(x)
    shape = tuple(int(s) for s in x.shape[-3:])
    mask = torch.from_numpy(_wedge_mask_np(shape, float(tilt_range), str(tilt_axis).lower()))
    spec = torch.fft.rfftn(x.float(), dim=(-3, -2, -1))
    out = torch.fft.irfftn(spec * mask.to(x.device), s=shape, dim=(-3, -2, -1))
    return out.to(x.dtype)


def augment_batch(
    x: torch.Tensor,
    params: AugmentParams | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random view of every sample: rotate, flip, wedge re-mask, then add noise."""
    _check(x)
    p = params if params is not None else AugmentParams()
    out = x
    if p.rotate:
        out = random_rot90(out, generator)
    if p.flip:
        out = random_flip(out, generator)
    if p.wedge_prob > 0:
        pick = torch.rand(x.shape[0], generator=generator, device="cpu") < p.wedge_prob
        rows = torch.nonzero(pick).flatten().to(x.device)
        if rows.numel():
            out = out.clone() if out is x else out
            out[rows] = missing_wedge_remask(out[rows], p.tilt_range, p.tilt_axis)
    if p.noise_std > 0:
        out = add_gaussian_noise(out, p.noise_std, generator)
    return out if out is not x else x.clone()
