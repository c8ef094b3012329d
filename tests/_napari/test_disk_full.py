"""Disk full under the widgets that write files (issue 11, item 3), docked from the manifest.

The disk is filled by a patched ``open``: every open for writing of a file inside the
chosen folder raises ``OSError(ENOSPC)``, as a full file system does for the package's
own writers (the temporary file of an atomic write, a dataset, a JSON file, a plot).
A real read-only or full mount cannot be made here (the tests run as root, without mount
rights). For each of Train (its run folder: dataset and command), Evaluate (its output
folder) and the writer plugin (a picks file saved through napari): the error is one
line naming the path (the plugin's own sentence, no traceback), an older file in the
folder is kept byte for byte, and no temporary file is left behind.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder)``: from now on, writing a file inside ``folder`` hits ENOSPC."""
    real = io.open
    folders: list[Path] = []

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and any(c in mode for c in "wax+"):
            path = Path(os.fsdecode(file)).absolute()
            if any(f == path or f in path.parents for f in folders):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    return lambda folder: folders.append(Path(folder).absolute())


def _shown_errors(monkeypatch) -> list[str]:
    import napari.utils.notifications as nt

    seen: list[str] = []
    real = nt.show_error
    monkeypatch.setattr(nt, "show_error", lambda msg: (seen.append(str(msg)), real(msg)))
    return seen


def _left_over(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _older_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    older = folder / "older-result.json"
    older.write_text('{"kept": true}\n')
    return older


def _one_line_naming(messages: list[str], folder: Path) -> str:
    assert messages, "no notification"
    text = messages[-1]
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert str(folder) in text and "No space left on device" in text, text
    return text


def test_train_with_a_full_disk_is_one_notification_and_leaves_nothing(
    docked, tmp_path, monkeypatch, full_disk
):
    """The run folder's command cannot be written: nothing starts."""
    runs = tmp_path / "full" / "runs"
    older = _older_file(runs)
    w = docked.dock("Train")
    w.runs_dir = runs
    w.model.value = "cb3d"
    w.size.value = "tiny (quick check)"
    w.epochs.value = 1
    w.device.value = "cpu"
    w.source.value = "simulated dataset"
    w.per_class.value = 4
    w.cube.value = 20
    seen = _shown_errors(monkeypatch)
    full_disk(runs)
    docked.click(w, "Start training")
    docked.wait_idle(w)
    _one_line_naming(seen, runs)
    assert w.info.value.startswith("error"), w.info.value
    assert not w.runs
    assert older.read_text() == '{"kept": true}\n'
    assert not _left_over(runs)
    # an interrupted start leaves no half-made run folder behind
    assert sorted(p.name for p in runs.iterdir()) == ["older-result.json"]


def test_evaluate_with_a_full_disk_is_one_notification_and_leaves_nothing(
    docked, sampled, runs_dir, tmp_path, monkeypatch, full_disk
):
    """The evaluation's output folder (state, metrics, plots) cannot be written."""
    import torch

    from napari_cryoguard._napari._models import FILE_CHOICE
    from napari_cryoguard._napari._picks import set_picks_layer
    from napari_cryoguard.models import build_model, save_checkpoint, tiny_params
    from napari_cryoguard.picking import extract_subtomograms, pick_particles

    classes = ["1bxn", "3j9i", "6pxm", "1u6g", "1qvr"]
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "models" / "tiny.safetensors",
        build_model("cb3d", 5, cube=28, **tiny_params("cb3d")),
        {"class_names": classes},
    )
    image = sampled.tomogram
    picks = pick_particles(np.asarray(image.data), sigma1=7.0, k=1.1)
    set_picks_layer(docked.viewer, picks, image)
    sub = extract_subtomograms(np.asarray(image.data), picks.coords, size=28)
    docked.viewer.add_image(
        sub.volumes,
        name="subtomograms",
        scale=(1.0, *image.scale[-3:]),
        metadata={
            "index": np.asarray(sub.index),
            "normalized": sub.normalized,
            "voxel_size": 10.0,
            "tomogram": image.name,
        },
    )
    older = _older_file(runs_dir)
    ev = docked.dock("Evaluate")
    ev.picker.model.value = FILE_CHOICE
    ev.picker.checkpoint.value = ckpt
    ev.add_button.clicked()
    ev.labels.combo.reset_choices()
    seen = _shown_errors(monkeypatch)
    full_disk(runs_dir)
    ev.settings.set_expanded(True)
    ev.device.value = "cpu"
    docked.click(ev, "Evaluate")
    docked.wait_idle(ev, timeout=400)
    assert ev.metrics is None
    _one_line_naming(seen, runs_dir)
    assert str(runs_dir) in ev.status.value and "Traceback" not in ev.status.value
    assert older.read_text() == '{"kept": true}\n'
    assert not _left_over(runs_dir)
    assert not getattr(ev, "_busy", False)


