"""``cryoguard train`` as a real process: SIGTERM cancels cleanly; DDP under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from napari_cryoguard.defenses import read_events
from napari_cryoguard.models import load_checkpoint

SIM = "n_per_class=8,snr=1.0,cube=20,seed=1,classes=1bxn+6pxm"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _wait_for(path: Path, event: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and any(e["event"] == event for e in read_events(path)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {event!r} event within {timeout} s")


def test_sigterm_cancels_cleanly_with_a_loadable_checkpoint(tmp_path):
    ev, out = tmp_path / "events.jsonl", tmp_path / "run.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "napari_cryoguard.cli",
        "train",
        "--simulate",
        SIM,
        "--model",
        "cb3d",
        "--tiny",
        "--epochs",
        "500",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--events",
        str(ev),
        "--json",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path
    )
    _wait_for(ev, "step", proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    events = read_events(ev)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "cancelled" and "done" not in kinds
    assert "error" not in kinds
    cancelled = events[-1]
    assert cancelled["path"] == str(out) and cancelled["epoch"] < 500
    model, meta = load_checkpoint(out, expect_arch="cb3d")
    assert meta["cancelled"] is True
    assert meta["epoch"] >= 1 or meta["step_in_epoch"] >= 1  # at least one step was done
    assert (tmp_path / "run.state.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["cancelled"] is True


def test_torchrun_two_cpu_processes_write_once_from_rank_0(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    ev, out = tmp_path / "events.jsonl", tmp_path / "ddp.safetensors"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "napari_cryoguard.cli",
        "train",
        "--simulate",
        SIM,
        "--model",
        "autoencoder",
        "--tiny",
        "--defense",
        "semi",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--events",
        str(ev),
        "--json",
        "--quiet",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(ev)
    kinds = [e["event"] for e in events]
    # one writer: a single start/done, one epoch and checkpoint event per epoch
    assert kinds.count("start") == 1 and kinds.count("done") == 1
    assert kinds.count("epoch") == 2 and kinds.count("checkpoint") == 2
    start = events[0]["config"]
    assert start["world_size"] == 2
    # 16 samples, 4 held out: 12 training samples, 6 per rank, 2 steps of 4 per rank
    steps = [e for e in events if e["event"] == "step"]
    assert {s["steps_per_epoch"] for s in steps} == {2}
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["ok"]
    model, meta = load_checkpoint(out, expect_arch="autoencoder")
    assert meta["training"]["world_size"] == 2 and meta["epoch"] == 2
    assert meta["training"]["n_train"] == 12
    # metrics are all-reduced over both ranks' shards: they match the whole split
    from napari_cryoguard.defenses.training_data import split_indices
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = simulate_subtomograms(8, classes=["1bxn", "6pxm"], cube=20, snr=1.0, seed=1)
    _, va = split_indices(ds.labels, 0.2, 0)
    assert len(va) == 4
    with torch.no_grad():
        logits = model(torch.from_numpy(ds.volumes[va]).unsqueeze(1))
    val_loss = F.cross_entropy(logits, torch.from_numpy(ds.labels[va])).item()
    assert meta["metrics"]["val_loss"] == pytest.approx(val_loss, rel=1e-4)
