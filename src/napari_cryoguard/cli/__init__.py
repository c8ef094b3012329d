"""The ``cryoguard`` command line: a thin layer over the core.

Every command prints progress to stderr; with ``--json`` it prints exactly one line of
JSON to stdout (``{"command": ..., "ok": true, ...counts, paths, timings...}``). A
:class:`~napari_cryoguard.CryoGuardError` (bad input a user can fix) prints one clear
message and exits with status 2 (with ``--json`` the line carries ``"ok": false`` and
``"error"``); anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_cryoguard._progress import drain
from napari_cryoguard.errors import CryoGuardError

_COMMANDS: dict[str, Callable[[argparse.Namespace], dict]] = {}
#: commands whose parser and runner live in their own module ``cli/<name>.py``
_OWN_PARSER = ("train", "evaluate", "reproduce")


def _command(name: str):
    def deco(fn):
        _COMMANDS[name] = fn
        return fn

    return deco


def _log(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


class _Progress:
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


# --------------------------------------------------------------------------- simulate


def _add_sim_physics(p: argparse.ArgumentParser, many_snr: bool = False) -> None:
    if many_snr:
        p.add_argument("--snr", type=float, nargs="+", default=[0.1],
                       help="signal-to-noise ratio(s) as a variance ratio var(signal)/var(noise) "
                       "(default 0.1; the papers use 0.5 to 0.01); several values make one block "
                       "of --per-class samples per class and SNR (seeds SEED, SEED+1, ...)")
    else:
        p.add_argument("--snr", type=float, default=0.1,
                       help="signal-to-noise ratio as a variance ratio var(signal)/var(noise) (default 0.1; the papers use 0.5 to 0.01)")
    p.add_argument("--tilt", type=float, default=60.0,
                   help="tilt range in degrees: +-TILT is sampled, the rest is the missing wedge (default 60)")
    p.add_argument("--voxel-size", type=float, default=10.0,
                   help="voxel size in Angstrom; templates are rescaled from 10 A (default 10)")
    p.add_argument("--defocus", type=float, default=-5.0,
                   help="defocus in micrometres, negative = underfocus (default -5, as in the CB3D paper)")
    p.add_argument("--cs", type=float, default=2.0, help="spherical aberration in mm (default 2)")
    p.add_argument("--voltage", type=float, default=300.0, help="acceleration voltage in kV (default 300)")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="template names to use (default: the bundled default classes; see `cryoguard templates`)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data (default 0)")


def _physics_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(snr=args.snr, tilt_range=args.tilt, voxel_size=args.voxel_size,
              defocus_um=args.defocus, cs_mm=args.cs, voltage_kv=args.voltage, seed=args.seed)
    if args.classes:
        kw["classes"] = list(args.classes)
    return kw


@_command("simulate")
def cmd_simulate(args: argparse.Namespace) -> dict:
    from napari_cryoguard.io import write_picks, write_tomogram
    from napari_cryoguard.simulate import simulate_tomogram

    t0 = time.perf_counter()
    sim = simulate_tomogram(shape=tuple(args.shape), n_particles=args.particles,
                            progress=_Progress("simulate"), **_physics_kwargs(args))
    t_sim = time.perf_counter() - t0
    out = write_tomogram(args.out, sim.volume, sim.voxel_size)
    truth = Path(args.truth) if args.truth else Path(args.out).with_name(Path(args.out).stem + "_truth.star")
    picks = sim.to_picks()
    picks.tomo_names = np.array([Path(args.out).stem] * len(picks))
    write_picks(truth, picks)
    _log(args, f"wrote {out} ({'x'.join(map(str, sim.volume.shape))} ZYX, {sim.voxel_size} A) "
               f"and ground truth {truth} ({len(picks)} particles)")
    return {"tomogram": str(out), "truth": str(truth), "shape": list(sim.volume.shape),
            "n_particles": int(len(picks)), "class_names": list(sim.class_names),
            "voxel_size": float(sim.voxel_size), "seconds": {"simulate": round(t_sim, 3)}}


@_command("simulate-dataset")
def cmd_simulate_dataset(args: argparse.Namespace) -> dict:
    from napari_cryoguard.data import DatasetWriter
    from napari_cryoguard.simulate.subtomograms import iter_simulated_blocks

    t0 = time.perf_counter()
    kwargs = _physics_kwargs(args)
    snrs = list(args.snr)
    params, sizes = [], []
    class_names: list[str] | None = None
    counts = None
    bar = _Progress("simulate-dataset")
    writer: DatasetWriter | None = None
    try:
        for i, snr in enumerate(snrs):
            # one block per SNR, each with its own seed (seed + i), so blocks are independent;
            # each is simulated and written in blocks of 256 cubes (memory bounded by a block)
            kw = {**kwargs, "snr": snr, "seed": args.seed + i}
            n_block = 0
            for block in iter_simulated_blocks(n_per_class=args.per_class, cube=args.cube,
                                               normalize=not args.no_normalize, **kw):
                if writer is None:
                    class_names = list(block.class_names)
                    counts = np.zeros(len(class_names), dtype=np.int64)
                    writer = DatasetWriter(args.out, class_names=class_names,
                                           voxel_size=block.voxel_size,
                                           normalized=not args.no_normalize)
                writer.append(block.volumes, block.labels)
                counts += np.bincount(block.labels, minlength=len(class_names))
                n_block += len(block)
                bar(writer.n, args.per_class * len(class_names) * len(snrs))
            params.append(block.params)
            sizes.append(n_block)
        assert writer is not None and class_names is not None and counts is not None
        writer.meta = {"source": "simulate_subtomograms",
                       "params": params if len(params) > 1 else params[0],
                       "snr_per_sample": np.repeat(snrs, sizes).tolist()
                       if len(snrs) > 1 else None}
        t_sim = time.perf_counter() - t0
        out = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    n = int(counts.sum())
    _log(args, f"wrote {out}: {n} subtomograms of {args.cube}^3, {len(class_names)} classes"
               + (f", SNR {', '.join(map(str, snrs))}" if len(snrs) > 1 else ""))
    return {"dataset": str(out), "n": n, "cube": int(args.cube), "snr": snrs,
            "class_names": class_names, "per_class": counts.tolist(),
            "seconds": {"simulate": round(t_sim, 3)}}


# --------------------------------------------------------------------------- pick / extract


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


def _want_dataset(path, command: str) -> None:
    from napari_cryoguard.data import DATASET_KIND

    _wrong_kind(path, command, "a dataset (.npz) from `cryoguard extract`",
                lambda kind: kind == DATASET_KIND or "archive" in kind)


def _want_tomogram(path, command: str) -> None:
    _wrong_kind(path, command, "a tomogram (.mrc .map .rec .st, OME-Zarr .zarr, .tif, .em)",
                lambda kind: "tomogram" in kind or "MRC" in kind)


def _want_picks(path, command: str) -> None:
    _wrong_kind(path, command, "a pick file (.star .csv .tsv .txt .json .tbl .mod .cbox .coords)",
                lambda kind: kind.startswith(("a pick file", "a CSV table")))


def _add_resample_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-resample", action="store_true",
                   help="refuse subtomograms whose voxel size differs from the model's training "
                   "voxel size by more than 1 %% (by default they are resampled trilinearly to "
                   "the model's voxel size and cube, and the result says so)")


def _add_picks_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tomograms", dest="tomograms_star", default=None, metavar="STAR",
                   help="RELION 5 tomograms.star or optimisation_set.star: each tomogram's size "
                   "and pixel size, needed for rlnCenteredCoordinate*Angst picks")
    p.add_argument("--picks-voxel-size", type=float, default=None, metavar="A",
                   help="voxel size in Angstrom of the tomogram the picks were made in, when "
                   "the file does not say (default: what the file says)")
    p.add_argument("--keep-origins", action="store_true",
                   help="STAR: keep rlnOrigin* shifts as features instead of applying them")
    p.add_argument("--units", choices=["voxel", "angstrom"], default=None,
                   help="CSV: unit of the coordinates (default: voxel)")


def _data_option(argv: Sequence[str]) -> str | None:
    """The value of ``--data`` in a train/evaluate command line (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--data" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--data="):
            return arg.split("=", 1)[1]
    return None


