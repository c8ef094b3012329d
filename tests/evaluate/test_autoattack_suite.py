"""The worst-case combination and the ``autoattack`` suite (evaluate, CLI, report).

The worst case is checked against the members run by hand on the same volumes: with
deterministic members (FGSM, BIM) a sample is robust exactly when it is right on the
clean volume and neither member fools it, and the member kept is the first that does
(``keep="first"``) or the one with the smaller L-inf perturbation (``keep="smallest"``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_cryoguard import CryoGuardError
from napari_cryoguard.attacks import run_attack
from napari_cryoguard.cli.evaluate import build_parser
from napari_cryoguard.cli.evaluate import main as evaluate_main
from napari_cryoguard.evaluate import evaluate
from napari_cryoguard.evaluate.suite import (
    RAT_FGSM_EPS,
    autoattack_suite,
    budget_unit,
    named_suite,
    normalize_suite,
)

EPS = 0.03  # fools most of the tiny model's correct samples, not all
#: BIM's steps: 4 x eps/8, so its perturbations are at most eps/2 (smaller than FGSM's)
BIM = {"step_size": EPS / 8, "steps": 4}


def test_autoattack_suite_is_apgd_ce_apgd_t_square_at_the_papers_settings():
    (spec,) = normalize_suite("autoattack")
    assert spec["name"] == "worst_case" and spec["mode"] == "bounded"
    assert spec["keep"] == "first"
    assert spec["budgets"] == list(RAT_FGSM_EPS)  # the default suite's L-inf budgets
    names = [m["name"] for m in spec["members"]]
    assert names == ["apgd_ce", "apgd_t", "square"]
    ce, t, sq = (m["params"] for m in spec["members"])
    assert ce["steps"] == 100 and ce["restarts"] == 1
    assert t["steps"] == 100 and t["n_target_classes"] == 9
    assert sq["n_queries"] == 5000 and sq["p_init"] == 0.8
    assert budget_unit(spec) == "eps (L-inf, normalised units)"
    (quick,) = normalize_suite("autoattack", quick=True)
    assert quick["budgets"] == [0.01, 0.03, 0.12]
    assert [m["params"].get("steps", m["params"].get("n_queries")) for m in quick["members"]] == [
        10,
        10,
        100,
    ]
    # the default suite by name is the default suite
    assert normalize_suite("default") == normalize_suite(None)
    assert normalize_suite("default", quick=True) == normalize_suite(None, quick=True)
    (l2,) = normalize_suite(autoattack_suite([0.5, 1.0], norm="l2"))
    assert [m["name"] for m in l2["members"]] == ["apgd_ce", "apgd_t", "square"]
    assert {m["params"]["norm"] for m in l2["members"]} == {"l2"}
    assert budget_unit(l2) == "eps (L2, normalised units)"
    # budgets as fractions of each sample's range: every member gets the unit, the axis says it
    (rng,) = normalize_suite(autoattack_suite([4 / 255], eps_unit="range"))
    assert {m["params"]["eps_unit"] for m in rng["members"]} == {"range"}
    assert budget_unit(rng) == "eps (L-inf, fraction of each sample's intensity range)"
    assert budget_unit({"name": "pgd", "params": {"eps_unit": "range"}}).endswith("range)")
    mixed = autoattack_suite([0.1])
    mixed[0]["members"][0]["params"]["eps_unit"] = "range"
    with pytest.raises(CryoGuardError, match="mix budget units"):
        normalize_suite(mixed)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"name": "worst_case", "budgets": [0.1]}, "members"),
        (
            {
                "name": "worst_case",
                "budgets": [0.1],
                "members": [{"name": "fgsm"}, {"name": "pgd", "params": {"norm": "l2"}}],
            },
            "mix norms",
        ),
        (
            {"name": "worst_case", "budgets": [0.1], "members": [{"name": "deepfool"}]},
            "minimal attack",
        ),
        (
            {"name": "worst_case", "budgets": [0.1], "members": [{"name": "fgsm", "eps": 1}]},
            "unknown member key",
        ),
        (
            {"name": "worst_case", "budgets": [0.1], "keep": "best", "members": [{"name": "fgsm"}]},
            "keep",
        ),
        (
            {"name": "worst_case", "budgets": [0.1], "members": [{"name": "fgsm", "params": {"x": 1}}]},
            "unknown parameter",
        ),
        ({"name": "fgsm", "budgets": [0.1], "members": []}, "unknown attack spec key"),
    ],
)
def test_worst_case_specs_are_validated(spec, match):
    with pytest.raises(CryoGuardError, match=match):
        normalize_suite([spec])


def test_unknown_suite_name_is_refused():
    with pytest.raises(CryoGuardError, match="autoattack"):
        named_suite("robustbench")


def _by_hand(tiny_checkpoint, test_npz, eps):
    """Volumes, labels, clean predictions and FGSM/BIM outcomes, computed directly."""
    from napari_cryoguard.classify import load_model, prepare_volumes
    from napari_cryoguard.data import load_dataset

    loaded = load_model(tiny_checkpoint, device="cpu")
    ds = load_dataset(test_npz)
    vols = prepare_volumes(loaded, ds.volumes, ds.normalized)
    y = torch.as_tensor(np.asarray(ds.labels))
    model = loaded.model.eval()
    x = torch.from_numpy(vols)[:, None]
    with torch.no_grad():
        clean = model(x).argmax(1)
    f = run_attack("fgsm", model, x, y, eps=eps)
    b = run_attack("bim", model, x, y, eps=eps, **BIM)
    return y.numpy(), clean.numpy(), f, b


@pytest.mark.parametrize("keep", ["first", "smallest"])
def test_worst_case_matches_its_members_run_by_hand(tiny_checkpoint, test_npz, tmp_path, keep):
    spec = {
        "name": "worst-case",
        "label": "FGSM+BIM",
        "budgets": [EPS],
        "keep": keep,
        "members": [
            {"name": "fgsm", "label": "FGSM"},
            {"name": "bim", "label": "BIM", "params": dict(BIM)},
        ],
    }
    m = evaluate(
        [tiny_checkpoint], test_npz, attacks=[spec], out=tmp_path / keep, device="cpu",
        margins=False, batch_size=8,
    )
    (r,) = m["models"].values()
    (pt,) = r["attacks"]["FGSM+BIM"]["points"]
    y, clean, f, b = _by_hand(tiny_checkpoint, test_npz, EPS)
    correct = clean == y
    f_fool = (f.pred_after.numpy() != y) & correct
    b_fool = (b.pred_after.numpy() != y) & correct
    robust = correct & ~f_fool & ~b_fool
    assert robust.sum() < correct.sum() and (f_fool & b_fool).any()  # not a trivial case
    assert pt["robust_accuracy"] == pytest.approx(robust.mean())
    assert pt["robust_by_sample"] == robust.astype(int).tolist()
    # never better for the model than either member alone
    assert pt["robust_accuracy"] <= (correct & ~f_fool).mean() + 1e-12
    assert pt["robust_accuracy"] <= (correct & ~b_fool).mean() + 1e-12
    chosen = np.asarray(pt["attack_by_sample"])
    if keep == "first":
        expect = np.where(f_fool, 0, np.where(b_fool, 1, -1))
        fgsm_m, bim_m = pt["members"]
        assert fgsm_m["attacked"] == correct.sum() and fgsm_m["fooled"] == f_fool.sum()
        assert bim_m["attacked"] == (correct & ~f_fool).sum()
        assert bim_m["fooled"] == (b_fool & ~f_fool).sum()
    else:
        fl, bl = f.norm_linf.numpy(), b.norm_linf.numpy()
        assert np.all(bl <= EPS / 2 + 1e-6) and np.all(fl[f_fool] > EPS / 2)
        expect = np.where(f_fool & (~b_fool | (fl <= bl)), 0, np.where(b_fool, 1, -1))
        assert (expect[f_fool & b_fool] == 1).all()  # the smaller BIM perturbation wins
        assert all(mm["attacked"] == correct.sum() for mm in pt["members"])
    assert chosen.tolist() == expect.tolist()
    assert pt["members"][-1]["robust_accuracy_after"] == pytest.approx(robust.mean())
    report = (tmp_path / keep / "report.md").read_text()
    assert "worst case per sample over FGSM = fgsm" in report and f"keep {keep}" in report


def test_cli_suite_autoattack_in_a_subprocess(tiny_checkpoint, test_npz, tmp_path):
    out = tmp_path / "aa"
    cmd = [
        sys.executable, "-m", "napari_cryoguard.cli", "evaluate", str(tiny_checkpoint),
        "--data", str(test_npz), "--out", str(out), "--suite", "autoattack", "--quick",
        "--max-samples", "9", "--no-margins", "--device", "cpu", "--threads", "1",
        "--json", "--quiet",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["cells_computed"] == 2 + 3  # sanity, clean, 3 budgets
    metrics = json.loads((out / "metrics.json").read_text())
    (r,) = metrics["models"].values()
    curve = r["attacks"]["AutoAttack (quick)"]
    assert curve["attack"] == "worst_case"
    assert [mm["label"] for mm in curve["members"]] == ["APGD-CE", "APGD-T", "Square"]
    pts = curve["points"]
    assert [p["budget"] for p in pts] == [0.01, 0.03, 0.12]
    clean_acc = r["clean"]["accuracy"]
    accs = [p["robust_accuracy"] for p in pts]
    assert all(a <= clean_acc + 1e-12 for a in accs)
    for p in pts:
        # members in order, each on the samples the earlier ones left robust
        att = [mm["attacked"] for mm in p["members"]]
        fooled = [mm["fooled"] for mm in p["members"]]
        assert att[1] == att[0] - fooled[0] and att[2] == att[1] - fooled[1]
        assert p["members"][-1]["robust_accuracy_after"] == pytest.approx(p["robust_accuracy"])
        robust = np.asarray(p["robust_by_sample"])
        kept = np.asarray(p["attack_by_sample"])
        assert np.all(kept[robust == 1] == -1)
    assert summary["models"][next(iter(metrics["models"]))]["worst_robust_accuracy"] == min(accs)
    assert "AutoAttack (quick)" in (out / "report.md").read_text()
    # a rerun finds every cell in state.json
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert json.loads(res.stdout.strip().splitlines()[-1])["cells_cached"] == 5


def test_suite_option_combines_with_attack_options(capsys):
    from napari_cryoguard.cli.evaluate import suite_from_args as _suite_from_args

    args = build_parser().parse_args(
        ["m", "--data", "d.npz", "--out", "o", "--suite", "autoattack", "--attack", "fgsm@0.1"]
    )
    specs = _suite_from_args(args)
    assert [s["name"] for s in specs] == ["worst_case", "fgsm"]
    rc = evaluate_main(["m", "--data", "d.npz", "--out", "o", "--suite", "autoattack",
                        "--list-attacks"])
    assert rc == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["label"] == "AutoAttack" and len(listed[0]["members"]) == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["m", "--data", "d", "--out", "o", "--suite", "nope"])


def test_autoattack_in_range_units(tiny_checkpoint, test_npz, tmp_path):
    from napari_cryoguard.data import load_dataset

    eps = 0.01
    m = evaluate(
        [tiny_checkpoint], test_npz, attacks=autoattack_suite([eps], quick=True, eps_unit="range"),
        out=tmp_path / "range", device="cpu", margins=False, max_samples=6,
    )
    (r,) = m["models"].values()
    (curve,) = r["attacks"].values()
    assert curve["budget_unit"] == "eps (L-inf, fraction of each sample's intensity range)"
    (pt,) = curve["points"]
    assert pt["robust_accuracy"] <= r["clean"]["accuracy"] + 1e-12
    ds = load_dataset(test_npz)
    rows = np.asarray(r["sample_index"])
    span = ds.volumes[rows].reshape(len(rows), -1)
    widest = float((span.max(1) - span.min(1)).max())
    if pt["success_rate"] > 0:  # perturbations within eps times the (largest) range
        assert pt["mean_linf"] <= eps * widest * (1 + 1e-5)
