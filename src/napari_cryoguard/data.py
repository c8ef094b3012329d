"""Subtomogram datasets and their file format.

A :class:`SubtomogramDataset` is a stack of cubes with optional labels, class names,
source coordinates and tomogram names; it is what extraction produces and what the
classifiers train and are attacked on.

File format (``.npz``, version 1)
---------------------------------
An uncompressed NumPy ``.npz`` archive (a zip of ``.npy`` arrays), written atomically
(a temporary file in the same directory, then ``os.replace``) and read with
``allow_pickle=False``, so loading never unpickles anything. Members:

=====================  ===========================  ==========================================
key                    dtype / shape                meaning
=====================  ===========================  ==========================================
``format_version``     int64, ()                    1
``volumes``            float32, (N, D, D, D)        the cubes, ZYX each
``labels``             int64, (N,), optional        0-based class index, -1 = unknown
``coords``             float64, (N, 3), optional    ZYX voxel centres in the source tomogram
``tomo_names``         unicode, (N,), optional      source tomogram of each cube
``metadata``           unicode, ()                  JSON object, see below
=====================  ===========================  ==========================================

``metadata`` holds ``{"class_names": [...] | null, "voxel_size": float (Angstrom),
"normalized": bool, "meta": {...}}``; ``meta`` is free-form JSON (e.g. the picking
parameters). Loading checks the version, the members' presence, dtypes and shapes, and
that labels index into ``class_names``; any problem raises
:class:`~napari_cryoguard.errors.CryoGuardError`.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard._atomic import StreamingWriter, atomic_output
from napari_cryoguard.checks import check_float, check_number
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "FORMAT_VERSION",
    "DatasetWriter",
    "NpzWriter",
    "SubtomogramDataset",
    "iter_extracted",
    "iter_rows",
    "prefetch",
    "load_dataset",
    "release_pages",
    "save_dataset",
]

#: Version of the ``.npz`` dataset format written by :func:`save_dataset`.
FORMAT_VERSION = 1

_ARRAY_KEYS = ("volumes", "labels", "coords", "tomo_names")
_KNOWN_KEYS = {"format_version", "metadata", *_ARRAY_KEYS}


@dataclass
class SubtomogramDataset:
    """Extracted (or simulated) subtomograms with their annotations.

    Attributes
    ----------
    volumes : ndarray, shape (N, D, D, D), float32
        The cubes (a subtomogram is a cube, DESIGN.md "Conventions").
    labels : ndarray, shape (N,), int64, optional
        0-based class per cube, -1 for unknown.
    class_names : list of str, optional
        Names the labels index into.
    coords : ndarray, shape (N, 3), float64, optional
        ZYX voxel centres in the source tomogram.
    tomo_names : ndarray, shape (N,), str, optional
        Source tomogram per cube; a single string is repeated for every cube.
    voxel_size : float
        Voxel size in Angstrom.
    normalized : bool
        Whether each cube is normalised to zero mean, unit variance.
    meta : dict
        Free-form JSON-serialisable metadata (picking parameters, provenance).
    """

    volumes: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    coords: np.ndarray | None = None
    tomo_names: np.ndarray | None = None
    voxel_size: float = 1.0
    normalized: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vol = np.asarray(self.volumes)
        if vol.ndim != 4:
            raise CryoGuardError(f"dataset volumes must be (N, D, H, W), got shape {vol.shape}")
        if not (vol.shape[1] == vol.shape[2] == vol.shape[3]):
            raise CryoGuardError(f"subtomograms must be cubes, got {vol.shape[1:]}")
        if not np.issubdtype(vol.dtype, np.floating) and not np.issubdtype(vol.dtype, np.integer):
            raise CryoGuardError(f"dataset volumes must be numeric, got dtype {vol.dtype}")
        self.volumes = vol.astype(np.float32, copy=False)
        n = len(vol)
        if self.labels is not None:
            lab = np.asarray(self.labels)
            if lab.shape != (n,) or not (np.issubdtype(lab.dtype, np.integer) or lab.size == 0):
                raise CryoGuardError(
                    f"labels must be {n} integers, got shape {lab.shape} dtype {lab.dtype}"
                )
            self.labels = lab.astype(np.int64, copy=False)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
        if self.labels is not None and n:
            hi = len(self.class_names) if self.class_names is not None else None
            if self.labels.min() < -1 or (hi is not None and self.labels.max() >= hi):
                raise CryoGuardError(
                    f"labels range {self.labels.min()}..{self.labels.max()} does not fit "
                    f"{hi} class names"
                )
        if self.coords is not None:
            c = np.asarray(self.coords, dtype=np.float64)
            if c.size == 0:
                c = c.reshape(0, 3)
            if c.shape != (n, 3):
                raise CryoGuardError(f"coords must have shape ({n}, 3), got {c.shape}")
            self.coords = c
        if self.tomo_names is not None:
            if isinstance(self.tomo_names, str):
                t = np.full(n, self.tomo_names)
            else:
                t = np.asarray(self.tomo_names).astype(str)
            if t.shape != (n,):
                raise CryoGuardError(f"tomo_names must have shape ({n},), got {t.shape}")
            self.tomo_names = t
        self.voxel_size = check_float("voxel_size (Angstrom)", self.voxel_size, minimum=0.0,
                                      strict=True)
        self.normalized = bool(self.normalized)
        self.meta = dict(self.meta)

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def cube(self) -> int:
        """Cube edge length in voxels."""
        return int(self.volumes.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(class_names)``, else ``max(labels) + 1``, else 0."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is not None and len(self.labels):
            return int(self.labels.max()) + 1
        return 0

    def subset(self, index: Any) -> SubtomogramDataset:
        """The cubes selected by a boolean mask or an index array (a new dataset)."""
        idx = np.asarray(index)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise CryoGuardError(f"boolean subset mask needs shape ({len(self)},), got {idx.shape}")
        try:
            volumes = self.volumes[idx]
        except IndexError as err:
            raise CryoGuardError(f"subset index out of range: {err}") from None
        if volumes.ndim != 4:
            raise CryoGuardError("subset needs a 1D index array or boolean mask")
        return SubtomogramDataset(
            volumes=volumes,
            labels=None if self.labels is None else self.labels[idx],
            class_names=None if self.class_names is None else list(self.class_names),
            coords=None if self.coords is None else self.coords[idx],
            tomo_names=None if self.tomo_names is None else self.tomo_names[idx],
            voxel_size=self.voxel_size,
            normalized=self.normalized,
            meta=dict(self.meta),
        )

    @classmethod
    def from_extraction(
        cls,
        subtomograms: Any,
        picks: Any = None,
        *,
        tomo_name: str | None = None,
        voxel_size: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SubtomogramDataset:
        """Build a dataset from :func:`~napari_cryoguard.picking.extract_subtomograms` output.

        ``picks`` (a :class:`~napari_cryoguard.io.picks.Picks`) supplies coordinates,
        labels, class names, tomogram names and voxel size for the rows that were kept
        (``subtomograms.index``, which must then be present).
        """
        labels = class_names = coords = tomo_names = None
        vs = 1.0
        if picks is not None:
            if subtomograms.index is None:
                raise CryoGuardError("extract with return_index=True to attach picks")
            idx = subtomograms.index
            coords = picks.coords[idx]
            labels = None if picks.labels is None else picks.labels[idx]
            class_names = picks.class_names
            tomo_names = None if picks.tomo_names is None else picks.tomo_names[idx]
            vs = picks.voxel_size
        if tomo_name is not None:
            tomo_names = tomo_name
        return cls(
            volumes=subtomograms.volumes,
            labels=labels,
            class_names=class_names,
            coords=coords,
            tomo_names=tomo_names,
            voxel_size=vs if voxel_size is None else voxel_size,
            normalized=subtomograms.normalized,
            meta={} if meta is None else dict(meta),
        )


def save_dataset(
    path: str | os.PathLike, dataset: SubtomogramDataset | None = None, **fields: Any
) -> Path:
    """Write a dataset as a version-1 ``.npz`` (format in the module docstring).

    Parameters
    ----------
    path : path-like
        Output file, written exactly there (no suffix added), atomically.
    dataset : SubtomogramDataset, optional
        The dataset; alternatively pass its fields as keywords
        (``save_dataset(p, volumes=v, labels=y, class_names=names)``).

    Returns
    -------
    Path
        The written file.
    """
    if dataset is None:
        if "volumes" not in fields:
            raise CryoGuardError("save_dataset needs a dataset or at least volumes=")
        dataset = SubtomogramDataset(**fields)
    elif fields:
        raise CryoGuardError("pass either a dataset or its fields as keywords, not both")
    try:
        metadata = json.dumps(
            {
                "class_names": dataset.class_names,
                "voxel_size": dataset.voxel_size,
                "normalized": dataset.normalized,
                "meta": dataset.meta,
            },
            allow_nan=False,
        )
    except (TypeError, ValueError) as err:
        raise CryoGuardError(f"dataset meta must be JSON-serialisable: {err}") from None
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "metadata": np.asarray(metadata),
        "volumes": np.ascontiguousarray(dataset.volumes, dtype=np.float32),
    }
    if dataset.labels is not None:
        arrays["labels"] = dataset.labels.astype(np.int64)
    if dataset.coords is not None:
        arrays["coords"] = dataset.coords.astype(np.float64)
    if dataset.tomo_names is not None:
        arrays["tomo_names"] = np.asarray(dataset.tomo_names, dtype=str)
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


class NpzWriter(StreamingWriter):
    """Write an uncompressed ``.npz`` whose large members arrive in row blocks.

    Rows given to :meth:`append` go to a spool file beside the output (named like the
    temporary files of :func:`~napari_cryoguard._atomic.atomic_output`, so a killed
    writer's spool is removed as an orphan by the next write to the same target); on
    :meth:`close` the archive is assembled member by member (each ``.npy`` header with
    the final row count, then the rows copied in 1 MiB pieces) and renamed into place
    atomically. Memory is bounded by one block, never by the number of rows. The file is
    what ``numpy.savez`` would write for the concatenated arrays (``numpy.load`` and
    :func:`load_dataset` read it).

    String members (``U`` dtype, e.g. tomogram names) are small and kept in memory.
    Used as a context manager, an exception discards everything and leaves any earlier
    file at ``path`` as it was.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._whole: dict[str, np.ndarray] = {}
        self._spools: dict[str, tuple[Any, np.dtype, tuple[int, ...], list[int]]] = {}
        self._strings: dict[str, list[np.ndarray]] = {}
        self._order: list[str] = []
        self.closed = False

    def set(self, name: str, array: Any) -> None:
        """Store a whole (small) member, e.g. metadata or a version number."""
        if name not in self._order:
            self._order.append(name)
        self._whole[name] = np.asarray(array)

    def append(self, name: str, rows: Any) -> None:
        """Append rows (first axis) to member ``name``; dtype and row shape are fixed by
        the first block (later blocks are cast to that dtype)."""
        rows = np.asarray(rows)
        if rows.ndim == 0:
            raise CryoGuardError(f"{self.path.name}: member {name!r} needs rows, got a scalar")
        if rows.dtype.hasobject:
            raise CryoGuardError(f"{self.path.name}: member {name!r} holds Python objects")
        if name not in self._order:
            self._order.append(name)
        if rows.dtype.kind == "U" or name in self._strings:
            self._strings.setdefault(name, []).append(rows.astype(str))
            return
        spool = self._spools.get(name)
        if spool is None:
            tmp = self.path.with_name(
                f".{self.path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
            fh = open(tmp, "w+b")  # noqa: SIM115 - closed in close()/abort()
            spool = (fh, rows.dtype, rows.shape[1:], [0])
            self._spools[name] = spool
        fh, dtype, trail, count = spool
        if rows.shape[1:] != trail:
            raise CryoGuardError(
                f"{self.path.name}: member {name!r} has rows of shape {trail}, got a block of "
                f"{rows.shape[1:]}")
        fh.write(np.ascontiguousarray(rows, dtype=dtype).tobytes())
        count[0] += len(rows)

    def rows(self, name: str) -> int:
        """Rows appended to ``name`` so far."""
        if name in self._spools:
            return self._spools[name][3][0]
        return sum(len(b) for b in self._strings.get(name, []))

    def close(self) -> Path:
        """Assemble the archive and rename it into place; returns the path."""
        if self.closed:
            return self.path
        try:
            with atomic_output(self.path) as tmp, zipfile.ZipFile(
                tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True
            ) as zf:
                for name in self._order:
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                        if name in self._whole:
                            np.lib.format.write_array(out, self._whole[name], allow_pickle=False)
                        elif name in self._strings:
                            arr = np.concatenate(self._strings[name])
                            np.lib.format.write_array(out, arr, allow_pickle=False)
                        else:
                            fh, dtype, trail, count = self._spools[name]
                            header = {"descr": np.lib.format.dtype_to_descr(dtype),
                                      "fortran_order": False, "shape": (count[0], *trail)}
                            try:
                                np.lib.format.write_array_header_1_0(out, header)
                            except ValueError:  # pragma: no cover - very long headers only
                                np.lib.format.write_array_header_2_0(out, header)
                            fh.flush()
                            fh.seek(0)
                            shutil.copyfileobj(fh, out, 2**20)
        finally:
            self._discard()
        self.closed = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (the target is left untouched)."""
        self._discard()
        self.closed = True

    def _discard(self) -> None:
        for fh, *_ in self._spools.values():
            name = fh.name
            fh.close()
            try:
                os.unlink(name)
            except OSError:
                pass
        self._spools.clear()


class DatasetWriter(StreamingWriter):
    """Write a version-1 dataset file block by block (:func:`save_dataset` streamed).

    Parameters
    ----------
    path
        Output ``.npz``; written atomically when the writer closes.
    class_names, voxel_size, normalized, meta
        As in :class:`SubtomogramDataset`; ``meta`` may still be changed (the ``meta``
        attribute) until the writer closes.

    Blocks are checked like a :class:`SubtomogramDataset` (cubes, label range, shapes);
    either every block has labels (coords, tomogram names) or none has. The result is
    the same file as ``save_dataset`` of the concatenated blocks.
    """

    def __init__(self, path: str | os.PathLike, *, class_names: list[str] | None = None,
                 voxel_size: float = 1.0, normalized: bool = True,
                 meta: dict[str, Any] | None = None) -> None:
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.voxel_size = float(voxel_size)
        self.normalized = bool(normalized)
        self.meta = {} if meta is None else dict(meta)
        self._npz = NpzWriter(path)
        self._npz.set("format_version", np.asarray(FORMAT_VERSION, dtype=np.int64))
        self._npz.set("metadata", np.asarray(""))  # filled in on close; keeps member order
        self._fields: tuple[bool, bool, bool] | None = None
        self.n = 0

    @property
    def path(self) -> Path:
        return self._npz.path

    def append(self, volumes: Any, labels: Any = None, coords: Any = None,
               tomo_names: Any = None) -> None:
        """Append a block of cubes with their (optional) labels, coords and names."""
        block = SubtomogramDataset(volumes=volumes, labels=labels, class_names=self.class_names,
                                   coords=coords, tomo_names=tomo_names,
                                   voxel_size=self.voxel_size, normalized=self.normalized)
        have = (block.labels is not None, block.coords is not None, block.tomo_names is not None)
        if self._fields is None:
            self._fields = have
        elif have != self._fields:
            raise CryoGuardError(
                f"{self.path.name}: every block needs the same fields (labels, coords, "
                "tomo_names) as the first")
        self._npz.append("volumes", block.volumes)
        if block.labels is not None:
            self._npz.append("labels", block.labels)
        if block.coords is not None:
            self._npz.append("coords", block.coords)
        if block.tomo_names is not None:
            self._npz.append("tomo_names", block.tomo_names)
        self.n += len(block)

    def close(self) -> Path:
        """Write the metadata, assemble the archive, rename it into place."""
        try:
            metadata = json.dumps({"class_names": self.class_names, "voxel_size": self.voxel_size,
                                   "normalized": self.normalized, "meta": self.meta},
                                  allow_nan=False)
        except (TypeError, ValueError) as err:
            self._npz.abort()
            raise CryoGuardError(f"dataset meta must be JSON-serialisable: {err}") from None
        if self.n == 0:
            self._npz.abort()
            raise CryoGuardError(f"{self.path.name}: no subtomograms were written")
        self._npz.set("metadata", np.asarray(metadata))
        return self._npz.close()

    def abort(self) -> None:
        self._npz.abort()


def release_pages(array: Any) -> None:
    """Drop the resident pages of a read-only memory map behind ``array`` (no-op for
    anything else), so streaming through a mapped file keeps the process's memory at
    one block: the pages stay in the page cache and are read again if touched."""
    base = array
    while base is not None:
        if isinstance(base, np.memmap) and base.mode == "r":
            mm = base.base
            if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise"):
                try:
                    mm.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError, AttributeError):
                    pass
            return
        base = getattr(base, "base", None)


def iter_rows(array: Any, size: int, indices: Any = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, rows)`` blocks of at most ``size`` rows of ``array`` as float32.

    ``indices`` selects (and orders) the rows; ``start`` counts blocks in that order.
    Pages of a memory-mapped ``array`` are released after each block
    (:func:`release_pages`).
    """
    n = len(array) if indices is None else len(indices)
    size = max(1, int(size))
    for lo in range(0, n, size):
        if indices is None:
            rows = np.array(array[lo:lo + size], dtype=np.float32)
        else:
            rows = np.array(array[np.asarray(indices[lo:lo + size])], dtype=np.float32)
        release_pages(array)
        yield lo, rows


def prefetch(blocks: Any, depth: int = 2) -> Iterator[Any]:
    """Run the iterable ``blocks`` in a worker thread, ``depth`` items ahead of the caller.

    While the caller works on one block (a forward pass, which releases the GIL), the
    worker reads and prepares the next ones, so reading and computing overlap. Items come
    out in order; an exception in the worker is raised in the caller at that place.
    Closing the generator early stops the worker after its current item.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in blocks:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, end))
        except BaseException as exc:  # handed to the caller
            q.put((False, exc))

    thread = threading.Thread(target=work, name="cryoguard-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def iter_extracted(volume: Any, coords: Any, size: int, batch_size: int, *,
                   normalize: bool = True, border: str = "pad") -> Iterator[np.ndarray]:
    """Cubes around ``coords`` (ZYX voxels) of a (memory-mapped) tomogram, a batch at a time.

    Each block is :func:`~napari_cryoguard.picking.extract_subtomograms` of
    ``batch_size`` picks (``border="pad"`` keeps one cube per pick, so rows stay aligned
    with ``coords``; with ``"skip"`` cubes crossing a face are left out). Wrap it in
    :func:`prefetch` to extract the next batch while the model runs on this one.
    """
    from napari_cryoguard.picking import extract_subtomograms

    c = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    for lo in range(0, len(c), max(1, int(batch_size))):
        sub = extract_subtomograms(volume, c[lo:lo + batch_size], size=size, normalize=normalize,
                                   border=border)
        release_pages(volume)
        yield sub.volumes


DATASET_KIND = "a dataset (.npz)"


def file_kind(path: str | os.PathLike) -> str | None:
    """What a file is, from its first bytes and suffix ("a tomogram (MRC)", "a pick file
    (STAR)", ...), for error messages; ``None`` when it cannot tell (or cannot read it).

    Cheap: reads at most the 1024-byte MRC header or a zip's member list.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
            return "a damaged zip/.npz archive"
        if "format_version.npy" in names and "volumes.npy" in names:
            return DATASET_KIND
        if "x_adv.npy" in names:
            return "an attack result (.npz from `cryoguard attack`)"
        return "an .npz archive that is not a cryoguard dataset"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if len(head) >= 212 and head[208:211] == b"MAP":
        nz = int(np.frombuffer(head[8:12], dtype="<i4")[0])
        return "a 2D image (MRC)" if nz == 1 else "a tomogram (MRC)"
    if suffix in (".mrc", ".map", ".rec", ".st"):
        return "a tomogram (MRC)" if len(head) == 1024 else "an MRC file too short for its header"
    if suffix == ".star":
        return "a pick file (STAR)"
    if suffix == ".csv":
        return "a CSV table (picks or predictions)"
    if suffix == ".safetensors":
        return "a model checkpoint (.safetensors)"
    return None


MAX_METADATA_BYTES = 16 * 2**20
"""Largest ``metadata`` member a dataset may hold (16 MiB of JSON)."""


def require_finite(volumes: np.ndarray, what: str) -> None:
    """Raise :class:`CryoGuardError` if ``volumes`` hold NaN or infinity.

    The message gives the number of non-finite voxels, of cubes holding them and the
    first few cube indices, so the bad cubes can be found and dropped.
    """
    vol = np.asarray(volumes)
    if vol.size == 0:
        return
    flat = vol.reshape(len(vol), -1) if vol.ndim > 1 else vol.reshape(-1, 1)
    bad_per = np.zeros(len(flat), dtype=np.int64)
    step = max(1, 2**20 // max(flat.shape[1], 1))  # 4 MiB of float32 per block
    for i in range(0, len(flat), step):
        bad_per[i:i + step] = (~np.isfinite(flat[i:i + step])).sum(axis=1)
        release_pages(vol)
    if not bad_per.any():
        return
    idx = np.flatnonzero(bad_per)
    first = ", ".join(str(int(i)) for i in idx[:5]) + (", ..." if len(idx) > 5 else "")
    raise CryoGuardError(
        f"{what} hold {int(bad_per.sum()):,} NaN or infinite voxels in {len(idx):,} of "
        f"{len(flat):,} cubes (first: {first}); remove or repair those cubes first"
    )


def _check_members(path: Path) -> None:
    """Refuse, before anything is allocated, archives that cannot be what they claim.

    Every member must be stored uncompressed (the documented format; a compressed member
    could expand a small file into any amount of memory) and its ``.npy`` header must
    describe a plain (non-object) array whose bytes fit in the member's stored size, so
    a 3 KB file whose header claims 1e9 cubes is refused here, not by the allocator.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CryoGuardError(
                        f"{path}: member {info.filename!r} is compressed; datasets are "
                        "uncompressed .npz files (numpy.savez, not savez_compressed), so that "
                        "their size on disk bounds what they hold"
                    )
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        header = np.lib.format.read_array_header_1_0(fh, max_header_size=10000)
                    elif version == (2, 0):
                        header = np.lib.format.read_array_header_2_0(fh, max_header_size=10000)
                    else:
                        raise CryoGuardError(
                            f"{path}: member {info.filename!r} uses .npy format {version}; "
                            "datasets use 1.0 or 2.0"
                        )
                    shape, _fortran, dtype = header
                    header_end = fh.tell()
                if dtype.hasobject:
                    raise CryoGuardError(
                        f"{path}: member {info.filename!r} holds Python objects "
                        f"(dtype {dtype}); datasets hold only numbers and strings"
                    )
                if any(int(d) < 0 for d in shape):
                    raise CryoGuardError(
                        f"{path}: member {info.filename!r} claims the negative shape "
                        f"{tuple(shape)}; the file is corrupt"
                    )
                count = 1
                for d in shape:
                    count *= int(d)
                need = count * dtype.itemsize
                have = info.file_size - header_end
                if need > have:
                    raise CryoGuardError(
                        f"{path}: member {info.filename!r} claims shape {tuple(shape)} "
                        f"({need:,} bytes) but holds only {max(have, 0):,} bytes; the file is "
                        "truncated or corrupt"
                    )
                if info.filename == "metadata.npy" and need > MAX_METADATA_BYTES:
                    raise CryoGuardError(
                        f"{path}: metadata is {need:,} bytes; the limit is "
                        f"{MAX_METADATA_BYTES:,}"
                    )
    except CryoGuardError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError,
            NotImplementedError) as err:
        raise CryoGuardError(f"{path} is not a readable .npz dataset: {err}") from None


def _map_member(path: Path, name: str) -> np.ndarray:
    """A read-only memory map of the ``.npy`` member ``name`` of an uncompressed zip."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise CryoGuardError(f"{path}: member {name!r} has a damaged zip header")
        n_name = int.from_bytes(local[26:28], "little")
        n_extra = int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + n_name + n_extra)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10000)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10000)
        offset = fh.tell()
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                     order="F" if fortran else "C")


