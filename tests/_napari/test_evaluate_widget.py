"""The "Evaluate" widget, docked through the manifest, on the plugin's sample data.

The picks and subtomograms are made here with the core functions (independent of the
Pick widget); a tiny checkpoint trained on nothing keeps the evaluation short. What is
checked: the models evaluated are exactly the ones added (not the picker's default), the
labels used are named (the sample's truth by default), one panel per norm with its
unit, per-pick results, the wording when the labels are the model's own predictions,
and errors as notifications.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoguard._napari._models import FILE_CHOICE
from napari_cryoguard._napari._picks import set_picks_layer
from napari_cryoguard._napari._state import state_for
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params
from napari_cryoguard.picking import extract_subtomograms, pick_particles

pytestmark = pytest.mark.gui

CLASSES = ["1bxn", "3j9i", "6pxm", "1u6g", "1qvr"]  # the sample data's (and bundled models') classes


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("cb3d", len(CLASSES), cube=28, **tiny_params("cb3d"))
    return save_checkpoint(tmp_path / "tinyrun" / "tiny.safetensors", model,
                           {"class_names": CLASSES})


@pytest.fixture
def sample(docked, sampled):
    """The sample tomogram with DoG picks and their 28^3 subtomograms as layers."""
    image = sampled.tomogram
    picks = pick_particles(np.asarray(image.data), sigma1=7.0, k=1.1)
    assert len(picks) >= 10
    set_picks_layer(docked.viewer, picks, image)
    sub = extract_subtomograms(np.asarray(image.data), picks.coords, size=28)
    docked.viewer.add_image(sub.volumes, name="subtomograms", scale=(1.0, *image.scale[-3:]),
                            metadata={"index": np.asarray(sub.index), "normalized": sub.normalized,
                                      "voxel_size": 10.0, "tomogram": image.name})
    return docked


def _notifications(monkeypatch):
    import napari.utils.notifications as nt

    seen: list[str] = []
    real = nt.show_error
    monkeypatch.setattr(nt, "show_error", lambda msg: (seen.append(str(msg)), real(msg)))
    return seen


def _add_checkpoint(widget, path) -> None:
    widget.picker.model.value = FILE_CHOICE
    widget.picker.checkpoint.value = path
    widget.add_button.clicked()


def _evaluate(docked, widget) -> None:
    widget.settings.set_expanded(True)
    widget.device.value = "cpu"
    docked.click(widget, "Evaluate")
    docked.wait_idle(widget, timeout=400)


def test_evaluates_the_added_model_against_the_truth(sample, tiny_ckpt, tmp_path):
    docked = sample
    ev = docked.dock("Evaluate")
    _add_checkpoint(ev, tiny_ckpt)
    assert ev.models == [str(tiny_ckpt)]
    assert "tinyrun/tiny.safetensors" in ev.model_list.value
    # the picker now shows a bundled model, which was not added: it must not be evaluated
    ev.picker.model.value = "ae-default"
    # with the sample's truth layer, the default labels are its truth
    ev.labels.combo.reset_choices()
    assert ev.labels.combo.value.startswith("truth layer")
    _evaluate(docked, ev)

    assert ev.metrics is not None, ev.status.value
    assert list(ev.metrics["models"]) == ["tinyrun/tiny.safetensors"]
    assert ev.metrics["models"]["tinyrun/tiny.safetensors"]["source"] == str(tiny_ckpt)
    status = ev.status.value
    assert "tinyrun/tiny.safetensors" in status and "ae-default" not in status
    assert "labels: the truth layer" in status
    assert "Sanity checks:" in status and "report.html" in status
    assert ev.progress.value == 100
    # one panel per norm, budgets in their own unit
    axes = ev.figure.axes
    assert [ax.get_title() for ax in axes] == ["L-inf attacks", "L2 attacks"]
    assert axes[0].get_xlabel() == "eps (L-inf, normalised units)"
    assert axes[1].get_xlabel() == "eps (L2, normalised units)"
    assert axes[0].lines and axes[1].lines
    linf_max = max(max(line.get_xdata()) for line in axes[0].lines)
    l2_max = max(max(line.get_xdata()) for line in axes[1].lines)
    assert linf_max <= 0.5 < l2_max  # L-inf budgets are not drawn on the L2 axis
    assert all("accuracy" in ax.get_ylabel() for ax in axes)
    # the table lists every attack with its unit, scores in [0, 1]
    table = ev.table.value["data"]
    assert table and all(0.0 <= float(r[4]) <= 1.0 for r in table)
    assert {"fraction of voxels replaced", "eps (L2, normalised units)"} <= {r[3] for r in table}
    # per-pick results of the evaluated model
    feats = docked.viewer.layers["picks"].features
    assert "eval_correct" in feats.columns
    assert set(np.unique(feats["eval_correct"].dropna())) <= {0.0, 1.0}
    robust = [c for c in feats.columns if c.startswith("robust_")]
    assert robust
    for c in robust:  # robust implies correct on the clean sample
        ok = feats[c].to_numpy() == 1
        assert np.all(feats["eval_correct"].to_numpy()[ok] == 1)


def test_own_predictions_as_labels_say_agreement(sample, tiny_ckpt):
    docked = sample
    viewer = docked.viewer
    picks = viewer.layers["picks"]
    feats = picks.features.copy()
    rng = np.random.default_rng(0)
    feats["class"] = rng.choice(CLASSES[:3], size=len(picks.data)).astype(object)
    picks.features = feats
    picks.metadata["predicted_columns"] = ["class"]  # as Classify marks its predictions
    ev = docked.dock("Evaluate")
    _add_checkpoint(ev, tiny_ckpt)
    ev.labels.combo.reset_choices()
    assert not ev.labels.combo.value.startswith("picks: class")  # never the default
    ev.labels.combo.value = "picks: class (the model's own predictions)"
    _evaluate(docked, ev)
    status = ev.status.value
    assert ev.metrics is not None, status
    assert "agreement with the model's own predictions" in status
    assert "accuracy" not in status.lower()
    assert "verdict: pass" not in status and "Sanity checks" not in status
    assert all("agreement" in ax.get_ylabel() for ax in ev.figure.axes)


def test_use_model_adds_it_to_the_list(docked, tiny_ckpt):
    state = state_for(docked.viewer)
    state.select_model(str(tiny_ckpt))  # the Train widget's "Use model", before Evaluate opened
    ev = docked.dock("Evaluate")
    assert ev.models == [str(tiny_ckpt)]
    assert ev.picker.spec() == str(tiny_ckpt)
    state.select_model("cb3d-default")  # and again, with Evaluate open
    assert ev.models == [str(tiny_ckpt), "cb3d-default"]
    assert ev.picker.spec() == "cb3d-default"
    assert ev.model_list.value == "tinyrun/tiny.safetensors, cb3d-default"
    docked.click(ev, "Clear")
    assert ev.models == [] and "Add model" in ev.model_list.value


def test_errors_are_notifications(sample, monkeypatch):
    docked = sample
    seen = _notifications(monkeypatch)
    ev = docked.dock("Evaluate")
    # nothing added: no silent fallback to the model shown
    docked.click(ev, "Evaluate")
    assert ev.status.value.startswith("error: add at least one model")
    assert ev._worker is None and ev.metrics is None
    # an empty checkpoint field says "choose", not a path of the working directory
    ev.picker.model.value = FILE_CHOICE
    docked.click(ev, "Add model")
    assert "choose a checkpoint file" in ev.status.value
    assert ev.models == []
    ev.picker.model.value = "ae-default"
    docked.click(ev, "Add model")
    # no subtomograms: a notification naming the button that makes them
    docked.viewer.layers.remove("subtomograms")
    docked.click(ev, "Evaluate")
    docked.wait_idle(ev)
    assert ev.status.value.startswith("error: evaluation needs the 'subtomograms' layer")
    assert ev.run_button.enabled
    assert any("add at least one model" in s for s in seen)
    assert any("'subtomograms' layer" in s for s in seen)


def test_fits_the_screen(docked):
    ev = docked.dock("Evaluate")
    docked.qtbot.wait(50)
    size = docked.viewer.window._qt_window.size()
    assert size.width() <= 1280 and size.height() <= 800
    assert ev.native.sizeHint().width() <= 420


def test_autoattack_suite_from_the_widget(sample, tiny_ckpt):
    docked = sample
    ev = docked.dock("Evaluate")
    _add_checkpoint(ev, tiny_ckpt)
    ev.labels.combo.reset_choices()
    assert list(ev.suite.choices) == ["default", "autoattack"]
    assert ev.suite.value == "default"  # the papers' attacks unless chosen
    ev.settings.set_expanded(True)
    ev.suite.value = "autoattack"
    _evaluate(docked, ev)
    assert ev.metrics is not None, ev.status.value
    (m,) = ev.metrics["models"].values()
    assert list(m["attacks"]) == ["AutoAttack (quick)"]
    curve = m["attacks"]["AutoAttack (quick)"]
    assert curve["attack"] == "worst_case"
    assert [mm["name"] for mm in curve["members"]] == ["apgd_ce", "apgd_t", "square"]
    assert [p["budget"] for p in curve["points"]] == [0.01, 0.03, 0.12]
    # an L-inf suite: one curve in the L-inf panel, the L2 panel says it has none
    axes = ev.figure.axes
    assert len(axes[0].lines) == 1 and not axes[1].lines
    assert any("no attack of this norm" in t.get_text() for t in axes[1].texts)
    assert {r[1] for r in ev.table.value["data"]} == {"AutoAttack (quick)"}
    assert {r[3] for r in ev.table.value["data"]} == {"eps (L-inf, normalised units)"}
    assert "under AutoAttack (quick)" in ev.status.value
    feats = docked.viewer.layers["picks"].features
    assert "robust_AutoAttack (quick)" in feats.columns


def test_output_fault_is_one_clear_notification_and_nothing_runs(sample, tiny_ckpt, tmp_path,
                                                                  monkeypatch):
    """The runs folder cannot be created (a file sits where it should be): Evaluate says so
    in the plugin's own sentence, naming the path, as the notification's text and in the
    status line; no traceback text, and the widget is usable again."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder\n")
    monkeypatch.setenv("CRYOGUARD_RUNS_DIR", str(blocker / "runs"))
    seen = _notifications(monkeypatch)
    docked = sample
    ev = docked.dock("Evaluate")
    _add_checkpoint(ev, tiny_ckpt)
    ev.labels.combo.reset_choices()
    _evaluate(docked, ev)
    assert ev.metrics is None
    status = ev.status.value
    assert "not-a-folder" in status and "Traceback" not in status, status
    assert seen and "not-a-folder" in seen[-1] and "Traceback" not in seen[-1]
    assert blocker.read_text() == "a file, not a folder\n"  # nothing lost
    assert not getattr(ev, "_busy", False)
