"""Remake the README's screenshots (``docs/screenshots/*.png``) through the docked widgets.

A shown viewer at 1280x800 opens the sample data (File > Open Sample) and docks the
widgets from the manifest, as the *Plugins* menu does; each widget's main button is
pressed, the worker awaited, and the whole window saved with only that widget's dock in
front. Run it under a display (Xvfb on a headless machine), from the repository root::

    xvfb-run -a -s "-screen 0 1280x1024x24" python docs/make_screenshots.py \
        [--out docs/screenshots] [--only pick,classify,attack,train,evaluate,autoattack]

The training shot runs a real ``cryoguard train`` subprocess (a few minutes on a CPU).
Look at every image before committing it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ATTACK_EPS = 0.06  # L-inf, normalised units: Evaluate finds ae-default at 0.4 at 0.03, 0 at 0.12
ATTACK_INDEX = 3
DOCK_WIDTH = 380  # px, about what napari gives a newly docked widget in a 1280 px window
SHOTS = ("pick", "classify", "attack", "train", "evaluate", "autoattack")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/screenshots", help="folder for the PNG files")
    parser.add_argument("--only", default=",".join(SHOTS),
                        help="comma-separated shots to make (default: all)")
    parser.add_argument("--train-epochs", type=int, default=20)
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SHOTS))
    if unknown:
        parser.error(f"unknown shot(s) {unknown}; known: {', '.join(SHOTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CRYOGUARD_RUNS_DIR", tempfile.mkdtemp(prefix="cryoguard-shots-"))

    import imageio.v3 as iio
    import napari

    from napari_cryoguard._napari._probe import click, dock, dock_frame, pump, wait_until

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    pump(0.5)
    viewer.open_sample("napari-cryoguard", "simulated_tomogram")
    tomogram = viewer.layers["simulated tomogram"]
    docks: dict = {}

    def front(name: str):
        """Dock ``name`` (once) and show its dock alone, at its own width.

        The other docks stay docked (their widgets keep listening, e.g. to "Use
        model") but are hidden, as a user closes the docks not in use.
        """
        if name not in docks:
            docks[name] = dock(viewer, name, tabify=True)
        for other, widget in docks.items():
            frame = dock_frame(widget)
            if frame is not None:
                frame.setVisible(other == name)
        frame = dock_frame(docks[name])
        if frame is not None:
            frame.raise_()
            # a dock area keeps the width of the widest dock shown before; give each
            # shot the same width a freshly docked widget gets
            from qtpy.QtCore import Qt

            viewer.window._qt_window.resizeDocks([frame], [DOCK_WIDTH], Qt.Horizontal)
        pump(0.3)
        return docks[name]

    def idle(widget) -> bool:
        return not (getattr(widget, "_busy", False) or getattr(widget, "_applying", False))

    def shot(name: str) -> None:
        pump(0.8)  # the result's layers drawn, the plots shown
        path = out / f"{name}.png"
        iio.imwrite(path, viewer.screenshot(canvas_only=False, flash=False))
        print(f"wrote {path}", flush=True)

    view = {}

    def camera():
        scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        return scene.camera if scene is not None else viewer.camera

    def only_visible(*names: str) -> None:
        """Show only ``names``, and the whole tomogram (Attack moves the view)."""
        for layer in viewer.layers:
            layer.visible = layer.name in names
        if view:
            viewer.dims.set_point(viewer.dims.ndim - 3, view["z"])  # the tomogram's z
            camera().center = view["center"]
            camera().zoom = view["zoom"]

    # Pick: the sample's particles at the default diameter, polarity chosen automatically
    pick = front("Pick particles")
    pick.image.value = tomogram
    click(pick, "Pick")
    wait_until(lambda: idle(pick) and "picks" in viewer.layers, timeout=300)
    view.update(z=viewer.dims.point[-3], center=camera().center, zoom=camera().zoom)
    if "pick" in only:
        only_visible("simulated tomogram", "picks")
        shot("pick")
    click(pick, "Extract subtomograms")
    wait_until(lambda: idle(pick) and "subtomograms" in viewer.layers, timeout=300)

    truth_choice = None

    def truth_labels(widget) -> None:
        nonlocal truth_choice
        combo = widget.labels.combo
        combo.reset_choices()
        truth_choice = next((c for c in combo.choices if c.startswith("truth")), None)
        if truth_choice is None:
            raise SystemExit(f"no truth labels offered; choices {combo.choices}")
        combo.value = truth_choice

    # Classify: the bundled CB3D, scored against the sample's truth
    if "classify" in only:
        classify = front("Classify")
        classify.reset_choices()
        classify.picker.model.value = "cb3d-default"
        truth_labels(classify)
        click(classify, "Classify")
        wait_until(lambda: idle(classify), timeout=300)
        only_visible("simulated tomogram", "picks")
        shot("classify")

    # Attack: PGD on the autoencoder, one particle, the cubes beside it
    if "attack" in only:
        attack = front("Attack")
        attack.reset_choices()
        attack.image.value = tomogram
        attack.picker.model.value = "ae-default"
        wait_until(lambda: "pgd" in attack.attack.choices, timeout=120)  # torch imported
        attack.attack.value = "pgd"
        attack.form.eps.value = ATTACK_EPS
        attack.form.step_size.value = ATTACK_EPS / 4  # 10 steps can reach the budget
        truth_labels(attack)
        attack.index.value = ATTACK_INDEX
        click(attack, "Attack particle")
        wait_until(lambda: idle(attack), timeout=300)
        shot("attack")

    # Train: a small CB3D on a simulated dataset, in a real training subprocess
    if "train" in only:
        train = front("Train")
        train.reset_choices()
        wait_until(lambda: train.model_form.params_cls is not None, timeout=120)
        train.source.value = "simulated dataset"
        train.epochs.value = args.train_epochs
        click(train, "Start training")

        def finished() -> bool:
            run = train.current_run()
            return run is not None and run.status != "running"

        wait_until(finished, timeout=3600)
        only_visible("simulated tomogram", "picks")
        shot("train")

    # Evaluate: the autoencoder under the quick suite, labelled by the truth; AutoAttack
    for name, model, suite in (("evaluate", "ae-default", None),
                               ("autoattack", "cb3d-default", "autoattack")):
        if name not in only:
            continue
        ev = front("Evaluate")
        ev.reset_choices()
        click(ev, "Clear")
        ev.picker.model.value = model
        click(ev, "Add model")
        truth_labels(ev)
        if suite is not None:
            choice = next((c for c in ev.suite.choices if suite in str(c).lower()), None)
            if choice is None:
                raise SystemExit(f"no {suite} suite; choices {ev.suite.choices}")
            ev.suite.value = choice
        click(ev, "Evaluate")
        wait_until(lambda ev=ev: idle(ev), timeout=1800)
        only_visible("simulated tomogram", "picks")
        shot("evaluate-autoattack" if name == "autoattack" else name)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