def _many(args: argparse.Namespace, specs, suffix: str, work, *, session=None,
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
                             log=lambda m: _log(args, m), done_fn=done_fn)
    _log(args, f"{args.command}: {batch.describe(summary)} in {args.out_dir}")
    return {"out_dir": str(args.out_dir), "n_inputs": len(items), **summary}


def _single_input(args: argparse.Namespace, specs, what: str) -> Path:
    from napari_cryoguard import batch

    items = batch.expand_inputs(specs, tomograms_star=False)
    if len(items) > 1:
        raise CryoGuardError(f"{len(items)} {what} given but one --out file: give --out-dir "
                             "DIR for one output per input (join them with `cryoguard merge`)")
    return items[0]


def _pick_one(args: argparse.Namespace, path, mask):
    from napari_cryoguard.io import read_tomogram
    from napari_cryoguard.picking import pick_particles

    _want_tomogram(path, "pick")
    with read_tomogram(path) as tomo:
        t0 = time.perf_counter()
        picks = pick_particles(
            tomo.data, sigma1=args.sigma1, k=args.k, sigma_unit=args.sigma_unit,
            voxel_size=tomo.voxel_size, threshold=args.threshold,
            min_distance=args.min_distance, max_picks=args.max_picks, border=args.border,
            mask=mask, polarity=args.polarity,
            progress=_Progress(f"pick {tomo.name}", enabled=not args.quiet),
        )
        name, vs = tomo.name, tomo.voxel_size
    seconds = round(time.perf_counter() - t0, 3)
    picks.tomo_names = np.array([name] * len(picks))
    picks.voxel_size = vs
    _log(args, f"{name}: {len(picks)} picks in {seconds:.2f} s"
               + (" (polarity chosen automatically)" if args.polarity == "auto" else ""))
    return picks, name, vs, seconds


