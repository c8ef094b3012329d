"""Find classifiers by name and build them from a typed dataclass of parameters.

Each architecture is a :class:`~napari_cryoguard.models.base.CryoGuardModel` subclass
registered with :func:`register_model` together with its parameter dataclass. The
widgets build their forms and the CLI its options from that dataclass
(:func:`model_params_class`), and checkpoints rebuild a model from the name and the
parameters stored in their metadata (:func:`build_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.registry import Registry

__all__ = [
    "MODELS",
    "SIZE_PRESETS",
    "TINY_PARAMS",
    "available_models",
    "build_model",
    "default_size_preset",
    "model_params_class",
    "register_model",
    "size_preset",
    "tiny_params",
]

#: Narrow versions of the built-in architectures (same structure, few channels) for
#: tests and quick CPU runs; pass as ``build_model(name, n, cube, **tiny_params(name))``.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "cb3d": {"conv_widths": (4, 4, 8, 8, 8), "fc_widths": (16, 16)},
    "dsrf3d_v2": {"conv_widths": (4, 8, 8), "fc_widths": (32, 32)},
    "rb3d": {
        "stem_width": 4,
        "block_widths": (4, 8, 8, 8),
        "bottleneck_widths": (2, 4, 4, 4),
        "fc_widths": (16, 16),
    },
    "autoencoder": {"conv_widths": (4, 4), "code_size": 8, "classifier_widths": (8,)},
}

#: The name of the tiny preset (:func:`tiny_params`).
TINY = "tiny (quick check)"

#: Model sizes a user chooses from (the Train widget's "size"): parameter overrides per
#: architecture on top of the dataclass defaults. "paper" is the dataclass defaults (the
#: papers' widths: the CB3D first step takes minutes on a CPU); "small (CPU-friendly)"
#: is about 0.1 s per step of 16 cubes of 28^3 on one CPU core (the cb3d entry is the
#: width of the bundled ``cb3d-default`` weights). Our choice of widths, not the papers'.
SIZE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "small (CPU-friendly)": {
        "cb3d": {"conv_widths": (8, 16, 32, 64, 64), "fc_widths": (256, 256)},
        "dsrf3d_v2": {"conv_widths": (8, 16, 32), "fc_widths": (256, 256)},
        "rb3d": {
            "stem_width": 8,
            "block_widths": (8, 16, 16, 32),
            "bottleneck_widths": (4, 8, 8, 16),
            "fc_widths": (256, 256),
        },
        "autoencoder": {
            "conv_widths": (16, 16, 16, 16),
            "code_size": 128,
            "classifier_widths": (64,),
        },
    },
    "paper": {},
    TINY: TINY_PARAMS,
}
_T = TypeVar("_T", bound=type)


def register_model(name: str, params_cls: type) -> Callable[[_T], _T]:
    """Class decorator: register a model class under ``name`` with its parameter dataclass.

    The class must accept ``(num_classes, cube, params)`` in its constructor. The
    decorator sets ``cls.arch_name = name`` and ``cls.params_cls = params_cls``.
    """
    return MODELS.register(name, params_cls)


def available_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return MODELS.names()


def model_params_class(name: str) -> type:
    """The parameter dataclass of architecture ``name`` (for forms and CLI options)."""
    return MODELS.params_class(name)


def tiny_params(name: str) -> dict[str, Any]:
    """A copy of the small-width preset of architecture ``name``: its class's
    ``size_presets["tiny (quick check)"]``, else its entry of ``TINY_PARAMS``."""
    cls = MODELS.get(name)
    found = getattr(cls, "size_presets", {}).get(TINY, TINY_PARAMS.get(cls.arch_name))
    if found is None:
        raise CryoGuardError(
            f"no tiny preset for model {name!r}; presets: {', '.join(TINY_PARAMS)} (declare "
            f"size_presets[{TINY!r}] on the model class)"
        )
    return dict(found)


def size_preset(preset: str, name: str) -> dict[str, Any]:
    """The parameters of architecture ``name`` at size ``preset`` (see ``SIZE_PRESETS``).

    Only the fields the preset changes: the built-in table's entry, updated by the
    class's own ``size_presets[preset]`` (how a new architecture declares its sizes); an
    architecture neither lists keeps its defaults (the paper's size). Raises
    :class:`CryoGuardError` for an unknown preset or architecture.
    """
    cls = MODELS.get(name)
    if preset not in SIZE_PRESETS:
        raise CryoGuardError(f"unknown model size {preset!r}; known: {', '.join(SIZE_PRESETS)}")
    own = getattr(cls, "size_presets", {}).get(preset, {})
    return {**SIZE_PRESETS[preset].get(cls.arch_name, {}), **own}


def default_size_preset(device: str = "auto") -> str:
    """``"paper"`` when ``device`` resolves to a CUDA GPU, else ``"small (CPU-friendly)"``."""
    from napari_cryoguard.device import resolve_device

    try:
        kind = resolve_device(device).type
    except CryoGuardError:
        kind = "cpu"
    return "paper" if kind == "cuda" else "small (CPU-friendly)"


#: Bounds on architecture parameters, checked before a model is built so that a hostile
#: or corrupt checkpoint cannot ask for an unbounded allocation: every width, size or
#: stride is an integer from 1 to ``MAX_WIDTH``; a tuple of widths has at most
#: ``MAX_LAYERS`` entries; every other number is finite with magnitude <= ``MAX_NUMBER``
#: (dropouts are further checked by the parameter dataclasses); flags are booleans.
MAX_WIDTH = 8192
MAX_LAYERS = 64
MAX_NUMBER = 1e6
#: Bounds on ``num_classes`` and ``cube`` (voxels) in :func:`build_model`.
MAX_CLASSES = 10000
MAX_CUBE = 512


def _check_bounds(name: str, fields: dict, clean: dict[str, Any]) -> None:
    def bad(key: str, value: Any, expected: str) -> CryoGuardError:
        text = repr(value)
        if len(text) > 80:
            text = text[:77] + "..."
        return CryoGuardError(f"model {name!r} parameter {key!r} is {text}; expected {expected}")

    for key, value in clean.items():
        default = fields[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise bad(key, value, "true or false")
        elif isinstance(default, int) or isinstance(default, tuple):
            items = value if isinstance(value, tuple) else (value,)
            if isinstance(default, tuple) and not isinstance(value, tuple):
                raise bad(key, value, f"a list of integers from 1 to {MAX_WIDTH}")
            if len(items) > MAX_LAYERS:
                raise bad(key, value, f"at most {MAX_LAYERS} entries")
            for item in items:
                if not _is_int(item) or not 1 <= item <= MAX_WIDTH:
                    raise bad(key, value, f"integers from 1 to {MAX_WIDTH}")
        elif isinstance(default, float) or value is not None and not isinstance(value, str):
            if value is None and default is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or abs(value) > MAX_NUMBER
            ):
                raise bad(key, value, f"a finite number of magnitude at most {MAX_NUMBER:g}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Every classifier architecture, by name: one module of this package each (all but the
#: infrastructure modules named here), checked by :func:`_check_bounds` before a build.
MODELS: Registry[type[nn.Module]] = Registry(
    "model architecture",
    package="napari_cryoguard.models",
    private=("base", "checkpoint", "layers", "registry"),
    name_attr="arch_name",
    check=_check_bounds,
)
_REGISTRY = MODELS.entries


def make_params(name: str, **params: Any) -> Any:
    """Build the parameter dataclass of ``name``, rejecting unknown keys clearly.

    Lists (from JSON metadata) are turned back into tuples; every value is checked
    against the bounds above before the dataclass sees it.
    """
    return MODELS.make_params(name, **params)


def build_model(name: str, num_classes: int, cube: int = 28, **params: Any) -> nn.Module:
    """Build a registered classifier.

    Parameters
    ----------
    name
        Architecture name (see :func:`available_models`), e.g. ``"cb3d"``.
    num_classes
        Number of output classes, >= 2.
    cube
        Edge length in voxels of the (cubic) subtomograms the model will take, >= 16.
    **params
        Fields of the architecture's parameter dataclass (widths, dropout, ``drop_max``).

    Returns
    -------
    torch.nn.Module
        Takes (N, 1, cube, cube, cube) float32 and returns logits (N, num_classes).
        Carries ``arch_name``, ``arch_params`` (dict), ``num_classes`` and ``cube``.
        Built on the CPU with its weights in the CPU's preferred memory format
        (``channels_last_3d`` by the measured decision table of
        :mod:`napari_cryoguard.device`, about 0.5-0.65x the time of contiguous weights
        here; ``CRYOGUARD_MEMORY_FORMAT`` overrides it). Moving the model to a GPU
        keeps that format; :func:`napari_cryoguard.device.prepare_model` applies the
        GPU's own choice.

    Raises
    ------
    CryoGuardError
        Unknown name or parameter, ``cube`` outside 16 .. ``MAX_CUBE`` (512),
        ``num_classes`` outside 2 .. ``MAX_CLASSES`` (10000), or a parameter outside its
        bounds (widths 1 .. ``MAX_WIDTH`` = 8192, at most ``MAX_LAYERS`` = 64 layers,
        other numbers finite and at most ``MAX_NUMBER`` = 1e6 in magnitude).
    """
    cls = MODELS.get(name)
    if _is_int(num_classes) and num_classes > MAX_CLASSES:
        raise CryoGuardError(
            f"num_classes must be an integer from 2 to {MAX_CLASSES}, got {num_classes!r}"
        )
    if _is_int(cube) and cube > MAX_CUBE:
        raise CryoGuardError(f"cube must be an integer from 16 to {MAX_CUBE} voxels, got {cube!r}")
    p = make_params(name, **params)
    model = cls(num_classes=num_classes, cube=cube, params=p)
    from napari_cryoguard.device import apply_memory_format, preferred_memory_format

    return apply_memory_format(model, preferred_memory_format("cpu", model))
