"""Forms generated from the parameter dataclasses of attacks, defenses and models.

A parameter is declared once, in its dataclass; the widgets build their forms here
(and the CLI its options elsewhere) from the fields' types and defaults.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

#: Known string choices by field name (used when a field is a plain ``str``).
CHOICES: dict[str, list[str]] = {
    "norm": ["linf", "l2"],
    "loss": ["ce", "margin"],
    "optimizer": ["adam", "sgd"],
    "schedule": ["none", "cosine", "step"],
}


def _field_widget(name: str, default: Any, hint: Any):
    label = name.replace("_", " ")
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return ComboBox(name=name, label=label, choices=list(typing.get_args(hint)), value=default)
    if isinstance(default, bool):
        return CheckBox(name=name, label=label, value=default)
    if isinstance(default, int) and hint in (int, "int"):
        return SpinBox(name=name, label=label, value=default, min=-(10**9), max=10**9)
    if isinstance(default, float) and hint in (float, "float"):
        return FloatSpinBox(name=name, label=label, value=default, min=-1e9, max=1e9,
                            step=10 ** (_magnitude(default) - 1))
    if isinstance(default, str) and name in CHOICES and default in CHOICES[name]:
        return ComboBox(name=name, label=label, choices=CHOICES[name], value=default)
    if isinstance(default, str) and hint in (str, "str"):
        return LineEdit(name=name, label=label, value=default)
    # anything else (optional numbers, tuples, None): JSON text
    return LineEdit(name=name, label=label, value=json.dumps(default),
                    tooltip="JSON: a number, a list, null, or a string in quotes")


def _magnitude(x: float) -> int:
    import math

    return int(math.floor(math.log10(abs(x)))) if x else -3


def _parse(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("", "none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class DataclassForm(Container):
    """A form for one parameter dataclass: one widget per field, defaults filled in."""

    def __init__(self, params_cls: type | None = None, skip: tuple[str, ...] = ()) -> None:
        super().__init__(labels=True)
        self._skip = skip
        self.params_cls = None
        if params_cls is not None:
            self.set_params_cls(params_cls)

    def set_params_cls(self, params_cls: type) -> None:
        """Rebuild the form for another dataclass."""
        self.clear()
        self.params_cls = params_cls
        try:
            hints = typing.get_type_hints(params_cls)
        except Exception:  # unresolved forward references: fall back to the defaults' types
            hints = {}
        for f in dataclasses.fields(params_cls):
            if f.name in self._skip or not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                continue
            self.append(_field_widget(f.name, default, hints.get(f.name, type(default))))

    def values(self) -> dict[str, Any]:
        """The form's values, JSON text parsed, as keyword arguments for the dataclass."""
        out = {}
        for w in self:
            v = w.value
            if isinstance(w, LineEdit):
                field_default = {f.name: f.default for f in dataclasses.fields(self.params_cls)}
                v = v if isinstance(field_default.get(w.name), str) else _parse(v)
                if isinstance(v, list):
                    v = tuple(v)
            out[w.name] = v
        return out
