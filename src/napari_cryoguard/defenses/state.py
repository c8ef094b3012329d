"""The training-state file beside a checkpoint: optimizer, generators, best weights.

``<stem>.state.safetensors`` holds what a checkpoint does not and an exact resume
needs: the optimizer's state, the early-stopping state and best weights, and the
random-number generators' states (torch, CUDA, numpy, Python) of every rank
(:func:`pack_rank_streams`, :func:`rank_streams`). It is a safetensors file (never
unpickled) with a JSON header under :data:`STATE_KEY`.

The checkpoint and its state file are one consistent pair: both carry the same
``state_token``. The state is written first to ``<stem>.state.pending.safetensors``
(:func:`pending_state_path_for`), then the checkpoint, then the pending file is renamed
over the state file; a kill at any point leaves a checkpoint whose token is held by one
of the two state files, and :meth:`~napari_cryoguard.defenses.trainer.Trainer.restore`
loads the one that matches. :func:`check_output` refuses an output path that cannot be
written before any data is read.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_cryoguard._atomic import atomic_output
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "STATE_KEY",
    "check_output",
    "check_resume_metadata",
    "checkpoint_path",
    "flatten_optimizer",
    "load_training_state",
    "pack_rank_streams",
    "pending_state_path_for",
    "rank_streams",
    "rng_state",
    "save_state_file",
    "set_rng_state",
    "state_path_for",
    "unflatten_optimizer",
]

STATE_KEY = "cryoguard_state"


def state_path_for(checkpoint: str | os.PathLike[str]) -> Path:
    """``a/b.safetensors`` -> ``a/b.state.safetensors`` (optimizer state, best weights)."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(f"{stem}.state.safetensors")


def pending_state_path_for(checkpoint: str | os.PathLike[str]) -> Path:
    """``a/b.safetensors`` -> ``a/b.state.pending.safetensors``.

    The state of a checkpoint being written; renamed to :func:`state_path_for` once
    the checkpoint is in place. Found after a kill between the two renames, it is the
    state that belongs to the (new) checkpoint.
    """
    p = state_path_for(checkpoint)
    return p.with_name(p.name[: -len(".safetensors")] + ".pending.safetensors")


def checkpoint_path(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


def check_output(path: Path) -> None:
    """Refuse an output path that cannot be written, before any training is done."""
    if path.is_dir():
        raise CryoGuardError(f"the output {path} is a folder; give a .safetensors file path")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CryoGuardError(
            f"cannot write the checkpoint {path}: {exc.strerror or exc} (in {parent})"
        ) from exc
    for p in (state_path_for(path), pending_state_path_for(path)):
        if p.is_dir():
            raise CryoGuardError(f"{p} is a folder; the training state is written there")


def rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The states of torch's, numpy's and Python's global generators (tensors, JSON)."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if device.type == "cuda" and torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device).clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    version, pstate, gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": {"version": version, "state": list(pstate), "gauss": gauss},
    }
    return tensors, meta


def set_rng_state(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], device: torch.device
) -> None:
    """Put the generators back in the state :func:`rng_state` recorded."""
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    if "rng.cuda" in tensors and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"].to(torch.uint8), device)
    if "rng.numpy" in tensors and "numpy" in meta:
        n = meta["numpy"]
        keys = tensors["rng.numpy"].numpy().astype(np.uint32)
        state = (n["kind"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached"]))
        np.random.set_state(state)  # noqa: NPY002
    if "python" in meta:
        py = meta["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def _rank_prefix(rank: int) -> str:
    return f"rank{int(rank)}."


def pack_rank_streams(
    tensors: dict[str, torch.Tensor],
    streams: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Add every rank's generator states (:func:`rng_state`, in rank order) to ``tensors``.

    Rank 0's go under their plain names (``rng.torch``...), rank ``r``'s under
    ``rank<r>.rng.torch``...; returns (rank 0's JSON part, ``{"<r>": JSON part}``).
    """
    for rank, (t, _) in enumerate(streams):
        prefix = _rank_prefix(rank) if rank else ""
        tensors.update({prefix + k: v for k, v in t.items()})
    return dict(streams[0][1]), {str(r): dict(m) for r, (_, m) in enumerate(streams) if r}


def rank_streams(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], rank: int, world_size: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """This rank's generator states from a state file's (tensors, metadata), for
    :func:`set_rng_state`; None when the file was saved by another number of processes
    (or before the ranks' states were stored) and holds none for this rank."""
    if int(meta.get("world_size", 1) or 1) != int(world_size):
        return None
    if rank == 0:
        t = {k: v for k, v in tensors.items() if k.startswith("rng.")}
        m = meta.get("rng")
    else:
        prefix = _rank_prefix(rank)
        t = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix + "rng.")}
        m = (meta.get("rng_ranks") or {}).get(str(rank))
    if not t or not isinstance(m, Mapping):
        return None
    return t, dict(m)


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict -> (tensors ``opt.<param>.<key>``, JSON for the rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("opt."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, d in (meta.get("scalars") or {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_state_file(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save

    # serialised here and written by us: safetensors' save_file raises its own
    # SafetensorError (not OSError) on a full disk, so `cryoguard train` showed a traceback
    blob = save(tensors, metadata={STATE_KEY: json.dumps(meta)})
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(blob)


def load_training_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a ``.state.safetensors`` file: (tensors, JSON metadata). Never unpickles."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {})[STATE_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise CryoGuardError(f"{path} is not a readable training-state file: {exc}") from exc
    return tensors, meta



def check_resume_metadata(meta: Mapping[str, Any], source: str) -> None:
    """Refuse, in one sentence, a checkpoint whose training fields cannot be resumed.

    The checkpoint schema (:func:`~napari_cryoguard.models.checkpoint.validate_metadata`)
    covers the model; this covers what the training loop reads back: ``history`` (a
    list of per-epoch dicts), ``defense`` (a name), ``defense_params`` / ``training`` /
    ``partial_epoch`` (dicts), ``epoch`` / ``step_in_epoch`` (counts).
    """
    if "history" not in meta or "defense" not in meta:
        raise CryoGuardError(f"{source} was not written by the training loop (no history); "
                             "it cannot be resumed")

    def bad(field: str, want: str) -> CryoGuardError:
        got = meta.get(field)
        return CryoGuardError(f"{source}: the checkpoint's {field!r} must be {want}, got "
                              f"{type(got).__name__} {str(got)[:60]!r}; it cannot be resumed")

    history = meta["history"]
    if not isinstance(history, list) or not all(isinstance(h, Mapping) for h in history):
        raise bad("history", "a list of per-epoch objects")
    if not isinstance(meta["defense"], str) or not meta["defense"]:
        raise bad("defense", "a defense name")
    for field in ("defense_params", "training", "partial_epoch"):
        if meta.get(field) is not None and not isinstance(meta[field], Mapping):
            raise bad(field, "an object")
    training = meta.get("training") or {}
    if training.get("dataset") is not None and not isinstance(training["dataset"], Mapping):
        raise CryoGuardError(f"{source}: the checkpoint's training.dataset must be an "
                             "object; it cannot be resumed")
    for field in ("epoch", "step_in_epoch"):
        value = meta.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(field, "a count >= 0")
