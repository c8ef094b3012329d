"""Show the demo pipeline's result in a napari viewer with the plugin's widgets docked."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def populate_viewer(viewer, result) -> dict:
    """Add the demo's layers and dock the plugin widgets; return the widgets by name."""
    from napari_cryoguard._napari._common import SUBTOMOGRAMS_LAYER, set_picks_layer
    from napari_cryoguard._napari.attack_widget import AttackWidget
    from napari_cryoguard._napari.classify_widget import ClassifyWidget
    from napari_cryoguard._napari.evaluate_widget import EvaluateWidget
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
    picks_layer = set_picks_layer(viewer, result.picks, image)
    if result.true_class is not None:
        feats = picks_layer.features.copy()
        feats["true_class"] = result.true_class
        picks_layer.features = feats
    if result.predictions is not None:
        from napari_cryoguard._napari._common import apply_predictions

        apply_predictions(picks_layer, result.predictions, result.subtomograms.index)
    viewer.add_image(result.subtomograms.volumes, name=SUBTOMOGRAMS_LAYER,
                     scale=(1.0, *scale), colormap="gray", visible=False,
                     metadata={"index": np.asarray(result.subtomograms.index),
                               "normalized": bool(result.subtomograms.normalized),
                               "voxel_size": sim.voxel_size})
    # docked in this order: Train, Attack and Classify share a tabbed dock, Classify on top
    widgets = {"Pick particles": PickWidget(viewer), "Evaluate": EvaluateWidget(viewer),
               "Train": TrainWidget(viewer), "Attack": AttackWidget(viewer),
               "Classify": ClassifyWidget(viewer)}
    from napari_cryoguard.picking import SIMULATED_SIGMA1, SIMULATED_THRESHOLD

    widgets["Pick particles"].sigma1.value = SIMULATED_SIGMA1
    widgets["Pick particles"].threshold.value = SIMULATED_THRESHOLD
    for j, (name, w) in enumerate(widgets.items()):
        viewer.window.add_dock_widget(w, name=name, area="right", tabify=j >= 2)
    if result.predictions is not None:
        widgets["Classify"].legend.value = widgets["Classify"]._legend_html(
            result.predictions.class_names, result.predictions)
        widgets["Classify"].show_probabilities()
    if result.attack is not None:
        _show_attacked_particle(viewer, result, widgets)
    viewer.layers.selection.active = image
    # browse Z with a slab one cube thick, so every particle's pick shows near its centre
    z_axis = viewer.dims.ndim - 3
    viewer.dims.set_point(z_axis, sim.volume.shape[0] // 2 * sim.voxel_size)
    thickness = list(viewer.dims.thickness)
    thickness[z_axis] = 28 * sim.voxel_size
    viewer.dims.thickness = thickness
    viewer.reset_view()
    return widgets


def _show_attacked_particle(viewer, result, widgets) -> None:
    """One attacked particle as the Attack widget shows it (hidden, for the user to open)."""
    from napari_cryoguard._napari._common import show_particle_layers

    res = result.attack
    flipped = np.flatnonzero(res.success.numpy())
    row = int(flipped[0]) if len(flipped) else 0
    i = int(result.subtomograms.index[row])
    x = result.subtomograms.volumes[row]
    adv = res.x_adv[row, 0].numpy()
    pert = (adv - x) * 50
    lim = float(np.abs(pert).max()) or 1.0
    layers = show_particle_layers(
        viewer, {f"particle {i}": x, f"adversarial {i}": adv, f"perturbation {i} x50": pert},
        **{f"perturbation {i} x50": {"colormap": "PiYG", "contrast_limits": (-lim, lim)}})
    for layer in layers:
        layer.visible = False
    widgets["Attack"].index.value = i


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
