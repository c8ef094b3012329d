"""Drive and measure the docked widgets as a user would (tests, benchmarks, the demo).

- :func:`dock`: dock a widget through the manifest, as the *Plugins* menu does (napari
  hands the widget its own proxy of the viewer).
- :func:`click`: press a widget's button by its text.
- :func:`wait_until`: run the Qt event loop until a condition holds.
- :class:`StallMeter`: a 10 ms QTimer recording the longest gap between its ticks, i.e.
  the longest freeze of the event loop a user would feel.
- :func:`canvas_coverage`: the share of canvas pixels that differ from the background
  with only the given layers visible.
"""

from __future__ import annotations

import time

import numpy as np

PLUGIN = "napari-cryoguard"


def dock(viewer, display_name: str, **kwargs):
    """Dock ``display_name`` from the plugin's manifest; return the widget once its
    controls are made (a turn after the docking, see ``_layout.DockWidget``)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, display_name, **kwargs)
    wait_until(lambda: widget.built, timeout=30.0, interval=0.005)
    return widget


def dock_frame(widget):
    """The ``QDockWidget`` napari put ``widget`` in, or ``None`` (not docked)."""
    parent = widget.native.parentWidget()
    while parent is not None and not parent.inherits("QDockWidget"):
        parent = parent.parentWidget()
    return parent


def buttons(widget) -> dict:
    from qtpy.QtWidgets import QPushButton

    if hasattr(widget, "ensure_built"):  # made and not yet shown: its controls now
        widget.ensure_built()
    root = getattr(widget, "native", widget)
    return {b.text(): b for b in root.findChildren(QPushButton)}


def click(widget, text: str) -> None:
    """Click the button labelled ``text`` inside ``widget`` (raises when there is none)."""
    found = buttons(widget)
    if text not in found:
        raise LookupError(f"no button {text!r}; buttons: {sorted(found)}")
    button = found[text]
    if not button.isEnabled():
        raise RuntimeError(f"button {text!r} is disabled")
    button.click()


def pump(seconds: float) -> None:
    """Run the Qt event loop for ``seconds``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def wait_until(condition, timeout: float = 120.0, interval: float = 0.02) -> None:
    """Run the event loop until ``condition()`` is true; ``TimeoutError`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"condition not met within {timeout:.0f} s")
        pump(interval)


class StallMeter:
    """The longest gap between ticks of a 10 ms QTimer while the ``with`` block runs."""

    def __init__(self, interval_ms: int = 10) -> None:
        self.interval_ms = interval_ms
        self.gaps: list[float] = []

    def __enter__(self) -> StallMeter:
        from qtpy.QtCore import QTimer

        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        return self

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def __exit__(self, *exc) -> None:
        self._tick()
        self._timer.stop()

    @property
    def longest_ms(self) -> float:
        return 1000.0 * max(self.gaps, default=0.0)

    @property
    def median_ms(self) -> float:
        return 1000.0 * float(np.median(self.gaps)) if self.gaps else 0.0


def canvas_coverage(viewer, names) -> float:
    """Share of canvas pixels that change when only the layers ``names`` are shown.

    Two screenshots of the canvas: every layer hidden (the background), then only
    ``names`` visible. A layer at the wrong scale, off the current slice or outside the
    view gives ~0.
    """
    before = {lay.name: lay.visible for lay in viewer.layers}

    def shot():
        pump(0.05)
        return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(np.int16)

    try:
        for lay in viewer.layers:
            lay.visible = False
        empty = shot()
        for lay in viewer.layers:
            lay.visible = lay.name in names
        full = shot()
    finally:
        for lay in viewer.layers:
            lay.visible = before.get(lay.name, lay.visible)
    return float((np.abs(full - empty).sum(axis=-1) > 6).mean())
