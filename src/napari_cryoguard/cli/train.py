"""``cryoguard train``: its options, and the mapping of them onto :func:`train`.

:func:`build_parser` imports no torch (``--help`` answers at once); its recipe options
(``--epochs``, ``--lr``, ``--optimizer``, ...) are generated from the fields of
:class:`~napari_cryoguard.recipe.Recipe`, so their defaults and choices are the recipe's.
``--set key=value`` reaches any defense, model or recipe parameter. :func:`main` runs
the one training loop (:func:`napari_cryoguard.defenses.trainer.train`): it reads the
data (``--data``, ``--simulate`` or the ``--resume`` checkpoint's), streams JSON-lines
events (``--events``) and draws progress on stderr, and turns SIGTERM/SIGINT into a
clean cancel (the current step finishes, a checkpoint marked cancelled is written, exit
status 0). Runs unchanged under ``torchrun --nproc_per_node K`` (DDP):
``torchrun -m napari_cryoguard.cli train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from napari_cryoguard.cli._options import add_options, options_from_args
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import parse_value
from napari_cryoguard.recipe import Recipe

if TYPE_CHECKING:
    from napari_cryoguard.defenses.events import EventWriter
    from napari_cryoguard.defenses.trainer import TrainResult

__all__ = ["build_parser", "main"]

#: recipe fields without an option of their own: a defense has a field of the same name
#: (``--gamma`` would read as RAT's gamma), so they are reached by ``--set recipe.<name>``
_SET_ONLY = ("step_size", "gamma")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryoguard train`` (torch-free)."""
    p = argparse.ArgumentParser(
        prog="cryoguard train",
        description=(
            "Train a subtomogram classifier with a defense (standard, semi, ...) and "
            "write a self-describing .safetensors checkpoint. Streams JSON-lines "
            "events with --events; SIGTERM/SIGINT cancel cleanly (the current step "
            "finishes, a checkpoint marked cancelled is written, exit status 0). "
            "Runs unchanged under `torchrun --nproc_per_node K` (DDP)."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        metavar="DATASET",
        help="labelled subtomogram dataset (.npz from `cryoguard extract` / `simulate-dataset`)",
    )
    src.add_argument(
        "--simulate",
        metavar="SPEC",
        help="simulate the dataset on the fly instead of --data, e.g. "
        "'n_per_class=50,snr=0.1,tilt=60,cube=28,seed=1' (keys of "
        "simulate_subtomograms; classes=1bxn+3j9i)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="architecture: cb3d, dsrf3d_v2, rb3d, autoencoder (default cb3d, "
        "or the --resume checkpoint's)",
    )
    p.add_argument(
        "--defense",
        default=None,
        help="defense (training objective), e.g. standard, semi (default "
        "standard, or the --resume checkpoint's); see --list",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="start from the architecture's small-width preset (quick CPU runs)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a defense, model or recipe parameter (looked up in that order; "
        "prefix model./defense./recipe. to force); VALUE is JSON, else a "
        "string. E.g. --set labelled_fraction=0.1 --set "
        "model.conv_widths=[8,8,16,16,16]. Repeatable",
    )
    recipe = p.add_argument_group(
        "training recipe", "unset options keep the recipe's default (or the --resume "
        "checkpoint's value); the step schedule's step_size and gamma, whose names "
        "defenses also use, only as --set recipe.step_size=N / --set recipe.gamma=G"
    )
    add_options(recipe, Recipe, skip=_SET_ONLY)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--out",
        default=None,
        help="checkpoint to write (.safetensors; default "
        "cryoguard-<model>-<defense>.safetensors, or the --resume file); "
        "<stem>.state.safetensors beside it holds the optimizer state",
    )
    p.add_argument(
        "--no-state",
        action="store_true",
        help="write only the checkpoint, not <stem>.state.safetensors (a later --resume "
        "then starts the optimizer afresh)",
    )
    p.add_argument(
        "--step-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="at most one step event per SECONDS (the last step of each epoch is always "
        "written; 0 = every step; default 0.5)",
    )
    p.add_argument(
        "--events",
        default=None,
        metavar="FILE|-",
        help="append JSON-lines events (start, step, epoch, checkpoint, note, "
        "done, cancelled, error) to FILE, or '-' for stdout",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="continue a run from its checkpoint (model, defense and recipe "
        "default to the stored ones; e.g. raise --epochs)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's model and weights (e.g. a simclr pre-training, "
        "or a standard model to fine-tune with a defense); a fresh optimizer and epoch count",
    )
    p.add_argument(
        "--list", action="store_true", help="list models, defenses and their parameters, and exit"
    )
    p.add_argument(
        "--json", action="store_true", help="print a one-line JSON summary on stdout at the end"
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _resolve_sets(
    items: Sequence[str], model_name: str, defense_name: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set`` items -> (model params, defense params, recipe options).

    A plain key is looked up in the defense's dataclass, then the model's, then the
    recipe's; ``model.``, ``defense.`` and ``recipe.`` prefixes force the target.
    """
    from napari_cryoguard.defenses.base import defense_params_class
    from napari_cryoguard.models import model_params_class

    dfields = {f.name for f in dataclasses.fields(defense_params_class(defense_name))}
    mfields = {f.name for f in dataclasses.fields(model_params_class(model_name))}
    rfields = set(Recipe.field_names())
    mp: dict[str, Any] = {}
    dp: dict[str, Any] = {}
    rp: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CryoGuardError(f"--set expects key=value, got {item!r}")
        value = parse_value(raw)
        if key.startswith("model."):
            mp[key[6:]] = value
        elif key.startswith("defense."):
            dp[key[8:]] = value
        elif key.startswith("recipe."):
            rp[key[7:]] = value
        elif key in dfields:
            dp[key] = value
        elif key in mfields:
            mp[key] = value
        elif key in rfields:
            rp[key] = value
        else:
            raise CryoGuardError(
                f"unknown --set key {key!r}. Defense {defense_name!r}: "
                f"{', '.join(sorted(dfields)) or '(none)'}; model {model_name!r}: "
                f"{', '.join(sorted(mfields))}; recipe: {', '.join(sorted(rfields))}"
            )
    return mp, dp, rp


class _ProgressSink:
    """Feeds events to an EventWriter and draws progress on stderr (rank 0)."""

    def __init__(self, writer: EventWriter, show: bool) -> None:
        self.writer = writer
        self.show = show
        self.bar = show and sys.stderr.isatty()

    def __call__(self, record: dict) -> None:
        self.writer.write(record)
        if not self.show:
            return
        kind = record.get("event")
        if kind == "step" and self.bar:
            frac = record["step"] / max(1, record["steps_per_epoch"])
            bar = "#" * int(24 * frac)
            print(
                f"\repoch {record['epoch']}/{record.get('epochs', '?')} [{bar:<24}] "
                f"{record['step']}/{record['steps_per_epoch']} loss {record['loss']:.4f}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        elif kind == "epoch":
            m = record["metrics"]
            parts = [
                f"{k} {m[k]:.4f}"
                for k in ("train_loss", "train_acc", "val_loss", "val_acc", "robust_acc")
                if isinstance(m.get(k), (int, float))
            ]
            eta = record.get("eta_seconds") or 0.0
            lead = "\r" if self.bar else ""
            print(
                f"{lead}epoch {record['epoch']}/{record['epochs']}: {', '.join(parts)}"
                f" (eta {eta:.0f} s)" + " " * 8,
                file=sys.stderr,
                flush=True,
            )
        elif kind in ("note", "cancelled"):
            msg = record.get("message") or f"cancelled; checkpoint {record.get('path')}"
            print(("\n" if self.bar else "") + f"{kind}: {msg}", file=sys.stderr, flush=True)


def _list_params() -> str:
    from napari_cryoguard.defenses.base import available_defenses, defense_params_class
    from napari_cryoguard.models import available_models, model_params_class

    def fmt(cls: type) -> str:
        return ", ".join(
            f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else f"{f.name}=..."
            for f in dataclasses.fields(cls)
        )

    lines = ["models:"]
    lines += [f"  {m}: {fmt(model_params_class(m))}" for m in available_models()]
    lines.append("defenses:")
    lines += [f"  {d}: {fmt(defense_params_class(d))}" for d in available_defenses()]
    lines.append(f"recipe: {fmt(Recipe)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryoguard train`` with ``argv`` (the arguments after ``train``).

    Returns the exit status: 0 on success or clean cancel, 2 on a
    :class:`~napari_cryoguard.CryoGuardError` (message on stderr, an ``error``
    event, and with ``--json`` a ``{"ok": false, "error": ...}`` line).
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.list:
        print(_list_params())
        return 0
    from napari_cryoguard.defenses.events import EventWriter

    is_main = int(os.environ.get("RANK", "0")) == 0
    writer = EventWriter(args.events, enabled=args.events is not None and is_main)
    sink = _ProgressSink(writer, show=is_main and not args.quiet)
    cancel = threading.Event()
    previous: dict[int, Any] = {}

    def _on_signal(signum: int, frame: Any) -> None:
        if cancel.is_set():  # a second signal: stop now
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        cancel.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    t0 = time.monotonic()
    try:
        try:
            result = _run_cli(args, sink, cancel)
        except CryoGuardError as exc:
            if not getattr(exc, "_cryoguard_reported", False):
                sink.writer.emit("error", message=str(exc), type="CryoGuardError")
            if is_main:
                print(f"cryoguard train: error: {exc}", file=sys.stderr, flush=True)
                if args.json:
                    print(
                        json.dumps({"command": "train", "ok": False, "error": str(exc)}), flush=True
                    )
            return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.close()
    if is_main and args.json:
        print(
            json.dumps(
                {
                    "command": "train",
                    "ok": True,
                    "checkpoint": str(result.checkpoint),
                    "epochs_run": result.epochs_run,
                    "epochs": len(result.history),
                    "best_epoch": result.best_epoch,
                    "cancelled": result.cancelled,
                    "stopped_early": result.stopped_early,
                    "metrics": result.metrics,
                    "seconds": round(time.monotonic() - t0, 3),
                },
                default=str,
            ),
            flush=True,
        )
    return 0


def _run_cli(args: argparse.Namespace, sink: _ProgressSink, cancel: threading.Event) -> TrainResult:
    """The arguments onto :func:`~napari_cryoguard.defenses.trainer.train`."""
    from napari_cryoguard.defenses.events import EventWriter
    from napari_cryoguard.defenses.trainer import train
    from napari_cryoguard.defenses.training_data import parse_simulate_spec, stored_data
    from napari_cryoguard.models import load_checkpoint, tiny_params

    stored: dict[str, Any] = {}
    init_model = None
    if args.resume:
        from napari_cryoguard.defenses.state import check_resume_metadata

        _, stored = load_checkpoint(args.resume, device="cpu")
        check_resume_metadata(stored, str(args.resume))
    if args.init:
        if args.resume:
            raise CryoGuardError("--init and --resume exclude each other")
        init_model, init_meta = load_checkpoint(args.init, device="cpu")
        stored = {"arch": init_meta["arch"]}
        if args.model and args.model.replace("-", "_") != init_meta["arch"]:
            raise CryoGuardError(f"--init {args.init} holds a {init_meta['arch']!r} model, "
                                 f"not {args.model!r}")
    model_name = args.model or stored.get("arch") or "cb3d"
    defense_name = args.defense or stored.get("defense") or "standard"
    mp, dp, rp = _resolve_sets(args.sets, model_name, defense_name)
    if args.resume or init_model is not None:
        if mp:
            raise CryoGuardError("model parameters cannot change when resuming or starting "
                                 "from --init (--set model.*)")
    elif args.tiny:
        mp = {**tiny_params(model_name), **mp}
    rp.update(options_from_args(args, Recipe, skip=_SET_ONLY))  # options beat --set recipe.*
    sim_kw: dict[str, Any] | None = None
    data: Any = args.data
    if args.data is None and args.simulate is None:
        if not args.resume:
            raise CryoGuardError("give the training data: --data DATASET or --simulate SPEC")
        data, sim_kw = stored_data(args.resume, stored)
    if args.simulate is not None:
        sim_kw = parse_simulate_spec(args.simulate)
    if sim_kw is not None:
        from napari_cryoguard.simulate import simulate_subtomograms

        try:
            data = simulate_subtomograms(**sim_kw)
        except (TypeError, ValueError) as exc:
            raise CryoGuardError(f"simulating the data {sim_kw!r}: {exc}") from exc
    out = args.out or args.resume or f"cryoguard-{model_name}-{defense_name}.safetensors"
    if args.step_interval < 0:
        raise CryoGuardError(f"--step-interval must be >= 0, got {args.step_interval!r}")
    return train(
        data,
        model=init_model if init_model is not None else model_name,
        defense=defense_name,
        model_params=mp,
        defense_params=dp,
        device=args.device,
        out=out,
        events=EventWriter(sink, step_interval=args.step_interval),
        resume=args.resume,
        cancel=cancel,
        num_workers=args.num_workers,
        save_state=not args.no_state,
        **rp,
    )
