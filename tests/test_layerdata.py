"""layerdata: what the widgets read off layers, turned into datasets, picks, cubes and
result features (plain arrays, no napari)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_cryoguard.classify import Predictions, zscore
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.layerdata import (
    NO_LABELS,
    Labels,
    accuracy_note,
    class_colors,
    evaluation_features,
    extraction_size,
    label_names,
    labelled_dataset,
    margin_features,
    particle_cube,
    particle_source,
    picks_for_image,
    prediction_update,
)


def test_core_modules_import_neither_napari_nor_qt_nor_torch():
    probe = ("import sys, napari_cryoguard.layerdata, napari_cryoguard.interactive; "
             "print(sorted(m for m in ('napari', 'qtpy', 'magicgui', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _stack(n=5, cube=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, cube, cube, cube)).astype(np.float32)


def test_labelled_dataset_keeps_labelled_rows_and_their_picks():
    volumes = _stack()
    index = np.array([0, 2, 3, 4, 1])  # the pick of each row
    labels = Labels(np.array(["b", "", "a", "", "b"]), "the picks' 'true_class' feature")
    coords = np.arange(15, dtype=float).reshape(5, 3)
    ds, rows = labelled_dataset(volumes, index, labels, coords=coords, voxel_size=10.0,
                                normalized=True, min_classes=2, purpose="training")
    # rows 0 (pick 0, b), 1 (pick 2, a) and 3 (pick 4, b) have a class
    assert rows.tolist() == [0, 2, 4]
    assert ds.class_names == ["a", "b"]
    assert ds.labels.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(ds.volumes, volumes[[0, 1, 3]])
    np.testing.assert_array_equal(ds.coords, coords[[0, 2, 4]])
    assert ds.voxel_size == 10.0 and ds.normalized
    assert ds.meta["pick_index"] == [0, 2, 4]
    assert ds.meta["labels"] == labels.source


def test_label_names_of_any_column():
    column = pd.Series(pd.Categorical(["a", None, "b"]))
    assert label_names(column).tolist() == ["a", "", "b"]
    assert label_names(np.array([1.0, np.nan], dtype=object)).tolist() == ["1.0", ""]
    assert label_names(pd.array(["x", pd.NA], dtype="string")).tolist() == ["x", ""]


def test_labelled_dataset_refuses_what_cannot_be_learned():
    volumes, index = _stack(3), np.array([0, 1, 2])
    with pytest.raises(CryoGuardError, match="at least 2 classes"):
        labelled_dataset(volumes, index, Labels(np.array(["a", "a", ""]), "x"), min_classes=2)
    with pytest.raises(CryoGuardError, match="needs labels: none of the 3 subtomograms has a "
                                             "class in x; choose other labels"):
        labelled_dataset(volumes, index, Labels(np.array(["", "", ""]), "x"))
    # the "none" choice: say what to choose instead, not "a class in no labels"
    with pytest.raises(CryoGuardError, match="'labels' is 'none': choose a picks feature") as err:
        labelled_dataset(volumes, index, Labels(np.array(["", "", ""]), NO_LABELS),
                         purpose="evaluation")
    assert str(err.value).startswith("evaluation needs labels")
    assert "in no labels" not in str(err.value)
    with pytest.raises(CryoGuardError, match="does not match the current picks"):
        labelled_dataset(volumes, np.array([0, 1, 5]), Labels(np.array(["a", "b", "a"]), "x"))


def test_picks_for_image_matches_the_tomogram_and_converts_voxels():
    points = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    features = pd.DataFrame({"tomo_name": ["tomo_a", "tomo_b", "tomo_a"]})
    out = picks_for_image(points, image_name="tomo_a", image_voxel_size=10.0,
                          features=features, metadata={"voxel_size": 20.0})
    assert out["rows"].tolist() == [0, 2]
    np.testing.assert_allclose(out["coords"], points[[0, 2]] * 2.0)
    assert out["voxel_size"] == 10.0
    assert out["notes"]  # the match and the conversion are said
    # without names or a voxel size: every pick, as it is
    same = picks_for_image(points, image_name="tomo_a", image_voxel_size=10.0)
    assert same["rows"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(same["coords"], points)


def test_particle_source_and_cube_from_the_stack_or_the_tomogram():
    stack = _stack(3, cube=8)
    src = particle_source(2, stack=stack, stack_index=[4, 2, 0], stack_normalized=False)
    assert src["stack"][1] == 1 and src["center"] is None
    cube = particle_cube(src, 8)
    np.testing.assert_allclose(cube, zscore(stack[1][None])[0], rtol=1e-5, atol=1e-5)
    # another cube size: cut from the tomogram around the pick
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(32, 32, 32)).astype(np.float32)
    points = np.array([[16.0, 16.0, 16.0], [5.0, 6.0, 7.0]])
    src = particle_source(0, stack=stack, stack_index=[4, 2, 0], points=points, volume=volume)
    cut = particle_cube(src, 10)
    assert cut.shape == (10, 10, 10)
    assert abs(float(cut.mean())) < 1e-3 and abs(float(cut.std()) - 1.0) < 1e-2  # normalised
    with pytest.raises(CryoGuardError, match="there is no pick 7"):
        particle_source(7, points=points, volume=volume)
    with pytest.raises(CryoGuardError, match="choose a tomogram"):
        particle_source(1, stack=stack, stack_index=[4, 2, 0])
    with pytest.raises(CryoGuardError, match="not 12"):
        particle_cube(particle_source(2, stack=stack, stack_index=[4, 2, 0]), 12)


def test_extraction_size_covers_the_models_field_of_view():
    loaded = SimpleNamespace(cube=16, voxel_size=14.0)
    assert extraction_size(loaded, 14.0) == 16
    assert extraction_size(loaded, None) == 16
    assert extraction_size(loaded, 7.0) == 32
    assert extraction_size(SimpleNamespace(cube=16, voxel_size=None), 7.0) == 16


def test_prediction_update_writes_classes_colours_and_accuracy():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    preds = Predictions(probabilities=probs, class_names=["a", "b"])
    features = pd.DataFrame({"class": ["a", "b", "b", "a"],  # read from a pick file
                             "true_class": ["a", "b", "a", "a"]})
    update, accuracy = prediction_update(features, {"voxel_size": 10.0}, 4, preds, [0, 1, 3])
    feats = update["features"]
    assert list(feats["class"]) == ["a", "b", "", "a"]  # pick 2 not classified
    assert list(feats["file_class"]) == ["a", "b", "b", "a"]
    np.testing.assert_allclose(feats["p_b"].to_numpy()[[0, 1, 3]], [0.1, 0.8, 0.4])
    assert np.isnan(feats["p_a"].iloc[2])
    assert accuracy == pytest.approx(1.0)  # a, b, a against a, b, a
    colors = class_colors(2)
    np.testing.assert_allclose(update["border_color"][1], colors[1])
    np.testing.assert_allclose(update["border_color"][2], [0.6, 0.6, 0.6, 1.0])
    assert update["face_color"][0][3] == pytest.approx(0.3)
    assert update["metadata"]["predicted_columns"] == ["class"]
    assert update["metadata"]["voxel_size"] == 10.0
    # a second run: 'class' holds predictions now, so it is not kept as a file class again
    again, _ = prediction_update(feats.drop(columns="file_class"), update["metadata"], 4, preds,
                                 [0, 1, 3])
    assert "file_class" not in again["features"]


def test_accuracy_note_only_against_true_labels():
    labels = Labels(np.array(["a", "", "b", "b"]), "the truth layer")
    assert accuracy_note(labels, ["a", "a", "a"], [0, 1, 3]) == \
        "; accuracy 0.500 on 2 picks against the truth layer"
    assert accuracy_note(Labels(labels.names, "x", predictions=True), ["a"], [0]) == ""
    assert accuracy_note(labels, ["a"], [1]) == "" and accuracy_note(None, ["a"], [0]) == ""


def test_margin_features_on_the_picks_they_came_from():
    feats = margin_features(pd.DataFrame({"score": [1.0, 2.0, 3.0]}), 3, [2, 0, 7],
                            [0.5, 0.25, 9.0])
    np.testing.assert_array_equal(feats["margin"].to_numpy(), [0.25, np.nan, 0.5])
    assert list(feats["score"]) == [1.0, 2.0, 3.0]


def test_evaluation_features_at_the_largest_budget():
    metrics = {"models": {"m": {
        "sample_index": [0, 1, 2],
        "clean_correct_by_sample": [1, 0, 1],
        "attacks": {
            "pgd": {"mode": "bounded", "points": [{"robust_by_sample": [0, 0, 0]},
                                                  {"robust_by_sample": [1, 0, 0]}]},
            "deepfool": {"mode": "minimal", "points": [{"robust_by_sample": [1, 1, 1]}]},
        }}}}
    feats = evaluation_features(pd.DataFrame(index=range(5)), 5, metrics, np.array([4, 0, 2]))
    np.testing.assert_array_equal(feats["eval_correct"].to_numpy(), [0, np.nan, 1, np.nan, 1])
    np.testing.assert_array_equal(feats["robust_pgd"].to_numpy(), [0, np.nan, 0, np.nan, 1])
    assert "robust_deepfool" not in feats
    assert evaluation_features(pd.DataFrame(), 0, {"models": {}}, []) is None


def test_picks_for_image_places_picks_through_world_coordinates():
    """An OME-Zarr pyramid: level 0 at 7.5 A (translate 0), level 1 at 15 A translated by
    3.75 A (half a level-0 voxel, as ome-zarr-py writes binned levels). Picks made on one
    level are cut at the same place in Angstrom on the other."""
    bright = np.array([(4, 6, 8), (10, 16, 20), (12, 8, 26)], dtype=float)
    on1 = picks_for_image(bright, image_name="TS", image_voxel_size=15.0,
                          metadata={"voxel_size": 7.5}, translate=(0.0, 0.0, 0.0),
                          image_translate=(3.75, 3.75, 3.75))
    # by hand: (4 * 7.5 - 3.75) / 15 = 1.75, (6 * 7.5 - 3.75) / 15 = 2.75, ...
    np.testing.assert_allclose(on1["coords"][0], [1.75, 2.75, 3.75])
    np.testing.assert_allclose(on1["coords"], (bright * 7.5 - 3.75) / 15.0)
    assert any("3.75" in n and "translation" in n for n in on1["notes"])
    back = picks_for_image(on1["coords"], image_name="TS", image_voxel_size=7.5,
                           metadata={"voxel_size": 15.0}, translate=(0, 0, 3.75, 3.75, 3.75),
                           image_translate=np.zeros(3))
    np.testing.assert_allclose(back["coords"], bright)
    # one translate unknown: the coordinates index the image's array (scaled only)
    plain = picks_for_image(bright, image_name="TS", image_voxel_size=15.0,
                            metadata={"voxel_size": 7.5}, translate=(0, 0, 0))
    np.testing.assert_allclose(plain["coords"], bright / 2)
    # equal translates: nothing moves, nothing said about a translation
    same = picks_for_image(bright, image_name="TS", image_voxel_size=7.5,
                           translate=(3.75,) * 3, image_translate=(3.75,) * 3)
    np.testing.assert_allclose(same["coords"], bright)
    assert not any("translation" in n for n in same["notes"])
    with pytest.raises(CryoGuardError, match="translate"):
        picks_for_image(bright, image_name="TS", image_voxel_size=7.5,
                        translate=(np.nan, 0, 0), image_translate=(0, 0, 0))


def test_layer_picks_reads_both_layers_translate():
    from napari_cryoguard.layerdata import layer_picks

    picks_layer = SimpleNamespace(
        data=np.array([[1.75, 2.75, 3.75], [5.0, 5.0, 5.0]]), name="picks",
        features=pd.DataFrame({"tomo_name": ["TS", "other"]}),
        metadata={"voxel_size": 15.0}, translate=np.array([3.75, 3.75, 3.75]))
    image = SimpleNamespace(name="TS.zarr", translate=np.zeros(3))
    out = layer_picks(picks_layer, image, image_voxel_size=7.5)
    assert out["rows"].tolist() == [0]
    np.testing.assert_allclose(out["coords"], [[4.0, 6.0, 8.0]])


def test_particle_for_model_moves_a_pick_by_the_layers_translate_difference(tiny_checkpoint):
    from napari_cryoguard.classify import load_model
    from napari_cryoguard.layerdata import particle_for_model

    loaded = load_model(tiny_checkpoint, device="cpu")
    vs = loaded.voxel_size or 10.0
    volume = np.random.default_rng(3).normal(size=(40, 40, 40)).astype(np.float32)
    volume[18, 19, 20] = 50.0
    direct = particle_for_model({**particle_source(0, points=np.array([[18.0, 19.0, 20.0]]),
                                                   volume=volume), "voxel_size": vs}, loaded)
    # picks layer translated by (1, 0, -2) voxels relative to the image
    notes: list[str] = []
    src = particle_source(0, points=np.array([[17.0, 19.0, 22.0]]), volume=volume)
    src.update(scale=1.0, voxel_size=vs, translate=(vs, 0.0, -2 * vs), image_translate=(0, 0, 0))
    moved = particle_for_model(src, loaded, notes)
    np.testing.assert_allclose(moved, direct)
    assert any("moved the pick by 1, 0, -2 voxels" in n for n in notes)


@pytest.mark.parametrize("n", [1, 2, 10, 11, 20, 23])
def test_class_colors_are_matplotlibs_tab_palettes(n):
    # written out so the Qt thread never imports matplotlib to colour picks
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    expected = np.array([cmap(i % cmap.N) for i in range(n)], dtype=np.float32)
    np.testing.assert_allclose(class_colors(n), expected, atol=1e-6)
    assert len({tuple(c) for c in class_colors(min(n, 20))}) == min(n, 20)