@pytest.mark.parametrize("suffix", [".star", ".csv"])
def test_writer_plugin_with_a_full_disk_keeps_the_older_file(viewer, tmp_path, full_disk, suffix):
    """Saving a points layer through napari onto a full disk: the plugin's error names the
    file, the file saved before is intact and no temporary file is left."""
    from napari_cryoguard.errors import CryoGuardError

    layer = viewer.add_points(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), name="picks")
    target = tmp_path / "out" / f"picks{suffix}"
    target.parent.mkdir()
    layer.save(str(target), plugin="napari-cryoguard")
    before = target.read_bytes()
    layer.data = np.array([[7.0, 8.0, 9.0]])
    full_disk(target.parent)
    with pytest.raises(Exception) as info:  # noqa: PT011 - napari may wrap the plugin's error
        layer.save(str(target), plugin="napari-cryoguard")
    err = info.value
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    assert any(isinstance(e, CryoGuardError) for e in chain), repr(err)
    text = str(next(e for e in chain if isinstance(e, CryoGuardError)))
    assert "\n" not in text and str(target.parent) in text and "No space" in text, text
    assert target.read_bytes() == before
    assert not _left_over(target.parent)


# Loaded by the training process through PYTHONPATH: its checkpoint writes hit ENOSPC.
_CHILD_FULL = """
import builtins, errno, io, os
_real = io.open
def _open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        path = os.path.abspath(os.fsdecode(file))
        if "model.safetensors" in os.path.basename(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return _real(file, mode, *args, **kwargs)
builtins.open = io.open = _open
"""


def test_train_run_whose_disk_fills_up_ends_in_one_notification(docked, tmp_path, monkeypatch):
    """The training process itself cannot write its checkpoint (the disk filled up after
    the start): the run ends as an error, shown as one notification naming the
    checkpoint, and no temporary or pending state file is left in the run folder."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_CHILD_FULL)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    runs = tmp_path / "runs2"
    w = docked.dock("Train")
    w.runs_dir = runs
    w.source.value = "simulated dataset"
    w.per_class.value = 4
    w.cube.value = 20
    w.model.value = "cb3d"
    w.size.value = "tiny (quick check)"
    w.epochs.value = 1
    w.batch_size.value = 4
    w.device.value = "cpu"
    seen = _shown_errors(monkeypatch)
    docked.click(w, "Start training")
    docked.wait_idle(w)
    assert len(w.runs) == 1, w.info.value
    run = next(iter(w.runs.values()))
    docked.qtbot.waitUntil(lambda: run.status != "running", timeout=240_000)
    w.refresh()
    assert run.status == "error", (run.status, run.message)
    text = _one_line_naming(seen, run.folder)
    assert "model.safetensors" in text, text
    left = [
        p.name
        for p in run.folder.iterdir()
        if p.name.endswith(".tmp") or "pending" in p.name or p.name.startswith("model.")
    ]
    assert not left, left
