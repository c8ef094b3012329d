"""Mid-epoch resume under DDP is exact on every rank (2 CPU processes, gloo).

Each rank's dropout stream differs (seeded by rank), so a resume that restored only rank
0's generators would drift. Two processes train a tiny CB3D (dropout 0.5) on 16 cubes of
16^3, batch 4 (13 training rows: 7 per rank, 2 steps per epoch) for 2 epochs; the same
run is cancelled after its 3rd step (mid epoch 2) and resumed with the same 2
processes. The resumed weights equal the uninterrupted run's to 1e-6.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from napari_cryoguard.defenses.state import load_training_state, state_path_for
from napari_cryoguard.models import load_checkpoint

_RANK = """
import sys, warnings
from napari_cryoguard.defenses import train
from napari_cryoguard.models import tiny_params
from napari_cryoguard.simulate import simulate_subtomograms

out, mode = sys.argv[1], sys.argv[2]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = simulate_subtomograms(8, classes=["1bxn", "6pxm"], cube=16, snr=1.0, seed=3)
calls = [0]

def cancel():
    calls[0] += 1
    return mode == "cancel" and calls[0] >= 3

if mode == "resume":
    res = train(data, out=out, resume=out, device="cpu")
else:
    res = train(data, "cb3d", "standard", out=out, epochs=2, cancel=cancel, lr=1e-3,
                batch_size=4, device="cpu", model_params=tiny_params("cb3d"))
print("cancelled" if res.cancelled else "done", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(out: Path, mode: str) -> list[str]:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
            PYTHONWARNINGS="ignore",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK, str(out), mode],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    said = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        said.append(stdout.strip().splitlines()[-1])
    return said


@pytest.mark.slow
def test_ddp_mid_epoch_resume_equals_the_uninterrupted_run_on_every_rank(tmp_path):
    ref = tmp_path / "ref.safetensors"
    assert _two_ranks(ref, "straight") == ["done", "done"]
    out = tmp_path / "run.safetensors"
    assert _two_ranks(out, "cancel") == ["cancelled", "cancelled"]
    meta = load_checkpoint(out)[1]
    assert meta["cancelled"] and meta["epoch"] == 1 and meta["step_in_epoch"] == 1
    tensors, smeta = load_training_state(state_path_for(out))
    assert smeta["world_size"] == 2 and "rank1.rng.torch" in tensors  # both ranks' streams
    assert _two_ranks(out, "resume") == ["done", "done"]
    want, got = load_checkpoint(ref)[0].state_dict(), load_checkpoint(out)[0].state_dict()
    assert list(got) == list(want)
    diff = max((got[k].double() - want[k].double()).abs().max().item() for k in got)
    assert diff <= 1e-6, diff
    history = load_checkpoint(out)[1]["history"]
    want_history = load_checkpoint(ref)[1]["history"]
    for a, b in zip(history, want_history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
