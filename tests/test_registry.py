"""The one Registry (napari_cryoguard.registry): names, parameters, checks, discovery."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from typing import Literal

import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.registry import Registry, check_fields, normalize_name, number


class Base:
    name = ""


@dataclasses.dataclass
class ToyParams:
    mode: Literal["fast", "slow"] = "fast"
    steps: int = number(3, minimum=1, integer=True)
    rate: float | None = number(None, strict=True, maximum=1.0)
    widths: tuple[int, ...] = (1, 2)


def test_names_normalised_and_unknown_names_listed():
    reg: Registry = Registry("toy", base=Base)

    @reg.register("My-Toy", ToyParams)
    class MyToy(Base):
        pass

    assert MyToy.name == "my_toy" and MyToy.params_cls is ToyParams
    assert reg.get(" my-TOY ") is MyToy and "MY_TOY" in reg and reg.names() == ["my_toy"]
    assert normalize_name("A-b_C") == "a_b_c"
    with pytest.raises(CryoGuardError, match="unknown toy 'nope'; known: my_toy"):
        reg.get("nope")
    with pytest.raises(CryoGuardError, match="already registered"):
        reg.register("my_toy", ToyParams)(type("Other", (Base,), {}))
    with pytest.raises(TypeError):
        reg.register("x", ToyParams)(type("NotBase", (), {}))
    with pytest.raises(TypeError):
        reg.register("x", dict)


def test_params_built_and_checked():
    reg: Registry = Registry("toy")
    reg.register("toy", ToyParams)(type("Toy", (), {}))
    p = reg.make_params("toy", steps=5, widths=[4, 8])
    assert p.steps == 5 and p.widths == (4, 8) and p.rate is None
    with pytest.raises(CryoGuardError, match="unknown parameter.*stepz.*valid: mode, steps"):
        reg.make_params("toy", stepz=1)
    with pytest.raises(CryoGuardError, match="toy.*mode must be one of 'fast', 'slow'"):
        reg.make_params("toy", mode="medium")
    with pytest.raises(CryoGuardError, match="steps must be an integer"):
        reg.make_params("toy", steps=1.5)
    with pytest.raises(CryoGuardError, match="steps must be >= 1"):
        reg.make_params("toy", steps=0)
    with pytest.raises(CryoGuardError, match="rate must be > 0"):
        reg.make_params("toy", rate=0.0)
    with pytest.raises(CryoGuardError, match="rate must be <= 1.0"):
        reg.make_params("toy", rate=2.0)
    check_fields(ToyParams(rate=0.5))  # direct construction checks nothing by itself


def test_required_fields_defaults_and_value_check():
    seen = []
    reg: Registry = Registry(
        "toy", required_fields=("steps",), need_defaults=True,
        check=lambda name, fields, values: seen.append((name, sorted(values))),
    )

    @dataclasses.dataclass
    class NoSteps:
        other: int = 1

    @dataclasses.dataclass
    class NoDefault:
        steps: int

    with pytest.raises(TypeError, match="steps"):
        reg.register("a", NoSteps)
    with pytest.raises(TypeError, match="default"):
        reg.register("b", NoDefault)
    reg.register("c", ToyParams)(type("C", (), {}))
    reg.make_params("c", steps=2)
    assert seen == [("c", ["steps"])]


def test_discovery_imports_every_module_but_the_private_ones_once(tmp_path, monkeypatch):
    pkg = tmp_path / "toy_members"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "infra.py").write_text("raise RuntimeError('infrastructure must not be imported')\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private')\n")
    (pkg / "broken.py").write_text("raise ImportError('missing optional dependency')\n")
    (pkg / "member.py").write_text(textwrap.dedent("""
        import dataclasses
        from toy_members import REG

        @dataclasses.dataclass
        class P:
            k: int = 1

        @REG.register("member", P)
        class Member:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("toy", package="toy_members", private=("infra",))
    import toy_members

    toy_members.REG = reg
    try:
        with pytest.warns(RuntimeWarning, match="broken"):
            assert reg.names() == ["member"]
        assert reg.names() == ["member"]  # once: no second warning, no re-import
    finally:
        for mod in [m for m in sys.modules if m.startswith("toy_members")]:
            sys.modules.pop(mod)
