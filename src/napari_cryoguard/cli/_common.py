"""What every ``cryoguard`` command shares: registering a command, logging and progress
on stderr, the output options (``--out``/``--out-dir``/``--shard``) and their checks,
the per-input runner, input-kind checks, and the error line plus the one JSON line.

Torch-free: the command modules import their core functions inside the runners, so
building the parser (``--help``) never pays for torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_cryoguard.errors import CryoGuardError

#: a command's runner: the parsed options in, the summary of the --json line out
Runner = Callable[[argparse.Namespace], dict]
#: ``add(name, help, runner)``: a sub-parser with --json/--quiet whose runner is ``runner``
AddCommand = Callable[[str, str, Runner], argparse.ArgumentParser]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" unless the help text already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def command_adder(sub: argparse._SubParsersAction) -> AddCommand:
    """The ``add`` that the command modules' ``add_commands(add)`` call."""

    def add(name: str, help: str, runner: Runner) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        p.add_argument("--json", action="store_true",
                       help="print a one-line machine-readable JSON summary (counts, paths, "
                       "timings) to stdout")
        p.add_argument("--quiet", action="store_true",
                       help="print nothing but errors (and the --json line)")
        p.set_defaults(_runner=runner)
        return p

    return add


# --------------------------------------------------------------------------- messages


def log(args: argparse.Namespace, msg: str) -> None:
    """A progress or result line on stderr (nothing with --quiet)."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def log_domain(args: argparse.Namespace, notes, warnings_) -> None:
    """The notes (what was done to the data) and warnings (what may be wrong) of a run."""
    for note in notes:
        log(args, f"note: {note}")
    for warning in warnings_:
        log(args, f"warning: {warning}")


def notes_of(*objs) -> list[str]:
    """The ``notes`` of the objects, each once, in order."""
    notes: list[str] = []
    for obj in objs:
        for note in getattr(obj, "notes", None) or []:
            if note not in notes:
                notes.append(str(note))
    return notes


def fail(command: str, exc: BaseException, as_json: bool) -> int:
    """The error as one line on stderr (and the ``"ok": false`` JSON line); exit status 2."""
    print(f"cryoguard {command}: error: {exc}", file=sys.stderr)
    if as_json:
        print(json.dumps({"command": command, "ok": False, "error": str(exc)}))
    return 2


def os_error(exc: OSError) -> CryoGuardError:
    """An ``OSError`` as the package's one-line error (:func:`napari_cryoguard.errors.os_error`)."""
    from napari_cryoguard.errors import os_error as convert

    return convert(exc)


