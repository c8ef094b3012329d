"""The one registry of named, parameterised things: attacks, defenses and models.

A :class:`Registry` maps a name to a class that carries its parameter dataclass
(``cls.params_cls``). It offers the same five services to every kind:

* :meth:`Registry.register`: a class decorator ``@REGISTRY.register("name", Params)``
  that checks the parameter dataclass and refuses a second class under a taken name;
* :meth:`Registry.get`: the class by name; an unknown name raises
  :class:`~napari_cryoguard.CryoGuardError` listing the known ones;
* one key normaliser (:meth:`Registry.key`): case and ``-``/``_`` do not matter;
* :meth:`Registry.make_params`: the parameter dataclass built from keywords, an
  unknown key raising an error that names the valid ones, JSON lists turned back into
  tuples, ``Literal`` fields checked against their choices, and an optional per-kind
  check of types and ranges;
* :func:`number` declares a numeric field with its range once, in the dataclass, and
  :func:`check_fields` (called by the dataclass's ``__post_init__`` and by
  :meth:`Registry.make_params`) checks every such field and every ``Literal`` field;
* discovery of the built-in members: every module of the kind's package is imported
  once (except the infrastructure modules named as private), so their decorators run.

``attacks/base.py``, ``defenses/base.py`` and ``models/registry.py`` each hold one
instance and expose it through thin public functions (``register_attack``,
``get_defense``, ``build_model``, ...). This module imports neither torch nor Qt.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from napari_cryoguard.checks import check_choice, check_number
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.params import choices_of

__all__ = ["Registry", "check_fields", "normalize_name", "number"]

_T = TypeVar("_T", bound=type)

#: ``check(name, fields, values)`` run on the keywords before the dataclass is built
ValueCheck = Callable[[str, dict[str, dataclasses.Field], dict[str, Any]], None]


def number(
    default: Any,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    strict: bool = False,
    integer: bool = False,
    help: str | None = None,
) -> Any:
    """A dataclass field holding a finite number ``>= minimum`` (``>`` with ``strict``),
    ``<= maximum`` when given, an ``int`` with ``integer``; checked by
    :func:`check_fields`. ``None`` passes where the field's type is optional."""
    meta: dict[str, Any] = {"number": (float(minimum), maximum, bool(strict), bool(integer))}
    if help:
        meta["help"] = help
    return dataclasses.field(default=default, metadata=meta)


