"""Part (c): RAT (Wu et al., IEEE BIBM 2019) Tables I-II, natural vs AT vs TRADES vs RAT
training; the natural model's adversarial examples (Table I) and white-box FGSM at eps
0.03/0.06/0.12 (Table II)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from napari_cryoguard.evaluate.report import plot_bars, plot_curves
from napari_cryoguard.evaluate.reproduction import common


def training_attack(steps: int) -> dict:
    """The PGD that trains AT, TRADES and RAT in part (c).

    RAT section IV.B trains with its own PGD clipped to [-0.01, 0.01] on zero-mean
    normalised data (10 steps of 0.001): an absolute budget, so normalised units. Only the
    foolbox attacks of its Tables I-II take fractions of the value range ("range"). 0.01
    of the range was 13 times that budget on the simulated data and collapsed RAT to the
    constant classifier.
    """
    return {"eps": 0.01, "step_size": max(0.001, 0.01 / steps), "steps": steps,
            "eps_unit": "normalized"}


def part_c(ctx: common.Context) -> dict[str, Any]:
    """RAT paper Tables I-II: natural, AT, TRADES, RAT."""
    from napari_cryoguard.attacks import attack_dataset

    s = ctx.sizes
    tr, te = ctx.sim(s["snr_robust"], 60.0, "train"), ctx.sim(s["snr_robust"], 60.0, "test")
    k = s["pgd_train_steps"]
    pgd = training_attack(k)
    nat = ctx.train("c", "natural", tr, "cb3d", "standard")
    models = {
        "natural": nat,
        "AT": ctx.train("c", "at", tr, "cb3d", "at", pgd, init=nat),
        "TRADES": ctx.train("c", "trades", tr, "cb3d", "trades", pgd, init=nat),
        "RAT": ctx.train(
            "c",
            "rat",
            tr,
            "cb3d",
            "rat",
            {**pgd, "eps_prime": 0.01, "step_size_prime": pgd["step_size"], "steps_prime": k},
            init=nat,
        ),
    }
    n_eval = min(s["eval_samples"], len(te))
    te_sel = te.volumes[:n_eval]
    y = np.asarray(te.labels[:n_eval])
    # Table I: adversarial examples of the natural model, fed to every model (transfer)
    t1_attacks = {
        "FGSM (eps 0.03)": ("fgsm", {"eps": 0.03, "eps_unit": "range"}),
        "DeepFool L2": ("deepfool", {"norm": "l2", "steps": s["deepfool_steps"]}),
        "DeepFool Linf": ("deepfool", {"norm": "linf", "steps": s["deepfool_steps"]}),
        "CW L2": ("cw", {"steps": s["cw_steps"], "binary_search_steps": s["cw_search"]}),
        "Uniform noise": (
            "uniform_noise",
            {"steps": s["noise_steps"], "eps_max": 1.0, "seed": ctx.seed},
        ),
        "Salt & pepper": (
            "salt_pepper",
            {"steps": s["noise_steps"], "max_fraction": 0.2, "seed": ctx.seed},
        ),
    }
    loaded = {n: common.load_checkpoint(p) for n, p in models.items()}
    ctx.say("c", "Table I: adversarial examples of the natural model")
    t1: dict[str, dict[str, float]] = {}
    clean = {n: float((common.predict_volumes(m, te_sel) == y).mean()) for n, m in loaded.items()}
    for n, path in models.items():
        common.record_collapse(ctx, "c", n, path, te_sel, y)
    dead = common.collapsed_names(ctx, "c")
    for label, (name, params) in t1_attacks.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = attack_dataset(
                loaded["natural"].model, te_sel, y, name, device=ctx.device, **params
            )
        xadv = res.x_adv[:, 0].numpy()
        t1[label] = {n: float((common.predict_volumes(m, xadv) == y).mean()) for n, m in loaded.items()}
    # Table II (and curves for all attacks): white-box attacks on every model
    fgsm = {
        "name": "fgsm",
        "label": "FGSM",
        "budgets": [0.01, 0.03, 0.06, 0.12],
        "params": {"eps_unit": "range"},
    }
    suite = [
        fgsm,
        {
            "name": "deepfool",
            "label": "DeepFool L2",
            "budgets": [0.5, 1.0, 2.0, 4.0],
            "params": {"norm": "l2", "steps": s["deepfool_steps"]},
        },
        {
            "name": "cw",
            "label": "CW L2",
            "budgets": [0.5, 1.0, 2.0, 4.0],
            "params": {"steps": s["cw_steps"], "binary_search_steps": s["cw_search"]},
        },
        {
            "name": "uniform_noise",
            "label": "Uniform noise",
            "budgets": [0.25, 0.5, 1.0],
            "params": {"steps": s["noise_steps"], "seed": ctx.seed},
        },
        {
            "name": "salt_pepper",
            "label": "Salt & pepper",
            "budgets": [0.02, 0.05, 0.1, 0.2],
            "params": {"steps": s["noise_steps"], "seed": ctx.seed},
        },
    ]
    ev = ctx.evaluate("c", models, te, suite, max_samples=n_eval)
    names = list(models)
    t1_rows = [["no attack", *[common.cell_text(common.interval(clean[n], n_eval), n in dead) for n in names], "—"]]
    t1_paper = {
        "FGSM (eps 0.03)": "RAT > 90 %",
        "DeepFool L2": "RAT > 90 %",
        "DeepFool Linf": "RAT > 90 %",
        "CW L2": "RAT > 90 %",
        "Uniform noise": "AT best",
        "Salt & pepper": "RAT best",
    }
    for label in t1_attacks:
        t1_rows.append(
            [label, *[common.cell_text(common.interval(t1[label][n], n_eval)) for n in names], t1_paper[label]]
        )

    def t1_ci(label: str) -> dict[str, dict[str, Any]]:
        return {n: common.interval(t1[label][n], n_eval) for n in names}

    def wb(eps: float) -> dict[str, dict[str, Any]]:
        return {
            n: common.interval(common.point_value(ev, n, "FGSM", eps, "adv_accuracy"), common.point_count(ev, n, "FGSM", eps))
            for n in names
        }

    t2_rows = []
    for eps in (0.03, 0.06, 0.12):
        t2_rows.append(
            [eps, *[common.cell_text(wb(eps)[n]) for n in names], "RAT > 20 %, AT and TRADES 'extremely low'"]
        )
    claims = []
    for label in t1_attacks:
        claims.append(
            common.make_claim(
                f"RAT resists the natural model's {label} examples better than the natural model",
                "Table I, section V.A",
                "natural 'extremely low', RAT high",
                t1[label],
                "RAT",
                "natural",
                ci=t1_ci(label),
                collapsed=dead,
            )
        )
    for label in ("FGSM (eps 0.03)", "Salt & pepper"):
        for other in ("AT", "TRADES"):
            claims.append(
                common.make_claim(
                    f"RAT beats {other} on {label} (transfer)",
                    "Table I, section V.A",
                    "RAT 'much better than the other two'",
                    t1[label],
                    "RAT",
                    other,
                    ci=t1_ci(label),
                    collapsed=dead,
                )
            )
    for other in ("RAT", "TRADES"):
        claims.append(
            common.make_claim(
                f"AT beats {other} on uniform noise (transfer)",
                "Table I, section V.A",
                "AT 'achieves the best result' on uniform noise",
                t1["Uniform noise"],
                "AT",
                other,
                ci=t1_ci("Uniform noise"),
                collapsed=dead,
            )
        )
    for eps in (0.03, 0.06, 0.12):
        vals = {n: common.point_value(ev, n, "FGSM", eps, "adv_accuracy") for n in names}
        for other in ("AT", "TRADES"):
            claims.append(
                common.make_claim(
                    f"RAT beats {other} under white-box FGSM, eps {eps:g}",
                    "Table II, section V.B",
                    "RAT > 20 %, others 'extremely low'",
                    vals,
                    "RAT",
                    other,
                    ci=wb(eps),
                    collapsed=dead,
                )
            )
    p1 = plot_bars(
        ctx.out / "plots" / "c_table1_transfer.png",
        list(t1_attacks),
        {n: [t1[a][n] for a in t1_attacks] for n in names},
        title="Accuracy on the natural model's adversarial examples (Table I)",
        ylabel="accuracy",
    )
    p2 = plot_curves(
        ctx.out / "plots" / "c_table2_fgsm.png",
        {
            n: (
                [0.0, 0.01, 0.03, 0.06, 0.12],
                [clean[n]]
                + [common.point_value(ev, n, "FGSM", e, "adv_accuracy") for e in (0.01, 0.03, 0.06, 0.12)],
            )
            for n in names
        },
        title="White-box FGSM (Table II)",
        xlabel="eps (L-inf, fraction of each sample's intensity range)",
        ylabel="accuracy on adversarial samples",
        chance=0.2,
    )
    return {
        "title": "(c) Natural vs AT vs TRADES vs RAT (RAT paper, Tables I-II)",
        "tables": [
            {
                "caption": f"Table I: accuracy (95 % Wilson common.interval, n = {n_eval}; * = collapsed "
                "model) on adversarial examples crafted on the natural model (FGSM eps 0.03 "
                "of each sample's intensity range; minimal attacks unbounded, as foolbox "
                "returns them); the paper's Table I numbers are not in the text, the 'paper' "
                "column quotes section V.A",
                "header": ["attack", *names, "paper (text)"],
                "rows": t1_rows,
            },
            {
                "caption": "Table II: accuracy (95 % Wilson common.interval) on white-box FGSM adversarial "
                "samples of each model, eps as a fraction of each sample's intensity range "
                "(numbers not in the text; 'paper' quotes section V.B)",
                "header": ["eps", *names, "paper (text)"],
                "rows": t2_rows,
            },
        ],
        "claims": claims,
        "plots": [
            (str(p1.relative_to(ctx.out)), "Part c: Table I (transfer from the natural model)"),
            (str(p2.relative_to(ctx.out)), "Part c: Table II (white-box FGSM)"),
        ],
        "evaluation": "eval/c/report.html",
        "transfer": t1,
        "clean": clean,
        "notes": [
            "Units (eps_unit): training follows RAT section IV.B, whose PGD clips the "
            "perturbation to [-0.01, 0.01] on normalised data (normalised units); the FGSM "
            "of Tables I-II, foolbox's in the paper, uses 'range' (a fraction of each "
            "sample's max - min); the DeepFool, CW and noise curves of eval/c are in "
            "normalised units.",
            "Collapsed models (not compared): " + (", ".join(dead) or "none"),
            f"Training attacks: eps 0.01, {k} steps of {pgd['step_size']:g} (paper: 10 steps "
            "of 0.001); SNR "
            f"{s['snr_robust']:g}, tilt ±60° (the paper: real data, SNR 0.5, 30° wedge).",
            "White-box curves for DeepFool, CW and the noise attacks are in eval/c/report.html.",
        ],
    }
