"""Sample data: a simulated tomogram and its ground truth (napari File > Open Sample)."""

from __future__ import annotations

import numpy as np


def simulated_layers(seed: int = 0, **kwargs) -> list[tuple]:
    """Layer tuples for a simulated tomogram (Image) and its true particles (Points).

    The tomogram comes from :func:`napari_cryoguard.simulate.simulate_tomogram` with its
    defaults (SNR 0.1, +-60 degree tilt, CTF as in the CB3D paper), scaled by the voxel
    size; the ``truth`` layer holds each particle's centre with its class as a feature.
    """
    from napari_cryoguard.simulate import simulate_tomogram

    sim = simulate_tomogram(seed=seed, **kwargs)
    scale = (sim.voxel_size,) * 3
    names = np.asarray(sim.class_names)[sim.labels]
    image = (sim.volume, {"name": "simulated tomogram", "scale": scale, "colormap": "gray",
                          "metadata": {"voxel_size": sim.voxel_size, "simulation": sim.params}},
             "image")
    truth = (sim.coords, {"name": "truth", "scale": scale, "size": 6, "symbol": "cross",
                          "face_color": "class", "features": {"class": names},
                          "metadata": {"voxel_size": sim.voxel_size,
                                       "class_names": list(sim.class_names)},
                          "visible": False},
             "points")
    return [image, truth]


def simulated_tomogram() -> list[tuple]:
    """npe2 sample-data command: the default simulated tomogram (seed 0) and its truth."""
    return simulated_layers(seed=0)
