"""Pick the compute device, mixed precision, and batched inference with OOM fallback.

Device order for ``"auto"``: CUDA, then Apple MPS, then CPU (DESIGN.md, layout).
Inference is offered twice over, following the stardist-napari pattern named in
STYLE.md: :func:`iter_predict` is a generator that yields progress and returns the
probabilities (the GUI runs it in a worker, tests drain it), and :func:`predict`
drains it for you, reporting to an optional tqdm-like object or callback.

Speed: memory format
--------------------
The 3D convolutions of every classifier run faster with their weights in PyTorch's
``channels_last_3d`` (NDHWC) memory format: oneDNN on the CPU and cuDNN on CUDA then
pick their channels-last kernels, and every later activation follows the weights.
The values are the same (float32 sums in another order: logits and input gradients
agree with the contiguous model to about 1e-7). Which format a device gets is decided
by :func:`preferred_memory_format`:

* ``cpu``: ``channels_last_3d``, from the decision table :data:`MEMORY_FORMAT_TABLE`,
  measured on this project's 2-core test machine (torch 2.13 CPU build, forward +
  input-gradient backward of 32-64 cubes of 28^3, ``small (CPU-friendly)`` widths):
  0.51-0.64x the time of the contiguous model for cb3d, dsrf3d_v2, rb3d and the
  autoencoder (``benchmarks/bench_speed.py`` prints the ratios);
* ``cuda``: measured on first use, per GPU and model kind, by
  :func:`measure_memory_format` (a few forward + backward passes of a small batch in
  both formats, cached for the process); no GPU was available to fill in the table;
* ``mps``: contiguous (not measured; channels-last 3D kernels are not assured there).

The environment variable ``CRYOGUARD_MEMORY_FORMAT`` overrides the table:
``channels_last`` or ``contiguous`` (every device), ``measure`` (the micro-benchmark
on every device) or ``auto`` (the table, the default). The choice is logged once per
device and model kind on the ``napari_cryoguard.device`` logger. Models get the CPU's
format when they are built (``napari_cryoguard.models.build_model``), and
:func:`prepare_model` applies a device's format when a model is moved there for
inference; inputs of shape (N, 1, D, H, W) are converted once per batch
(:func:`to_model_layout`, a no-op copy-wise for one channel).

Speed: the stem's input gradient
--------------------------------
Every attack and adversarial defense takes the gradient w.r.t. the input, and the one
convolution that touches the input has a single input channel. oneDNN's backward-data
kernel for that case (C_out channels back to one) took 2-4x the time of a plain
convolution of the output gradient with the flipped, transposed kernel
(``conv3d(g, w.flip(2, 3, 4).transpose(0, 1), padding=k - 1 - p)``, the same sums in
another order) in either memory format, and 15-25 % of a whole PGD step of CB3D; that
one C_out -> 1 convolution in turn took 2-4x a depthwise convolution of each channel
with its flipped kernel (``groups=C_out``) followed by the sum over the channels (the
same sums again; 8-64 channels, 28^3, one thread, torch 2.13), which is what is used. So
:func:`apply_memory_format` turns a model's single-channel stride-1 ``Conv3d`` into a
:class:`StemConv3d` (same parameters, same ``state_dict``), whose backward computes
the input gradient that way on the CPU; weight and bias gradients and every other
device use PyTorch's own kernels, and a double backward (``create_graph=True``)
recomputes through the plain convolution. ``apply_memory_format(model,
"contiguous")`` turns it back into a plain ``Conv3d``.

Speed: model fast paths
-----------------------
A model class may declare a boolean class attribute ``fast_paths`` (off by default);
:func:`apply_memory_format` switches it on with ``channels_last_3d`` and off with
``contiguous``, on every submodule that declares it, exactly as it swaps
:class:`StemConv3d` in and out. RB3D uses it for its first fully connected layer and
its in-block dropout (:mod:`napari_cryoguard.models.layers`: ``flatten_linear``,
``dropout_as_contiguous``): the same parameters and ``state_dict``, values to float32
rounding and the same dropout masks as the contiguous model from the same seed. A
contiguous model (the plain one) runs the modules as written.

On CUDA, :func:`prepare_model` also turns on ``torch.backends.cudnn.benchmark``
(autotuned kernels for the fixed batch shapes; ``CRYOGUARD_CUDNN_BENCHMARK=0`` keeps
it off), batches are copied from pinned host memory with ``non_blocking=True``
(:func:`to_device_batch`), and ``amp=True`` means bfloat16 autocast where the GPU
supports it, float16 otherwise (:func:`autocast_context`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from napari_cryoguard._progress import drain
from napari_cryoguard.checks import check_number
from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "MEMORY_FORMAT_TABLE",
    "PredictProgress",
    "StemConv3d",
    "amp_dtype",
    "apply_memory_format",
    "autocast_context",
    "is_out_of_memory",
    "iter_predict",
    "measure_memory_format",
    "model_memory_format",
    "predict",
    "preferred_memory_format",
    "prepare_model",
    "resolve_device",
    "to_device_batch",
    "to_model_layout",
]

_log = logging.getLogger(__name__)

#: Memory format of the model weights per device type (see the module docstring):
#: ``"channels_last_3d"``, ``"contiguous"`` or ``"measure"`` (decide by
#: :func:`measure_memory_format` on first use). The CPU entry was measured on this
#: project's test machine (0.51-0.64x the contiguous time for every architecture).
MEMORY_FORMAT_TABLE: dict[str, str] = {
    "cpu": "channels_last_3d",
    "cuda": "measure",
    "mps": "contiguous",
}
_FORMATS = {"channels_last_3d": torch.channels_last_3d, "contiguous": torch.contiguous_format}
_ENV_FORMAT = "CRYOGUARD_MEMORY_FORMAT"
_ENV_ALIASES = {
    "auto": "auto",
    "": "auto",
    "measure": "measure",
    "channels_last": "channels_last_3d",
    "channels_last_3d": "channels_last_3d",
    "contiguous": "contiguous",
}
#: (device, model kind) -> (format name, measured ratio channels_last / contiguous)
_MEASURED: dict[tuple[str, str], tuple[str, float]] = {}
_LOGGED: set[tuple[str, str]] = set()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a ``torch.device`` that exists on this machine.

    Parameters
    ----------
    name
        ``"auto"`` (or None): CUDA if available, else Apple MPS, else CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device`` are
        honoured as given.

    Raises
    ------
    CryoGuardError
        An unparseable name, or an explicit device that is not available (e.g.
        ``"cuda"`` on a machine without a GPU, ``"cuda:1"`` with one GPU).
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = name if isinstance(name, torch.device) else torch.device(str(name).strip().lower())
    except (RuntimeError, ValueError) as exc:
        raise CryoGuardError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
        ) from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CryoGuardError(f"device {name!r} requested but CUDA is not available here")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise CryoGuardError(
                f"device {name!r} requested but only {count} CUDA device(s) are visible"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise CryoGuardError(f"device {name!r} requested but Apple MPS is not available here")
        return dev
    raise CryoGuardError(
        f"device type {dev.type!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'"
    )


def amp_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast dtype of ``amp=True`` on ``device``: bfloat16 where the GPU has it.

    bfloat16 keeps float32's exponent range (no loss scaling needed); GPUs without it
    (before Ampere) and CPU-only builds get float16.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and torch.cuda.is_available():
        try:
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
        except (AssertionError, RuntimeError):  # pragma: no cover - odd builds
            pass
    return torch.float16


def autocast_context(
    device: torch.device | str, enabled: bool, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision autocast on CUDA when ``enabled``; a no-op elsewhere.

    ``dtype`` None: :func:`amp_dtype` (bfloat16 where supported, else float16).
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if enabled and dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=dtype or amp_dtype(dev))
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- layout
def _format_name(fmt: torch.memory_format) -> str:
    return "channels_last_3d" if fmt == torch.channels_last_3d else "contiguous"


def _model_kind(model: nn.Module) -> str:
    """Key of a model's architecture for the layout cache: name, widths and cube."""
    import json

    arch = getattr(model, "arch_name", "") or type(model).__name__
    try:
        params = json.dumps(getattr(model, "arch_params", {}), sort_keys=True, default=str)
    except (TypeError, ValueError):  # pragma: no cover - odd parameter objects
        params = ""
    return f"{arch}|{params}|{getattr(model, 'cube', '')}"


