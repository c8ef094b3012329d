"""Atomic output: all or nothing, ordinary permissions."""

from __future__ import annotations

import os

import pytest

from napari_cryoguard._atomic import atomic_output


def test_replaces_only_on_success_and_cleans_up(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "sub" / "g.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "g.bin").stat().st_mode & 0o777 == 0o644


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphans_of_killed_writes_are_removed_live_ones_kept(tmp_path):
    from napari_cryoguard._atomic import remove_orphans

    dead = _dead_pid()
    own = tmp_path / f".f.bin.{dead}-0123456789ab.tmp"
    old_style = tmp_path / ".f.bin.0123456789ab.tmp"
    other = tmp_path / f".g.bin.{dead}-0123456789ab.tmp"
    live = tmp_path / f".f.bin.{os.getpid()}-0123456789ab.tmp"
    unrelated = tmp_path / "f.bin.tmp"
    for p in (own, old_style, other, live, unrelated):
        p.write_bytes(b"x")
    with atomic_output(tmp_path / "f.bin") as tmp:  # cleans its own target's orphans
        tmp.write_bytes(b"new")
    assert not own.exists() and not old_style.exists()
    assert other.exists() and live.exists() and unrelated.exists()
    assert remove_orphans(tmp_path) == [other]  # a whole folder, still sparing the living
    assert live.exists() and unrelated.exists()
    assert remove_orphans(tmp_path / "missing") == []


def test_checkpoints_follow_the_umask(tmp_path):
    from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

    old = os.umask(0o027)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors",
                               build_model("cb3d", 2, 16, **tiny_params("cb3d")))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