@_command("pick")
def cmd_pick(args: argparse.Namespace) -> dict:
    from napari_cryoguard.io import Picks, read_tomogram, write_picks

    mask = None
    if args.mask:
        _want_tomogram(args.mask, "pick --mask")
        with read_tomogram(args.mask) as m:
            mask = np.asarray(m.data) > 0

    def one(path, out):
        picks, name, _vs, seconds = _pick_one(args, path, mask)
        write_picks(out, picks)
        return {"picks": str(out), "n_picks": int(len(picks)), "tomogram": name,
                "seconds": {"pick": seconds}}

    many = _many(args, args.tomograms, args.suffix, one)
    if many is not None:
        many["n_picks"] = sum(v["n_picks"] for v in many["per_input"].values())
        return many
    from napari_cryoguard import batch

    all_picks: list[Picks] = []
    per_tomo = {}
    timings = {}
    voxel_size = None
    for path in batch.expand_inputs(args.tomograms):
        picks, name, vs, seconds = _pick_one(args, path, mask)
        timings[name] = seconds
        per_tomo[name] = int(len(picks))
        voxel_size = vs if voxel_size is None else voxel_size
        all_picks.append(picks)
    merged = Picks(
        coords=np.concatenate([p.coords for p in all_picks]),
        scores=np.concatenate([p.scores for p in all_picks]),
        tomo_names=np.concatenate([p.tomo_names for p in all_picks]),
        voxel_size=voxel_size or 1.0,
    )
    out = write_picks(args.out, merged)
    return {"picks": str(out or args.out), "n_picks": int(len(merged)), "per_tomogram": per_tomo,
            "seconds": {"pick": timings}}


