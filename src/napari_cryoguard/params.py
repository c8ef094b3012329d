"""Parameters declared once: shared choice types, the field walk of parameter dataclasses,
and the command-line options generated from them.

Every tunable of the package lives in one dataclass (an attack's ``*Params``, a model's
config, :class:`~napari_cryoguard.defenses.recipe.Recipe`, the picker's ``DoGParams``).
The napari forms (``_napari/_forms.py``) and the command-line options
(``cli/_options.py``) are both built from :func:`fields_of`, so a default, a choice list or a help text is written in one
place only. Choices are ``typing.Literal`` types (:data:`Norm`, :data:`Loss`, ...) that
both read.

A field's help text is its ``metadata["help"]`` (``dataclasses.field(metadata=...)``) or,
failing that, the line of the class docstring's ``Attributes`` section that names it.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from napari_cryoguard.errors import CryoGuardError

__all__ = [
    "Field",
    "Loss",
    "Norm",
    "Optimizer",
    "Schedule",
    "Suite",
    "choices_of",
    "fields_of",
    "parse_sets",
    "parse_value",
]

#: distance measure of a perturbation budget
Norm = Literal["linf", "l2"]
#: attack objective: cross-entropy or the logit margin (C&W)
Loss = Literal["ce", "margin"]
#: optimizers the trainer offers
Optimizer = Literal["adam", "sgd"]
#: learning-rate schedules the trainer offers
Schedule = Literal["none", "cosine", "step"]
#: the named attack suites of ``cryoguard evaluate --suite`` (:mod:`napari_cryoguard.evaluate.suite`)
Suite = Literal["default", "autoattack"]


def choices_of(hint: Any) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` type (``Optional`` of one too), else ``None``."""
    if typing.get_origin(hint) is Literal:
        return tuple(typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        for arg in typing.get_args(hint):
            found = choices_of(arg)
            if found is not None:
                return found
    return None


def parse_value(text: str) -> Any:
    """A command-line or form value: JSON when it parses (numbers, lists, ``null``,
    quoted strings), the text itself otherwise; ``""``/``none`` mean ``None``."""
    text = text.strip()
    if text.lower() in ("", "none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a parameter dataclass, as forms and options see it."""

    name: str
    default: Any
    hint: Any
    help: str
    choices: tuple[str, ...] | None

    @property
    def option(self) -> str:
        """The command-line spelling, ``--step-size`` for ``step_size``."""
        return "--" + self.name.replace("_", "-")


def _docstring_help(cls: type) -> dict[str, str]:
    """``name -> first sentence`` from a numpydoc ``Attributes`` section."""
    doc = typing.cast(str, cls.__doc__ or "")
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\s*(\w+)\s*(:.*)?", line)
        if not m or i + 1 >= len(lines):
            continue
        nxt = lines[i + 1]
        indent = len(line) - len(line.lstrip())
        if nxt.strip() and len(nxt) - len(nxt.lstrip()) > indent:
            text = []
            for follow in lines[i + 1:]:
                if not follow.strip() or len(follow) - len(follow.lstrip()) <= indent:
                    break
                text.append(follow.strip())
            out.setdefault(m.group(1), " ".join(text))
    return out


def fields_of(cls: type, skip: Iterable[str] = ()) -> list[Field]:
    """The init fields of a parameter dataclass that have a default, in order."""
    skip = set(skip)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolved forward references: fall back to the defaults' types
        hints = {}
    docs: dict[str, str] = {}
    for klass in cls.__mro__:  # a field inherited from a base is described there
        if dataclasses.is_dataclass(klass):
            for name, text in _docstring_help(klass).items():
                docs.setdefault(name, text)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            continue
        hint = hints.get(f.name, type(default))
        out.append(Field(f.name, default, hint, f.metadata.get("help") or docs.get(f.name, ""),
                         choices_of(hint)))
    return out


def parse_sets(items: Sequence[str] | None, *, option: str = "--set") -> dict[str, Any]:
    """``["key=value", ...]`` (values as :func:`parse_value`) into a dict; one clear
    :class:`~napari_cryoguard.CryoGuardError` for an item without ``=``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CryoGuardError(f"{option} takes KEY=VALUE, got {item!r}")
        value = parse_value(raw)
        out[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return out
