"""TrainRun: what a background training run's events say (progress, ETA, a true state)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.runs import TrainRun, train_command


def _run(tmp_path, **kw) -> TrainRun:
    return TrainRun.create(tmp_path, label="t", simulate={"n_per_class": 4}, epochs=2, **kw)


def _write(run, *events):
    with open(run.events_path, "a", encoding="utf-8") as fh:
        for ev in events:
            fh.write(json.dumps(ev) + "\n")


def _start(t=100.0, n_train=8, batch=4, epochs=2):
    return {"event": "start", "time": t,
            "config": {"n_train": n_train, "world_size": 1, "start_epoch": 0,
                       "recipe": {"epochs": epochs, "batch_size": batch}}}


def _step(t, epoch, step, loss=1.0, spe=2, epochs=2):
    return {"event": "step", "time": t, "epoch": epoch, "step": step,
            "steps_per_epoch": spe, "epochs": epochs, "loss": loss}


def test_command_options_for_the_gui(tmp_path):
    argv = train_command(simulate={"n_per_class": 4}, out="m.safetensors", events="e.jsonl",
                         step_interval=0, save_state=False)
    assert argv[argv.index("--step-interval") + 1] == "0.0" and "--no-state" in argv
    assert "--no-state" not in train_command(simulate={}, out="m", events="e")
    with pytest.raises(CryoGuardError):
        train_command(out="m", events="e")


def test_progress_eta_and_loss_per_step_from_events(tmp_path):
    run = _run(tmp_path)
    run.status = "running"
    _write(run, _start())
    run.poll()
    assert run.total_steps == 4 and run.fraction == 0 and run.eta_seconds is None
    assert "first step" in run.state_line()
    v = run.version
    run.poll()
    assert run.version == v  # nothing new: nothing to redraw
    _write(run, _step(102.0, 1, 1, 0.9))
    run.poll()
    assert run.version > v
    assert run.fraction == pytest.approx(0.25)
    assert run.eta_seconds == pytest.approx(6.0)  # 2 s per step, 3 steps left
    _write(run, _step(103.0, 1, 2, 0.8),
           {"event": "epoch", "time": 104.0, "epoch": 1, "epochs": 2,
            "metrics": {"train_loss": 0.85, "val_loss": 0.7, "val_acc": 0.5}})
    run.poll()
    assert run.eta_seconds == pytest.approx(4.0)  # the evaluation time counts: 2 s per step
    _write(run, _step(104.5, 2, 1, 0.6))
    run.poll()
    assert run.eta_seconds == pytest.approx(4.5 / 3)  # it changes as the steps go
    assert run.loss_series() == ([1, 2, 3], [0.9, 0.8, 0.6])
    assert run.series("val_loss") == ([1], [0.7])
    assert run.state_line().startswith("running: epoch 2/2, step 1/2, ETA")


def test_cancel_then_a_true_final_line(tmp_path):
    run = _run(tmp_path)
    # a process that stays alive until told to stop
    run.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run.status = "running"
    _write(run, _start(), _step(101.0, 1, 1))
    run.poll()
    run.cancel()
    assert "cancelling after this step" in run.state_line()
    _write(run, {"event": "cancelled", "time": 102.0, "path": str(run.out_path),
                 "epoch": 1, "step": 2})
    run.process.wait(timeout=30)
    run.poll()
    assert run.status == "cancelled"
    assert run.state_line() == "cancelled at epoch 1/2, step 2/2; checkpoint model.safetensors"


def test_a_process_that_dies_is_failed_not_running(tmp_path):
    run = _run(tmp_path)
    run.process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    run.status = "running"
    run.process.wait(timeout=30)
    run.poll()
    assert run.status == "failed" and "status 3" in run.state_line()


def test_set_data_rewrites_the_command(tmp_path):
    run = TrainRun.create(tmp_path, label="d", data="pending", epochs=1)
    run.set_data(tmp_path / "x.npz")
    assert run.data_path == tmp_path / "x.npz"
    assert str(tmp_path / "x.npz") in json.loads((run.folder / "command.json").read_text())
    with pytest.raises(CryoGuardError):
        _run(tmp_path).set_data("x.npz")


def test_relative_runs_dir_gives_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRYOGUARD_RUNS_DIR", "rel/runs")
    run = TrainRun.create(label="r", data="d.npz", epochs=1)
    assert run.folder.is_absolute() and run.folder.parent == tmp_path / "rel" / "runs"
    argv = json.loads((run.folder / "command.json").read_text())
    for opt in ("--out", "--events", "--data"):
        assert Path(argv[argv.index(opt) + 1]).is_absolute()
    assert argv[argv.index("--data") + 1] == str(tmp_path / "d.npz")


def test_command_json_is_what_ran_and_pending_data_is_refused(tmp_path, monkeypatch):
    run = TrainRun.create(tmp_path, label="p", data="pending", epochs=1)
    with pytest.raises(CryoGuardError, match="no dataset file yet"):
        run.start()
    assert run.process is None
    seen = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen["cmd"], seen["kw"] = cmd, kw
            self.pid = 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    run.set_data(tmp_path / "data.npz")
    run.start()
    written = json.loads((run.folder / "command.json").read_text())
    assert "pending" not in written and written == run.argv
    assert seen["cmd"][-len(written):] == written
    assert seen["cmd"][1] in ("-P", "-I") and seen["kw"]["cwd"] == run.folder


def test_poll_skips_unknown_lines_and_paths_outside_the_folder(tmp_path):
    run = _run(tmp_path)
    run.status = "running"
    with open(run.events_path, "w", encoding="utf-8") as fh:
        fh.write("[1, 2]\n42\n\"text\"\nnot json\n")
        fh.write(json.dumps({"event": "start", "config": "oops"}) + "\n")
        fh.write(json.dumps({"event": "step", "epoch": {"x": 1}, "step": []}) + "\n")
        fh.write(json.dumps({"event": "checkpoint", "path": "../../../etc/passwd"}) + "\n")
        fh.write(json.dumps({"event": "checkpoint", "path": "/etc/passwd"}) + "\n")
        fh.write(json.dumps({"event": "checkpoint", "path": 7}) + "\n")
        fh.write(json.dumps({"event": "whatever", "path": "x"}) + "\n")
    run.poll()
    assert run.checkpoint is None and run.config == {}
    _write(run, {"event": "checkpoint", "path": str(run.out_path), "epoch": 1},
           {"event": "done", "path": "../../../etc/passwd"})
    run.poll()
    assert run.status == "done" and run.checkpoint == run.out_path
    assert "done" in run.state_line()


def test_a_module_in_the_run_folder_is_not_imported(tmp_path):
    run = TrainRun.create(tmp_path, label="s", data=str(tmp_path / "missing.npz"), epochs=1,
                          device="cpu")
    marker = tmp_path / "shadowed"
    (run.folder / "numpy.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(7)\n")
    (run.folder / "napari_cryoguard.py").write_text("raise SystemExit(8)\n")
    run.start()
    status = run.wait(timeout=120)
    assert not marker.exists()
    # the real package ran: the missing dataset is its clear error, exit 2
    assert run.process.returncode == 2 and status == "error"
    assert "missing.npz" in run.message


@pytest.mark.parametrize("accs, warned", [([0.2, 0.22, 0.2], True), ([0.2, 0.3, 0.5], False)])
def test_done_line_warns_when_accuracy_stays_at_chance(tmp_path, accs, warned):
    run = _run(tmp_path)
    run.status = "done"
    run.config = {"n_val": 50, "dataset": {"num_classes": 5}}
    run.history = [{"epoch": i + 1, "val_acc": a} for i, a in enumerate(accs)]
    line = run.state_line()
    assert line.startswith(f"done: 3 epoch(s), validation accuracy {accs[-1]:.3f} on 50")
    assert ("never rose above chance (0.20 for 5 classes)" in line) is warned
    run.config = {"n_val": 50}  # the number of classes unknown: no claim either way
    assert "chance" not in run.state_line()


def test_command_starts_from_a_checkpoint(tmp_path):
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.runs import train_command

    ckpt = tmp_path / "m.safetensors"
    argv = train_command(simulate={"n_per_class": 2}, out=tmp_path / "o.safetensors",
                         events=tmp_path / "e.jsonl", init=ckpt)
    assert argv[argv.index("--init") + 1] == str(ckpt.absolute())
    assert "--init" not in train_command(simulate={"n_per_class": 2}, out="o", events="e")
    with pytest.raises(CryoGuardError, match="takes its model from it"):
        train_command(simulate={"n_per_class": 2}, out="o", events="e", init=ckpt,
                      model_params={"dropout": 0.1})