def _env_choice() -> str:
    raw = os.environ.get(_ENV_FORMAT, "auto").strip().lower()
    if raw not in _ENV_ALIASES:
        raise CryoGuardError(
            f"environment variable {_ENV_FORMAT} is {raw!r}; expected auto, channels_last, "
            "contiguous or measure"
        )
    return _ENV_ALIASES[raw]


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """The memory format a model's 3D convolution weights are in (contiguous if none)."""
    for t in model.parameters():
        if t.dim() != 5:
            continue
        dense = t.is_contiguous()
        last = t.is_contiguous(memory_format=torch.channels_last_3d)
        if dense != last:  # (a 1x1x1 or one-channel kernel is both: look further)
            return torch.channels_last_3d if last else torch.contiguous_format
    return torch.contiguous_format


def apply_memory_format(model: nn.Module, fmt: torch.memory_format | str) -> nn.Module:
    """Put the 4D/5D weights of ``model`` into ``fmt`` in place; returns ``model``.

    Values, parameter objects and ``requires_grad`` are unchanged (only the strides of
    the storage); ``state_dict()`` of a :class:`~napari_cryoguard.models.CryoGuardModel`
    still gives contiguous tensors.
    """
    if isinstance(fmt, str):
        if fmt not in _FORMATS:
            raise CryoGuardError(
                f"memory format {fmt!r} is unknown; use 'channels_last_3d' or 'contiguous'"
            )
        fmt = _FORMATS[fmt]
    if model_memory_format(model) != fmt:
        model.to(memory_format=fmt)
    _set_stems(model, fast=fmt == torch.channels_last_3d)
    _set_fast_paths(model, fast=fmt == torch.channels_last_3d)
    return model


