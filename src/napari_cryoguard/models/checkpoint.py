"""Save and load classifiers as ``.safetensors`` files that describe themselves.

A checkpoint holds the model's state dict as tensors and one JSON string under the
safetensors metadata key ``"cryoguard"`` with: ``format_version``, ``arch``,
``arch_params``, ``num_classes``, ``cube``, ``class_names``, ``voxel_size``
(Angstrom), ``normalization``, ``training`` (the recipe), ``metrics`` and anything
else the caller adds. Extra tensors (e.g. IMA per-sample margins) are stored under
``"extra.<name>"`` and come back in ``metadata["extra_tensors"]``.

Loading never unpickles: safetensors is a plain header + raw buffers, and a legacy
``.pt``/``.pth`` file is read only with ``torch.load(weights_only=True)`` (which
refuses arbitrary globals) and a warning. DESIGN.md, "Conventions".
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_cryoguard._atomic import atomic_output
from napari_cryoguard._checkpoint_header import METADATA_KEY, read_checkpoint_metadata
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.models.registry import build_model

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "WEIGHTS_DIR",
    "read_checkpoint_metadata",
    "bundled_models",
    "load_checkpoint",
    "load_default",
    "save_checkpoint",
    "validate_metadata",
]

FORMAT_VERSION = 1
EXTRA_PREFIX = "extra."
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "data" / "weights"
_DEFAULT_NAMES = ("cb3d-default", "ae-default")
_ALIASES = {"default": "cb3d-default"}
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}
_ARCH_KEYS = ("arch", "arch_params", "num_classes", "cube")

#: Values of the ``normalization`` field: ``"zscore"`` (per-sample zero mean, unit
#: variance, applied before the model) or ``"none"`` (the model takes the raw values).
NORMALIZATIONS = ("zscore", "none")
#: Bounds checked on loading, before anything is allocated (see validate_metadata).
MAX_CLASSES = 10000
CUBE_RANGE = (4, 512)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _as_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    try:
        return json.loads(json.dumps(obj, default=_json_default))
    except (TypeError, ValueError):
        return obj


def _model_recipe(model: nn.Module) -> dict[str, Any]:
    missing = [
        a for a in ("arch_name", "arch_params", "num_classes", "cube") if not hasattr(model, a)
    ]
    if missing:
        raise CryoGuardError(
            "only models made by napari_cryoguard.models.build_model can be saved "
            f"(missing attribute(s): {', '.join(missing)})"
        )
    return {
        "arch": model.arch_name,
        "arch_params": dict(model.arch_params),
        "num_classes": int(model.num_classes),
        "cube": int(model.cube),
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    metadata: Mapping[str, Any] | None = None,
    *,
    extra_tensors: Mapping[str, torch.Tensor | np.ndarray] | None = None,
) -> Path:
    """Write ``model`` and its description to a ``.safetensors`` file, atomically.

    Parameters
    ----------
    path
        Target file; ``.safetensors`` is appended if the name does not end with it.
        Parent folders are created. The file is written to a temporary file in the
        same folder and moved into place (``os.replace``), so a crash never leaves a
        half-written checkpoint.
    model
        A model from :func:`~napari_cryoguard.models.build_model` (it carries
        ``arch_name``, ``arch_params``, ``num_classes``, ``cube``).
    metadata
        JSON-serialisable dict. Recognised keys: ``class_names`` (list of
        ``num_classes`` str; default ``["class 0", ...]``), ``voxel_size`` (Angstrom
        or None), ``normalization`` (default ``"zscore"``: per-sample zero mean,
        unit variance, DESIGN.md), ``training`` (recipe dict), ``metrics`` (dict).
        Other keys are stored as given. Keys describing the architecture are taken
        from the model and may not be overridden.
    extra_tensors
        Named tensors/arrays saved alongside as ``"extra.<name>"`` (e.g. IMA margins).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    recipe = _model_recipe(model)
    meta: dict[str, Any] = dict(metadata or {})
    clash = [k for k in _ARCH_KEYS if k in meta and _as_json(meta[k]) != _as_json(recipe[k])]
    if clash:
        raise CryoGuardError(
            f"metadata key(s) {', '.join(clash)} disagree with the model; leave them out"
        )
    meta.pop("extra_tensors", None)
    class_names = meta.get("class_names")
    if class_names is None:
        class_names = [f"class {i}" for i in range(recipe["num_classes"])]
    class_names = [str(c) for c in class_names]
    if len(class_names) != recipe["num_classes"]:
        raise CryoGuardError(
            f"{len(class_names)} class names given for a model with {recipe['num_classes']} classes"
        )
    from napari_cryoguard import __version__

    header = {
        "format_version": FORMAT_VERSION,
        **recipe,
        "class_names": class_names,
        "voxel_size": meta.pop("voxel_size", None),
        "normalization": meta.pop("normalization", "zscore"),
        "training": meta.pop("training", {}),
        "metrics": meta.pop("metrics", {}),
        "cryoguard_version": __version__,
    }
    meta.pop("class_names", None)
    for k in _ARCH_KEYS:
        meta.pop(k, None)
    header.update({k: v for k, v in meta.items() if k not in header})
    try:
        header_json = json.dumps(header, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CryoGuardError(f"checkpoint metadata must be JSON-serialisable: {exc}") from exc
    # what is written must read back: the same schema as on loading
    validate_metadata(json.loads(header_json), source=f"writing {Path(path).name}")

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for name, value in (extra_tensors or {}).items():
        key = EXTRA_PREFIX + str(name)
        if key in tensors:
            raise CryoGuardError(f"extra tensor name {name!r} clashes with a model weight")
        t = torch.as_tensor(np.asarray(value)) if isinstance(value, np.ndarray) else value
        tensors[key] = t.detach().to("cpu").contiguous()

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save

    # serialised here and written through our own temporary file: safetensors' save_file
    # writes a temporary of its own (".tmpXXXXXX") beside the target, which a kill would
    # leave behind where nothing knows to remove it
    blob = save(tensors, metadata={METADATA_KEY: header_json})
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(blob)
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    meta = read_checkpoint_metadata(path)  # the header first: its errors are the clearer
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types, OSError, ValueError
        raise CryoGuardError(
            f"{path} is not a readable .safetensors checkpoint (corrupt or another format): {exc}"
        ) from exc
    return tensors, meta


def _read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    warnings.warn(
        f"{path.name} is a PyTorch pickle file; reading it with torch.load(weights_only=True). "
        "Re-save it with save_checkpoint() as .safetensors.",
        UserWarning,
        stacklevel=3,
    )
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError for forbidden globals, anything for garbage
        # torch's text is a page of advice; the CLI prints one line: keep what it refused
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or ln.lower().startswith("unsupported")),
                   None)
        if why is None:  # not torch's advice (to load with weights_only=False): the first line
            why = next((ln for ln in lines if "weights_only" not in ln), "")
        raise CryoGuardError(
            f"refusing to load {path}: it is not a plain tensor checkpoint "
            f"(torch.load with weights_only=True failed: {type(exc).__name__}: {why[:300]})"
        ) from exc
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CryoGuardError(f"{path} must hold a dict with 'state_dict' and 'metadata'")
    meta = obj.get("metadata", obj.get(METADATA_KEY))
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise CryoGuardError(f"{path}: 'metadata' is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise CryoGuardError(f"{path} must hold a dict with 'state_dict' and 'metadata'")
    state = obj["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CryoGuardError(f"{path}: 'state_dict' must map names to tensors")
    tensors = dict(state)
    for name, value in (obj.get("extra_tensors") or {}).items():
        tensors[EXTRA_PREFIX + str(name)] = value
    return tensors, dict(meta)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    expect_arch: str | None = None,
    expect_cube: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path
        A ``.safetensors`` file (or, with a warning, a ``.pt``/``.pth`` dict with
        ``"state_dict"`` and ``"metadata"``, read with ``weights_only=True``).
    expect_arch, expect_cube
        If given, a checkpoint for another architecture or cube size is refused
        with a message naming both.
    device
        Where to put the model (see :func:`napari_cryoguard.device.resolve_device`).

    Returns
    -------
    (model, metadata)
        The model in eval mode with its weights loaded strictly, and the metadata dict
        (with ``metadata["extra_tensors"]``: name -> tensor).

    Raises
    ------
    CryoGuardError
        Missing file, not a safetensors file or corrupt, no cryoguard metadata, a
        newer format, wrong architecture or cube, weights that do not fit the model,
        or a pickle that needs anything beyond plain tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CryoGuardError(f"checkpoint not found: {path}")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        tensors, meta = _read_torch_file(path)
    else:
        tensors, meta = _read_safetensors(path)

    validate_metadata(meta, source=str(path))
    arch = str(meta["arch"])
    if expect_arch is not None and _norm(arch) != _norm(expect_arch):
        raise CryoGuardError(
            f"{path} is a checkpoint for architecture {arch!r}, but {expect_arch!r} was expected"
        )
    if expect_cube is not None and int(meta["cube"]) != int(expect_cube):
        raise CryoGuardError(
            f"{path} is a checkpoint for {meta['cube']}^3 subtomograms, but a cube of "
            f"{expect_cube} was expected"
        )
    arch_params = meta["arch_params"]
    if not isinstance(arch_params, dict):
        raise CryoGuardError(f"{path}: 'arch_params' must be a dict")
    if _norm(arch) == "rb3d" and "variant" not in arch_params:
        # saved before RB3D had block variants: the block of that time (models.rb3d)
        arch_params = {**arch_params, "variant": "residual-bn"}
    model = build_model(arch, int(meta["num_classes"]), int(meta["cube"]), **arch_params)

    extra = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    _check_finite(state, path)
    own = model.state_dict()
    cast = sorted(k for k, v in state.items()
                  if k in own and own[k].is_floating_point() and not v.is_floating_point())
    if cast:
        raise CryoGuardError(
            f"{path}: weight {cast[0]!r} is stored as {state[cast[0]].dtype} (and "
            f"{len(cast) - 1} more); model weights are floating point")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CryoGuardError(
            f"{path}: the weights do not fit a {arch!r} model with the stored parameters: "
            f"{_state_mismatch(model, state)}"
        ) from exc

    from napari_cryoguard.device import resolve_device

    model.to(resolve_device(device))
    model.eval()
    meta["extra_tensors"] = extra
    return model, meta


def _state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into ``model``, in one line (torch's is several)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (the model has {tuple(own[k].shape)})"
              for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    parts = []
    for what, items in (("missing tensors", missing), ("unexpected tensors", unexpected),
                        ("wrong shapes", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{what}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or "the tensors do not match"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_metadata(meta: Any, *, source: str = "checkpoint") -> None:
    """Check a checkpoint's metadata against its schema, before building anything.

    The schema: a JSON object with ``format_version`` (int, 1 .. ``FORMAT_VERSION``),
    ``arch`` (str), ``arch_params`` (object; bounded by
    :func:`~napari_cryoguard.models.build_model`), ``num_classes`` (int, 2 ..
    ``MAX_CLASSES`` = 10000), ``cube`` (int in ``CUBE_RANGE`` = [4, 512]),
    ``class_names`` (list of ``num_classes`` str, optional), ``normalization`` (one of
    ``NORMALIZATIONS``, optional, default ``"zscore"``), ``voxel_size`` (positive finite
    number of Angstrom, or null), ``training`` and ``metrics`` (objects, optional).

    Raises
    ------
    CryoGuardError
        One sentence naming the first field that breaks the schema, what was found and
        what is expected.
    """

    def bad(field: str, expected: str) -> CryoGuardError:
        found = repr(meta.get(field)) if isinstance(meta, dict) else repr(meta)
        if len(found) > 80:
            found = found[:77] + "..."
        return CryoGuardError(
            f"{source}: checkpoint metadata field {field!r} is {found}; expected {expected}"
        )

    if not isinstance(meta, dict):
        raise CryoGuardError(
            f"{source}: checkpoint metadata must be a JSON object, got {type(meta).__name__}"
        )
    missing = [k for k in _ARCH_KEYS if k not in meta]
    if missing:
        raise CryoGuardError(f"{source}: checkpoint metadata lacks {', '.join(missing)}")
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise bad("format_version", f"an integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise CryoGuardError(
            f"{source} has checkpoint format {version!r}; this napari-cryoguard reads up to "
            f"{FORMAT_VERSION}: please upgrade"
        )
    if not isinstance(meta["arch"], str) or not meta["arch"].strip():
        raise bad("arch", "the name of an architecture (text)")
    if not isinstance(meta["arch_params"], dict):
        raise bad("arch_params", "an object of architecture parameters")
    n = meta["num_classes"]
    if not _is_int(n) or not 2 <= n <= MAX_CLASSES:
        raise bad("num_classes", f"an integer from 2 to {MAX_CLASSES}")
    cube = meta["cube"]
    if not _is_int(cube) or not CUBE_RANGE[0] <= cube <= CUBE_RANGE[1]:
        raise bad("cube", f"an integer from {CUBE_RANGE[0]} to {CUBE_RANGE[1]} voxels")
    if "class_names" in meta and meta["class_names"] is not None:
        names = meta["class_names"]
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            raise bad("class_names", f"a list of {n} class names (text)")
        if len(names) != n:
            raise CryoGuardError(
                f"{source}: checkpoint metadata field 'class_names' has {len(names)} names; "
                f"expected num_classes = {n}"
            )
        if len(set(names)) != len(names):
            twice = sorted({c for c in names if names.count(c) > 1})
            raise CryoGuardError(
                f"{source}: checkpoint metadata field 'class_names' names {twice[:3]!r} more "
                "than once; each class needs its own name (predictions name their columns by it)"
            )
    norm = meta.get("normalization", "zscore")
    if norm not in NORMALIZATIONS:
        raise bad("normalization", "one of " + ", ".join(repr(v) for v in NORMALIZATIONS))
    vs = meta.get("voxel_size")
    if vs is not None and (
        isinstance(vs, bool) or not isinstance(vs, (int, float)) or not np.isfinite(vs) or vs <= 0
    ):
        raise bad("voxel_size", "a positive number of Angstrom, or null when unknown")
    for key in ("training", "metrics"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(key, "an object")


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinite values (they classify everything alike)."""
    bad_count = 0
    first = None
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        n_bad = int((~torch.isfinite(tensor)).sum())
        if n_bad:
            bad_count += n_bad
            first = first or name
    if bad_count:
        raise CryoGuardError(
            f"{path}: the weights hold {bad_count} NaN or infinite value(s) (first in tensor "
            f"{first!r}); the checkpoint is corrupt or its training diverged"
        )


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def bundled_models() -> list[str]:
    """Names of the bundled weight files present in ``data/weights`` (sorted)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name[: -len(".safetensors")] for p in WEIGHTS_DIR.glob("*.safetensors"))


def load_default(
    name: str = "default", *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load bundled weights by name: ``"cb3d-default"``, ``"ae-default"``; ``"default"``
    is ``"cb3d-default"``.

    Raises
    ------
    CryoGuardError
        Unknown name (the message lists the known ones), or the weights are not in
        the package yet.
    """
    key = _ALIASES.get(name, name)
    present = bundled_models()
    if key not in present:
        known = sorted(set(_DEFAULT_NAMES) | set(present) | set(_ALIASES))
        if key not in _DEFAULT_NAMES:
            raise CryoGuardError(f"unknown bundled model {name!r}; known: {', '.join(known)}")
        raise CryoGuardError(
            f"the bundled weights {key!r} are not there yet (expected "
            f"{WEIGHTS_DIR / (key + '.safetensors')}); train them or pass a checkpoint file"
        )
    return load_checkpoint(WEIGHTS_DIR / f"{key}.safetensors", device=device)
