"""Command-line options generated from a parameter dataclass.

A parameter is declared once, as a field of its dataclass (default, ``Literal`` choices,
help in ``metadata["help"]`` or the docstring's ``Attributes`` section); the commands
add one ``--option`` per field with :func:`add_options` and read back only what the
user gave with :func:`options_from_args`, so the dataclass keeps its own defaults.
The napari forms walk the same fields (:func:`napari_cryoguard.params.fields_of`).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from napari_cryoguard.params import Field, fields_of, parse_value

__all__ = ["add_options", "options_from_args"]


def _plain(hint: Any) -> Any:
    """``X`` for ``X | None`` / ``Optional[X]``; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _scalar_type(f: Field):
    if f.choices is not None:
        return str
    if isinstance(f.default, bool):
        return None
    hint = _plain(f.hint)
    for t in (int, float, str):
        if hint in (t, t.__name__) or (f.default is not None and type(f.default) is t):
            return t
    return parse_value


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                skip: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
                dest_prefix: str = "") -> list[Field]:
    """Add one ``--option`` per field of ``cls`` (booleans as ``--flag/--no-flag``).

    Values that are not given stay ``None`` in the namespace, so
    :func:`options_from_args` passes on only what the user set and the dataclass keeps
    its own defaults; the help shows the dataclass's default. Returns the fields added.
    """
    defaults = dict(defaults or {})
    fields = fields_of(cls, skip)
    for f in fields:
        shown = defaults.get(f.name, f.default)
        text = f.help.rstrip(".") if f.help else f.name.replace("_", " ")
        kw: dict[str, Any] = {"dest": dest_prefix + f.name, "default": None}
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
            text += f" (default: {'on' if shown else 'off'})"
        else:
            kw["type"] = _scalar_type(f)
            kw["metavar"] = f.name.upper() if f.choices is None else None
            if f.choices is not None:
                kw["choices"] = list(f.choices)
            text += f" (default: {json.dumps(shown) if not isinstance(shown, str) else shown})"
        kw = {k: v for k, v in kw.items() if v is not None or k == "default"}
        parser.add_argument(f.option, help=text.replace("%", "%%"), **kw)
    return fields


def options_from_args(args: argparse.Namespace, cls: type, *, skip: Iterable[str] = (),
                      dest_prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` the user gave on the command line (lists as tuples)."""
    out = {}
    for f in fields_of(cls, skip):
        v = getattr(args, dest_prefix + f.name, None)
        if v is None:
            continue
        out[f.name] = tuple(v) if isinstance(v, list) else v
    return out
