"""Start-up (issue 14 item 5): help and the torch-free imports do not pay for torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CRYOGUARD = str(Path(sys.executable).with_name("cryoguard"))

# Every command: their help is built without torch.
COMMANDS = ["simulate", "simulate-dataset", "pick", "extract", "classify", "attack", "attacks", "merge",
            "models", "templates", "demo", "train", "evaluate", "reproduce"]

_PROBE = """
import sys
{body}
print("TORCH", "torch" in sys.modules)
"""


def _torch_loaded(body: str) -> bool:
    res = subprocess.run([sys.executable, "-c", _PROBE.format(body=body)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1] == "TORCH True"


def test_import_package_does_not_import_torch():
    assert not _torch_loaded("import napari_cryoguard")


def test_cli_help_of_every_cli_command_does_not_import_torch():
    body = "\n".join([
        "import contextlib, io",
        "from napari_cryoguard.cli import main",
        f"for cmd in {COMMANDS!r}:",
        "    with contextlib.redirect_stdout(io.StringIO()):",
        "        try:",
        "            main([cmd, '--help'])",
        "        except SystemExit as exc:",
        "            assert exc.code == 0, cmd",
    ])
    assert not _torch_loaded(body)


def test_import_io_and_the_napari_reader_do_not_import_torch():
    # io/* and _napari/_reader.py were made torch-free by their owner; this checks it holds
    assert not _torch_loaded("import napari_cryoguard.io")
    assert not _torch_loaded("import napari_cryoguard._napari._reader")


@pytest.mark.parametrize("argv", [["--help"], ["extract", "--help"], ["train", "--help"],
                                  ["evaluate", "--help"], ["reproduce", "--help"]])
def test_help_is_printed_and_leaves_torch_unimported(argv):
    """Speed is measured in benchmarks/bench_startup.py; this checks the help is complete
    (usage and every option) in a fresh process, for the torch-free path."""
    res = subprocess.run([CRYOGUARD, *argv], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "usage: cryoguard" in res.stdout
    expected = {"train": ("--data", "--defense", "--epochs", "--resume", "--events"),
                "evaluate": ("--data", "--suite", "--attack", "--quick", "--out"),
                "reproduce": ("--out", "--quick", "--parts", "--threads")}
    for option in expected.get(argv[0], ()):
        assert option in res.stdout
