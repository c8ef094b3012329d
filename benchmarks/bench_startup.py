"""Benchmark: start-up time of the command line and of the torch-free imports.

Usage::

    python benchmarks/bench_startup.py [--repeats 7]

Each case runs as a fresh subprocess with this interpreter (best and median of
``--repeats`` runs, interleaved so that load on the machine hits every case alike):

* ``python -c pass`` (the interpreter alone, the baseline of the ratios);
* ``cryoguard --help`` and ``cryoguard extract --help`` (through the installed console
  script when it is beside the interpreter, else ``python -m napari_cryoguard.cli``);
* ``python -c "import napari_cryoguard.io"`` and the napari reader module
  (``napari_cryoguard._napari._reader``): opening a tomogram in napari must not pay for
  torch;
* ``python -c "import torch"`` for reference (what the lazy imports avoid).

It also reports whether torch ended up in ``sys.modules`` for the two imports.
Targets (issue 14 item 5): ``cryoguard <command> --help`` under 1 s; the io and reader
imports do not import torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
SCRIPT = Path(PY).with_name("cryoguard")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [PY, "-m", "napari_cryoguard.cli"]

CASES: dict[str, list[str]] = {
    "python -c pass": [PY, "-c", "pass"],
    "cryoguard --help": [*CLI, "--help"],
    "cryoguard extract --help": [*CLI, "extract", "--help"],
    "cryoguard classify --help": [*CLI, "classify", "--help"],
    "cryoguard train --help": [*CLI, "train", "--help"],
    "cryoguard evaluate --help": [*CLI, "evaluate", "--help"],
    "cryoguard reproduce --help": [*CLI, "reproduce", "--help"],
    "import napari_cryoguard.io": [PY, "-c", "import napari_cryoguard.io"],
    "import napari reader": [PY, "-c", "import napari_cryoguard._napari._reader"],
    "import torch (reference)": [PY, "-c", "import torch"],
}

TORCH_CHECK = "import sys, {mod}; print('torch' in sys.modules)"


def _once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for cmd in CASES.values():  # warm the file cache once
        _once(cmd)
    for _ in range(args.repeats):
        for name, cmd in CASES.items():
            times[name].append(_once(cmd))
    base = statistics.median(times["python -c pass"])
    print(f"start-up, {args.repeats} runs each (python {sys.version.split()[0]})")
    print(f"{'case':<28} {'best s':>8} {'median s':>9} {'x python':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} {min(ts):8.3f} {med:9.3f} {med / base:9.1f}")
    for mod in ("napari_cryoguard.io", "napari_cryoguard._napari._reader", "napari_cryoguard"):
        out = subprocess.run([PY, "-c", TORCH_CHECK.format(mod=mod)], capture_output=True,
                             text=True, check=True).stdout.strip()
        print(f"import {mod}: torch imported = {out}")
    worst = max(statistics.median(times[n]) for n in CASES if n.startswith("cryoguard"))
    print(f"slowest --help median {worst:.3f} s (target < 1 s): {'OK' if worst < 1 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
