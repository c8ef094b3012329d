"""``cryoguard pick`` and ``extract``: DoG picking in tomograms (options generated from
:class:`~napari_cryoguard.picking.DoGParams`) and subtomogram extraction around picks."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from napari_cryoguard.cli._common import (
    AddCommand,
    Progress,
    add_outputs,
    log,
    notes_of,
    run_many,
    single_input,
    want_picks,
    want_tomogram,
)
from napari_cryoguard.cli._options import add_options, options_from_args
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.picking.extract import BORDER_MODES
from napari_cryoguard.picking.params import HELP_DEFAULTS, PAPER_CUBE, DoGParams, border_note

# --------------------------------------------------------------------------- pick


def _pick_one(args: argparse.Namespace, params: DoGParams, path, mask):
    import numpy as np

    from napari_cryoguard.io import read_tomogram
    from napari_cryoguard.picking import pick_particles

    want_tomogram(path, "pick")
    how = ""
    with read_tomogram(path) as tomo:
        t0 = time.perf_counter()
        if params.polarity == "auto":  # chosen here (as the picker would) to say which
            from napari_cryoguard.picking import choose_polarity

            choice = choose_polarity(tomo.data, params.sigma1_voxels(tomo.voxel_size),
                                     params.k, border=params.border,
                                     min_distance=params.min_distance)
            params = dataclasses.replace(params, polarity=choice.polarity)
            how = f" (auto chose {choice.describe()}"
            how += ("; extract with --protein black, as the bundled models expect protein "
                    "white)" if choice.polarity == "dark" else ")")
        picks = pick_particles(
            tomo.data, **dataclasses.asdict(params), voxel_size=tomo.voxel_size, mask=mask,
            progress=Progress(f"pick {tomo.name}", enabled=not args.quiet))
        name, vs, shape = tomo.name, tomo.voxel_size, tomo.data.shape
    seconds = round(time.perf_counter() - t0, 3)
    picks.tomo_names = np.array([name] * len(picks))
    picks.voxel_size = vs
    log(args, f"{name}: {len(picks)} picks in {seconds:.2f} s{how}")
    thin = border_note(shape, params.border_voxels, option="--border")
    if thin:
        log(args, f"note: {thin}")
    return picks, name, vs, seconds


def cmd_pick(args: argparse.Namespace) -> dict:
    import numpy as np

    from napari_cryoguard import batch
    from napari_cryoguard.io import Picks, read_tomogram, write_picks

    params = DoGParams(**options_from_args(args, DoGParams))
    mask = None
    if args.mask:
        want_tomogram(args.mask, "pick --mask")
        with read_tomogram(args.mask) as m:
            mask = np.asarray(m.data) > 0

    def one(path, out):
        picks, name, _vs, seconds = _pick_one(args, params, path, mask)
        write_picks(out, picks)
        return {"picks": str(out), "n_picks": int(len(picks)), "tomogram": name,
                "seconds": {"pick": seconds}}

    many = run_many(args, args.tomograms, args.suffix, one)
    if many is not None:
        many["n_picks"] = sum(v["n_picks"] for v in many["per_input"].values())
        return many
    all_picks: list[Picks] = []
    per_tomo = {}
    timings = {}
    voxel_size = None
    for path in batch.expand_inputs(args.tomograms):
        picks, name, vs, seconds = _pick_one(args, params, path, mask)
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


# --------------------------------------------------------------------------- extract


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


def _read_picks(args: argparse.Namespace, path, **extra):
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
    a 20 A tomogram land at the same place in Angstrom, and Angstrom picks on a
    translated OME-Zarr level by its translation (:meth:`~napari_cryoguard.io.Picks.on_tomogram`).
    Notes say what was done.
    """
    return picks.on_tomogram(tomo, source=source)


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
        want_picks(path, "extract --picks")
        cache.clear()  # keep one file's picks at a time
        try:
            cache[path] = _read_picks(args, path)
        except CryoGuardError as first:
            # files whose coordinates need the tomogram's geometry (RELION 5 centred Å,
            # WarpTools fractions) and no --tomograms: the tomogram being extracted is it
            if getattr(args, "tomograms_star", None):
                raise
            key = (path, str(tomogram_path))
            if key not in cache:
                try:
                    picks = _read_picks(args, path, tomograms=tomogram_path)
                except CryoGuardError:
                    raise first from None
                picks.notes.append(f"{path.name}: its coordinates were converted with the "
                                   f"size and voxel size of {Path(tomogram_path).name}, the "
                                   "tomogram being extracted (no --tomograms given)")
                cache[key] = picks
            return path, cache[key]
    return path, cache[path]


