"""The "Train" widget, docked from the manifest: a real background `cryoguard train`
process followed live, cancelled, checked before it starts, and handed to the other
widgets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_cryoguard.models import load_checkpoint

pytestmark = pytest.mark.gui

TINY = "tiny (quick check)"


def _notifications() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def _run_folders(runs_dir) -> list:
    return sorted(runs_dir.iterdir()) if runs_dir.exists() else []


@pytest.fixture
def train(docked):
    """The Train widget docked, set to a tiny model on a tiny simulated dataset."""
    w = docked.dock("Train")
    w.source.value = "simulated dataset"
    w.per_class.value = 4
    w.cube.value = 20
    w.model.value = "cb3d"
    w.size.value = TINY
    w.epochs.value = 2
    w.batch_size.value = 4
    w.device.value = "cpu"
    return w


def _start(docked, w):
    """Press Start, wait for the run to be launched; return it."""
    before = set(w.runs)
    docked.click(w, "Start training")
    docked.wait_idle(w)
    new = set(w.runs) - before
    assert len(new) == 1, w.info.value
    return w.runs[new.pop()]


def _wait_end(docked, w, run, timeout=240):
    docked.qtbot.waitUntil(lambda: run.status != "running", timeout=timeout * 1000)
    w.refresh()
    _wait_plot(docked, w)


def _wait_plot(docked, w):
    """The plot is rendered in a thread: wait until the last request is on screen."""
    docked.qtbot.waitUntil(lambda: not w.plots.busy, timeout=30_000)


def test_size_presets_fill_the_model_form(train):
    from napari_cryoguard.models.registry import SIZE_PRESETS, default_size_preset, size_preset

    assert default_size_preset("cpu") == "small (CPU-friendly)"
    train.size.value = "small (CPU-friendly)"
    assert json.loads(train.model_form.conv_widths.value) == [8, 16, 32, 64, 64]
    train.model_form.conv_widths.value = "[8, 8, 16, 16, 16]"  # still editable
    assert train.settings()["model_params"]["conv_widths"] == [8, 8, 16, 16, 16]
    train.size.value = "paper"
    assert json.loads(train.model_form.conv_widths.value) == [64, 128, 256, 512, 512]
    assert "conv_widths" not in train.settings()["model_params"]
    for preset in SIZE_PRESETS:  # every preset builds every architecture's parameters
        for arch in train.model.choices:
            train.size.value, train.model.value = preset, arch
            train.settings()
    with pytest.raises(Exception, match="unknown model size"):
        size_preset("huge", "cb3d")


def test_train_run_live_then_use_model(docked, train, runs_dir):
    classify = docked.dock("Classify")  # docked before the run
    run = _start(docked, train)
    assert run.status == "running"
    cmd = json.loads((run.folder / "command.json").read_text())
    assert cmd[:1] == ["train"] and "model.conv_widths=[4, 4, 8, 8, 8]" in cmd
    assert "--no-state" in cmd
    _wait_end(docked, train, run)
    assert run.status == "done", run.message
    assert [m["epoch"] for m in run.history] == [1, 2]
    assert train.progress.value == 100
    assert train.info.value.startswith(f"{run.name}: done")
    # the loss curve has one point per step, over both epochs
    steps, _ = run.loss_series()
    assert run.total_steps == 2 * run.steps_per_epoch > 2
    assert steps == list(range(1, run.total_steps + 1))
    assert list(train.plots.step_line.get_xdata()) == steps
    assert not train.plots.canvas.pixmap().isNull()  # the rendered plot is on screen
    assert len(train.plots.acc_lines["val_acc"].get_xdata()) == 2
    # one checkpoint and nothing else the user did not ask for
    assert sorted(p.name for p in run.folder.glob("*.safetensors")) == ["model.safetensors"]
    model, meta = load_checkpoint(run.checkpoint)
    assert meta["arch"] == "cb3d" and meta["cube"] == 20
    # the plot is redrawn only when there is news
    draws = train.plots.draws
    train.refresh()
    train.refresh()
    assert train.plots.draws == draws

    docked.click(train, "Use model in Classify / Attack / Evaluate")
    assert classify.picker.spec() == str(run.checkpoint)
    assert f"{run.name}/model.safetensors selected" in train.info.value
    # widgets docked after the click select it too, a fresh Classify included
    attack = docked.dock("Attack")
    assert attack.picker.spec() == str(run.checkpoint)
    docked.viewer.window.remove_dock_widget(classify.native)
    again = docked.dock("Classify")
    assert again is not classify
    assert again.picker.spec() == str(run.checkpoint)
    assert again.picker.display_name == f"{run.name}/model.safetensors"


def test_cancel_takes_effect_within_a_step(docked, train):
    train.size.value = "small (CPU-friendly)"
    train.cube.value = 28
    train.epochs.value = 500
    run = _start(docked, train)
    docked.qtbot.waitUntil(lambda: (train.refresh(), run.global_step >= 2)[1], timeout=120_000)
    seen = run.global_step
    docked.click(train, "Cancel run")
    assert "cancelling after this step" in train.info.value
    assert not train.cancel_button.enabled
    _wait_end(docked, train, run)
    assert run.status == "cancelled"
    assert run.process.wait(timeout=60) == 0
    # the step running when Cancel was pressed (and at most one more already done
    # but not yet read) is the last one
    assert seen <= run.global_step <= seen + 2
    assert train.info.value.startswith(f"{run.name}: cancelled at epoch 1/500")
    assert "cancelling" not in train.info.value
    files = sorted(p.name for p in run.folder.iterdir())
    assert files == ["command.json", "events.jsonl", "model.safetensors", "train.log"]
    _, meta = load_checkpoint(run.checkpoint)  # loadable, not half-written
    assert meta["cancelled"] is True
    assert train.use_button.enabled


def test_invalid_parameter_refused_before_start(train, runs_dir, docked):
    train.defense.value = "at"
    train.defense_form.eps.value = -5.0
    n = len(_notifications())
    docked.click(train, "Start training")
    assert not train.runs and not _run_folders(runs_dir)
    assert train._worker is None  # refused before anything started
    assert "eps must be >= 0" in " ".join(_notifications()[n:])
    assert train.info.value.startswith("error")
    train.defense_form.eps.value = 0.01
    train.lr.value = "fast"
    docked.click(train, "Start training")
    assert "learning rate" in _notifications()[-1] and not train.runs


def test_bad_dataset_file_is_a_notification(train, runs_dir, docked, tmp_path):
    train.source.value = "dataset file"
    n = len(_notifications())
    docked.click(train, "Start training")  # empty field
    assert "choose a dataset file" in " ".join(_notifications()[n:])
    bad = tmp_path / "bad.npz"
    bad.write_text("not a dataset")
    train.dataset.value = bad
    docked.click(train, "Start training")
    docked.wait_idle(train)
    assert "bad.npz is not a readable .npz dataset" in _notifications()[-1]
    assert train.info.value.startswith("error")
    assert not train.runs and not _run_folders(runs_dir)


def _labelled_layers(viewer, n=12, cube=20, predicted=False):
    """A tomogram, picks with a label column and their subtomograms (two classes)."""
    rng = np.random.default_rng(0)
    image = viewer.add_image(np.zeros((40, 60, 60), np.float32), name="tomo", scale=(10, 10, 10))
    coords = np.column_stack([np.full(n, 20.0), rng.uniform(10, 50, n), rng.uniform(10, 50, n)])
    names = np.array(["a", "b"] * (n // 2))
    col = "class" if predicted else "true_class"
    picks = viewer.add_points(coords, name="picks", scale=image.scale,
                              features=pd.DataFrame({col: pd.Categorical(names)}))
    if predicted:
        picks.metadata["predicted_columns"] = ["class"]
    vols = rng.normal(size=(n, cube, cube, cube)).astype(np.float32)
    vols[names == "b"] += 0.5
    viewer.add_image(vols, name="subtomograms",
                     metadata={"index": np.arange(n), "voxel_size": 10.0, "normalized": True})
    return picks


def test_predictions_refused_as_labels_unless_chosen(docked, train, runs_dir):
    _labelled_layers(docked.viewer, predicted=True)
    train.source.value = "subtomograms layer"
    train.labels.combo.reset_choices()
    assert train.labels.combo.value == "none"  # never the predictions by default
    n = len(_notifications())
    docked.click(train, "Start training")
    docked.wait_idle(train)
    assert "training needs labels" in " ".join(_notifications()[n:])
    assert not train.runs and not _run_folders(runs_dir)
    train.labels.combo.value = "picks: class (the model's own predictions)"
    run = _start(docked, train)
    assert "the model's own predictions" in train.info.value
    assert "chosen explicitly" in train.info.value
    _wait_end(docked, train, run)
    assert run.status == "done", run.message


def test_ima_margins_layer_kept_after_refresh(docked, train, tmp_path):
    from napari_cryoguard.io import read_picks

    picks = _labelled_layers(docked.viewer)
    train.source.value = "subtomograms layer"
    train.labels.combo.reset_choices()
    train.labels.combo.value = "picks: true_class"
    train.defense.value = "ima"
    train.defense_form.n_pgd.value = 2
    train.defense_form.n_binary.value = 2
    train.epochs.value = 1
    run = _start(docked, train)
    assert "labels: the picks' 'true_class' feature" in train.info.value
    _wait_end(docked, train, run)
    assert run.status == "done", run.message
    docked.wait_idle(train)  # the margins are read in a worker
    _wait_plot(docked, train)
    layer = docked.viewer.layers["margins"]
    margins = np.asarray(layer.features["margin"])
    n_train = run.config["n_train"] + run.config["n_val"]
    assert len(margins) == n_train == 12
    assert np.isfinite(np.asarray(picks.features["margin"], dtype=float)).all()
    assert train.plots.histogram_shown
    assert train.run_list.value == run.name  # napari's reset_choices (new layer) kept the runs
    train.refresh()
    train.refresh()
    _wait_plot(docked, train)
    assert "margins" in docked.viewer.layers and docked.viewer.layers["margins"] is layer
    assert train.plots.histogram_shown
    out = train.write_margins(tmp_path / "m.star")
    np.testing.assert_allclose(read_picks(out).features["margin"], margins, rtol=1e-5)


def test_fits_a_laptop_screen(docked, train):
    train.source.value = "subtomograms layer"
    for g in (train.simulation, train.model_group, train.defense_group, train.recipe_group):
        g.set_expanded(True)
    train.info.value = "error: " + "a very long message " * 40
    docked.qtbot.wait(100)
    size = docked.viewer.window._qt_window.size()
    assert size.width() <= 1280 and size.height() <= 800
    assert train.plots.canvas.height() <= 260


def test_output_fault_is_one_notification_naming_the_path(train, docked, tmp_path):
    """The runs folder cannot be made (a file sits where a folder should be): Start says so
    in one sentence naming the path (no traceback), starts nothing, and the file is kept."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("keep me\n")
    train.runs_dir = blocker / "runs"
    n = len(_notifications())
    docked.click(train, "Start training")
    docked.wait_idle(train)
    new = " ".join(_notifications()[n:])
    assert "not-a-folder" in new and "Traceback" not in new, new
    assert train.info.value.startswith("error")
    assert not train.runs and blocker.read_text() == "keep me\n"


