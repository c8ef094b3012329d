"""The readers (tomograms scaled by voxel size, pick files as Points), the picks writer
and the sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard._napari._reader import get_picks_reader, get_reader
from napari_cryoguard._napari._sample_data import simulated_layers
from napari_cryoguard._napari._writer import points_to_picks, write_picks
from napari_cryoguard.io import Picks, read_picks, write_tomogram
from napari_cryoguard.io import write_picks as write_pick_file

DATA = Path(__file__).resolve().parents[1] / "data"
ZARR = DATA / "omezarr" / "TS_demo.zarr"
#: bright voxels (value 10) of the bundled TS_demo tomograms, ZYX at 7.5 Angstrom
BRIGHT = np.array([(4, 6, 8), (10, 16, 20), (12, 8, 26)], dtype=float)


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
    assert get_reader(str(tmp_path / "x.png")) is None
    assert get_reader(str(tmp_path)) is None  # a plain folder is not OME-Zarr
    assert get_picks_reader(str(tmp_path / "x.mrc")) is None
    assert get_picks_reader(str(tmp_path / "x.png")) is None
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


# ------------------------------------------------------------ other tomogram formats


@pytest.mark.parametrize("rel", ["omezarr/TS_demo.zarr", "tiff/TS_demo.tif", "em/TS_demo.em"])
def test_reader_opens_omezarr_tiff_em_scaled(rel, recwarn):
    path = DATA / rel
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["name"] == "TS_demo"
    # the .em file stores no voxel size: 1.0 (with a note); the others 7.5 Angstrom
    expected = 1.0 if rel.endswith(".em") else 7.5
    assert kwargs["scale"] == pytest.approx((expected,) * 3)
    assert data.shape == (16, 24, 32)
    for z, y, x in BRIGHT.astype(int):
        assert float(data[z, y, x]) == 10.0


def _two_tomogram_star(tmp_path, voxel_size=15.0, names=("TS_demo", "other")):
    """Picks on the bright voxels of TS_demo (at ``voxel_size``) plus two of another tomogram."""
    coords = np.vstack([BRIGHT * 7.5 / voxel_size, [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]])
    picks = Picks(coords=coords, scores=[5.0, 4.0, 3.0, 2.0, 1.0],
                  tomo_names=[names[0]] * 3 + [names[1]] * 2, voxel_size=voxel_size)
    return write_pick_file(tmp_path / "particles.star", picks)


def test_picks_reader_without_viewer_splits_tomograms(tmp_path):
    path = _two_tomogram_star(tmp_path)
    reader = get_picks_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert [(lay[1]["name"], len(lay[0]), lay[2]) for lay in layers] == [
        ("particles TS_demo", 3, "points"), ("particles other", 2, "points")]
    data, kwargs, _ = layers[0]
    np.testing.assert_allclose(data, BRIGHT / 2)
    assert kwargs["scale"] == (15.0, 15.0, 15.0)
    meta = kwargs["metadata"]
    assert meta["voxel_size"] == 15.0 and meta["tomo_name"] == "TS_demo"
    assert meta["source"] == str(path) and isinstance(meta["notes"], list)
    np.testing.assert_array_equal(kwargs["features"]["score"], [5.0, 4.0, 3.0])


def test_picks_reader_reports_bad_files(tmp_path, monkeypatch):
    import napari.utils.notifications as nt

    seen = []
    monkeypatch.setattr(nt, "show_error", seen.append)
    bad = tmp_path / "broken.star"
    bad.write_text("data_\nloop_\n_rlnCoordinateX #1\nnot-a-number\n")
    assert get_picks_reader(str(bad))(str(bad)) == [(None,)]
    assert seen and "broken.star" in seen[-1]


def _notes_since(before):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[before:]]


@pytest.mark.gui
def test_viewer_opens_omezarr_and_star_picks_on_the_particles(viewer, tmp_path):
    """An OME-Zarr tomogram at 7.5 Angstrom and a STAR of two tomograms at 15 Angstrom: the
    Points layer holds only TS_demo's rows, converted to 7.5 Angstrom voxels, and lies on
    the bright voxels in world coordinates."""
    from napari.utils.notifications import notification_manager

    [image] = viewer.open(str(ZARR), plugin="napari-cryoguard")
    assert image.name == "TS_demo" and tuple(image.scale) == (7.5, 7.5, 7.5)
    path = _two_tomogram_star(tmp_path)
    before = len(notification_manager.records)
    [points] = viewer.open(str(path), plugin="napari-cryoguard")
    messages = _notes_since(before)
    assert points.name == "particles" and len(points.data) == 3
    assert tuple(points.scale) == (7.5, 7.5, 7.5)
    assert points.metadata["voxel_size"] == 7.5 and points.metadata["tomo_name"] == "TS_demo"
    assert points.metadata["source"] == str(path)
    assert any("converted" in n for n in points.metadata["notes"])
    world = np.array([points.data_to_world(c) for c in points.data])
    np.testing.assert_allclose(world, BRIGHT * 7.5)
    for w in world:  # the image voxel under each point is a bright one
        z, y, x = np.round(image.world_to_data(w)).astype(int)
        assert float(image.data[z, y, x]) == 10.0
    assert any("converted" in m for m in messages), messages


@pytest.mark.gui
def test_viewer_multi_tomogram_file_without_match_gives_one_layer_per_tomogram(viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    path = _two_tomogram_star(tmp_path, voxel_size=10.0, names=("TS_a", "TS_b"))
    viewer.open(str(ZARR), plugin="napari-cryoguard")
    before = len(notification_manager.records)
    added = viewer.open(str(path), plugin="napari-cryoguard")
    assert [lay.name for lay in added] == ["particles TS_a", "particles TS_b"]
    assert [len(lay.data) for lay in added] == [3, 2]
    assert all(tuple(lay.scale) == (10.0, 10.0, 10.0) for lay in added)
    messages = _notes_since(before)
    assert any("2 tomograms" in m and "one Points layer per tomogram" in m for m in messages)


@pytest.mark.gui
def test_viewer_csv_picks_without_tomogram_names_take_the_open_tomogram(viewer, tmp_path):
    [image] = viewer.open(str(DATA / "tiff" / "TS_demo.tif"), plugin="napari-cryoguard")
    picks = Picks(coords=BRIGHT, voxel_size=7.5)
    path = write_pick_file(tmp_path / "picks.csv", picks)
    [points] = viewer.open(str(path), plugin="napari-cryoguard")
    assert tuple(points.scale) == pytest.approx(tuple(image.scale))
    np.testing.assert_allclose(points.data, BRIGHT)
    assert points.metadata["tomo_name"] == "TS_demo"


@pytest.mark.gui
def test_viewer_bad_pick_file_is_the_packages_sentence(viewer, tmp_path):
    bad = tmp_path / "empty.csv"
    bad.write_text("")
    added, messages = _open_and_notify(viewer, bad, plugin="napari-cryoguard")
    assert added == [] and len(viewer.layers) == 0
    assert messages and "empty.csv" in messages[0], messages
    assert not any("Tried" in m for m in messages)


@pytest.mark.gui
def test_viewer_relion5_picks_use_the_open_tomograms_geometry(viewer, tmp_path):
    """RELION 5 centred Angstrom coordinates need the tomogram's size: the reader takes it
    from the open OME-Zarr tomogram (16 x 24 x 32 at 7.5 A, centre (8, 12, 16) voxels),
    so voxel (4, 6, 8) is centred (x, y, z) = (-60, -45, -30) A and lands on it."""
    [image] = viewer.open(str(ZARR), plugin="napari-cryoguard")
    picks = Picks(coords=BRIGHT, tomo_names=["TS_demo"] * 3, voxel_size=7.5)
    path = write_pick_file(tmp_path / "r5.star", picks, convention="relion5",
                           tomograms={"TS_demo": ((16, 24, 32), 7.5)})
    assert "rlnCenteredCoordinateXAngst" in path.read_text()
    [points] = viewer.open(str(path), plugin="napari-cryoguard")
    np.testing.assert_allclose(points.data, BRIGHT, atol=1e-6)
    np.testing.assert_allclose([points.data_to_world(c) for c in points.data], BRIGHT * 7.5)
    assert any("open tomograms" in n for n in points.metadata["notes"])
    for c in np.round(points.data).astype(int):
        assert float(image.data[tuple(c)]) == 10.0


@pytest.mark.gui
def test_viewer_warp_template_matching_picks_take_the_open_tomograms_size(viewer):
    """WarpTools template-matching picks are fractions of the tomogram: with Warp's
    tutorial tomogram TS_1 open (348 x 474 x 78 voxels at 10 A) they become its voxels."""
    viewer.add_image(np.zeros((78, 474, 348), np.uint8), name="TS_1", scale=(10.0,) * 3,
                     metadata={"voxel_size": 10.0})
    path = DATA / "warp" / "TS_1_10.00Apx_emd_15854_clean.star"
    [points] = viewer.open(str(path), plugin="napari-cryoguard")
    assert len(points.data) == 12
    np.testing.assert_allclose(points.data[0], [15.0, 447.0, 58.0], atol=1e-4)
    np.testing.assert_allclose(points.data_to_world(points.data[0]), [150.0, 4470.0, 580.0],
                               atol=1e-3)
    assert points.metadata["tomo_name"] == "TS_1"
    assert any("normalised" in n for n in points.metadata["notes"])


@pytest.mark.parametrize("rel", [
    "copick/TS_6_4_ribosome.json", "copick/data_portal_copick_instance.json",
    "cryolo/TS_01.cbox", "cryolo/tomotwin_test_coords.coords",
    "cryolo/boxmanager_3d_particle.cbox", "relion/warp_tomogram_particle_files.star",
    "relion/data_portal_relion_4.star", "relion/cylindra/Picks/job_picks/particles.star",
    "dynamo/t_double.tbl", "imod/points.mod", "imod/multiple_objects_example.mod",
    "csv/napari_points.csv",
])
def test_picks_reader_opens_the_bundled_real_pick_files(rel, recwarn):
    """Every real pick file in tests/data opens as Points with the reader's own count,
    coordinates and voxel size (no viewer: scale = the picks' voxel size)."""
    path = DATA / rel
    assert get_picks_reader(str(path)) is not None
    layers = get_picks_reader(str(path))(str(path))
    try:
        picks = read_picks(path)
    except CryoGuardError:  # copick is in Angstrom: without a tomogram, 1 A voxels
        picks = read_picks(path, voxel_size=1.0)
        assert any("1 Angstrom voxels" in n for n in layers[0][1]["metadata"]["notes"])
    assert all(kind == "points" for _, _, kind in layers)
    assert sum(len(data) for data, _, _ in layers) == len(picks)
    names = picks.tomogram_names()
    assert len(layers) == max(1, len(names))
    for data, kwargs, _ in layers:
        assert kwargs["scale"] == (picks.voxel_size,) * 3
        assert kwargs["metadata"]["source"] == str(path)
        part = picks.for_tomogram(kwargs["metadata"]["tomo_name"]) if len(names) > 1 else picks
        np.testing.assert_allclose(data, part.coords)