class Progress:
    """Progress on stderr (a tqdm-like callable ``(done, total)``).

    On a terminal: a bar redrawn in place. Otherwise (a cluster job's log, a pipe): one
    plain line every ``interval`` seconds and one at the end, so logs show that work goes
    on without filling up with bars.
    """

    def __init__(self, label: str, enabled: bool = True, interval: float = 5.0) -> None:
        self.label = label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.interval = float(interval)
        self._last = -1.0
        self._t_last = time.monotonic()

    def __call__(self, done: int, total: int, *stage) -> None:
        if not self.enabled or total <= 0:
            return
        frac = min(1.0, done / total)
        if self.tty:
            if frac - self._last < 0.02 and done < total:
                return
            self._last = frac
            bar = "#" * int(30 * frac)
            end = "\n" if done >= total else ""
            print(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}%", end=end, file=sys.stderr,
                  flush=True)
            return
        now = time.monotonic()
        if done < total and now - self._t_last < self.interval:
            return
        if done >= total and self._last >= 1.0:
            return
        self._t_last, self._last = now, frac
        print(f"{self.label}: {done}/{total} ({100 * frac:.0f}%)", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- options


def add_outputs(p: argparse.ArgumentParser, out_help: str, suffix: str) -> None:
    """``--out FILE`` or ``--out-dir DIR`` (one output per input, resumable) and ``--shard``."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", default=None, help=out_help)
    g.add_argument("--out-dir", default=None, metavar="DIR",
                   help=f"one output per input, DIR/<input stem>{suffix}; inputs whose output "
                   "exists are skipped, so a killed run resumes (outputs are written "
                   "atomically); join them with `cryoguard merge`")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="with --out-dir: take every N-th input from the I-th (0 <= I < N), a "
                   "deterministic split for the N tasks of a job array "
                   "(--shard $SLURM_ARRAY_TASK_ID/N)")


def add_model_inputs(p: argparse.ArgumentParser, datasets_help: str, batch_help: str) -> None:
    """The dataset files, ``--model``, ``--device``, ``--batch-size`` and ``--no-resample``
    of the commands that feed subtomograms to a model (classify, attack)."""
    p.add_argument("datasets", nargs="+", metavar="dataset", help=datasets_help)
    p.add_argument("--model", default="default",
                   help="bundled weights (default = cb3d-default, ae-default) or a .safetensors "
                   "checkpoint")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=32, help=batch_help)
    p.add_argument("--no-resample", action="store_true",
                   help="refuse subtomograms whose voxel size differs from the model's training "
                   "voxel size by more than 1 %% (by default they are resampled trilinearly to "
                   "the model's voxel size and cube, and the result says so)")


def check_output(path) -> None:
    """Refuse an output path that cannot be written before any long work starts."""
    p = Path(path)
    if p.is_dir():
        raise CryoGuardError(f"{p} is a folder; --out needs a file name")
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CryoGuardError(f"{probe} is a file, so {p} cannot be created below it")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise CryoGuardError(f"{probe} is not writable, so {p} cannot be written")


# --------------------------------------------------------------------------- input kinds


def _wrong_kind(path, command: str, wanted: str, accept) -> None:
    """Raise a one-line :class:`CryoGuardError` when ``path`` is a file of another kind.

    ``accept(kind)`` says whether :func:`napari_cryoguard.data.file_kind`'s answer is
    what ``command`` takes; an unknown kind (or a missing file) is left to the reader,
    whose own message is clearer than a guess.
    """
    from napari_cryoguard.data import file_kind

    p = Path(path)
    if not p.is_file():
        return
    kind = file_kind(p)
    if kind is not None and not accept(kind):
        raise CryoGuardError(f"{path} is {kind}; {command} takes {wanted}")


def want_dataset(path, command: str) -> None:
    """``path`` must be a dataset (.npz) when it is a file of a known kind."""
    from napari_cryoguard.data import DATASET_KIND

    _wrong_kind(path, command, "a dataset (.npz) from `cryoguard extract`",
                lambda kind: kind == DATASET_KIND or "archive" in kind)


def want_tomogram(path, command: str) -> None:
    """``path`` must be a tomogram when it is a file of a known kind."""
    _wrong_kind(path, command, "a tomogram (.mrc .map .rec .st, OME-Zarr .zarr, .tif, .em)",
                lambda kind: "tomogram" in kind or "MRC" in kind)


def want_picks(path, command: str) -> None:
    """``path`` must be a pick file when it is a file of a known kind."""
    _wrong_kind(path, command, "a pick file (.star .csv .tsv .txt .json .tbl .mod .cbox .coords)",
                lambda kind: kind.startswith(("a pick file", "a CSV table")))


# --------------------------------------------------------------------------- many inputs


def run_many(args: argparse.Namespace, specs, suffix: str, work, *, session=None,
             tomograms_star: bool = True) -> dict | None:
    """Run ``work(input, output)`` per input into ``--out-dir`` (None without --out-dir).

    Inputs are expanded (paths, globs, tomograms.star), split by ``--shard`` and finished
    outputs skipped (:mod:`napari_cryoguard.batch`); under torchrun every rank follows
    rank 0's view of which outputs are finished.
    """
    from napari_cryoguard import batch

    if getattr(args, "out_dir", None) is None:
        if getattr(args, "shard", None):
            raise CryoGuardError("--shard splits the inputs of an --out-dir run; give --out-dir")
        return None
    items = batch.expand_inputs(specs, tomograms_star=tomograms_star)
    done_fn = None
    if session is not None and session.active:
        def done_fn(outs):
            return session.broadcast([o.is_file() for o in outs])
    summary = batch.run_many(items, args.out_dir, suffix, work,
                             which=batch.parse_shard(args.shard),
                             log=lambda m: log(args, m), done_fn=done_fn)
    log(args, f"{args.command}: {batch.describe(summary)} in {args.out_dir}")
    return {"out_dir": str(args.out_dir), "n_inputs": len(items), **summary}


def single_input(specs, what: str) -> Path:
    """The one input of an ``--out FILE`` run (a clear error for several)."""
    from napari_cryoguard import batch

    items = batch.expand_inputs(specs, tomograms_star=False)
    if len(items) > 1:
        raise CryoGuardError(f"{len(items)} {what} given but one --out file: give --out-dir "
                             "DIR for one output per input (join them with `cryoguard merge`)")
    return items[0]


def per_dataset(args: argparse.Namespace, suffix: str,
                one: Callable[[argparse.Namespace, Any, Path, Any], dict]) -> dict:
    """Run ``one(args, dataset, out, session)`` on each dataset of the command line (one
    output per input with --out-dir, or the single --out), under torchrun when launched so.

    Under torchrun only rank 0 logs and prints the --json line.
    """
    from napari_cryoguard import distributed

    with distributed.session(args.device) as sess:
        if not sess.is_main:
            args.quiet = True
            args.json = False
        many = run_many(args, args.datasets, suffix,
                        lambda path, out: one(args, path, out, sess), session=sess,
                        tomograms_star=False)
        if many is not None:
            return many
        return one(args, single_input(args.datasets, "datasets"), Path(args.out), sess)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command: its summary as the JSON line, errors as one line (exit 2)."""
    t0 = time.perf_counter()
    try:
        if getattr(args, "out", None) and not getattr(args, "out_is_folder", False):
            check_output(args.out)
        summary = args._runner(args)
    except OSError as exc:
        return fail(args.command, os_error(exc), getattr(args, "json", False))
    except CryoGuardError as exc:
        return fail(args.command, exc, getattr(args, "json", False))
    summary = {"command": args.command, "ok": True, **summary,
               "total_seconds": round(time.perf_counter() - t0, 3)}
    if getattr(args, "json", False):
        print(json.dumps(summary, default=str))
    return 0


def data_option(argv: Sequence[str]) -> str | None:
    """The value of ``--data`` in a train/evaluate command line (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--data" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data="):
            return arg.split("=", 1)[1]
    return None
