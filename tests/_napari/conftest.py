"""GUI fixtures: a real napari viewer (shown, under Xvfb) with widgets docked through the
manifest, exactly as the *Plugins* menu docks them (each widget gets its own proxy of
the viewer). Every GUI test uses these, never ``SomeWidget(viewer)``. Layered: ``viewer``
(shown, laptop size) -> ``docked`` (dock and drive widgets) -> ``sampled`` (the sample
data opened).
"""

from __future__ import annotations

import pytest

from napari_cryoguard._napari import _probe


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """Training runs and evaluations of the widgets go to a temporary folder."""
    path = tmp_path / "runs"
    monkeypatch.setenv("CRYOGUARD_RUNS_DIR", str(path))
    return path


@pytest.fixture
def viewer(make_napari_viewer, runs_dir):
    """A shown viewer (screenshots need ``show=True`` under Xvfb) at laptop size."""
    v = make_napari_viewer(show=True)
    v.window._qt_window.resize(1280, 800)
    return v


class Docked:
    """A viewer plus helpers to dock and drive the plugin's widgets."""

    def __init__(self, viewer, qtbot) -> None:
        self.viewer = viewer
        self.qtbot = qtbot
        self.widgets: dict = {}

    def dock(self, name: str, **kwargs):
        # exactly what the Plugins menu does: napari hands the widget its own viewer proxy
        _, widget = self.viewer.window.add_plugin_dock_widget(_probe.PLUGIN, name, **kwargs)
        self.widgets[name] = widget
        # its controls are made a turn after docking (_layout.DockWidget), as a user sees them
        self.qtbot.waitUntil(lambda: widget.built, timeout=10_000)
        return widget

    def click(self, widget, text: str) -> None:
        _probe.click(widget, text)

    def wait_idle(self, widget, timeout: float = 120.0) -> None:
        """Wait until ``widget``'s worker has finished (``_workers.start_worker`` marks it busy)."""
        self.qtbot.waitUntil(lambda: not (getattr(widget, "_busy", False)
                                         or getattr(widget, "_applying", False)),
                            timeout=int(timeout * 1000))
        self.qtbot.wait(30)

    def sample(self):
        """Open the plugin's sample data (File > Open Sample)."""
        self.viewer.open_sample("napari-cryoguard", "simulated_tomogram")
        return self.viewer.layers["simulated tomogram"]


@pytest.fixture
def docked(viewer, qtbot):
    """Dock widgets by their manifest display names: ``docked.dock("Attack")``."""
    d = Docked(viewer, qtbot)
    yield d
    for w in d.widgets.values():  # a worker still running when the viewer closes is cancelled
        worker = getattr(w, "_worker", None)
        if worker is not None and worker.is_running:
            worker.quit()
            qtbot.waitUntil(lambda worker=worker: not worker.is_running, timeout=60_000)


@pytest.fixture
def sampled(docked):
    """``docked`` with the sample data opened (File > Open Sample); the tomogram layer is
    ``sampled.tomogram``. A test that asks for both gets the same object."""
    docked.tomogram = docked.sample()
    return docked
