"""Particle picking (Difference of Gaussian) and subtomogram extraction.

``dog_filter`` / ``pick_particles`` / ``iter_pick_particles`` follow the RAT paper's
picking (RAT: Wu et al., IEEE BIBM 2019, section IV.A), with the parameters and their
defaults declared once in ``DoGParams`` (:mod:`~napari_cryoguard.picking.params`);
``extract_subtomograms`` cuts normalised cubes around the picks; ``sigma_from_diameter``
turns a particle diameter into the DoG's sigma and ``choose_polarity`` finds whether
the protein is white or black.
"""

from __future__ import annotations

from napari_cryoguard.picking.dog import (
    BLOB_RADIUS_PER_SIGMA,
    binned_dog,
    diameter_from_sigma,
    dog_filter,
    dog_preview,
    iter_pick_particles,
    pick_particles,
    sigma_from_diameter,
)
from napari_cryoguard.picking.extract import BORDER_MODES, Subtomograms, extract_subtomograms
from napari_cryoguard.picking.metrics import match_picks
from napari_cryoguard.picking.params import (
    PAPER_CUBE,
    PAPER_K,
    PAPER_SIGMA1,
    POLARITIES,
    SIMULATED_SIGMA1,
    SIMULATED_THRESHOLD,
    DoGParams,
)
from napari_cryoguard.picking.polarity import POLARITY_WORDS, PolarityChoice, choose_polarity

__all__ = [
    "BLOB_RADIUS_PER_SIGMA",
    "BORDER_MODES",
    "DoGParams",
    "PAPER_CUBE",
    "PAPER_K",
    "PAPER_SIGMA1",
    "SIMULATED_SIGMA1",
    "POLARITIES",
    "POLARITY_WORDS",
    "PolarityChoice",
    "SIMULATED_THRESHOLD",
    "Subtomograms",
    "binned_dog",
    "choose_polarity",
    "diameter_from_sigma",
    "dog_filter",
    "dog_preview",
    "match_picks",
    "extract_subtomograms",
    "iter_pick_particles",
    "pick_particles",
    "sigma_from_diameter",
]