def _set_fast_paths(model: nn.Module, fast: bool) -> None:
    """Switch the ``fast_paths`` flag of every submodule whose class declares one."""
    for m in model.modules():
        if isinstance(getattr(type(m), "fast_paths", None), bool):
            m.fast_paths = fast


class _StemInputGrad(torch.autograd.Function):
    """Identity on ``out = conv3d(x.detach(), w, b)`` that routes the gradient to ``x``
    as a depthwise convolution of the output gradient with the flipped kernel, summed over
    the channels (module docstring). The weight and bias gradients flow through ``out``'s own convolution,
    which PyTorch computes only when they are asked for; ``weight`` is an input so that
    a double backward differentiates the input gradient w.r.t. it too."""

    @staticmethod
    def forward(ctx, out, x, weight, padding, dilation):  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.padding, ctx.dilation = padding, dilation
        ctx.mark_dirty(out)  # returned in place (no copy), so a later in-place ReLU is allowed
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[1]:
            k = weight.shape[2:]
            pad = [d * (kk - 1) - p for kk, p, d in zip(k, ctx.padding, ctx.dilation, strict=True)]
            # per channel (a depthwise convolution, groups = C_out) then summed over the
            # channels: the same sums as one C_out -> 1 convolution, 2-4x faster in oneDNN
            flipped = weight.flip(2, 3, 4).contiguous()
            c_out = weight.shape[0]
            gx = nn.functional.conv3d(grad, flipped, None, 1, pad, ctx.dilation, c_out)
            gx = gx.sum(1, keepdim=True)
        return grad, gx, None, None, None