def _picks_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for :func:`napari_cryoguard.io.read_picks` from the command line.

    An option is passed only when the user gave it, so readers that do not know it yet
    (``apply_origins`` of STAR, ``units`` of CSV) are not handed it needlessly.
    """
    kw: dict = {}
    if getattr(args, "picks_voxel_size", None) is not None:
        kw["voxel_size"] = args.picks_voxel_size
    if getattr(args, "tomograms_star", None):
        kw["tomograms"] = args.tomograms_star
    if getattr(args, "keep_origins", False):
        kw["apply_origins"] = False
    if getattr(args, "units", None):
        kw["units"] = args.units
    return kw


def _read_picks_cli(args: argparse.Namespace, path, **extra):
    from napari_cryoguard.io import read_picks

    try:
        return read_picks(path, **{**_picks_options(args), **extra})
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        # a reader that does not take one of the options given
        raise CryoGuardError(f"{path}: this kind of pick file does not take that option "
                             f"({exc}); leave it out for this file") from exc


def picks_for_tomogram(picks, tomo, source: str):
    """The rows of ``picks`` that belong to ``tomo``, at ``tomo``'s voxel size.

    Rows are matched by tomogram name (:meth:`~napari_cryoguard.io.Picks.for_tomogram`,
    a clear error listing the names when none match) and converted to the tomogram's
    voxel size (:meth:`~napari_cryoguard.io.Picks.at_voxel_size`), so picks at 10 A on
    a 20 A tomogram land at the same place in Angstrom. Notes say what was done.
    """
    picks = picks.for_tomogram(tomo.name, source=source)
    return picks.at_voxel_size(tomo.voxel_size, source=source)


def _notes_of(*objs) -> list[str]:
    notes: list[str] = []
    for obj in objs:
        for note in getattr(obj, "notes", None) or []:
            if note not in notes:
                notes.append(str(note))
    return notes


def _picks_for(args: argparse.Namespace, tomogram_path, cache: dict):
    """The picks for one tomogram: ``--picks`` is one file for all tomograms (read once,
    rows matched by name) or a folder holding ``<tomogram stem>.<star|csv|...>``."""
    from napari_cryoguard import batch

    src = Path(args.picks)
    if src.is_dir():
        stem = batch.output_path(tomogram_path, src, "").name
        found = sorted(q for q in src.iterdir() if q.is_file() and q.stem == stem
                       and not q.name.startswith("."))
        if not found:
            raise CryoGuardError(f"{src} holds no pick file named {stem}.* for {tomogram_path}")
        path = found[0]
    else:
        path = src
    if path not in cache:
        _want_picks(path, "extract --picks")
        cache.clear()  # keep one file's picks at a time
        try:
            cache[path] = _read_picks_cli(args, path)
        except CryoGuardError as first:
            # files whose coordinates need the tomogram's geometry (RELION 5 centred Å,
            # WarpTools fractions) and no --tomograms: the tomogram being extracted is it
            if getattr(args, "tomograms_star", None):
                raise
            key = (path, str(tomogram_path))
            if key not in cache:
                try:
                    picks = _read_picks_cli(args, path, tomograms=tomogram_path)
                except CryoGuardError:
                    raise first from None
                picks.notes.append(f"{path.name}: its coordinates were converted with the "
                                   f"size and voxel size of {Path(tomogram_path).name}, the "
                                   "tomogram being extracted (no --tomograms given)")
                cache[key] = picks
            return path, cache[key]
    return path, cache[path]


@_command("extract")
def cmd_extract(args: argparse.Namespace) -> dict:
    from napari_cryoguard.io import read_tomogram

    cache: dict = {}

    def one(path, out):
        _want_tomogram(path, "extract")
        picks_path, picks = _picks_for(args, path, cache)
        with read_tomogram(path) as tomo:
            return _extract_from(args, tomo, picks, tomogram=path, picks_path=picks_path,
                                 out=out)

    many = _many(args, args.tomograms, ".npz", one)
    if many is not None:
        many["n"] = sum(v["n"] for v in many["per_input"].values())
        return many
    path = _single_input(args, args.tomograms, "tomograms")
    return one(path, args.out)


def _extract_from(args: argparse.Namespace, tomo, picks, *, tomogram, picks_path,
                  out) -> dict:
    from napari_cryoguard.data import SubtomogramDataset, save_dataset
    from napari_cryoguard.picking import extract_subtomograms

    n_in_file = len(picks)
    picks = picks_for_tomogram(picks, tomo, source=Path(picks_path).name)
    notes = _notes_of(tomo, picks)
    for note in notes:
        _log(args, f"note: {note}")
    t0 = time.perf_counter()
    sub = extract_subtomograms(tomo.data, picks.coords, size=args.size,
                               normalize=not args.no_normalize, border=args.border)
    t_ex = time.perf_counter() - t0
    kept = picks.subset(sub.index)
    ds = SubtomogramDataset(
        volumes=sub.volumes,
        labels=kept.labels,
        class_names=kept.class_names,
        coords=kept.coords,
        tomo_names=tomo.name,
        voxel_size=tomo.voxel_size,
        normalized=sub.normalized,
        meta={"source": "extract", "tomogram": str(tomogram), "picks": str(picks_path),
              "border": args.border, "n_skipped": int(sub.n_skipped), "notes": notes},
    )
    out = save_dataset(out, ds)
    _log(args, f"wrote {out}: {len(ds)} subtomograms of {args.size}^3 from {tomo.name}"
               f" ({len(picks)} of {n_in_file} picks in the file belong to it,"
               f" {sub.n_skipped} skipped near the border)")
    return {"dataset": str(out), "n": int(len(ds)), "n_skipped": int(sub.n_skipped),
            "n_picks_in_file": int(n_in_file), "n_picks_used": int(len(picks)),
            "tomogram": tomo.name, "voxel_size": float(tomo.voxel_size),
            "size": int(args.size), "notes": notes,
            "normalized": bool(sub.normalized), "seconds": {"extract": round(t_ex, 4)}}


def _rank_quiet(args: argparse.Namespace, sess) -> None:
    """Under torchrun only rank 0 logs and prints the --json line."""
    if not sess.is_main:
        args.quiet = True
        args.json = False


@_command("classify")
def cmd_classify(args: argparse.Namespace) -> dict:
    return _per_dataset(args, ".csv", _classify_one)


def _per_dataset(args: argparse.Namespace, suffix: str, one) -> dict:
    """Run ``one(args, dataset, out, session)`` on each dataset of the command line (one
    output per input with --out-dir, or the single --out), under torchrun when launched so."""
    from napari_cryoguard import distributed

    with distributed.session(args.device) as sess:
        _rank_quiet(args, sess)
        many = _many(args, args.datasets, suffix,
                     lambda path, out: one(args, path, out, sess), session=sess,
                     tomograms_star=False)
        if many is not None:
            return many
        return one(args, _single_input(args, args.datasets, "datasets"), Path(args.out), sess)


def _classify_one(args: argparse.Namespace, path, out: Path, sess) -> dict:
    from napari_cryoguard.classify import (
        PredictionWriter,
        align_labels,
        domain_warnings,
        iter_classify_batches,
        load_model,
    )
    from napari_cryoguard.data import iter_rows, load_dataset
    from napari_cryoguard.distributed import join_parts, part_path, rank_rows

    _want_dataset(path, "classify")
    ds = load_dataset(path, mmap=True)
    if len(ds) == 0:
        raise CryoGuardError(f"{path} holds no subtomograms to classify")
    loaded = load_model(args.model, device="cpu")
    warnings_ = domain_warnings(loaded, voxel_size=ds.voxel_size, cube=ds.volumes.shape[1],
                                normalized=ds.normalized)
    labels = align_labels(ds.labels, ds.class_names, loaded.class_names)
    class_names = loaded.class_names
    counts = np.zeros(len(class_names), dtype=np.int64)
    correct = known = 0
    notes: list[str] = []
    # under torchrun: this rank's whole batches, streamed to a part file joined by rank 0
    lo, hi = rank_rows(len(ds), args.batch_size, sess.rank, sess.size)
    target = part_path(out, sess.rank, sess.size) if sess.active else out
    t0 = time.perf_counter()
    bar = _Progress(f"classify {Path(path).name}", enabled=not args.quiet)
    # streamed: one batch of cubes (memory-mapped input) and of probabilities at a time
    with PredictionWriter(target, class_names, with_labels=labels is not None,
                          with_coords=ds.coords is not None) as writer:
        for step in iter_classify_batches(
                loaded, iter_rows(ds.volumes[lo:hi], args.batch_size), hi - lo,
                normalized=ds.normalized, device=sess.device if sess.active else args.device,
                batch_size=args.batch_size, amp=args.amp, voxel_size=ds.voxel_size,
                resample=not args.no_resample, notes=notes):
            rows = slice(lo + step.start, lo + step.done)
            lab = None if labels is None else labels[rows]
            writer.write(step.probabilities, lab,
                         None if ds.coords is None else ds.coords[rows], start=rows.start)
            pred = step.probabilities.argmax(axis=1)
            counts += np.bincount(pred, minlength=len(class_names))[:len(class_names)]
            if lab is not None:
                k = lab >= 0
                known += int(k.sum())
                correct += int((pred[k] == lab[k]).sum())
            bar(step.done, step.total)
    if sess.active:
        gathered = sess.gather((counts, correct, known, notes))
        if sess.is_main:
            counts = sum(g[0] for g in gathered)
            correct = sum(g[1] for g in gathered)
            known = sum(g[2] for g in gathered)
            notes = list(dict.fromkeys(n for g in gathered for n in g[3]))
            join_parts([part_path(out, r, sess.size) for r in range(sess.size)], out)
        sess.barrier()
    _log_domain(args, notes, warnings_)
    t_cls = time.perf_counter() - t0
    result = {"predictions": str(out), "dataset": str(path), "model": str(args.model),
              "n": int(len(ds)), "class_names": class_names,
              "predicted_counts": counts.tolist(),
              "notes": notes, "warnings": warnings_, "resampled": bool(notes),
              "seconds": {"classify": round(t_cls, 3)}}
    if sess.active:
        result["ranks"] = sess.size
    acc = correct / known if known else None
    if acc is not None:
        result["accuracy"] = round(acc, 4)
    _log(args, f"classified {len(ds)} subtomograms with {args.model} in {t_cls:.2f} s"
               + (f": accuracy {acc:.3f}" if acc is not None else "") + f" -> {out}")
    return result


def _log_domain(args: argparse.Namespace, notes, warnings_) -> None:
    for note in notes:
        _log(args, f"note: {note}")
    for warning in warnings_:
        _log(args, f"warning: {warning}")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@_command("attack")
def cmd_attack(args: argparse.Namespace) -> dict:
    if Path(args.out or "x.npz").suffix.lower() != ".npz":
        raise CryoGuardError(f"attack results are written as .npz, got {Path(args.out).name}")
    return _per_dataset(args, ".npz", _attack_one)


def _attack_one(args: argparse.Namespace, path, out: Path, sess) -> dict:
    from napari_cryoguard.attacks import get_attack_params, iter_attack_dataset
    from napari_cryoguard.attacks.base import AttackResult
    from napari_cryoguard.attacks.dataset import AttackResultWriter
    from napari_cryoguard.classify import (
        PreparedVolumes,
        align_labels,
        domain_warnings,
        load_model,
    )
    from napari_cryoguard.data import load_dataset
    from napari_cryoguard.device import predict
    from napari_cryoguard.distributed import join_parts, part_path, rank_rows

    _want_dataset(path, "attack")
    ds = load_dataset(path, mmap=True)
    loaded = load_model(args.model, device="cpu")
    fields = {f.name for f in dataclasses.fields(get_attack_params(args.attack))}
    params = {}
    for key in ("eps", "eps_unit", "norm", "steps", "step_size"):
        value = getattr(args, key)
        if value is not None:
            if key not in fields:
                raise CryoGuardError(f"attack {args.attack!r} has no parameter {key!r}; "
                                     f"its parameters: {', '.join(sorted(fields))}")
            params[key] = value
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CryoGuardError(f"--set takes KEY=VALUE, got {item!r}")
        params[key.strip()] = _parse_value(value)

    warnings_ = domain_warnings(loaded, voxel_size=ds.voxel_size, cube=ds.volumes.shape[1],
                                normalized=ds.normalized)
    # prepared (resampled, normalised) batch by batch as the attack reads them
    volumes = PreparedVolumes(loaded, ds.volumes, ds.normalized, voxel_size=ds.voxel_size,
                              resample=not args.no_resample)
    notes = volumes.notes
    _log_domain(args, notes, warnings_)
    labels = align_labels(ds.labels, ds.class_names, loaded.class_names)
    indices = np.arange(len(ds)) if not args.indices else np.asarray(args.indices, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(ds)):
        raise CryoGuardError(f"--indices must lie in 0..{len(ds) - 1}")
    if len(indices) == 0:
        raise CryoGuardError(f"{path}: no subtomograms to attack")
    device = sess.device if sess.active else args.device
    # under torchrun: this rank's whole batches of the indices
    lo, hi = rank_rows(len(indices), args.batch_size, sess.rank, sess.size)
    mine = indices[lo:hi]
    t0 = time.perf_counter()
    if len(mine) and (labels is None or (labels[mine] < 0).any()):
        # unlabelled samples are attacked against the model's own prediction
        pred = np.concatenate([
            predict(loaded.model, volumes[mine[i:i + args.batch_size]], device=device).argmax(1)
            for i in range(0, len(mine), args.batch_size)])
        full = np.full(len(ds), -1, dtype=np.int64) if labels is None else labels.copy()
        sel = full[mine]
        full[mine] = np.where(sel >= 0, sel, pred)
        labels = full
    bar = _Progress(f"attack {args.attack}", enabled=not args.quiet)
    target = part_path(out, sess.rank, sess.size) if sess.active else out
    writer = AttackResultWriter(target)
    try:
        res = None
        if len(mine):
            res = drain(iter_attack_dataset(loaded.model, volumes, labels, args.attack,
                                            batch_size=args.batch_size, device=device,
                                            indices=mine, on_batch=writer.add,
                                            keep_inputs=False, **params), bar)
        if sess.active:
            writer.close({})
            gathered = sess.gather(res)
            if sess.is_main:
                res = AttackResult.concatenate([r for r in gathered if r is not None])
        if sess.is_main:
            summary = res.summary()
            meta = {"attack": res.name, "params": res.params, "norm_name": res.norm_name,
                    "steps": res.steps, "targeted": res.targeted, "model": str(args.model),
                    "class_names": loaded.class_names, "dataset": str(path),
                    "summary": summary}
            if sess.active:
                join_parts([part_path(out, r, sess.size) for r in range(sess.size)], out,
                           metadata=json.dumps(meta, default=str))
            else:
                writer.close(meta)
        sess.barrier()
    except BaseException:
        writer.abort()
        raise
    if not sess.is_main:
        return {"result": str(out), "rank": sess.rank}
    t_att = time.perf_counter() - t0
    _log(args, f"{args.attack} on {summary['n']} subtomograms: success rate "
               f"{summary['success_rate']:.3f}, accuracy {summary['accuracy_before']:.3f} -> "
               f"{summary['accuracy_after']:.3f}, mean {summary['norm']} norm "
               f"{summary['mean_norm']:.4g} -> {out}")
    result = {"result": str(out), "dataset": str(path), "model": str(args.model),
              **{k: v for k, v in summary.items() if k != "n"}, "n": summary["n"],
              "params": res.params, "notes": notes, "warnings": warnings_,
              "resampled": bool(notes), "seconds": {"attack": round(t_att, 3)}}
    if sess.active:
        result["ranks"] = sess.size
    return result


@_command("merge")
def cmd_merge(args: argparse.Namespace) -> dict:
    from napari_cryoguard.batch import merge_outputs

    summary = merge_outputs(args.inputs, args.out)
    _log(args, f"merged {len(summary['inputs'])} {summary['kind']} files ({summary['n']} rows) "
               f"-> {summary['merged']}")
    return summary


@_command("models")
def cmd_models(args: argparse.Namespace) -> dict:
    from napari_cryoguard.models import available_models, bundled_models, model_params_class

    archs = {}
    for name in available_models():
        cls = model_params_class(name)
        archs[name] = {f.name: repr(f.default) for f in dataclasses.fields(cls)}
    bundled = {}
    for name in bundled_models():
        from napari_cryoguard.classify import load_model

        lm = load_model(name)
        bundled[name] = {"arch": lm.metadata.get("arch"), "cube": lm.cube,
                         "class_names": lm.class_names, "metrics": lm.metadata.get("metrics", {})}
    _log(args, "architectures: " + ", ".join(archs))
    _log(args, "bundled weights: " + (", ".join(bundled) or "none"))
    return {"architectures": sorted(archs), "parameters": archs, "bundled": bundled}


@_command("templates")
def cmd_templates(args: argparse.Namespace) -> dict:
    from napari_cryoguard.simulate import DEFAULT_CLASSES, list_templates

    names = list_templates()
    _log(args, "bundled templates (10 A): " + ", ".join(names))
    _log(args, "default classes: " + ", ".join(DEFAULT_CLASSES))
    return {"templates": names, "default_classes": list(DEFAULT_CLASSES)}


@_command("demo")
def cmd_demo(args: argparse.Namespace) -> dict:
    from napari_cryoguard.demo import run_demo

    return run_demo(out=args.out, headless=args.headless, seed=args.seed, log=lambda m: _log(args, m))


# --------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" unless the help text already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _add_outputs(p: argparse.ArgumentParser, out_help: str, suffix: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryoguard",
        description="Can this subtomogram classifier be trusted? Simulate, pick, extract, "
        "classify, attack and robustly train on cryo-ET subtomograms.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help,
                           formatter_class=_HelpFormatter)
        p.add_argument("--json", action="store_true",
                       help="print a one-line machine-readable JSON summary (counts, paths, timings) to stdout")
        p.add_argument("--quiet", action="store_true", help="print nothing but errors (and the --json line)")
        return p

    p = add("simulate", "simulate a tomogram with particles from the bundled templates, and its ground truth")
    p.add_argument("--out", required=True, help="output tomogram (.mrc)")
    p.add_argument("--truth", default=None,
                   help="ground-truth picks (.star or .csv; default: <out stem>_truth.star beside --out)")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256], metavar=("Z", "Y", "X"),
                   help="tomogram shape in voxels, ZYX")
    p.add_argument("--particles", type=int, default=40, help="number of particles to place")
    _add_sim_physics(p)

    p = add("simulate-dataset", "simulate a labelled subtomogram dataset (N per class) for training and tests")
    p.add_argument("--out", required=True, help="output dataset file (.npz)")
    p.add_argument("--per-class", type=int, default=100, help="subtomograms per class")
    p.add_argument("--cube", type=int, default=28, help="cube edge in voxels (the papers use 28)")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip per-sample zero-mean unit-variance normalisation")
    _add_sim_physics(p, many_snr=True)

    p = add("pick", "pick particles by Difference of Gaussian in one or many tomograms into one STAR/CSV file, or one per tomogram (--out-dir)")
    p.add_argument("tomograms", nargs="+",
                   help="tomogram files (.mrc .map .rec .st .zarr .tif .em), glob patterns "
                   "(quoted) or a RELION 5 tomograms.star (its rlnTomoReconstructedTomogram)")
    _add_outputs(p, "output picks (.star: RELION rlnCoordinateX/Y/Z in voxels; or .csv), all "
                 "tomograms in one file", ".star")
    p.add_argument("--suffix", choices=[".star", ".csv"], default=".star",
                   help="format of the per-tomogram outputs of --out-dir")
    p.add_argument("--sigma1", type=float, default=7.0, help="smaller Gaussian sigma (RAT paper: 7.0)")
    p.add_argument("--k", type=float, default=1.1, help="ratio of the two sigmas, sigma2 = k * sigma1 (RAT paper: 1.1)")
    p.add_argument("--sigma-unit", choices=["voxel", "angstrom"], default="voxel",
                   help="unit of --sigma1 (angstrom uses each tomogram's voxel size)")
    p.add_argument("--threshold", type=float, default=3.0,
                   help="keep peaks whose DoG response is at least mean + THRESHOLD * std of the DoG (a z-score)")
    p.add_argument("--min-distance", type=float, default=None,
                   help="minimum distance between picks in voxels (non-maximum suppression; default: from sigma1)")
    p.add_argument("--max-picks", type=int, default=None, help="keep at most this many picks per tomogram, best first")
    p.add_argument("--border", type=float, default=None,
                   help="exclude picks closer than this to the border, in voxels (default: 14, half a 28 cube)")
    p.add_argument("--mask", default=None, help="optional mask MRC (same shape; picks only where mask > 0)")
    p.add_argument("--polarity", choices=["bright", "dark", "auto"], default="bright",
                   help="particle contrast: bright (density convention, the simulator), dark "
                   "(raw tomograms) or auto (tries both, keeps the sign whose peaks stand out)")

    p = add("extract", "extract subtomogram cubes around picks into a dataset file (one per tomogram with --out-dir)")
    p.add_argument("tomograms", nargs="+", metavar="tomogram",
                   help="tomogram file(s), glob patterns (quoted) or a RELION 5 tomograms.star")
    p.add_argument("--picks", required=True,
                   help="picks (.star .csv .json .tbl .mod .cbox .coords); only the rows of each "
                   "tomogram (matched by name) are used, converted to its voxel size; or a "
                   "folder of per-tomogram pick files <tomogram stem>.star (from pick --out-dir)")
    _add_picks_options(p)
    _add_outputs(p, "output dataset file (.npz)", ".npz")
    p.add_argument("--size", type=int, default=28, help="cube edge in voxels (even or odd)")
    p.add_argument("--border", choices=["skip", "pad"], default="skip",
                   help="particles whose cube crosses the border: skip them (counted) or pad the cube")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip per-sample zero-mean unit-variance normalisation (recorded in the file)")

    p = add("classify", "classify the subtomograms of dataset files with a trained 3D CNN (runs under torchrun too)")
    p.add_argument("datasets", nargs="+", metavar="dataset",
                   help="dataset file(s) (.npz) from `cryoguard extract` or `simulate-dataset`, "
                   "or glob patterns (quoted)")
    p.add_argument("--model", default="default",
                   help="bundled weights (default = cb3d-default, ae-default) or a .safetensors checkpoint")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=32,
                   help="subtomograms per forward pass (halved automatically on CUDA out-of-memory)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    _add_resample_option(p)
    _add_outputs(p, "predictions CSV: index, predicted class, per-class probabilities", ".csv")

    p = add("attack", "attack a classifier on the subtomograms of dataset files (runs under torchrun too)")
    p.add_argument("datasets", nargs="+", metavar="dataset",
                   help="dataset file(s) (.npz) or glob patterns (quoted); labelled samples are "
                   "attacked against their label, unlabelled ones against the model's prediction")
    p.add_argument("--model", default="default", help="bundled weights or a .safetensors checkpoint")
    p.add_argument("--attack", required=True,
                   help="attack name: fgsm, pgd, bim, apgd-ce, apgd-t, square, deepfool, cw, "
                   "cw_linf, uniform_noise, salt_pepper, bpgd (see "
                   "napari_cryoguard.attacks.available_attacks)")
    p.add_argument("--eps", type=float, default=None,
                   help="budget, in --eps-unit units (default: the attack's, from its paper)")
    p.add_argument("--eps-unit", choices=["normalized", "range"], default=None, dest="eps_unit",
                   help="normalized: the data's z-score units (the default); range: a fraction "
                   "of each subtomogram's intensity range (max - min), the papers' unit for "
                   "[0, 1] images")
    p.add_argument("--norm", choices=["linf", "l2"], default=None,
                   help="distance measure, for attacks that have both (default: the attack's)")
    p.add_argument("--steps", type=int, default=None, help="iterations (default: the attack's)")
    p.add_argument("--step-size", type=float, default=None, dest="step_size",
                   help="step per iteration (default: the attack's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other attack parameter, VALUE as JSON (e.g. --set loss=\"margin\" "
                   "--set bounds=\"sample\"); repeatable")
    p.add_argument("--indices", type=int, nargs="+", default=None,
                   help="attack only these samples (0-based rows of the dataset)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    _add_resample_option(p)
    _add_outputs(p, "result file (.npz: x_adv, perturbation, predictions, success, norms, "
                 "indices, and a JSON metadata string)", ".npz")

    p = add("merge", "join per-tomogram outputs (datasets, attack results, predictions, picks) into one file")
    p.add_argument("inputs", nargs="+",
                   help="output folders (their files with --out's suffix), files or glob patterns; "
                   "joined in file-name order")
    p.add_argument("--out", required=True,
                   help="merged file: .npz (datasets or attack results), .csv (predictions, with a "
                   "source column; or picks) or .star (picks)")

    add("models", "list the registered architectures (with their parameters) and the bundled weights")

    sub.add_parser("evaluate", add_help=False,
                   help="robustness evaluation of checkpoints on a dataset: attacks at several "
                   "budgets, F1, confusion, margins, sanity checks; report.md/.html, plots, "
                   "metrics.json (`cryoguard evaluate --help`)")
    sub.add_parser("reproduce", add_help=False,
                   help="small-scale reproductions of the five papers' comparisons on the "
                   "simulator, with the papers' numbers beside ours (`cryoguard reproduce --help`)")
    sub.add_parser("train", add_help=False,
                   help="train a classifier with a defense, in the background or on a cluster "
                   "(`cryoguard train --help` for its options)")

    add("templates", "list the bundled macromolecule templates and the default classes")

    p = add("demo", "the demo: simulate a tomogram, pick, extract, and show it all in napari")
    p.add_argument("--out", default="demo-output", help="folder for the demo's outputs")
    p.add_argument("--headless", action="store_true",
                   help="no interactive window: run the pipeline, write outputs and a screenshot PNG (needs an X server, e.g. xvfb-run)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the demo tomogram")
    return parser


def _os_error(exc: OSError) -> CryoGuardError:
    """An ``OSError`` as the package's one-line error (:func:`napari_cryoguard.errors.os_error`)."""
    from napari_cryoguard.errors import os_error

    return os_error(exc)


