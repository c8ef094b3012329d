"""SIGKILL at random points while the package writes its files (issue 11, item 9).

A child process rewrites one target over and over, each version distinguishable by its
content; the test kills it with SIGKILL after a random (seeded) delay, many times per
kind of file. After every kill the target is either absent (killed before the first
version landed) or one complete version that reads back without error, never a torn
file; the temporary files a kill leaves behind belong to a dead process and
``remove_orphans`` deletes every one of them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cryoguard._atomic import remove_orphans

KILLS_PER_KIND = 8

# Each child writes version i = 0, 1, 2, ... of its target forever; "ready" once imported.
_CHILD = {
    "dataset": """
import sys, numpy as np
from napari_cryoguard.data import save_dataset
target = sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    v = np.full((64, 16, 16, 16), float(i), np.float32)
    save_dataset(target, volumes=v, labels=np.full(64, i % 3), class_names=["a", "b", "c"])
    i += 1
""",
    "star": """
import sys, numpy as np
from napari_cryoguard.io import Picks, write_picks
target = sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    n = 2000
    coords = np.full((n, 3), float(i))
    write_picks(target, Picks(coords=coords, voxel_size=10.0, tomo_names=np.array(["t"] * n)))
    i += 1
""",
    "checkpoint": """
import sys, torch
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params
target = sys.argv[1]
model = build_model("cb3d", 3, cube=16, **tiny_params("cb3d"))
print("ready", flush=True)
i = 0
while True:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(i))
    save_checkpoint(target, model, {"class_names": ["a", "b", "c"]})
    i += 1
""",
}


def _check_dataset(path: Path) -> int:
    from napari_cryoguard.data import load_dataset

    ds = load_dataset(path)
    values = np.unique(ds.volumes)
    assert values.size == 1 and ds.volumes.shape == (64, 16, 16, 16)
    i = int(values[0])
    assert (ds.labels == i % 3).all()
    return i


def _check_star(path: Path) -> int:
    from napari_cryoguard.io import read_picks

    picks = read_picks(path)
    values = np.unique(picks.coords)
    assert len(picks) == 2000 and values.size == 1
    return int(values[0])


def _check_checkpoint(path: Path) -> int:
    from napari_cryoguard.models import load_checkpoint

    model, meta = load_checkpoint(path)[:2]
    values = {float(p.detach().flatten()[0]) for p in model.parameters()}
    assert len(values) == 1 and meta["class_names"] == ["a", "b", "c"]
    return int(values.pop())


_CHECK = {"dataset": ("ds.npz", _check_dataset), "star": ("picks.star", _check_star),
          "checkpoint": ("m.safetensors", _check_checkpoint)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(_CHILD))
def test_8_random_kills_per_file_kind_leave_a_complete_file_and_removable_orphans(tmp_path, kind):
    name, check = _CHECK[kind]
    target = tmp_path / name
    rng = random.Random(f"kill-{kind}")
    versions_seen = []
    orphans_total = 0
    for _ in range(KILLS_PER_KIND):
        child = subprocess.Popen([sys.executable, "-c", _CHILD[kind], str(target)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.6))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
        if target.exists():
            versions_seen.append(check(target))  # complete and readable, never torn
        leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        removed = remove_orphans(tmp_path)
        orphans_total += len(removed)
        assert sorted(removed) == sorted(leftovers)
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert not [p for p in tmp_path.iterdir() if p != target]
    # the kills landed at different points: several versions were completed and read back
    assert len(versions_seen) >= KILLS_PER_KIND // 2
    print(f"{kind}: versions {versions_seen}, orphans removed {orphans_total}")
