"""RELION 3/4/5 and Warp STAR pick files (placeholder: delegates to the cryoguard STAR reader)."""

from __future__ import annotations

from napari_cryoguard.io import coords
from napari_cryoguard.io.picks import Picks


def read_star_picks(path, *, voxel_size=None, tomograms=None) -> Picks:
    return coords.read_picks(path, voxel_size=voxel_size)
