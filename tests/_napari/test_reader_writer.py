"""The reader (tomograms, scaled by voxel size), the picks writer and the sample data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard._napari._reader import get_reader
from napari_cryoguard._napari._sample_data import simulated_layers
from napari_cryoguard._napari._writer import points_to_picks, write_picks
from napari_cryoguard.io import read_picks, write_tomogram


def test_reader_returns_lazy_scaled_image(tmp_path):
    vol = np.random.default_rng(0).normal(size=(8, 12, 16)).astype(np.float32)
    path = write_tomogram(tmp_path / "t.rec", vol, 7.5)
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image"
    assert kwargs["name"] == "t"
    assert kwargs["scale"] == (7.5, 7.5, 7.5)
    assert isinstance(data, np.memmap)
    np.testing.assert_array_equal(np.asarray(data), vol)


def test_reader_declines_other_files(tmp_path):
    assert get_reader(str(tmp_path / "x.tif")) is None
    assert get_reader([str(tmp_path / "a.mrc"), str(tmp_path / "b.png")]) is None


def _flat_and_truncated(tmp_path):
    import mrcfile

    flat = tmp_path / "flat.mrc"
    with mrcfile.new(flat) as m:
        m.set_data(np.zeros((10, 10), np.float32))
    good = write_tomogram(tmp_path / "good.mrc", np.zeros((16, 16, 16), np.float32), 10.0)
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(good.read_bytes()[:-2000])
    return flat, truncated


def test_reader_reports_bad_files_in_its_own_words(tmp_path, monkeypatch):
    """A bad file is a notification with the package's sentence, and no layer."""
    import napari.utils.notifications as nt

    from napari_cryoguard.io import read_tomogram

    seen = []
    monkeypatch.setattr(nt, "show_error", seen.append)
    flat, truncated = _flat_and_truncated(tmp_path)
    for path, words in ((flat, "is a 2D image"), (truncated, "is truncated")):
        with pytest.raises(CryoGuardError, match=words):
            read_tomogram(path)  # the core's sentence ...
        reader = get_reader(str(path))
        assert reader is not None  # not "refused": napari would hide our sentence
        assert reader(str(path)) == [(None,)]  # napari's "no layers, on purpose"
        assert seen[-1].startswith(f"{path.name} {words}")  # ... is the notification's text


def _open_and_notify(viewer, path, **kwargs):
    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    if kwargs.get("menu"):  # File > Open: what the Qt viewer does with the chosen files
        viewer.window._qt_viewer._qt_open([str(path)], stack=False)
        added = []
    else:  # must not raise napari's "Tried opening with napari-cryoguard, but failed."
        added = viewer.open(str(path), **kwargs)
    return added, [str(n.message) for n in notification_manager.records[before:]]


@pytest.mark.gui
def test_viewer_open_shows_the_plugins_sentence(viewer, tmp_path):
    """Opened in a real viewer (with and without naming the plugin), the first and only
    message the user sees is the plugin's own sentence."""
    flat, truncated = _flat_and_truncated(tmp_path)
    for path, words in ((flat, "is a 2D image (10 x 10, nz = 1)"), (truncated, "is truncated")):
        for kwargs in ({"plugin": "napari-cryoguard"}, {"plugin": None}, {"menu": True}):
            added, messages = _open_and_notify(viewer, path, **kwargs)
            assert added == []
            assert len(viewer.layers) == 0
            assert messages and messages[0].startswith(f"{path.name} {words}"), messages
            assert not any("Tried" in m or "failed" in m for m in messages)
    good = write_tomogram(tmp_path / "t.mrc", np.ones((8, 12, 16), np.float32), 7.5)
    added, messages = _open_and_notify(viewer, good, plugin="napari-cryoguard")
    assert [lay.name for lay in added] == ["t"] and added[0].scale[-1] == 7.5
    assert not messages


def test_writer_round_trip_star_and_csv(tmp_path):
    import pandas as pd

    coords = np.array([[1.5, 2.25, 3.125], [10.0, 20.0, 30.0]])
    attrs = {"features": pd.DataFrame({"score": [4.5, 3.25], "class": ["1bxn", "3j9i"]}),
             "metadata": {"voxel_size": 10.0, "tomo_name": "tomo1",
                          "class_names": ["1bxn", "3j9i", "4v4r"]},
             "scale": (10.0, 10.0, 10.0)}
    for suffix in (".star", ".csv"):
        out = write_picks(str(tmp_path / f"p{suffix}"), coords, attrs)
        picks = read_picks(out[0])
        np.testing.assert_array_equal(picks.coords, coords)
        np.testing.assert_array_equal(picks.scores, [4.5, 3.25])
        assert picks.class_of() == ["1bxn", "3j9i"]
        assert list(picks.tomo_names) == ["tomo1", "tomo1"]


def test_points_to_picks_empty():
    picks = points_to_picks(np.zeros((0, 3)), {"features": None, "metadata": {}, "scale": (1, 1, 1)})
    assert len(picks) == 0


def test_sample_data_layers():
    image, truth = simulated_layers(seed=3, shape=(32, 96, 96), n_particles=4)
    assert image[2] == "image" and truth[2] == "points"
    assert image[0].shape == (32, 96, 96)
    assert truth[0].shape == (4, 3)
    assert image[1]["scale"] == truth[1]["scale"]
    assert len(truth[1]["features"]["class"]) == 4
