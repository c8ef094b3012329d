"""Show the demo pipeline's result in a napari viewer with the plugin's widgets docked."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def populate_viewer(viewer, result) -> dict:
    """Add the demo's layers and dock the plugin widgets; return the widgets by name."""
    from napari_cryoguard._napari._common import SUBTOMOGRAMS_LAYER, set_picks_layer
    from napari_cryoguard._napari.attack_widget import AttackWidget
    from napari_cryoguard._napari.classify_widget import ClassifyWidget
    from napari_cryoguard._napari.pick_widget import PickWidget
    from napari_cryoguard._napari.train_widget import TrainWidget

    sim = result.sim
    scale = (sim.voxel_size,) * 3
    image = viewer.add_image(sim.volume, name="tomogram", scale=scale, colormap="gray",
                             metadata={"voxel_size": sim.voxel_size}, projection_mode="none")
    names = np.asarray(sim.class_names)[sim.labels]
    viewer.add_points(sim.coords, name="truth", scale=scale, size=5, symbol="cross",
                      face_color="cyan", border_width=0, features={"class": names},
                      projection_mode="all", visible=True)
    set_picks_layer(viewer, result.picks, image)
    viewer.add_image(result.subtomograms.volumes, name=SUBTOMOGRAMS_LAYER,
                     scale=(1.0, *scale), colormap="gray", visible=False,
                     metadata={"index": np.asarray(result.subtomograms.index)})
    widgets = {"Pick particles": PickWidget(viewer), "Classify": ClassifyWidget(viewer),
               "Attack": AttackWidget(viewer), "Train": TrainWidget(viewer)}
    from napari_cryoguard.picking import SIMULATED_SIGMA1, SIMULATED_THRESHOLD

    widgets["Pick particles"].sigma1.value = SIMULATED_SIGMA1
    widgets["Pick particles"].threshold.value = SIMULATED_THRESHOLD
    for name, w in widgets.items():
        viewer.window.add_dock_widget(w, name=name, area="right")
    viewer.layers.selection.active = image
    # browse Z with a slab one cube thick, so every particle's pick shows near its centre
    z_axis = viewer.dims.ndim - 3
    viewer.dims.set_point(z_axis, sim.volume.shape[0] // 2 * sim.voxel_size)
    thickness = list(viewer.dims.thickness)
    thickness[z_axis] = 28 * sim.voxel_size
    viewer.dims.thickness = thickness
    viewer.reset_view()
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

    qt_window = getattr(viewer.window, "_qt_window", None)
    if qt_window is not None:
        qt_window.resize(1500, 950)
    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(5):
        QApplication.processEvents()
    path = Path(out) / "screenshot.png"
    viewer.window.screenshot(str(path), canvas_only=False)
    viewer.close()
    return path
