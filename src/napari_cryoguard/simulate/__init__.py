"""Simulated cryo-ET data with ground truth: tomograms and labelled subtomograms.

Templates (:mod:`.templates`), image formation (:mod:`.physics`: rotation, missing
wedge, CTF, noise at a target SNR), whole tomograms (:mod:`.tomogram`) and subtomogram
stacks (:mod:`.subtomograms`), after
Che et al. 2018 (CB3D) section 2.2.
"""

from __future__ import annotations

from napari_cryoguard.simulate.physics import (
    add_noise,
    apply_fourier_filter,
    ctf_3d,
    ctf_profile,
    electron_wavelength,
    missing_wedge_mask,
    random_rotation,
    rotate_volume,
)
from napari_cryoguard.simulate.subtomograms import (
    EMPTY_CLASS,
    SimulatedDataset,
    simulate_subtomograms,
)
from napari_cryoguard.simulate.templates import (
    DEFAULT_CLASSES,
    TEMPLATE_VOXEL_SIZE,
    describe_template,
    list_templates,
    load_template,
    template_radius,
)
from napari_cryoguard.simulate.tomogram import SimulatedTomogram, simulate_tomogram

__all__ = [
    "DEFAULT_CLASSES",
    "EMPTY_CLASS",
    "TEMPLATE_VOXEL_SIZE",
    "SimulatedDataset",
    "SimulatedTomogram",
    "add_noise",
    "apply_fourier_filter",
    "ctf_3d",
    "ctf_profile",
    "describe_template",
    "electron_wavelength",
    "list_templates",
    "load_template",
    "missing_wedge_mask",
    "random_rotation",
    "rotate_volume",
    "simulate_subtomograms",
    "simulate_tomogram",
    "template_radius",
]
