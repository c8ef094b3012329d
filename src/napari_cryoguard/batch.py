"""Many tomograms per command: inputs, shards, resumable per-tomogram outputs, merging.

``cryoguard pick | extract | classify | attack`` take many inputs and ``--out-dir``: one
output per input, named after it (``<stem>.star``, ``<stem>.npz``, ``<stem>.csv``). The
logic they share lives here, so the CLI stays a thin layer:

* :func:`expand_inputs`: paths, glob patterns (``"tomos/*.mrc"``, quoted so the shell
  leaves them alone) and RELION 5 ``tomograms.star`` files (their
  ``rlnTomoReconstructedTomogram`` column) become one ordered list of files;
* :func:`parse_shard` / :func:`shard`: ``--shard i/N`` (``0 <= i < N``) keeps every N-th
  input starting at the i-th, a deterministic split of the same list, so the N tasks of a
  scheduler's job array (``--shard $SLURM_ARRAY_TASK_ID/N`` with ``--array=0-(N-1)``)
  cover every input exactly once;
* :func:`run_many`: skips inputs whose output exists (every output is written atomically,
  so an existing file is a finished one and a killed run resumes where it stopped), runs
  the rest and collects their summaries;
* :func:`merge_outputs`: ``cryoguard merge`` joins per-tomogram outputs (datasets, attack
  results, prediction CSVs, pick files) into one file, in file-name order.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "expand_inputs",
    "merge_outputs",
    "output_path",
    "parse_shard",
    "run_many",
    "shard",
    "tomograms_from_star",
]

_GLOB = set("*?[")


def _is_tomograms_star(path: Path) -> bool:
    from napari_cryoguard.io.coords import read_star_blocks

    try:
        blocks = read_star_blocks(path)
    except CryoGuardError:
        return False
    return any("rlnTomoName" in b and "rlnTomoReconstructedTomogram" in b
               for b in blocks.values())


def tomograms_from_star(path: str | os.PathLike) -> list[Path]:
    """The tomogram files a RELION 5 ``tomograms.star`` lists.

    Reads ``rlnTomoReconstructedTomogram`` of every row. RELION writes these paths
    relative to its project folder (the working folder of the job, usually two levels
    above ``Tomograms/job006/tomograms.star``): each relative path is looked up beside
    the STAR file, then in each folder above it, then in the current folder.

    Raises
    ------
    CryoGuardError
        No block with ``rlnTomoName`` and ``rlnTomoReconstructedTomogram``, or a listed
        tomogram that is found in none of those places.
    """
    from napari_cryoguard.io.coords import read_star_blocks

    path = Path(path)
    blocks = read_star_blocks(path)
    table = next((b for b in blocks.values()
                  if "rlnTomoName" in b and "rlnTomoReconstructedTomogram" in b), None)
    if table is None:
        raise CryoGuardError(
            f"{path}: no block with rlnTomoName and rlnTomoReconstructedTomogram; a RELION 5 "
            "tomograms.star from a reconstruction job lists the tomogram files there")
    bases = [path.parent, *path.resolve().parent.parents, Path.cwd()]
    out: list[Path] = []
    for name, rel in zip(table["rlnTomoName"], table["rlnTomoReconstructedTomogram"],
                         strict=True):
        p = Path(str(rel))
        found = p if p.is_absolute() and p.exists() else next(
            (b / p for b in bases if (b / p).exists()), None)
        if found is None:
            raise CryoGuardError(
                f"{path}: tomogram {name!r} is listed as {rel!r}, which exists neither beside "
                "the STAR file, nor in a folder above it, nor in the current folder")
        out.append(found)
    return out


def expand_inputs(specs: Iterable[str | os.PathLike], *, tomograms_star: bool = True) -> list[Path]:
    """Paths, glob patterns and ``tomograms.star`` files as one ordered list of files.

    A pattern expands to its matches in sorted order (``**`` recurses); a ``.star`` that
    lists ``rlnTomoReconstructedTomogram`` (with ``tomograms_star``) expands to those
    tomograms; anything else is kept as given (a missing file is left to the reader's
    own message). A file named twice is kept once, at its first place.

    Raises
    ------
    CryoGuardError
        A pattern that matches nothing, or no inputs at all.
    """
    out: list[Path] = []
    for spec in specs:
        text = str(spec)
        p = Path(text)
        if _GLOB & set(text) and not p.exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise CryoGuardError(f"{text}: the pattern matches no file")
            out.extend(Path(m) for m in matches)
        elif tomograms_star and p.suffix.lower() == ".star" and p.is_file() \
                and _is_tomograms_star(p):
            out.extend(tomograms_from_star(p))
        else:
            out.append(p)
    seen: set[str] = set()
    unique = []
    for p in out:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise CryoGuardError("no inputs given")
    return unique


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` as ``(i, N)`` with ``0 <= i < N`` (None stays None)."""
    if text is None:
        return None
    i_text, sep, n_text = str(text).partition("/")
    try:
        i, n = int(i_text), int(n_text)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise CryoGuardError(
            f"--shard takes i/N with 0 <= i < N (e.g. 0/4 ... 3/4, as a job array's task "
            f"ids from 0), got {text!r}")
    return i, n


