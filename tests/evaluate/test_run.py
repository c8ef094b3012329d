"""evaluate(): outputs, report content, resume (the command line: tests/cli/test_evaluate_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_cryoguard.evaluate import cells as cells_mod
from napari_cryoguard.evaluate import evaluate

SMALL_SUITE = [
    {"name": "fgsm", "label": "FGSM", "budgets": [0.01, 0.05], "params": {}},
    {
        "name": "pgd",
        "label": "PGD-3",
        "budgets": [0.01, 0.05],
        "params": {"steps": 3, "step_size": None, "seed": 0},
    },
    {"name": "deepfool", "label": "DeepFool L2", "budgets": [0.5, 2.0], "params": {"steps": 5}},
]


def test_evaluate_writes_report_plots_and_metrics(tiny_checkpoint, test_npz, tmp_path):
    out = tmp_path / "ev"
    m = evaluate(
        [tiny_checkpoint],
        test_npz,
        out=out,
        quick=True,
        device="cpu",
        max_samples=12,
        margin_samples=4,
    )
    for name in ("metrics.json", "report.md", "report.html", "state.json"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())  # strict JSON, parses
    assert on_disk["models"] == m["models"]
    r = m["models"]["tiny"]
    assert r["n_evaluated"] == 12
    clean = r["clean"]
    cm = np.asarray(clean["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == 12
    assert clean["accuracy"] == pytest.approx(np.trace(cm) / 12)
    assert {c["name"] for c in r["sanity"]["checks"]} >= {
        "eval_mode",
        "deterministic",
        "input_gradients",
        "eps_zero",
        "clean_accuracy",
        "monotonic",
    }
    # every quick-suite attack has a curve with one point per budget, accuracy <= clean
    labels = {s["label"]: s for s in m["settings"]["attacks"]}
    assert set(r["attacks"]) == set(labels)
    for lb, curve in r["attacks"].items():
        assert [p["budget"] for p in curve["points"]] == labels[lb]["budgets"]
        for p in curve["points"]:
            assert 0.0 <= p["robust_accuracy"] <= clean["accuracy"] + 1e-12
    assert r["margins"]["bpgd"]["summary"]["n"] >= 1
    # plots exist and are PNGs; the HTML embeds them and holds the tables
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) == len(labels) + 2  # one per attack, a confusion matrix, margins
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == len(pngs)
    assert "<table>" in html and "Sanity checks" in html and "FGSM" in html
    md = (out / "report.md").read_text()
    assert "| model | check | status | message |" in md
    assert "](plots/accuracy_FGSM.png)" in md


def test_model_in_train_mode_fails_its_sanity_verdict(eval_data, tmp_path):
    from napari_cryoguard.models import build_model, tiny_params

    _, te = eval_data
    torch.manual_seed(0)
    net = build_model("cb3d", 3, 16, **tiny_params("cb3d")).train()  # dropout 0.5, train mode
    m = evaluate(
        [net],
        te,
        attacks=SMALL_SUITE[:1],
        out=tmp_path / "ev",
        device="cpu",
        max_samples=6,
        margins=False,
    )
    r = m["models"]["model1"]
    status = {c["name"]: c["status"] for c in r["sanity"]["checks"]}
    assert status["eval_mode"] == "fail"
    assert r["sanity"]["verdict"] == "fail" and m["verdict"] == "fail"
    assert "FAIL" in (tmp_path / "ev" / "report.md").read_text()


class _Stop(Exception):
    pass


def test_resume_skips_finished_cells_and_matches_uninterrupted(
    tiny_checkpoint, test_npz, tmp_path, monkeypatch
):
    calls = []
    real = cells_mod.attack_dataset

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(cells_mod, "attack_dataset", counting)
    kw = dict(attacks=SMALL_SUITE, device="cpu", max_samples=12, margins=False)

    full = evaluate([tiny_checkpoint], test_npz, out=tmp_path / "full", **kw)
    n_cells = len(calls)
    assert n_cells == 5  # 2 FGSM + 2 PGD budgets, one DeepFool run

    def stop_after_first_attack(ev):
        if ev["kind"] == "attack":
            raise _Stop

    calls.clear()
    with pytest.raises(_Stop):
        evaluate(
            [tiny_checkpoint],
            test_npz,
            out=tmp_path / "cut",
            progress=stop_after_first_attack,
            **kw,
        )
    assert len(calls) == 1
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert sorted(c["kind"] for c in state["cells"].values()) == ["attack", "clean", "sanity"]

    calls.clear()
    events = []
    resumed = evaluate(
        [tiny_checkpoint], test_npz, out=tmp_path / "cut", progress=events.append, **kw
    )
    assert len(calls) == n_cells - 1  # the finished FGSM cell was not recomputed
    first = [e for e in events if e["kind"] == "attack"][0]
    assert first["cached"] and first["cell"] == "FGSM" and first["budget"] == 0.01
    assert resumed["timing"]["cells_cached"] == 3
    assert resumed["models"] == full["models"]

    # a different sample selection does not reuse the old cells
    calls.clear()
    evaluate([tiny_checkpoint], test_npz, out=tmp_path / "cut", **{**kw, "max_samples": 9})
    assert len(calls) == n_cells