def _extract_from(args: argparse.Namespace, tomo, picks, *, tomogram, picks_path,
                  out) -> dict:
    from napari_cryoguard.data import SubtomogramDataset, save_dataset
    from napari_cryoguard.errors import CryoGuardError
    from napari_cryoguard.picking import extract_subtomograms

    n_in_file = len(picks)
    if n_in_file == 0:
        raise CryoGuardError(f"{Path(picks_path).name} holds no picks: nothing to extract "
                             f"from {tomo.name}")
    picks = picks_for_tomogram(picks, tomo, source=Path(picks_path).name)
    notes = notes_of(tomo, picks)
    for note in notes:
        log(args, f"note: {note}")
    t0 = time.perf_counter()
    invert = getattr(args, "protein", "white") == "black"
    sub = extract_subtomograms(tomo.data, picks.coords, size=args.size,
                               normalize=not args.no_normalize, border=args.border,
                               invert=invert)
    if invert:
        from napari_cryoguard.layerdata import inverted_note

        notes.append(inverted_note(tomo.name, "--protein black"))
        log(args, f"note: {notes[-1]}")
    t_ex = time.perf_counter() - t0
    if len(sub.index) == 0:
        raise CryoGuardError(
            f"all {len(picks)} picks of {tomo.name} are too close to its edge for "
            f"{args.size}^3 cubes: nothing extracted (--border pad keeps them, padded)")
    kept = picks.subset(sub.index)
    ds = SubtomogramDataset(
        volumes=sub.volumes, labels=kept.labels, class_names=kept.class_names,
        coords=kept.coords, tomo_names=tomo.name, voxel_size=tomo.voxel_size,
        normalized=sub.normalized,
        meta={"source": "extract", "tomogram": str(tomogram), "picks": str(picks_path),
              "border": args.border, "n_skipped": int(sub.n_skipped), "notes": notes,
              "inverted": bool(sub.inverted)},
    )
    out = save_dataset(out, ds)
    log(args, f"wrote {out}: {len(ds)} subtomograms of {args.size}^3 from {tomo.name}"
              f" ({len(picks)} of {n_in_file} picks in the file belong to it,"
              f" {sub.n_skipped} skipped near the border)")
    return {"dataset": str(out), "n": int(len(ds)), "n_skipped": int(sub.n_skipped),
            "n_picks_in_file": int(n_in_file), "n_picks_used": int(len(picks)),
            "tomogram": tomo.name, "voxel_size": float(tomo.voxel_size),
            "size": int(args.size), "notes": notes,
            "normalized": bool(sub.normalized), "inverted": bool(sub.inverted),
            "seconds": {"extract": round(t_ex, 4)}}


def cmd_extract(args: argparse.Namespace) -> dict:
    from napari_cryoguard.io import read_tomogram

    cache: dict = {}

    def one(path, out):
        want_tomogram(path, "extract")
        picks_path, picks = _picks_for(args, path, cache)
        with read_tomogram(path) as tomo:
            return _extract_from(args, tomo, picks, tomogram=path, picks_path=picks_path,
                                 out=out)

    many = run_many(args, args.tomograms, ".npz", one)
    if many is not None:
        many["n"] = sum(v["n"] for v in many["per_input"].values())
        return many
    return one(single_input(args.tomograms, "tomograms"), args.out)


# --------------------------------------------------------------------------- parsers


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


def add_commands(add: AddCommand) -> None:
    p = add("pick", "pick particles by Difference of Gaussian in one or many tomograms into one "
            "STAR/CSV file, or one per tomogram (--out-dir)", cmd_pick)
    p.add_argument("tomograms", nargs="+",
                   help="tomogram files (.mrc .map .rec .st .zarr .tif .em), glob patterns "
                   "(quoted) or a RELION 5 tomograms.star (its rlnTomoReconstructedTomogram)")
    add_outputs(p, "output picks (.star: RELION rlnCoordinateX/Y/Z in voxels; or .csv), all "
                "tomograms in one file", ".star")
    p.add_argument("--suffix", choices=[".star", ".csv"], default=".star",
                   help="format of the per-tomogram outputs of --out-dir")
    add_options(p.add_argument_group("DoG parameters (napari_cryoguard.picking.DoGParams)"),
                DoGParams, defaults=HELP_DEFAULTS)
    p.add_argument("--mask", default=None,
                   help="optional mask MRC (same shape; picks only where mask > 0)")

    p = add("extract", "extract subtomogram cubes around picks into a dataset file (one per "
            "tomogram with --out-dir)", cmd_extract)
    p.add_argument("tomograms", nargs="+", metavar="tomogram",
                   help="tomogram file(s), glob patterns (quoted) or a RELION 5 tomograms.star")
    p.add_argument("--picks", required=True,
                   help="picks (.star .csv .json .tbl .mod .cbox .coords); only the rows of each "
                   "tomogram (matched by name) are used, converted to its voxel size; or a "
                   "folder of per-tomogram pick files <tomogram stem>.star (from pick --out-dir)")
    _add_picks_options(p)
    add_outputs(p, "output dataset file (.npz)", ".npz")
    p.add_argument("--size", type=int, default=PAPER_CUBE,
                   help="cube edge in voxels (even or odd)")
    p.add_argument("--border", choices=list(BORDER_MODES), default=BORDER_MODES[0],
                   help="particles whose cube crosses the border: skip them (counted) or pad "
                   "the cube")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip per-sample zero-mean unit-variance normalisation (recorded in the "
                   "file)")
    p.add_argument("--protein", choices=["white", "black"], default="white",
                   help="how protein looks in the tomogram: 'black' (most raw tomograms) "
                   "inverts the cubes to protein white, the convention of the simulator and "
                   "the bundled models (recorded in the file)")