def shard(items: Sequence, which: tuple[int, int] | None) -> list:
    """Every N-th item starting at the i-th (all items when ``which`` is None)."""
    if which is None:
        return list(items)
    i, n = which
    return list(items[i::n])


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_path(path: str | os.PathLike, out_dir: str | os.PathLike, suffix: str) -> Path:
    """``out_dir/<input stem><suffix>``: where the output of one input goes."""
    return Path(out_dir) / f"{_stem(Path(path))}{suffix}"


def _unique_outputs(items: Sequence[Path], out_dir: Path, suffix: str) -> list[Path]:
    outs = [output_path(p, out_dir, suffix) for p in items]
    first: dict[Path, Path] = {}
    for item, out in zip(items, outs, strict=True):
        if out in first:
            raise CryoGuardError(
                f"{first[out]} and {item} would both write {out}; inputs of one run need "
                "distinct file names")
        first[out] = item
    return outs


def run_many(items: Sequence[Path], out_dir: str | os.PathLike, suffix: str,
             work: Callable[[Path, Path], dict], *, which: tuple[int, int] | None = None,
             log: Callable[[str], None] | None = None,
             done_fn: Callable[[list[Path]], list[bool]] | None = None) -> dict:
    """Run ``work(input, output)`` for each input of this shard whose output is missing.

    Parameters
    ----------
    items
        All inputs (the same list in every shard; :func:`expand_inputs`).
    out_dir
        Folder of the outputs (created); orphaned temporary files of killed writes in it
        are removed first.
    suffix
        Output suffix (``".npz"``, ``".csv"``, ``".star"``).
    work
        Writes ``output`` atomically (through :func:`napari_cryoguard._atomic.atomic_output`
        or a writer built on it) and returns a JSON-able summary.
    which
        ``(i, N)`` from :func:`parse_shard`.
    done_fn
        Decides which outputs count as finished (default: those that exist); used by
        the distributed runs so every rank sees rank 0's answer.

    Returns
    -------
    dict
        ``{"outputs": [...], "written": [...], "skipped": [...], "per_input": {name:
        summary}, "shard": "i/N" | None}``.
    """
    from napari_cryoguard._atomic import remove_orphans

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CryoGuardError(f"{out_dir} is a file; --out-dir needs a folder")
    outs = _unique_outputs(list(items), out_dir, suffix)
    pairs = shard(list(zip(items, outs, strict=True)), which)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_orphans(out_dir)
    finished = done_fn([o for _, o in pairs]) if done_fn else [o.is_file() for _, o in pairs]
    written, skipped, per_input = [], [], {}
    for (item, out), done in zip(pairs, finished, strict=True):
        if done:
            skipped.append(str(out))
            if log:
                log(f"{out.name}: already there, skipped")
            continue
        per_input[_stem(item)] = work(item, out)
        written.append(str(out))
    return {"outputs": [str(o) for _, o in pairs], "written": written, "skipped": skipped,
            "per_input": per_input,
            "shard": None if which is None else f"{which[0]}/{which[1]}"}


