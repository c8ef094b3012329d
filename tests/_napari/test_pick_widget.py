"""The "Pick particles" widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard._napari.pick_widget import PickWidget
from napari_cryoguard.picking import SIMULATED_SIGMA1, SIMULATED_THRESHOLD, match_picks

pytestmark = pytest.mark.gui


def _wait(qtbot, widget, timeout=60_000):
    """Wait until the worker has finished (buttons are enabled again in `finished`)."""
    qtbot.waitUntil(lambda: widget.pick_button.enabled, timeout=timeout)
    qtbot.wait(20)


@pytest.fixture
def viewer_with_tomo(make_napari_viewer, small_sim):
    viewer = make_napari_viewer()
    layer = viewer.add_image(small_sim.volume, name="tomo", scale=(small_sim.voxel_size,) * 3,
                             metadata={"voxel_size": small_sim.voxel_size})
    widget = PickWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget.image.value = layer
    assert widget.sigma1.value == 7.0 and widget.k.value == 1.1  # the RAT paper's defaults
    widget.sigma1.value = SIMULATED_SIGMA1  # matched to the simulated particles
    widget.threshold.value = SIMULATED_THRESHOLD
    return viewer, widget


def test_pick_extract_preview(qtbot, viewer_with_tomo, small_sim):
    viewer, widget = viewer_with_tomo
    widget.pick_button.clicked()
    assert not widget.pick_button.enabled  # busy while the worker runs
    _wait(qtbot, widget)
    assert "picks" in viewer.layers
    picks = viewer.layers["picks"]
    assert "score" in picks.features
    assert tuple(picks.scale) == (small_sim.voxel_size,) * 3
    precision, recall = match_picks(picks.data, small_sim.coords, tolerance=4.0)
    assert recall >= 0.9 and precision >= 0.9
    assert widget.progress.value == 100
    assert widget.pick_button.enabled

    # picking again replaces the layer instead of piling up
    widget.pick_button.clicked()
    _wait(qtbot, widget)
    assert [lay.name for lay in viewer.layers].count("picks") == 1

    widget.cube.value = 24
    widget.extract_button.clicked()
    _wait(qtbot, widget)
    sub = viewer.layers["subtomograms"]
    assert sub.data.ndim == 4 and sub.data.shape[1:] == (24, 24, 24)
    assert sub.data.shape[0] + sub.metadata["n_skipped"] == len(picks.data)
    np.testing.assert_allclose(sub.data.mean(axis=(1, 2, 3)), 0, atol=1e-4)

    widget.preview_button.clicked()
    _wait(qtbot, widget)
    assert "tomo DoG" in viewer.layers


def test_pick_error_is_a_notification_not_a_crash(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    bad = np.ones((40, 64, 64), np.float32)
    bad[5, 5, 5] = np.nan
    layer = viewer.add_image(bad, name="bad")
    widget = PickWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    widget.image.value = layer
    widget.pick_button.clicked()
    _wait(qtbot, widget)
    assert widget.status.value.startswith("error")
    assert "picks" not in viewer.layers
    assert widget.pick_button.enabled
