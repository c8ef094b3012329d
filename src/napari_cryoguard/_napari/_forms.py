"""Forms generated from the parameter dataclasses of attacks, defenses and models.

A parameter is declared once, in its dataclass; the widgets build their forms here
(and the CLI its options in ``cli/``) from the same field walk,
:func:`napari_cryoguard.params.fields_of`, and read free text back with
:func:`napari_cryoguard.params.parse_value`.
"""

from __future__ import annotations

import json
import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from napari_cryoguard import params
from napari_cryoguard.params import Field, fields_of, parse_value

#: Choices of the plain ``str`` fields of these names (until their dataclasses declare
#: them as ``Literal`` types): the shared choice types of :mod:`napari_cryoguard.params`.
CHOICES: dict[str, list[str]] = {
    name: list(typing.get_args(hint))
    for name, hint in (("norm", params.Norm), ("loss", params.Loss),
                       ("optimizer", params.Optimizer), ("schedule", params.Schedule))
}


def _field_widget(f: Field):
    name, default, hint = f.name, f.default, f.hint
    label = name.replace("_", " ")
    choices = list(f.choices) if f.choices is not None else CHOICES.get(name)
    if choices is not None and default in choices:
        return ComboBox(name=name, label=label, choices=choices, value=default)
    if isinstance(default, bool):
        return CheckBox(name=name, label=label, value=default)
    if isinstance(default, int) and hint in (int, "int"):
        return SpinBox(name=name, label=label, value=default, min=-(10**9), max=10**9)
    if isinstance(default, float) and hint in (float, "float"):
        return FloatSpinBox(name=name, label=label, value=default, min=-1e9, max=1e9,
                            step=10 ** (_magnitude(default) - 1))
    if isinstance(default, str) and hint in (str, "str"):
        return LineEdit(name=name, label=label, value=default)
    # anything else (optional numbers, tuples, None): JSON text
    return LineEdit(name=name, label=label, value=json.dumps(default),
                    tooltip="JSON: a number, a list, null, or a string in quotes")


def _magnitude(x: float) -> int:
    import math

    return int(math.floor(math.log10(abs(x)))) if x else -3


class DataclassForm(Container):
    """A form for one parameter dataclass: one widget per field, defaults filled in."""

    def __init__(self, params_cls: type | None = None, skip: tuple[str, ...] = ()) -> None:
        super().__init__(labels=True)
        self._skip = skip
        self.params_cls = None
        self._fields: dict[str, Field] = {}
        if params_cls is not None:
            self.set_params_cls(params_cls)

    def set_params_cls(self, params_cls: type) -> None:
        """Rebuild the form for another dataclass."""
        self.clear()
        self.params_cls = params_cls
        self._fields = {f.name: f for f in fields_of(params_cls, skip=self._skip)}
        for f in self._fields.values():
            self.append(_field_widget(f))
        from napari_cryoguard._napari._layout import fit_combos

        fit_combos(self.native)

    def values(self) -> dict[str, Any]:
        """The form's values, JSON text parsed, as keyword arguments for the dataclass."""
        out = {}
        for w in self:
            v = w.value
            if isinstance(w, LineEdit) and not isinstance(self._fields[w.name].default, str):
                v = parse_value(v)
                if isinstance(v, list):
                    v = tuple(v)
            out[w.name] = v
        return out
