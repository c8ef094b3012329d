"""Exact resume: a cancelled (or killed) run continues to the uninterrupted run's weights.

All on a tiny CB3D (dropout 0.5, so the random streams matter) and 16 cubes of 16^3,
batch 4: 3 training steps per epoch (13 training rows after the 20 % split).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.cli.train import main as train_main
from napari_cryoguard.data import SubtomogramDataset
from napari_cryoguard.defenses import train
from napari_cryoguard.defenses.state import (
    load_training_state,
    pending_state_path_for,
    state_path_for,
)
from napari_cryoguard.models import load_checkpoint, tiny_params


@pytest.fixture(scope="module")
def data():
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_subtomograms(8, classes=["1bxn", "6pxm"], cube=16, snr=1.0, seed=3)


KW = dict(model_params=tiny_params("cb3d"), lr=1e-3, batch_size=4, device="cpu")


def _weights(path):
    return load_checkpoint(path)[0].state_dict()


def _max_diff(a, b) -> float:
    assert list(a) == list(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _cancel_after(n: int):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] >= n

    return cancel


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted 2-epoch run everything is compared with."""
    out = tmp_path_factory.mktemp("straight") / "a.safetensors"
    return train(data, "cb3d", "standard", out=out, epochs=2, **KW)


@pytest.mark.parametrize("cancel_at", [2, 3, 5])
def test_cancel_then_resume_equals_the_uninterrupted_run(data, straight, tmp_path, cancel_at):
    """Cancel after global step 2 (mid epoch 1), 3 (its last step), 5 (mid epoch 2)."""
    out = tmp_path / "b.safetensors"
    first = train(data, "cb3d", "standard", out=out, epochs=2, cancel=_cancel_after(cancel_at),
                  **KW)
    assert first.cancelled
    meta = load_checkpoint(out)[1]
    assert meta["step_in_epoch"] == (cancel_at - 1) % 3 + 1
    resumed = train(data, out=out, resume=out, device="cpu")
    assert not resumed.cancelled and len(resumed.history) == 2
    assert _max_diff(_weights(straight.checkpoint), _weights(resumed.checkpoint)) <= 1e-6
    for got, want in zip(resumed.history, straight.history, strict=True):
        # the cancelled epoch's loss covers all of its steps, never NaN
        assert math.isfinite(got["train_loss"])
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)
    assert not list(tmp_path.glob(".*.tmp")) and not pending_state_path_for(out).exists()


def _two_states(data, tmp_path):
    """Epoch-1 files and the epoch-2 checkpoint/state of the same run."""
    out = tmp_path / "b.safetensors"
    train(data, "cb3d", "standard", out=out, epochs=1, **KW)
    shutil.copy(out, tmp_path / "ck1")
    shutil.copy(state_path_for(out), tmp_path / "st1")
    train(data, out=out, resume=out, epochs=2, device="cpu")
    shutil.copy(out, tmp_path / "ck2")
    shutil.copy(state_path_for(out), tmp_path / "st2")
    return out


def test_kill_between_checkpoint_and_state_rename_keeps_the_pair(data, straight, tmp_path):
    """New checkpoint + old state + new pending state: the pending one is taken."""
    out = _two_states(data, tmp_path)
    # what a kill after the checkpoint's rename, before the state's, leaves behind
    shutil.copy(tmp_path / "ck1", out)
    shutil.copy(tmp_path / "st1", state_path_for(out))
    shutil.copy(tmp_path / "st1", pending_state_path_for(out))
    train(data, out=out, resume=out, epochs=2, device="cpu")  # epoch 2 again, from epoch 1
    assert _max_diff(_weights(straight.checkpoint), _weights(out)) <= 1e-6

    seen: list[dict] = []
    shutil.copy(tmp_path / "ck2", out)
    shutil.copy(tmp_path / "st1", state_path_for(out))  # old state
    shutil.copy(tmp_path / "st2", pending_state_path_for(out))  # the checkpoint's state
    res = train(data, out=out, resume=out, epochs=3, device="cpu", events=seen.append)
    notes = [e["message"] for e in seen if e["event"] == "note"]
    assert any("pending" in m for m in notes)
    assert not any("afresh" in m for m in notes)
    # the same as continuing from the intact epoch-2 pair
    ref = tmp_path / "ref.safetensors"
    shutil.copy(tmp_path / "ck2", ref)
    shutil.copy(tmp_path / "st2", state_path_for(ref))
    want = train(data, out=ref, resume=ref, epochs=3, device="cpu")
    assert _max_diff(_weights(want.checkpoint), _weights(res.checkpoint)) <= 1e-6
    assert not pending_state_path_for(out).exists()
    _, smeta = load_training_state(state_path_for(out))
    assert smeta["state_token"] == load_checkpoint(out)[1]["state_token"]


