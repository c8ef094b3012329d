"""`cryoguard evaluate`: the JSON summary, user errors, `--help` in a fresh process, and
the parser's suite names agreeing with the suites'."""

from __future__ import annotations

import json
import subprocess
import sys

from napari_cryoguard.cli.evaluate import SUITES
from napari_cryoguard.cli.evaluate import main as evaluate_main


def test_suite_choices_are_the_suites():
    from napari_cryoguard.evaluate import suite

    assert SUITES == suite.SUITES


def test_cli_json_summary_and_errors(tiny_checkpoint, test_npz, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = evaluate_main(
        [
            str(tiny_checkpoint),
            "--data",
            str(test_npz),
            "--out",
            str(out),
            "--attack",
            "fgsm@0.01,0.03",
            "--attack",
            "pgd@0.03:steps=2,label=PGD-2",
            "--max-samples",
            "6",
            "--no-margins",
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["ok"] and summary["command"] == "evaluate"
    assert set(summary["models"]) == {"tiny"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]["tiny"]["attacks"]) == {"fgsm", "PGD-2"}

    rc = evaluate_main(
        [
            str(tmp_path / "missing.safetensors"),
            "--data",
            str(test_npz),
            "--out",
            str(out),
            "--json",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2
    assert "cryoguard evaluate: error:" in captured.err
    assert json.loads(captured.out.strip())["ok"] is False

    rc = evaluate_main(
        [
            str(tiny_checkpoint),
            "--data",
            str(test_npz),
            "--out",
            str(out),
            "--attack",
            "nosuchattack@0.1",
            "--quiet",
        ]
    )
    assert rc == 2 and "unknown attack" in capsys.readouterr().err


def test_runnable_as_module_with_help():
    res = subprocess.run(
        [sys.executable, "-m", "napari_cryoguard.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0
    for opt in ("--data", "--attack", "--quick", "--max-samples", "--no-resume", "--json"):
        assert opt in res.stdout
