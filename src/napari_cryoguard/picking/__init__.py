"""Particle picking (Difference of Gaussian) and subtomogram extraction.

``dog_filter`` / ``pick_particles`` / ``iter_pick_particles`` follow the RAT paper's
picking (``papers/rat-regularized-adversarial-training-cb3d.txt``, section IV.A);
``extract_subtomograms`` cuts normalised cubes around the picks.
"""

from __future__ import annotations

from napari_cryoguard.picking.dog import (
    PAPER_K,
    PAPER_SIGMA1,
    SIMULATED_SIGMA1,
    SIMULATED_THRESHOLD,
    dog_filter,
    dog_preview,
    iter_pick_particles,
    pick_particles,
)
from napari_cryoguard.picking.extract import Subtomograms, extract_subtomograms
from napari_cryoguard.picking.metrics import match_picks

__all__ = [
    "PAPER_K",
    "PAPER_SIGMA1",
    "SIMULATED_SIGMA1",
    "SIMULATED_THRESHOLD",
    "Subtomograms",
    "dog_filter",
    "dog_preview",
    "match_picks",
    "extract_subtomograms",
    "iter_pick_particles",
    "pick_particles",
]
