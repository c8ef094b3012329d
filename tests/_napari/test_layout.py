"""All five widgets docked from the manifest fit a 1280x800 laptop screen."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

NAMES = ("Pick particles", "Classify", "Attack", "Train", "Evaluate")


@pytest.mark.parametrize("tabify", [True, False])
def test_all_widgets_fit_a_laptop_screen(docked, sampled, tabify):
    viewer = docked.viewer
    win = viewer.window._qt_window
    widgets = [docked.dock(name, tabify=tabify) for name in NAMES]
    docked.qtbot.wait(300)
    assert (win.width(), win.height()) == (1280, 800)
    # each dock takes its controls' width (they are made a turn after the docking; the
    # dock, sized at first for the empty widget, was once left 50 px wide)
    for name, w in zip(NAMES, widgets, strict=True):
        assert 300 <= w.native.width() <= 430, (name, w.native.width())
    # a long status or error line wraps instead of widening the dock
    before = [w.native.width() for w in widgets]
    long_text = "error: " + " ".join(["a long explanation of what went wrong"] * 20)
    path_text = "error: /" + "/".join(["deeply-nested-folder"] * 15) + "/model.safetensors"
    for w in widgets:
        line = w.status if hasattr(w, "status") else w.info  # Train calls its line 'info'
        line.value = long_text if w is not widgets[0] else path_text
    docked.qtbot.wait(300)
    assert (win.width(), win.height()) == (1280, 800)
    after = [w.native.width() for w in widgets]
    assert all(a <= b + 2 for a, b in zip(after, before, strict=True)), (before, after)
    # the canvas keeps most of the window
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 500, canvas.width()


def test_long_choices_do_not_widen_the_docks(docked, sampled):
    """Combo boxes are made a turn after the dock first shows; long choices present then
    (a layer's long name; a picks feature column, as a STAR file's extra columns give,
    offered as labels) must not size the dock (the Attack dock once grew to 428 px)."""
    import numpy as np

    viewer = docked.viewer
    viewer.add_image(np.zeros((8, 8, 8), np.float32),
                     name="tomogram " + "with-a-very-long-descriptive-name-" * 5)
    column = "rlnClassNumberFromAVeryLongRefinementJobName" * 2
    viewer.add_points(np.array([[4.0, 4.0, 4.0], [6.0, 6.0, 6.0]]), name="picks",
                      features={column: ["a", "b"]})
    widgets = [docked.dock(name, tabify=True) for name in NAMES]
    docked.qtbot.wait(300)
    win = viewer.window._qt_window
    assert (win.width(), win.height()) == (1280, 800)
    for name, w in zip(NAMES, widgets, strict=True):
        assert w.native.minimumSizeHint().width() <= 400, (name, w.native.minimumSizeHint())
        assert w.native.width() <= 430, (name, w.native.width())
