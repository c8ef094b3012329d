"""The layout rules of docs/architecture.md, read from the source itself.

- the arrow of imports points one way: ``_napari`` and ``cli`` -> core -> torch/numpy; the
  core never imports napari, Qt, magicgui, the widgets or the command line;
- ``argparse`` only in ``cli/``;
- no module in ``src/`` over 900 lines;
- evaluation code never compares against an attack's name (per-attack facts live on the
  attack class);
- no citation of files the repository does not hold (``papers/<name>.txt``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_cryoguard"
SOURCES = sorted(PKG.rglob("*.py"))
GUI_ONLY = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy",
            "superqt", "matplotlib.backends.backend_qt")
MAX_LINES = 900


def _rel(path: Path) -> str:
    return path.relative_to(PKG).as_posix()


def _is_core(path: Path) -> bool:
    return not _rel(path).startswith(("_napari/", "cli/"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` statement names, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_sources_found():
    assert len(SOURCES) > 50
    assert any(_rel(p) == "cli/__init__.py" for p in SOURCES)


def test_core_imports_no_gui_and_no_cli():
    bad = []
    for path in filter(_is_core, SOURCES):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in GUI_ONLY or mod.startswith(("napari_cryoguard._napari",
                                                  "napari_cryoguard.cli")):
                bad.append(f"{_rel(path)}:{line} imports {mod}")
    assert not bad, "the core imports a GUI or CLI module:\n" + "\n".join(bad)


def test_argparse_only_in_cli():
    bad = [f"{_rel(p)}:{line}" for p in SOURCES if not _rel(p).startswith("cli/")
           for line, mod in _imports(p) if mod == "argparse"]
    assert not bad, "argparse outside cli/: " + ", ".join(bad)


def test_no_module_over_the_line_limit():
    long = {_rel(p): n for p in SOURCES
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_citation_of_files_outside_the_repository():
    bad = [f"{_rel(p)}:{i}" for p in SOURCES
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if "papers/" in line and ".txt" in line]
    assert not bad, "citations of papers/<name>.txt: " + ", ".join(bad)


def _string_constants(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for elt in node.elts for s in _string_constants(elt)]
    return []


def test_evaluation_has_no_per_attack_name_branches():
    pytest.importorskip("torch")
    from napari_cryoguard.attacks import available_attacks

    names = set(available_attacks())
    names |= {n.replace("_", "-") for n in names}
    bad = []
    for path in sorted((PKG / "evaluate").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            for comparator in [node.left, *node.comparators]:
                hit = names.intersection(_string_constants(comparator))
                if hit:
                    bad.append(f"{_rel(path)}:{node.lineno} compares with {sorted(hit)}")
    assert not bad, "per-attack name branches in evaluation:\n" + "\n".join(bad)