class StemConv3d(nn.Conv3d):
    """A single-input-channel, stride-1 ``Conv3d`` with a faster input gradient on the CPU.

    The same module as ``nn.Conv3d`` (parameters, ``state_dict``, forward values); only
    its backward differs, in the order of the float32 sums (module docstring).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.device.type != "cpu" or not x.requires_grad:
            return super().forward(x)
        out = super().forward(x.detach())
        return _StemInputGrad.apply(out, x, self.weight, self.padding, self.dilation)


def _is_stem(m: nn.Module) -> bool:
    return (
        type(m) in (nn.Conv3d, StemConv3d)
        and m.in_channels == 1
        and m.groups == 1
        and tuple(m.stride) == (1, 1, 1)
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and all(d * (k - 1) >= p for k, p, d in zip(m.kernel_size, m.padding, m.dilation, strict=True))
    )


def _set_stems(model: nn.Module, fast: bool) -> None:
    for m in model.modules():
        if _is_stem(m):
            m.__class__ = StemConv3d if fast else nn.Conv3d


def _fwd_bwd(model: nn.Module, x: torch.Tensor) -> None:
    xg = x.detach().requires_grad_(True)
    out = model(xg)
    (g,) = torch.autograd.grad(out.float().logsumexp(1).sum(), xg)
    if g.device.type == "cuda":
        torch.cuda.synchronize(g.device)


def measure_memory_format(
    model: nn.Module,
    device: torch.device | str | None = None,
    *,
    batch_size: int = 8,
    reps: int = 3,
    threshold: float = 0.95,
) -> tuple[torch.memory_format, float]:
    """Time forward + input-gradient backward in both formats; pick the faster one.

    A copy of ``model`` in eval mode runs ``reps`` interleaved repetitions (after one
    warm-up each) of a random batch of ``batch_size`` cubes on ``device`` (default: the
    model's). ``channels_last_3d`` is chosen when its best time is below ``threshold``
    times the contiguous one. The result is cached per device and model kind for the
    process (:func:`preferred_memory_format` reads the cache). The model itself is not
    touched.

    Returns
    -------
    (format, ratio)
        ``ratio`` is the channels-last time over the contiguous time.
    """
    dev = torch.device(device) if device is not None else (_model_device(model) or torch.device("cpu"))
    key = (str(dev), _model_kind(model))
    if key in _MEASURED:
        name, ratio = _MEASURED[key]
        return _FORMATS[name], ratio
    cube = int(getattr(model, "cube", 28))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, cube, cube, cube, generator=gen).to(dev)
    variants = {}
    with torch.inference_mode(False), torch.enable_grad():
        for name, fmt in _FORMATS.items():
            m = copy.deepcopy(model).to(dev).eval()
            for p in m.parameters():
                p.requires_grad_(False)
            variants[name] = m.to(memory_format=fmt)
            _fwd_bwd(variants[name], x)  # warm-up (and cuDNN autotuning)
        best = dict.fromkeys(_FORMATS, float("inf"))
        for _ in range(max(1, reps)):
            for name, m in variants.items():
                t0 = time.perf_counter()
                _fwd_bwd(m, x)
                best[name] = min(best[name], time.perf_counter() - t0)
    ratio = best["channels_last_3d"] / max(best["contiguous"], 1e-12)
    chosen = "channels_last_3d" if ratio < threshold else "contiguous"
    _MEASURED[key] = (chosen, ratio)
    return _FORMATS[chosen], ratio


def preferred_memory_format(
    device: torch.device | str, model: nn.Module | None = None
) -> torch.memory_format:
    """The memory format the weights of ``model`` should have on ``device``.

    Reads ``CRYOGUARD_MEMORY_FORMAT`` and :data:`MEMORY_FORMAT_TABLE` (see the module
    docstring); ``"measure"`` runs :func:`measure_memory_format` once per device and
    model kind (without a model it means contiguous). The choice is logged once per
    device and model kind.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    choice = _env_choice()
    how = f"{_ENV_FORMAT}={choice}"
    if choice == "auto":
        choice = MEMORY_FORMAT_TABLE.get(dev.type, "contiguous")
        how = "decision table"
    ratio = None
    if choice == "measure":
        if model is None:
            return torch.contiguous_format
        fmt, ratio = measure_memory_format(model, dev)
        choice = _format_name(fmt)
        how = f"measured {ratio:.2f}x"
    kind = _model_kind(model) if model is not None else ""
    if (str(dev), kind) not in _LOGGED:
        _LOGGED.add((str(dev), kind))
        arch = kind.split("|", 1)[0] or "models"
        _log.info("%s on %s runs in %s memory format (%s)", arch, dev, choice, how)
    return _FORMATS[choice]


def to_model_layout(x: torch.Tensor, model: nn.Module | torch.memory_format) -> torch.Tensor:
    """``x`` (N, C, D, H, W) in the memory format of ``model``'s weights (once per batch).

    For one channel the two formats describe the same bytes, so no copy is made.
    """
    fmt = model if isinstance(model, torch.memory_format) else model_memory_format(model)
    if x.dim() != 5 or fmt == torch.contiguous_format:
        return x
    return x.contiguous(memory_format=fmt)


def to_device_batch(
    x: torch.Tensor,
    device: torch.device | str,
    *,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """Copy a host batch to ``device``: from pinned memory, ``non_blocking``, on CUDA.

    On other devices (or when ``x`` is already there) a plain ``.to``. The result is
    in ``memory_format`` when given (see :func:`to_model_layout`).
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and x.device.type == "cpu":
        host = x if x.dtype == dtype else x.to(dtype)
        if not host.is_pinned():
            host = host.pin_memory()
        out = host.to(dev, non_blocking=True)
    else:
        out = x.to(dev, dtype=dtype)
    if memory_format is not None:
        out = to_model_layout(out, memory_format)
    return out


def prepare_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device`` in the device's preferred memory format.

    Only :class:`~napari_cryoguard.models.CryoGuardModel` instances change format (a
    foreign module keeps its own). Also turns on ``torch.backends.cudnn.benchmark`` for
    CUDA devices (unless ``CRYOGUARD_CUDNN_BENCHMARK=0``). Call it before an optimizer or DDP wrapper is
    built around the model (changing the layout later is correct but slower for DDP).
    """
    from napari_cryoguard.models.base import CryoGuardModel

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    model.to(dev)
    if dev.type == "cuda" and os.environ.get("CRYOGUARD_CUDNN_BENCHMARK", "1") != "0":
        torch.backends.cudnn.benchmark = True
    # only our models: their state_dict() hands channels-last weights out contiguous
    if isinstance(model, CryoGuardModel) and any(p.dim() == 5 for p in model.parameters()):
        apply_memory_format(model, preferred_memory_format(dev, model))
    return model


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA (or MPS) out-of-memory error."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class PredictProgress(NamedTuple):
    """Progress of :func:`iter_predict`: samples done, total, current batch size."""

    done: int
    total: int
    batch_size: int


def _as_batch(volumes: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = volumes if isinstance(volumes, torch.Tensor) else torch.from_numpy(np.asarray(volumes))
    if x.dim() == 4:
        x = x.unsqueeze(1)
    if x.dim() != 5 or x.shape[1] != 1:
        raise CryoGuardError(
            f"expected subtomograms of shape (N, D, H, W) or (N, 1, D, H, W), got {tuple(x.shape)}"
        )
    if not (
        x.is_floating_point()
        or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise CryoGuardError(f"subtomograms must be numeric, got dtype {x.dtype}")
    return x.detach()


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def iter_predict(
    model: nn.Module,
    volumes: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    amp: bool = False,
    on_oom: Callable[[int], None] | None = None,
) -> Generator[PredictProgress, None, np.ndarray]:
    """Class probabilities for a stack of subtomograms, as a generator yielding progress.

    Parameters
    ----------
    model
        A classifier returning logits (N, C).
    volumes
        (N, D, H, W) or (N, 1, D, H, W), numpy or tensor; converted to float32.
    device
        See :func:`resolve_device`. The model is moved there for the call and moved
        back to where it was afterwards.
    batch_size
        Samples per forward pass. On an out-of-memory error the batch is halved and
        retried (a ``RuntimeWarning`` and ``on_oom(new_batch_size)``), down to 1;
        an OOM at batch size 1 raises ``CryoGuardError``.
    amp
        bfloat16 (float16 where unsupported) autocast, on CUDA only
        (:func:`autocast_context`).

    Yields
    ------
    PredictProgress
        After each batch.

    Returns
    -------
    numpy.ndarray
        Softmax probabilities (N, C) float32 (via ``StopIteration.value`` / ``yield from``).

    Notes
    -----
    Each batch runs under ``torch.inference_mode()`` with the model in eval mode; the
    model's previous train/eval mode (and device) is restored when the generator
    finishes or is closed. The model runs in the device's preferred memory format
    (:func:`prepare_model`; the module docstring says how it is chosen). Inference mode is entered per batch, never held across a
    ``yield``, so the caller's code between steps runs with autograd as usual.
    """
    check_number("batch_size", batch_size, minimum=1, integer=True)
    x = _as_batch(volumes)
    cube = getattr(model, "cube", None)
    if cube is not None and tuple(x.shape[2:]) != (cube, cube, cube):
        raise CryoGuardError(
            f"the model was built for {cube}^3 subtomograms, got {'x'.join(map(str, x.shape[2:]))}"
        )
    dev = resolve_device(device)
    n = int(x.shape[0])
    num_classes = getattr(model, "num_classes", None)
    out: np.ndarray | None = (
        np.empty((n, int(num_classes)), dtype=np.float32) if num_classes is not None else None
    )
    if n == 0:
        if out is None:
            raise CryoGuardError("no subtomograms to classify")
        return out

    was_training = model.training
    home = _model_device(model)
    prepare_model(model, dev)
    model.eval()
    try:
        start, bs = 0, batch_size
        while start < n:
            chunk = x[start : start + bs]
            try:
                probs = _forward_probs(model, chunk, dev, amp)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                del exc
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if bs == 1:
                    raise CryoGuardError(
                        f"out of memory on {dev} even with batch size 1; use a smaller model, "
                        f"or the cpu device ({reason})"
                    ) from None
                bs = max(1, bs // 2)
                warnings.warn(
                    f"out of memory on {dev}; retrying with batch size {bs}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                if on_oom is not None:
                    on_oom(bs)
                continue
            if out is None:
                out = np.empty((n, probs.shape[1]), dtype=np.float32)
            out[start : start + probs.shape[0]] = probs
            start += probs.shape[0]
            yield PredictProgress(start, n, bs)
    finally:
        if home is not None and home != dev:
            model.to(home)
        model.train(was_training)
    return out


def _forward_probs(
    model: nn.Module, chunk: torch.Tensor, dev: torch.device, amp: bool
) -> np.ndarray:
    with torch.inference_mode():
        batch = to_device_batch(chunk, dev, memory_format=model_memory_format(model))
        with autocast_context(dev, amp):
            logits = model(batch)
        if logits.dim() != 2:
            raise CryoGuardError(f"the model returned shape {tuple(logits.shape)}, expected (N, C)")
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def predict(
    model: nn.Module, volumes: np.ndarray | torch.Tensor, *, progress: Any = None, **options: Any
) -> np.ndarray:
    """Class probabilities (N, C) float32 for a stack of subtomograms.

    :func:`iter_predict` drained: the same arguments (``device``, ``batch_size``,
    ``amp``, ``on_oom``), plus ``progress``: either a tqdm-like object (its ``update(n)``
    is called with the samples done in each batch; set its ``total`` yourself) or a
    callable ``progress(done, total)``.
    """
    gen: Iterator[PredictProgress] = iter_predict(model, volumes, **options)
    return drain(gen, progress)
