"""The training loop: learning, resume, cancel, early stopping, events, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cryoguard import CryoGuardError
from napari_cryoguard.data import SubtomogramDataset
from napari_cryoguard.defenses import read_events, train
from napari_cryoguard.defenses.state import load_training_state, state_path_for
from napari_cryoguard.defenses.training_data import split_indices
from napari_cryoguard.models import load_checkpoint, tiny_params


@pytest.fixture(scope="module")
def tiny_data():
    """Two well-separated classes, 20 cubes of 20^3 each, SNR 1."""
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_subtomograms(20, classes=["1bxn", "6pxm"], cube=20, snr=1.0, seed=1)


def _cpu(**kw):
    return dict(device="cpu", **kw)


def test_standard_training_beats_chance_and_writes_a_full_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "ae.safetensors"
    res = train(
        tiny_data,
        "autoencoder",
        "standard",
        model_params=tiny_params("autoencoder"),
        out=out,
        epochs=5,
        lr=3e-3,
        **_cpu(),
    )
    assert res.checkpoint == out and out.is_file() and state_path_for(out).is_file()
    assert len(res.history) == res.epochs_run == 5
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["val_acc"] > 0.75 and last["train_acc"] > 0.75  # chance is 0.5
    model, meta = load_checkpoint(out, expect_arch="autoencoder", expect_cube=20)
    assert meta["class_names"] == tiny_data.class_names
    assert meta["voxel_size"] == pytest.approx(tiny_data.voxel_size)
    assert meta["normalization"] == "zscore"
    assert meta["defense"] == "standard" and meta["defense_params"] == {"label_smoothing": 0.0}
    assert meta["training"]["optimizer"] == "adam" and meta["training"]["lr"] == pytest.approx(3e-3)
    assert meta["training"]["dataset"]["simulated"]["seed"] == 1
    assert meta["epoch"] == 5 and len(meta["history"]) == 5 and meta["cancelled"] is False
    assert meta["metrics"]["val_acc"] == pytest.approx(last["val_acc"])
    # the saved weights are the trained ones: they reproduce the last val accuracy
    _, va = split_indices(tiny_data.labels, 0.2, 0)
    with torch.no_grad():
        pred = model(torch.from_numpy(tiny_data.volumes[va]).unsqueeze(1)).argmax(1).numpy()
    assert np.mean(pred == tiny_data.labels[va]) == pytest.approx(last["val_acc"])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path):
    kw = dict(model_params=tiny_params("cb3d"), lr=1e-3, batch_size=8, **_cpu())
    straight = train(tiny_data, "cb3d", "standard", out=tmp_path / "a.safetensors", epochs=2, **kw)
    train(tiny_data, "cb3d", "standard", out=tmp_path / "b.safetensors", epochs=1, **kw)
    resumed = train(
        tiny_data,
        out=tmp_path / "b.safetensors",
        resume=tmp_path / "b.safetensors",
        epochs=2,
        device="cpu",
    )
    assert resumed.epochs_run == 1 and len(resumed.history) == 2
    a, _ = load_checkpoint(straight.checkpoint)
    b, meta_b = load_checkpoint(resumed.checkpoint)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6)
    assert resumed.history[1]["train_loss"] == pytest.approx(
        straight.history[1]["train_loss"], rel=1e-5
    )
    assert meta_b["training"]["lr"] == pytest.approx(1e-3)  # recipe came from the checkpoint
    # the optimizer state is stored flat in safetensors (no pickle) and matters:
    tensors, smeta = load_training_state(state_path_for(resumed.checkpoint))
    assert any(k.endswith(".exp_avg") for k in tensors)
    assert smeta["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_resume_without_optimizer_state_differs_and_says_so(tiny_data, tmp_path):
    kw = dict(model_params=tiny_params("cb3d"), lr=1e-3, batch_size=8, **_cpu())
    straight = train(tiny_data, "cb3d", "standard", out=tmp_path / "a.safetensors", epochs=2, **kw)
    ck = train(tiny_data, "cb3d", "standard", out=tmp_path / "b.safetensors", epochs=1, **kw)
    ck.state_path.unlink()
    seen: list[dict] = []
    resumed = train(
        tiny_data,
        out=tmp_path / "b.safetensors",
        resume=ck.checkpoint,
        epochs=2,
        events=seen.append,
        device="cpu",
    )
    assert any(e["event"] == "note" and "optimizer" in e["message"] for e in seen)
    a, _ = load_checkpoint(straight.checkpoint)
    b, _ = load_checkpoint(resumed.checkpoint)
    diff = max(
        (va - vb).abs().max().item()
        for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert diff > 1e-6


def test_cancel_mid_epoch_writes_a_resumable_checkpoint(tiny_data, tmp_path):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2  # after the second step

    seen: list[dict] = []
    out = tmp_path / "c.safetensors"
    res = train(
        tiny_data,
        "cb3d",
        model_params=tiny_params("cb3d"),
        out=out,
        epochs=3,
        batch_size=8,
        cancel=cancel,
        events=seen.append,
        **_cpu(),
    )
    assert res.cancelled and res.epochs_run == 0 and res.history == []
    kinds = [e["event"] for e in seen]
    assert kinds[-1] == "cancelled" and "done" not in kinds
    assert seen[-1]["step"] == 2 and seen[-1]["epoch"] == 1
    _, meta = load_checkpoint(out)
    assert meta["cancelled"] is True and meta["step_in_epoch"] == 2 and meta["epoch"] == 0
    assert not list(tmp_path.glob("*.tmp"))
    steps: list[dict] = []
    done = train(tiny_data, out=out, resume=out, events=steps.append, device="cpu")
    first_step = next(e for e in steps if e["event"] == "step")
    assert first_step["step"] == 3  # steps 1-2 of epoch 1 are not repeated
    assert not done.cancelled and len(done.history) == 3
    assert load_checkpoint(out)[1]["cancelled"] is False


def test_cancel_accepts_an_event(tiny_data, tmp_path):
    import threading

    ev = threading.Event()
    ev.set()
    res = train(
        tiny_data,
        "cb3d",
        model_params=tiny_params("cb3d"),
        out=tmp_path / "e",
        epochs=2,
        cancel=ev,
        **_cpu(),
    )
    assert res.cancelled and res.checkpoint.name == "e.safetensors"


def test_early_stopping_keeps_the_best_validation_weights(tiny_data, tmp_path):
    rng = np.random.default_rng(0)
    noisy = SubtomogramDataset(  # random labels: memorising them makes val loss rise
        volumes=tiny_data.volumes,
        labels=rng.permutation(tiny_data.labels),
        class_names=tiny_data.class_names,
    )
    out = tmp_path / "es.safetensors"
    res = train(
        noisy,
        "autoencoder",
        model_params=tiny_params("autoencoder"),
        out=out,
        epochs=30,
        lr=1e-2,
        patience=2,
        **_cpu(),
    )
    assert res.stopped_early and len(res.history) < 30
    val = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(val)) + 1
    assert len(res.history) == res.best_epoch + 2
    model, meta = load_checkpoint(out)
    assert meta["weights_epoch"] == res.best_epoch and meta["restored_best"] is True
    _, va = split_indices(noisy.labels, 0.2, 0)
    with torch.no_grad():
        logits = model(torch.from_numpy(noisy.volumes[va]).unsqueeze(1))
    loss = F.cross_entropy(logits, torch.from_numpy(noisy.labels[va])).item()
    assert loss == pytest.approx(val[res.best_epoch - 1], rel=1e-4)
    assert loss < val[-1]


def test_events_file_is_json_lines_in_order(tiny_data, tmp_path):
    ev = tmp_path / "events.jsonl"
    train(
        tiny_data,
        "cb3d",
        model_params=tiny_params("cb3d"),
        out=tmp_path / "m",
        epochs=2,
        batch_size=8,
        events=ev,
        **_cpu(),
    )
    lines = ev.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is valid JSON
    kinds = [r["event"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("epoch") == 2 and kinds.count("checkpoint") == 2
    assert kinds.index("epoch") < kinds.index("checkpoint")
    cfg = records[0]["config"]
    assert cfg["model"] == "cb3d" and cfg["defense"]["name"] == "standard"
    assert cfg["n_train"] + cfg["n_val"] == len(tiny_data)
    steps = [r for r in records if r["event"] == "step"]
    assert steps and all({"epoch", "step", "steps_per_epoch", "loss"} <= set(s) for s in steps)
    # the last step of every epoch is always reported, whatever the throttle
    per_epoch = {s["epoch"]: s for s in steps}
    assert all(s["step"] == s["steps_per_epoch"] for s in per_epoch.values())
    epochs = [r for r in records if r["event"] == "epoch"]
    assert epochs[-1]["eta_seconds"] == 0 and epochs[0]["eta_seconds"] > 0
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(epochs[0]["metrics"])
    done = records[-1]
    assert done["path"].endswith("m.safetensors") and done["metrics"]["epoch"] == 2
    assert read_events(ev) == records


def test_robust_evaluation_is_reported_or_skipped_with_a_note(tiny_data, tmp_path):
    seen: list[dict] = []
    res = train(
        tiny_data,
        "cb3d",
        model_params=tiny_params("cb3d"),
        out=tmp_path / "r",
        epochs=1,
        robust_every=1,
        robust_samples=10_000,  # the whole validation set, so robust <= clean holds exactly
        events=seen.append,
        **_cpu(),
    )
    metrics = res.history[0]
    notes = [e["message"] for e in seen if e["event"] == "note"]
    try:
        import napari_cryoguard.attacks  # noqa: F401
    except ImportError:
        assert "robust_acc" not in metrics and any("attacks unavailable" in n for n in notes)
    else:
        assert 0.0 <= metrics["robust_acc"] <= metrics["val_acc"] + 1e-9
        with pytest.raises(CryoGuardError, match="pgd"):  # unknown attack: before training
            train(
                tiny_data,
                "cb3d",
                model_params=tiny_params("cb3d"),
                out=tmp_path / "r2",
                epochs=1,
                robust_every=1,
                robust_attack="no-such-attack",
                **_cpu(),
            )
        assert not (tmp_path / "r2.safetensors").exists()


def test_train_errors_are_clear(tiny_data, tmp_path):
    seen: list[dict] = []
    with pytest.raises(CryoGuardError, match="known: .*standard"):
        train(tiny_data, "cb3d", "nonsense", out=tmp_path / "x", events=seen.append, **_cpu())
    assert seen[-1]["event"] == "error"
    with pytest.raises(CryoGuardError, match="valid: .*conv_widths"):
        train(tiny_data, "cb3d", model_params={"width": 3}, out=tmp_path / "x", **_cpu())
    with pytest.raises(CryoGuardError, match="out="):
        train(tiny_data, "cb3d", **_cpu())
    unlabelled = SubtomogramDataset(volumes=tiny_data.volumes[:4])
    with pytest.raises(CryoGuardError, match="no labels"):
        train(unlabelled, out=tmp_path / "x", **_cpu())


def test_event_writer_ends_a_torn_last_line_of_a_killed_run(tmp_path):
    """A run killed mid-append leaves a partial last line; the next writer appending to
    the same file starts on a new line, so its first event is not lost with the torn one."""
    from napari_cryoguard.defenses.events import EventWriter, read_events

    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "start", "time": 1}\n{"event": "step", "ti', encoding="utf-8")
    writer = EventWriter(path)
    writer.emit("start", run=2)
    writer.close()
    events = read_events(path)
    assert [e["event"] for e in events] == ["start", "start"]
    assert events[-1]["run"] == 2
