"""Show the demo pipeline's result in a napari viewer with the plugin's widgets docked."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def populate_viewer(viewer, result) -> dict:
    """Add the demo's layers and dock the plugin widgets from the manifest (as the
    *Plugins* menu does); set them to what the demo did. Returns the widgets by name."""
    from napari_cryoguard._napari._layers import SUBTOMOGRAMS_LAYER
    from napari_cryoguard._napari._picks import apply_predictions, set_picks_layer
    from napari_cryoguard._napari._probe import dock
    from napari_cryoguard.picking import SIMULATED_SIGMA1, SIMULATED_THRESHOLD
    from napari_cryoguard.picking.dog import diameter_from_sigma

    sim = result.sim
    scale = (sim.voxel_size,) * 3
    image = viewer.add_image(sim.volume, name="tomogram", scale=scale, colormap="gray",
                             metadata={"voxel_size": sim.voxel_size})
    names = np.asarray(sim.class_names)[sim.labels]
    viewer.add_points(sim.coords, name="truth", scale=scale, size=5, symbol="cross",
                      face_color="cyan", border_width=0, features={"class": names},
                      visible=True)
    # the particle diameter the demo's DoG sigma suits: the Pick widget shows it and
    # derives that sigma from it, and the picks are drawn that size
    diameter = round(diameter_from_sigma(SIMULATED_SIGMA1, sim.voxel_size), 1)
    picks_layer = set_picks_layer(viewer, result.picks, image, diameter=diameter)
    if result.true_class is not None:
        feats = picks_layer.features.copy()
        feats["true_class"] = result.true_class
        picks_layer.features = feats
    if result.predictions is not None:
        apply_predictions(picks_layer, result.predictions, result.subtomograms.index)
    viewer.add_image(result.subtomograms.volumes, name=SUBTOMOGRAMS_LAYER,
                     scale=(1.0, *scale), colormap="gray", visible=False,
                     metadata={"index": np.asarray(result.subtomograms.index),
                               "normalized": bool(result.subtomograms.normalized),
                               "voxel_size": sim.voxel_size})
    # docked in this order: Train, Attack and Classify share a tabbed dock, Classify on top
    order = ["Pick particles", "Evaluate", "Train", "Attack", "Classify"]
    widgets = {name: dock(viewer, name, tabify=j >= 2) for j, name in enumerate(order)}
    pick = widgets["Pick particles"]
    if hasattr(pick, "diameter"):
        pick.image.value = image
        pick.diameter.value = diameter
    if hasattr(pick, "threshold"):
        pick.threshold.value = SIMULATED_THRESHOLD
    if hasattr(pick, "progress"):
        pick.progress.value = 100
    if hasattr(pick, "status"):
        pick.status.value = f"{len(result.picks)} picks in tomogram (the demo's DoG run)"
    classify = widgets["Classify"]
    if result.predictions is not None:
        model = result.summary.get("model", "cb3d-default") if result.summary else "cb3d-default"
        classify.picker.select(model)
        classify.source.value = "subtomograms layer"
        classify.legend.value = classify._legend_html(result.predictions.class_names,
                                                      result.predictions)
        classify.progress.value = 100
        acc = (result.summary or {}).get("classification_accuracy")
        classify.status.value = (f"classified {len(result.predictions.probabilities)} "
                                 f"subtomograms with {model}"
                                 + (f"; accuracy {acc:.3f} against the matched truth"
                                    if acc is not None else ""))
        classify.show_probabilities()
    if result.attack is not None:
        _show_attacked_particle(viewer, result, widgets, picks_layer)
    viewer.layers.selection.active = picks_layer
    _give_room(viewer, widgets["Pick particles"], classify)
    return widgets


def _give_room(viewer, top, tabbed) -> None:
    """Split the right dock area so the tabbed docks (Classify in front, with its result
    and legend) get about 60 % of the height, the Pick dock above the rest."""
    from qtpy.QtCore import Qt

    window = getattr(viewer.window, "_qt_window", None)
    from napari_cryoguard._napari._probe import dock_frame

    docks = [dock_frame(top), dock_frame(tabbed)]
    if window is None or None in docks:
        return
    height = max(window.height(), 400)
    window.resizeDocks(docks, [int(0.4 * height), int(0.6 * height)], Qt.Orientation.Vertical)


def _show_attacked_particle(viewer, result, widgets, picks_layer) -> None:
    """One particle FGSM flipped, as the Attack widget shows it: beside the particle."""
    from napari_cryoguard._napari._particles import show_particle_layers

    res = result.attack
    flipped = np.flatnonzero(res.success.numpy())
    row = int(flipped[0]) if len(flipped) else 0
    i = int(result.subtomograms.index[row])
    x = result.subtomograms.volumes[row]
    adv = res.x_adv[row, 0].numpy()
    pert = (adv - x) * 50
    lim = float(np.abs(pert).max()) or 1.0
    limits = (float(x.min()), float(x.max()))
    show_particle_layers(
        viewer, {f"particle {i}": x, f"adversarial {i}": adv, f"perturbation {i} x50": pert},
        image_layer=picks_layer, center=np.asarray(picks_layer.data[i]),
        styles={f"perturbation {i} x50": {"colormap": "PiYG", "contrast_limits": (-lim, lim)},
                f"particle {i}": {"contrast_limits": limits},
                f"adversarial {i}": {"contrast_limits": limits}},
        frames=f"particle {i} frames")
    attack = widgets["Attack"]
    attack.picker.select("cb3d-default")
    attack.index.value = i
    names = result.predictions.class_names if result.predictions is not None else []
    before, after = int(res.pred_before[row]), int(res.pred_after[row])
    if names:
        attack.result.value = (f"<b>{'FLIPPED' if res.success[row] else 'held'}</b> &mdash; "
                               f"cb3d-default, FGSM eps 0.03<br>before: {names[before]}<br>"
                               f"after: {names[after]}")
    attack.status.value = f"the demo attacked every pick with FGSM; particle {i} is shown beside it"


def show_demo(result, out: Path, headless: bool) -> Path | None:
    """Open napari on the demo's result; headless, save a screenshot and close."""
    import napari

    viewer = napari.Viewer(title="napari-cryoguard demo", show=True)
    widgets = populate_viewer(viewer, result)
    if not headless:
        napari.run()
        return None
    from qtpy.QtWidgets import QApplication

    qt_window = getattr(viewer.window, "_qt_window", None)
    if qt_window is not None:
        qt_window.resize(1280, 800)
    for _ in range(5):
        QApplication.processEvents()
    _give_room(viewer, widgets["Pick particles"], widgets["Classify"])  # at this height
    for _ in range(5):
        QApplication.processEvents()
    viewer.reset_view()  # the whole tomogram, the attacked particle's cubes beside it
    for _ in range(5):
        QApplication.processEvents()
    path = Path(out) / "screenshot.png"
    viewer.window.screenshot(str(path), canvas_only=False)
    viewer.close()
    return path