# --------------------------------------------------------------------------- merge


def _merge_inputs(specs: Iterable[str | os.PathLike], suffix: str, out: Path) -> list[Path]:
    files: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.is_file()
                                and q.suffix.lower() == suffix and not q.name.startswith(".")))
        else:
            files.extend(expand_inputs([p], tomograms_star=False))
    files = [f for f in files if os.path.abspath(f) != os.path.abspath(out)]
    files = sorted(dict.fromkeys(files), key=lambda f: (f.name, str(f)))
    if not files:
        raise CryoGuardError(f"nothing to merge: no {suffix} files in the inputs given")
    for f in files:
        if not f.is_file():
            raise CryoGuardError(f"{f}: no such file to merge")
    return files


def merge_outputs(inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                  batch_rows: int = 256) -> dict:
    """Join per-tomogram outputs into one file of the same kind, in file-name order.

    ``inputs`` are files, globs or folders (a folder contributes its files with ``out``'s
    suffix). By the suffix of ``out`` and the kind of the inputs:

    * ``.npz`` datasets (``cryoguard extract``): cubes, labels, coordinates and tomogram
      names concatenated, streamed block by block; class names, voxel size and
      normalisation must agree;
    * ``.npz`` attack results: every per-sample array concatenated, a ``source`` member
      naming each row's file, ``metadata`` listing each file's metadata;
    * ``.csv`` predictions: rows concatenated with a ``source`` column (the file's stem);
      headers must agree;
    * ``.star`` / ``.csv`` picks: rows concatenated (converted to the first file's voxel
      size, with a note) and written with :func:`napari_cryoguard.io.write_picks`.

    Returns a JSON-able summary (``n``, ``inputs``, ``kind``).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    files = _merge_inputs(inputs, suffix, out)
    if suffix == ".npz":
        from napari_cryoguard.data import DATASET_KIND, file_kind

        kinds = {file_kind(f) for f in files}
        if kinds == {DATASET_KIND}:
            return _merge_datasets(files, out, batch_rows)
        if len(kinds) == 1 and "attack result" in str(next(iter(kinds))):
            return _merge_attacks(files, out)
        raise CryoGuardError(
            f"cannot merge these .npz files: they are {sorted(map(str, kinds))}; merge takes "
            "datasets or attack results, all of one kind")
    if suffix == ".csv" and _is_predictions(files[0]):
        return _merge_predictions(files, out)
    if suffix in (".star", ".csv"):
        return _merge_picks(files, out)
    raise CryoGuardError(f"merge writes .npz, .csv or .star, got {out.name}")


def _merge_datasets(files: list[Path], out: Path, batch_rows: int) -> dict:
    from napari_cryoguard.data import DatasetWriter, iter_rows, load_dataset

    first = load_dataset(files[0], mmap=True)
    sets = [first] + [load_dataset(f, mmap=True) for f in files[1:]]
    for f, ds in zip(files, sets, strict=True):
        for what, a, b in (("class names", ds.class_names, first.class_names),
                           ("voxel size", ds.voxel_size, first.voxel_size),
                           ("normalisation", ds.normalized, first.normalized)):
            if a != b:
                raise CryoGuardError(f"{f.name}: {what} {a!r} differ from {files[0].name}'s "
                                     f"{b!r}; only datasets made alike can be merged")
        for what in ("labels", "coords"):
            if (getattr(ds, what) is None) != (getattr(first, what) is None):
                raise CryoGuardError(f"{f.name} and {files[0].name}: one has {what}, the "
                                     "other not; only datasets made alike can be merged")
    with_names = any(ds.tomo_names is not None for ds in sets)
    meta = {"source": "merge", "inputs": [f.name for f in files],
            "metas": [ds.meta for ds in sets]}
    with DatasetWriter(out, class_names=first.class_names, voxel_size=first.voxel_size,
                       normalized=first.normalized, meta=meta) as w:
        for f, ds in zip(files, sets, strict=True):
            names = ds.tomo_names if ds.tomo_names is not None else np.full(len(ds), f.stem)
            for lo, rows in iter_rows(ds.volumes, batch_rows):
                sl = slice(lo, lo + len(rows))
                w.append(rows, None if ds.labels is None else ds.labels[sl],
                         None if ds.coords is None else ds.coords[sl],
                         names[sl] if with_names else None)
    return {"merged": str(out), "kind": "dataset", "n": int(w.n),
            "inputs": [str(f) for f in files]}


def _merge_attacks(files: list[Path], out: Path) -> dict:
    from napari_cryoguard.data import NpzWriter

    metas, n, keys = [], 0, None
    with NpzWriter(out) as w:
        for f in files:
            with np.load(f, allow_pickle=False) as z:
                names = [k for k in z.files if k != "metadata"]
                if keys is None:
                    keys = names
                elif names != keys:
                    raise CryoGuardError(f"{f.name} holds {names}, {files[0].name} {keys}; "
                                         "only results of one attack can be merged")
                metas.append({"file": f.name, **json.loads(str(z["metadata"]))})
                rows = 0
                for k in keys:
                    arr = z[k]
                    w.append(k, arr)
                    rows = len(arr)
                w.append("source", np.full(rows, f.stem))
                n += rows
        w.set("metadata", np.array(json.dumps({"merged": metas}, default=str)))
    return {"merged": str(out), "kind": "attack result", "n": n,
            "inputs": [str(f) for f in files]}


def _is_predictions(path: Path) -> bool:
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.readline().startswith("index,predicted,predicted_name")


def _merge_predictions(files: list[Path], out: Path) -> dict:
    import csv

    from napari_cryoguard._atomic import atomic_output

    header = None
    n = 0
    with atomic_output(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst)
        for f in files:
            with open(f, newline="", encoding="utf-8") as src:
                reader = csv.reader(src)
                head = next(reader, None)
                if header is None:
                    header = head
                    writer.writerow([*head, "source"])
                elif head != header:
                    raise CryoGuardError(f"{f.name}: columns {head} differ from "
                                         f"{files[0].name}'s {header}")
                for row in reader:
                    writer.writerow([*row, f.stem])
                    n += 1
    return {"merged": str(out), "kind": "predictions", "n": n,
            "inputs": [str(f) for f in files]}


def _merge_picks(files: list[Path], out: Path) -> dict:
    from napari_cryoguard.io import Picks, read_picks, write_picks

    parts = [read_picks(f) for f in files]
    vs = parts[0].voxel_size
    parts = [p.at_voxel_size(vs, source=f.name) for p, f in zip(parts, files, strict=True)]
    names = [p.tomo_names if p.tomo_names is not None else np.full(len(p), f.stem)
             for p, f in zip(parts, files, strict=True)]
    has_scores = all(p.scores is not None for p in parts)
    has_labels = all(p.labels is not None for p in parts) and \
        len({tuple(p.class_names or ()) for p in parts}) == 1
    notes = [n for p in parts for n in p.notes]
    merged = Picks(
        coords=np.concatenate([p.coords for p in parts]),
        scores=np.concatenate([p.scores for p in parts]) if has_scores else None,
        labels=np.concatenate([p.labels for p in parts]) if has_labels else None,
        class_names=parts[0].class_names if has_labels else None,
        tomo_names=np.concatenate(names),
        voxel_size=vs,
        notes=list(dict.fromkeys(notes)),
    )
    write_picks(out, merged)
    return {"merged": str(out), "kind": "picks", "n": int(len(merged)),
            "inputs": [str(f) for f in files], "notes": merged.notes}


def describe(summary: dict[str, Any]) -> str:
    """One line for the log: how many outputs were written and skipped."""
    return (f"{len(summary['written'])} written, {len(summary['skipped'])} already there"
            + (f" (shard {summary['shard']})" if summary.get("shard") else ""))