def check_fields(obj: Any) -> None:
    """Check every :func:`number` field and every ``Literal`` field of a dataclass
    instance; the first bad one raises :class:`CryoGuardError` naming it."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        hint = hints.get(f.name)
        if value is None and _optional(hint):
            continue
        spec = f.metadata.get("number")
        if spec is not None:
            minimum, maximum, strict, integer = spec
            check_number(f.name, value, minimum=minimum, strict=strict, integer=integer)
            if maximum is not None and value > maximum:
                raise CryoGuardError(f"{f.name} must be <= {maximum}, got {value!r}")
        choices = choices_of(hint)
        if choices is not None:
            check_choice(f.name, value, choices)


def normalize_name(name: Any) -> str:
    """The registry key of ``name``: stripped, lower case, ``-`` read as ``_``."""
    return str(name).strip().lower().replace("-", "_")


class Registry(Generic[_T]):
    """Named classes of one kind, each with its parameter dataclass.

    Parameters
    ----------
    kind
        What the members are, in error messages (``"attack"``, ``"defense"``,
        ``"model architecture"``).
    package
        Dotted name of the package whose modules hold the built-in members
        (imported once by :meth:`discover`), or None.
    private
        Modules of ``package`` that are infrastructure, not members (never imported by
        discovery); modules starting with ``_`` are skipped too.
    base
        The class every member must subclass (None: any class).
    name_attr
        The class attribute the decorator sets to the registered key (``"name"``,
        ``"arch_name"``).
    required_fields
        Fields every parameter dataclass must have (attacks: ``bounds``).
    need_defaults
        Every field of the parameter dataclass must have a default.
    check
        Extra check of the keywords of :meth:`make_params` (types and ranges).
    """

    def __init__(
        self,
        kind: str,
        *,
        package: str | None = None,
        private: Iterable[str] = (),
        base: type | None = None,
        name_attr: str = "name",
        required_fields: Iterable[str] = (),
        need_defaults: bool = False,
        check: ValueCheck | None = None,
    ) -> None:
        self.kind = kind
        self.package = package
        self.private = frozenset(private)
        self.base = base
        self.name_attr = name_attr
        self.required_fields = tuple(required_fields)
        self.need_defaults = need_defaults
        self.check = check
        #: key -> registered class (tests may remove a temporary entry with ``pop``)
        self.entries: dict[str, _T] = {}
        self._discovered = False

    key = staticmethod(normalize_name)

    # ------------------------------------------------------------------ registration
    def register(self, name: str, params_cls: type) -> Callable[[_T], _T]:
        """Class decorator: register the decorated class under ``name``.

        Sets ``cls.<name_attr>`` to the key and ``cls.params_cls`` to ``params_cls``.
        Raises ``TypeError`` for a parameter class that is not a suitable dataclass or
        a class of the wrong kind, :class:`CryoGuardError` for a name already taken by
        another class.
        """
        if not dataclasses.is_dataclass(params_cls):
            raise TypeError(f"params_cls of {self.kind} {name!r} must be a dataclass")
        fields = {f.name: f for f in dataclasses.fields(params_cls)}
        missing = [f for f in self.required_fields if f not in fields]
        if missing:
            raise TypeError(
                f"params_cls of {self.kind} {name!r} must be a dataclass with "
                f"field(s) {', '.join(missing)}"
            )
        if self.need_defaults:
            for f in fields.values():
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise TypeError(f"field {f.name!r} of {params_cls.__name__} needs a default")
        key = self.key(name)

        def decorator(cls: _T) -> _T:
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{cls!r} must subclass {self.base.__name__}")
            old = self.entries.get(key)
            if old is not None and old is not cls:
                raise CryoGuardError(f"a {self.kind} named {key!r} is already registered")
            setattr(cls, self.name_attr, key)
            cls.params_cls = params_cls  # type: ignore[attr-defined]
            self.entries[key] = cls
            return cls

        return decorator

    def discover(self) -> None:
        """Import every module of the package once (not the private ones)."""
        if self._discovered or self.package is None:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name in self.private:
                continue
            try:
                importlib.import_module(f"{self.package}.{info.name}")
            except Exception as exc:  # a broken optional member must not hide the others
                warnings.warn(
                    f"{self.kind} module {info.name!r} could not be imported: "
                    f"{type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=3,
                )

    # ------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        """The registered names, sorted."""
        self.discover()
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return self.key(name) in self.entries

    def get(self, name: str) -> _T:
        """The class registered as ``name``; unknown names raise, listing the known ones."""
        self.discover()
        found = self.entries.get(self.key(name))
        if found is None:
            raise CryoGuardError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.entries))}"
            )
        return found

    def params_class(self, name: str) -> type:
        """The parameter dataclass of ``name`` (for forms and command-line options)."""
        return self.get(name).params_cls  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ parameters
    def make_params(self, name: str, /, **params: Any) -> Any:
        """Build the parameter dataclass of ``name`` from keywords.

        Unknown keys raise :class:`CryoGuardError` naming the valid ones; lists (from
        JSON) become tuples unless the field's default is a list; ``Literal`` fields
        must hold one of their choices and :func:`number` fields lie in their range
        (:func:`check_fields`); the registry's ``check`` runs; errors the
        dataclass raises (``TypeError``, ``ValueError``, ``CryoGuardError``) become one
        ``CryoGuardError`` naming the member.
        """
        cls = self.get(name)
        return self.build(cls.params_cls, getattr(cls, self.name_attr), params)  # type: ignore[attr-defined]

    def build(self, params_cls: type, name: str, params: Mapping[str, Any]) -> Any:
        """:meth:`make_params` for a known parameter class (``name`` for messages)."""
        fields = {f.name: f for f in dataclasses.fields(params_cls) if f.init}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise CryoGuardError(
                f"unknown parameter(s) {', '.join(unknown)} for {self.kind} {name!r}; "
                f"valid: {', '.join(fields) or '(none)'}"
            )
        clean = {k: _tuples(v, fields[k]) for k, v in params.items()}
        if self.check is not None:
            self.check(name, fields, clean)
        try:
            out = params_cls(**clean)
            check_fields(out)
        except (TypeError, ValueError, CryoGuardError) as exc:
            raise CryoGuardError(f"invalid parameters for {self.kind} {name!r}: {exc}") from exc
        return out


def _tuples(value: Any, f: dataclasses.Field) -> Any:
    """A JSON list back as a tuple, unless the field's default is a list."""
    if isinstance(value, list) and not isinstance(f.default, list):
        return tuple(value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolved forward references: no choice checks
        return {}


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)