def _check_output(path) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except OSError as exc:
        err = _os_error(exc)
        args = list(sys.argv[1:] if argv is None else argv)
        command = args[0] if args else ""
        print(f"cryoguard {command}: error: {err}", file=sys.stderr)
        if "--json" in args:
            print(json.dumps({"command": command, "ok": False, "error": str(err)}))
        return 2


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "evaluate") and _data_option(argv) is not None:
        try:
            _want_dataset(_data_option(argv), f"{argv[0]} --data")
        except CryoGuardError as exc:
            print(f"cryoguard {argv[0]}: error: {exc}", file=sys.stderr)
            if "--json" in argv:
                print(json.dumps({"command": argv[0], "ok": False, "error": str(exc)}))
            return 2
    if argv and argv[0] in _OWN_PARSER:
        # these commands have their own parser module in this package (cli/<name>.py):
        # its build_parser() imports no torch, so --help answers at once
        import importlib

        module = importlib.import_module(f"napari_cryoguard.cli.{argv[0]}")
        if "-h" in argv[1:] or "--help" in argv[1:]:
            module.build_parser().parse_args(argv[1:])
        return module.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if getattr(args, "out", None) and args.command != "demo":
            _check_output(args.out)
        summary = _COMMANDS[args.command](args)
    except OSError as exc:
        exc = _os_error(exc)
        print(f"cryoguard {args.command}: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"command": args.command, "ok": False, "error": str(exc)}))
        return 2
    except CryoGuardError as exc:
        print(f"cryoguard {args.command}: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"command": args.command, "ok": False, "error": str(exc)}))
        return 2
    summary = {"command": args.command, "ok": True, **summary,
               "total_seconds": round(time.perf_counter() - t0, 3)}
    if getattr(args, "json", False):
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