def load_dataset(path: str | os.PathLike, *, mmap: bool = False) -> SubtomogramDataset:
    """Read a dataset written by :func:`save_dataset`, validating it strictly.

    Never unpickles (``allow_pickle=False``). With ``mmap=True`` the volumes are a
    read-only memory map of the file (the format is uncompressed, so the cubes are read
    from disk only when used; the NaN check walks them in blocks and releases the pages
    again, see :func:`release_pages`): memory then stays bounded by what is in use.

    Raises
    ------
    CryoGuardError
        Missing file, not an ``.npz``, unknown format version, missing ``volumes`` or
        ``metadata``, bad metadata JSON, wrong dtypes or shapes; compressed or object
        members, or members whose header claims more than they hold (checked before
        anything is allocated); NaN or infinite voxels (counts and first cube indices).
    """
    path = Path(path)
    if not path.is_file():
        raise CryoGuardError(f"dataset file not found: {path}")
    kind = file_kind(path)
    if kind is not None and "archive" not in kind and kind != DATASET_KIND:
        # another kind of file (a tomogram, picks, a checkpoint): say what it is; a zip
        # that is not a dataset gets the precise messages below
        raise CryoGuardError(f"{path} is {kind}, not a dataset: datasets (.npz) come from "
                             "`cryoguard extract` or `cryoguard simulate-dataset`")
    _check_members(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except MemoryError:
        raise CryoGuardError(f"{path}: not enough memory to read this dataset") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as err:
        raise CryoGuardError(f"{path} is not a readable .npz dataset: {err}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CryoGuardError(f"{path} is a single .npy array, not an .npz dataset")
    with npz:
        try:
            keys = set(npz.files)
            if "format_version" not in keys:
                raise CryoGuardError(f"{path} is not a cryoguard dataset (no format_version)")
            version = npz["format_version"]
            if version.shape != () or not np.issubdtype(version.dtype, np.integer):
                raise CryoGuardError(f"{path}: malformed format_version")
            if int(version) != FORMAT_VERSION:
                raise CryoGuardError(
                    f"{path}: dataset format version {int(version)} is not supported "
                    f"(this version reads {FORMAT_VERSION})"
                )
            for key in ("volumes", "metadata"):
                if key not in keys:
                    raise CryoGuardError(f"{path}: dataset has no {key!r}")
            unknown = keys - _KNOWN_KEYS
            if unknown:
                raise CryoGuardError(f"{path}: unexpected members {sorted(unknown)}")
            meta_arr = npz["metadata"]
            if meta_arr.shape != () or meta_arr.dtype.kind != "U":
                raise CryoGuardError(f"{path}: metadata must be a JSON string")
            try:
                metadata = json.loads(str(meta_arr))
            except json.JSONDecodeError as err:
                raise CryoGuardError(f"{path}: metadata is not valid JSON: {err}") from None
            if not isinstance(metadata, dict):
                raise CryoGuardError(f"{path}: metadata must be a JSON object")
            volumes = _map_member(path, "volumes.npy") if mmap else npz["volumes"]
            if volumes.dtype != np.float32:
                raise CryoGuardError(f"{path}: volumes must be float32, got {volumes.dtype}")
            labels = npz["labels"] if "labels" in keys else None
            if labels is not None and labels.dtype.kind not in "iu":
                raise CryoGuardError(f"{path}: labels must be integers, got {labels.dtype}")
            coords = npz["coords"] if "coords" in keys else None
            if coords is not None and coords.dtype.kind != "f":
                raise CryoGuardError(f"{path}: coords must be floats, got {coords.dtype}")
            tomo_names = npz["tomo_names"] if "tomo_names" in keys else None
            if tomo_names is not None and tomo_names.dtype.kind != "U":
                raise CryoGuardError(f"{path}: tomo_names must be strings")
        except MemoryError:
            raise CryoGuardError(f"{path}: not enough memory to read this dataset") from None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError,
                NotImplementedError) as err:
            raise CryoGuardError(f"{path}: corrupt dataset member: {err}") from None
    require_finite(volumes, f"{path.name}: the subtomograms")
    release_pages(volumes)
    class_names = metadata.get("class_names")
    if class_names is not None and (
        not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names)
    ):
        raise CryoGuardError(f"{path}: class_names must be a list of strings")
    meta = metadata.get("meta", {})
    if not isinstance(meta, dict):
        raise CryoGuardError(f"{path}: meta must be a JSON object")
    voxel_size = metadata.get("voxel_size", 1.0)
    check_number(f"{path}: voxel_size", voxel_size, minimum=0.0, strict=True)
    normalized = metadata.get("normalized", True)
    if not isinstance(normalized, bool):
        raise CryoGuardError(f"{path}: normalized must be true or false")
    return SubtomogramDataset(volumes=volumes, labels=labels, class_names=class_names,
                              coords=coords, tomo_names=tomo_names,
                              voxel_size=float(voxel_size), normalized=normalized, meta=meta)
