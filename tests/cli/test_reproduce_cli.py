"""`cryoguard reproduce`: user errors and `--help` in a fresh process."""

from __future__ import annotations

from napari_cryoguard.cli.reproduce import main as reproduce_main


def test_reproduce_rejects_unknown_parts(tmp_path, capsys):
    rc = reproduce_main(["--out", str(tmp_path), "--quick", "--parts", "xz", "--quiet"])
    assert rc == 2
    assert "cryoguard reproduce: error:" in capsys.readouterr().err


def test_reproduce_runnable_as_module_with_help():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "napari_cryoguard.cli", "reproduce", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0
    for opt in ("--quick", "--parts", "--out", "--json", "--no-resume", "--seed", "--device"):
        assert opt in res.stdout
