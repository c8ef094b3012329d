"""Show the demo pipeline's result in a napari viewer with the plugin's widgets docked."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def populate_viewer(viewer, result) -> dict:
    """Add the demo's layers and dock the plugin widgets; return the widgets by name."""
    from napari_cryoguard._napari._common import SUBTOMOGRAMS_LAYER, set_picks_layer
    from napari_cryoguard._napari.pick_widget import PickWidget

    sim = result.sim
    scale = (sim.voxel_size,) * 3
    image = viewer.add_image(sim.volume, name="tomogram", scale=scale, colormap="gray",
                             metadata={"voxel_size": sim.voxel_size})
    names = np.asarray(sim.class_names)[sim.labels]
    viewer.add_points(sim.coords, name="truth", scale=scale, size=5, symbol="cross",
                      face_color="cyan", border_width=0, features={"class": names},
                      out_of_slice_display=True, visible=True)
    set_picks_layer(viewer, result.picks, image)
    viewer.add_image(result.subtomograms.volumes, name=SUBTOMOGRAMS_LAYER,
                     scale=(1.0, *scale), colormap="gray", visible=False,
                     metadata={"index": np.asarray(result.subtomograms.index)})
    widgets = {"Pick particles": PickWidget(viewer)}
    for name, w in widgets.items():
        viewer.window.add_dock_widget(w, name=name, area="right")
    viewer.layers.selection.active = image
    viewer.dims.set_point(0, sim.volume.shape[0] // 2 * sim.voxel_size)
    return widgets


def show_demo(result, out: Path, headless: bool) -> Path | None:
    """Open napari on the demo's result; headless, save a screenshot and close."""
    import napari

    viewer = napari.Viewer(title="napari-cryoguard demo", show=True)
    populate_viewer(viewer, result)
    if not headless:
        napari.run()
        return None
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    path = Path(out) / "screenshot.png"
    viewer.window.screenshot(str(path), canvas_only=False)
    viewer.close()
    return path
