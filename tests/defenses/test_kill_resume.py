"""SIGKILL a real ``cryoguard train`` at random moments, resume each time (issue 11, item 9).

One uninterrupted command-line run (tiny CB3D with dropout, 12 simulated cubes of 16^3,
batch 4, 6 epochs of 3 steps, a checkpoint and its state written after every epoch) is
the reference. The same command is then started, killed with SIGKILL at a seeded random
moment, and started again with ``--resume`` (or afresh when the kill came before the
first checkpoint), 6 kills planned (at least 4 must land before the run is done): 3 at a random event plus a random delay of up to 50 ms, 3 within
20 ms of an ``epoch`` event, which is when the state file and the checkpoint are being
written. After every kill the checkpoint on disk has its optimizer state (the state
file or the pending one carries its token); no resumed run starts its optimizer afresh;
the final weights equal the reference's to 1e-6; no temporary or pending file is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_cryoguard.defenses.state import (
    load_training_state,
    pending_state_path_for,
    state_path_for,
)
from napari_cryoguard.models import load_checkpoint

KILLS = 6
EPOCHS = 6
SPEC = "n_per_class=6,cube=16,snr=1,seed=2,classes=1bxn+6pxm"


def _command(out: Path, *, resume: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "napari_cryoguard.cli",
        "train",
        "--device",
        "cpu",
        "--events",
        "-",
        "--step-interval",
        "0",
        "--quiet",
    ]
    if resume:
        return [*cmd, "--resume", str(out)]
    return [
        *cmd,
        "--simulate",
        SPEC,
        "--tiny",
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "4",
        "--lr",
        "0.002",
        "--out",
        str(out),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _run(out: Path, *, resume: bool, kill=None) -> tuple[list[dict], int | None]:
    """Run the command; ``kill(event) -> delay or None`` picks the moment of a SIGKILL.

    Returns the events read and the exit status (None when killed).
    """
    child = subprocess.Popen(
        _command(out, resume=resume),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    events: list[dict] = []
    killed = False
    try:
        for line in child.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            events.append(event)
            delay = kill(event) if kill is not None else None
            if delay is not None:
                time.sleep(delay)
                os.kill(child.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        if not killed and child.poll() is None:
            child.wait(timeout=300)
        child.wait(timeout=60)
        child.stdout.close()
    return events, None if killed else child.returncode


def _state_token(path: Path) -> str | None:
    return load_training_state(path)[1].get("state_token") if path.is_file() else None


@pytest.mark.slow
def test_6_random_sigkills_during_training_then_resume_equal_the_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref" / "m.safetensors"
    events, rc = _run(ref, resume=False)
    assert rc == 0, events[-1:]
    want = load_checkpoint(ref)[0].state_dict()
    total = len(events)

    out = tmp_path / "killed" / "m.safetensors"
    rng = random.Random("kill-resume")
    plans = ["random", "write"] * (KILLS // 2)
    kinds_hit: list[str] = []
    runs = 0
    for plan in plans:
        if plan == "random":  # within this run's first ~1.5 epochs (5 events an epoch)
            target, after = rng.randrange(1, min(total, 9)), rng.uniform(0.0, 0.05)

            def kill(event, _seen=[0], target=target, after=after):  # noqa: B006
                _seen[0] += 1
                return after if _seen[0] >= target else None
        else:  # at this run's first epoch end: the state and checkpoint writes follow
            soon = rng.uniform(0.0, 0.02)

            def kill(event, soon=soon):
                return soon if event["event"] == "epoch" else None

        resume = out.is_file()
        events, rc = _run(out, resume=resume, kill=kill)
        runs += 1
        notes = [e.get("message", "") for e in events if e["event"] == "note"]
        assert not [m for m in notes if "afresh" in m or "does not belong" in m], notes
        if rc is not None:  # finished before the planned moment
            assert rc == 0
            kinds_hit.append("finished")
            break
        kinds_hit.append(f"{plan}@{events[-1]['event']}")
        if out.is_file():  # the checkpoint on disk always has its optimizer state
            token = load_checkpoint(out)[1]["state_token"]
            assert token in {
                _state_token(state_path_for(out)),
                _state_token(pending_state_path_for(out)),
            }
    if "finished" not in kinds_hit:
        events, rc = _run(out, resume=out.is_file())
        runs += 1
        assert rc == 0, events[-1:]
        notes = [e.get("message", "") for e in events if e["event"] == "note"]
        assert not [m for m in notes if "afresh" in m or "does not belong" in m], notes

    model, meta = load_checkpoint(out)
    got = model.state_dict()
    assert list(got) == list(want)
    diff = max((got[k].double() - want[k].double()).abs().max().item() for k in got)
    assert diff <= 1e-6, (diff, kinds_hit)
    assert len(meta["history"]) == EPOCHS and not meta["cancelled"]
    left = [
        p.name
        for p in out.parent.iterdir()
        if p.name.endswith(".tmp") or p.name.endswith(".pending.safetensors")
    ]
    assert not left, left
    assert _state_token(state_path_for(out)) == meta["state_token"]
    assert len([k for k in kinds_hit if k != "finished"]) >= 4, kinds_hit
    print(f"kills: {kinds_hit}; {runs} runs; max weight difference {diff:.2e}")
