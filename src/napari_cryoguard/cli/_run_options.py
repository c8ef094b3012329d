"""What ``cryoguard evaluate`` and ``cryoguard reproduce`` share: the run options
(``--device``, ``--seed``, ``--no-resume``, ``--threads``, ``--json``, ``--quiet``) and
the thread setting (the error exit is :func:`._common.fail`). Imports no torch until
:func:`set_threads` runs."""

from __future__ import annotations

import argparse

from napari_cryoguard.errors import CryoGuardError

__all__ = ["add_run_options", "set_threads"]

_THREADS = "CPU threads for torch (0: torch's default)"


def add_run_options(p: argparse.ArgumentParser, *, device: str, device_help: str,
                    seed_help: str, resume_help: str, threads_note: str = "") -> None:
    """Add the run options; each command gives its device default and its help texts."""
    p.add_argument("--device", default=device, help=device_help)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--no-resume", action="store_true", help=resume_help)
    p.add_argument("--threads", type=int, default=0, help=_THREADS + threads_note)
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def set_threads(threads: int) -> None:
    """``--threads``: torch's CPU threads (0 leaves torch's default)."""
    if threads < 0:
        raise CryoGuardError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