def test_kill_between_state_and_checkpoint_uses_the_old_pair(data, straight, tmp_path):
    """Old checkpoint + old state + a pending state of a checkpoint never written."""
    out = _two_states(data, tmp_path)
    shutil.copy(tmp_path / "ck1", out)
    shutil.copy(tmp_path / "st1", state_path_for(out))
    shutil.copy(tmp_path / "st2", pending_state_path_for(out))
    seen: list[dict] = []
    train(data, out=out, resume=out, epochs=2, device="cpu", events=seen.append)
    assert not any(e["event"] == "note" and "afresh" in e["message"] for e in seen)
    assert _max_diff(_weights(straight.checkpoint), _weights(out)) <= 1e-6
    assert not pending_state_path_for(out).exists()


def test_orphan_temporaries_removed_when_a_run_starts(data, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphans = [
        tmp_path / f".b.safetensors.{dead.pid}-0123456789ab.tmp",
        tmp_path / ".b.state.safetensors.0123456789ab.tmp",  # older naming, no pid
        tmp_path / f".other.npz.{dead.pid}-aaaaaaaaaaaa.tmp",
    ]
    for p in orphans:
        p.write_bytes(b"half a file")
    live = tmp_path / f".b.safetensors.{1 if sys.platform != 'win32' else 4}-bbbbbbbbbbbb.tmp"
    live.write_bytes(b"pid 1 is alive: its write is still going on")
    keep = tmp_path / "notes.tmp"
    keep.write_text("not ours")
    train(data, "cb3d", out=tmp_path / "b.safetensors", epochs=1, **KW)
    assert not any(p.exists() for p in orphans)
    assert live.exists() and keep.exists()


def test_non_finite_training_data_refused_with_counts(data, tmp_path):
    vol = np.array(data.volumes, copy=True)
    vol[3, 0, 0, :2] = np.nan
    vol[7, 1, 2, 3] = np.inf
    ds = SubtomogramDataset(volumes=vol, labels=data.labels, class_names=data.class_names)
    seen: list[dict] = []
    with pytest.raises(CryoGuardError, match=r"3 NaN or infinite voxels in 2 of 16 cubes "
                                             r"\(first: 3, 7\)"):
        train(ds, "cb3d", out=tmp_path / "m.safetensors", epochs=1, events=seen.append, **KW)
    assert not any(e["event"] == "step" for e in seen)
    assert not (tmp_path / "m.safetensors").exists()


def test_output_folder_refused_before_training(data, tmp_path):
    (tmp_path / "out.safetensors").mkdir()
    seen: list[dict] = []
    with pytest.raises(CryoGuardError, match="is a folder"):
        train(data, "cb3d", out=tmp_path / "out.safetensors", epochs=1, events=seen.append,
              **KW)
    assert [e["event"] for e in seen] == ["error"]  # no start, no step


def test_cli_resume_takes_data_and_recipe_from_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run.safetensors"
    spec = "n_per_class=6,cube=16,snr=1,seed=2,classes=1bxn+6pxm"
    args = ["--simulate", spec, "--tiny", "--epochs", "1", "--batch-size", "4", "--lr", "0.002",
            "--device", "cpu", "--out", str(out), "--quiet"]
    assert train_main(args) == 0
    capsys.readouterr()
    assert train_main(["--resume", str(out), "--epochs", "2", "--device", "cpu", "--quiet",
                       "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["epochs"] == 2 and summary["epochs_run"] == 1
    meta = load_checkpoint(out)[1]
    assert meta["training"]["lr"] == pytest.approx(0.002)
    assert meta["training"]["dataset"]["simulated"]["n_per_class"] == 6
    # a dataset given as a file is found again by its stored path; a vanished one is named
    from napari_cryoguard.data import save_dataset
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = simulate_subtomograms(6, classes=["1bxn", "6pxm"], cube=16, snr=1.0, seed=2)
    npz = save_dataset(tmp_path / "d.npz", SubtomogramDataset(
        volumes=sim.volumes, labels=sim.labels, class_names=sim.class_names))
    out2 = tmp_path / "run2.safetensors"
    assert train_main(["--data", str(npz), "--tiny", "--epochs", "1", "--batch-size", "4",
                       "--device", "cpu", "--out", str(out2), "--quiet"]) == 0
    assert train_main(["--resume", str(out2), "--epochs", "2", "--device", "cpu",
                       "--quiet"]) == 0
    assert len(load_checkpoint(out2)[1]["history"]) == 2
    npz.unlink()
    capsys.readouterr()
    assert train_main(["--resume", str(out2), "--epochs", "3", "--device", "cpu"]) == 2
    assert "no longer there" in capsys.readouterr().err


def test_state_file_holds_the_generators(data, tmp_path):
    out = tmp_path / "c.safetensors"
    train(data, "cb3d", out=out, epochs=1, cancel=_cancel_after(1), **KW)
    tensors, smeta = load_training_state(state_path_for(out))
    assert tensors["rng.torch"].dtype == torch.uint8 and len(tensors["rng.numpy"]) == 624
    assert smeta["rng"]["numpy"]["kind"] == "MT19937"
    meta = load_checkpoint(out)[1]
    assert meta["partial_epoch"]["count"] == 4.0  # one step of batch 4
    assert smeta["state_token"] == meta["state_token"]


def test_resume_of_an_early_stopped_run_trains_nothing_more(data, tmp_path):
    """A run killed after its final (early-stopped) write is complete: --resume keeps it."""
    out = tmp_path / "e.safetensors"
    first = train(data, "cb3d", "standard", out=out, epochs=12, patience=1, lr=3e-3,
                  batch_size=4, device="cpu", model_params=tiny_params("cb3d"))
    assert first.stopped_early and len(first.history) < 12
    before = _weights(out)
    seen: list[dict] = []
    again = train(data, out=out, resume=out, device="cpu", events=seen.append)
    assert again.epochs_run == 0 and again.stopped_early
    assert len(again.history) == len(first.history)
    assert _max_diff(before, _weights(out)) == 0.0
    assert any("stopped early" in e.get("message", "") for e in seen if e["event"] == "note")


@pytest.mark.parametrize("field, value", [("history", "x"), ("history", [1, 2]), ("epoch", -1),
                                          ("epoch", "2"), ("defense", 5), ("training", "x"),
                                          ("partial_epoch", [1]), ("step_in_epoch", 1.5)])
def test_resume_of_a_checkpoint_with_wrong_training_fields_is_one_error(data, tmp_path, capsys,
                                                                       field, value):
    """Found by the hostile-input probe: `--resume` of a checkpoint whose history was
    the string "x" ended in ValueError (dict update sequence) with a traceback."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run.safetensors"
    train(data, "cb3d", "standard", out=out, epochs=1, **KW)
    with safe_open(str(out), framework="pt") as f:
        header = dict(f.metadata())
    meta = json.loads(header["cryoguard"])
    meta[field] = value
    header["cryoguard"] = json.dumps(meta)
    save_file(load_file(str(out)), str(out), metadata=header)
    with pytest.raises(CryoGuardError, match=f"'{field}'"):
        train(data, "cb3d", "standard", out=out, epochs=2, resume=out, **KW)
    capsys.readouterr()
    assert train_main(["--resume", str(out), "--data", "unused.npz", "--epochs", "2",
                       "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("cryoguard train: error:") and field in last


def test_full_disk_while_writing_the_state_file_is_one_error(data, tmp_path, monkeypatch):
    """Found by the hostile-input probe (`cryoguard train` on a full 1 MiB tmpfs): the
    state file went through safetensors' save_file, whose SafetensorError is no OSError,
    so the run ended in a traceback. Both writers are made to fail here: the state file
    must be written by the package's own writer and its ENOSPC reported in one line."""
    import errno

    import safetensors.torch

    from napari_cryoguard.defenses import state as state_module

    def no_save_file(*args, **kwargs):
        raise RuntimeError("safetensors' save_file must not be used (its errors are no OSError)")

    real_open = open

    def full_disk_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".tmp"):
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    monkeypatch.setattr(safetensors.torch, "save_file", no_save_file)
    monkeypatch.setattr(state_module, "open", full_disk_open, raising=False)
    out = tmp_path / "run.safetensors"
    with pytest.raises(CryoGuardError, match="cannot write the checkpoint .*No space left"):
        train(data, "cb3d", "standard", out=out, epochs=1, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
