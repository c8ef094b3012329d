"""A part's resume key covers the part's own code: a changed setting in a part module
recomputes the part instead of answering with the older stored result."""

from __future__ import annotations

import importlib.util
import json
import sys

from napari_cryoguard.evaluate.reproduction import driver

PART = """
CALLS = []
SETTING = {setting!r}


def part_fake(ctx):
    CALLS.append(SETTING)
    return {{
        "title": "fake part",
        "tables": [{{"header": ["setting"], "rows": [[SETTING]]}}],
        "claims": [],
        "collapse": {{}},
    }}
"""


def _load(tmp_path, name, setting):
    path = tmp_path / f"{name}.py"
    path.write_text(PART.format(setting=setting))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_changed_part_code_is_recomputed_not_resumed(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    first = _load(tmp_path, "fake_part_v1", 0.01)
    monkeypatch.setitem(driver._PART_FUNCS, "c", first.part_fake)
    try:
        driver.reproduce(out, quick=True, parts="c")
        events = []
        driver.reproduce(out, quick=True, parts="c", progress=events.append)
        # same code: resumed, the part function did not run again
        assert first.CALLS == [0.01]
        assert any("already done" in e["message"] for e in events)

        # the same part with one setting changed in its module's code
        second = _load(tmp_path, "fake_part_v2", 0.13)
        monkeypatch.setitem(driver._PART_FUNCS, "c", second.part_fake)
        events.clear()
        m = driver.reproduce(out, quick=True, parts="c", progress=events.append)
        assert second.CALLS == [0.13]
        assert not any("already done" in e["message"] for e in events)
        assert m["parts"]["c"]["tables"][0]["rows"] == [[0.13]]
        stored = json.loads((out / "parts" / "c.json").read_text())
        assert stored["result"]["tables"][0]["rows"] == [[0.13]]
    finally:
        sys.modules.pop("fake_part_v1", None)
        sys.modules.pop("fake_part_v2", None)


def test_code_key_hashes_the_part_module():
    keys = {p: driver.code_key(f) for p, f in driver._PART_FUNCS.items()}
    assert len(set(keys.values())) == len(keys)  # each part's own module
    assert keys["c"] == driver.code_key(driver._PART_FUNCS["c"])  # stable