def test_start_from_a_trained_model(docked, train):
    """"start from" a bundled model: its architecture is shown and locked, the run is a
    real `cryoguard train --init`, and one epoch on the simulator's classes starts where
    the bundled CB3D is (it already knows them), far above chance."""
    train._torch_ready()
    train.cube.value = 28  # the bundled CB3D's cube
    train.init.reset_choices()
    train.init.value = next(v for v in train.init.choices if str(v).endswith("cb3d-default.safetensors"))
    assert train.init.current_choice == "cb3d-default"
    assert train.model.value == "cb3d" and not train.model.enabled and not train.size.enabled
    train.cube.value = 20  # the checkpoint takes 28^3: refused before a run is made
    n = len(_notifications())
    docked.click(train, "Start training")
    docked.wait_idle(train)
    assert "takes 28^3 subtomograms: set cube to 28" in " ".join(_notifications()[n:])
    train.cube.value = 28
    train.per_class.value = 8
    train.epochs.value = 1
    run = _start(docked, train)
    assert "--init" in run.argv and str(run.argv[run.argv.index("--init") + 1]).endswith(
        "cb3d-default.safetensors")
    assert not any(a.startswith("model.") for a in run.argv)
    assert "starting from cb3d-default" in train.info.value
    _wait_end(docked, train, run)
    assert run.status == "done", train.info.value
    assert run.history[-1]["val_acc"] >= 0.6, run.history  # chance is 0.2
    assert "did not learn" not in train.info.value
    train.init.value = "scratch (new weights)"
    assert train.model.enabled and train.size.enabled
