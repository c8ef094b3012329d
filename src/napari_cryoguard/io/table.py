"""CSV / TSV / whitespace pick tables (placeholder: delegates to the cryoguard CSV reader)."""

from __future__ import annotations

from napari_cryoguard.io import coords
from napari_cryoguard.io.picks import Picks


def read_table_picks(path, *, voxel_size=None, tomograms=None) -> Picks:
    return coords.read_picks(path, voxel_size=voxel_size)
