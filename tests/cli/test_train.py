"""``cryoguard train``: options, --set resolution, the --simulate spec, exit codes, events."""

from __future__ import annotations

import json
import warnings

import pytest

from napari_cryoguard import CryoGuardError
from napari_cryoguard.cli.train import _resolve_sets, build_parser
from napari_cryoguard.cli.train import main as train_main
from napari_cryoguard.data import save_dataset
from napari_cryoguard.defenses import read_events
from napari_cryoguard.defenses.training_data import parse_simulate_spec
from napari_cryoguard.models import load_checkpoint, tiny_params


@pytest.fixture(scope="module")
def tiny_data():
    """Two well-separated classes, 20 cubes of 20^3 each, SNR 1."""
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_subtomograms(20, classes=["1bxn", "6pxm"], cube=20, snr=1.0, seed=1)


def test_bad_dataset_path_exits_2_with_an_error_event(tmp_path, capsys):
    ev = tmp_path / "ev.jsonl"
    code = train_main(
        [
            "--data",
            str(tmp_path / "missing.npz"),
            "--events",
            str(ev),
            "--out",
            str(tmp_path / "x.safetensors"),
            "--json",
            "--quiet",
        ]
    )
    assert code == 2
    records = read_events(ev)
    assert [r["event"] for r in records] == ["error"]
    assert "missing.npz" in records[0]["message"]
    cap = capsys.readouterr()
    assert "missing.npz" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["ok"] is False
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_trains_from_a_dataset_file_with_json_summary(tiny_data, tmp_path, capsys):
    data = save_dataset(
        tmp_path / "d.npz",
        volumes=tiny_data.volumes,
        labels=tiny_data.labels,
        class_names=tiny_data.class_names,
    )
    out = tmp_path / "cli.safetensors"
    code = train_main(
        [
            "--data",
            str(data),
            "--model",
            "cb3d",
            "--tiny",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--optimizer",
            "sgd",
            "--set",
            "dropout=0.25",
            "--set",
            "val_fraction=0.25",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["checkpoint"] == str(out) and summary["epochs"] == 1
    model, meta = load_checkpoint(out)
    assert meta["arch_params"]["conv_widths"] == list(tiny_params("cb3d")["conv_widths"])
    assert meta["arch_params"]["dropout"] == pytest.approx(0.25)
    assert meta["training"]["optimizer"] == "sgd" and meta["training"]["lr"] == pytest.approx(0.005)
    assert meta["training"]["n_val"] == 10 and meta["training"]["dataset"]["path"].endswith("d.npz")


def test_cli_no_state_and_every_step_event(tiny_data, tmp_path):
    """--no-state leaves the checkpoint alone; --step-interval 0 reports every step."""
    data = save_dataset(tmp_path / "d.npz", volumes=tiny_data.volumes,
                        labels=tiny_data.labels, class_names=tiny_data.class_names)
    out, events = tmp_path / "run" / "m.safetensors", tmp_path / "run" / "ev.jsonl"
    code = train_main(["--data", str(data), "--model", "cb3d", "--tiny", "--epochs", "2",
                       "--batch-size", "4", "--device", "cpu", "--out", str(out),
                       "--events", str(events), "--no-state", "--step-interval", "0",
                       "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["ev.jsonl", "m.safetensors"]
    steps = [(e["epoch"], e["step"]) for e in read_events(events) if e["event"] == "step"]
    per_epoch = steps[-1][1]
    assert per_epoch == 8  # 32 training cubes in batches of 4
    assert steps == [(ep, st) for ep in (1, 2) for st in range(1, per_epoch + 1)]
    assert train_main(["--data", str(data), "--step-interval", "-1", "--out", str(out),
                       "--quiet"]) == 2


def test_set_keys_resolve_defense_then_model_then_recipe():
    mp, dp, rp = _resolve_sets(
        [
            "alpha=0.5",
            "conv_widths=[8,8]",
            "epochs=3",
            "model.dropout=0.1",
            'recipe.robust_params={"eps": 0.1}',
            "robust_attack=fgsm",
        ],
        "autoencoder",
        "semi",
    )
    assert dp == {"alpha": 0.5}
    assert mp == {"conv_widths": [8, 8], "dropout": 0.1}
    assert rp == {"epochs": 3, "robust_params": {"eps": 0.1}, "robust_attack": "fgsm"}
    with pytest.raises(CryoGuardError, match="labelled_fraction.*conv_widths.*epochs"):
        _resolve_sets(["nope=1"], "autoencoder", "semi")
    with pytest.raises(CryoGuardError, match="key=value"):
        _resolve_sets(["alpha"], "autoencoder", "semi")


def test_simulate_spec_and_help():
    kw = parse_simulate_spec("n_per_class=50,snr=0.1,tilt=60,cube=28,seed=1,classes=1bxn+6pxm")
    assert kw == {
        "n_per_class": 50,
        "snr": 0.1,
        "tilt_range": 60,
        "cube": 28,
        "seed": 1,
        "classes": ["1bxn", "6pxm"],
    }
    assert parse_simulate_spec('classes=["1bxn","3j9i"],n=2') == {
        "classes": ["1bxn", "3j9i"],
        "n_per_class": 2,
    }
    with pytest.raises(CryoGuardError, match="n_per_class"):
        parse_simulate_spec("bogus=1")
    text = build_parser().format_help()
    for opt in (
        "--data",
        "--simulate",
        "--model",
        "--defense",
        "--set",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--device",
        "--out",
        "--events",
        "--resume",
        "--seed",
        "--val-fraction",
        "--robust-every",
        "--robust-attack",
        "--patience",
        "--json",
        "--tiny",
    ):
        assert opt in text


def test_recipe_options_come_from_the_recipe_without_names_defenses_use():
    args = build_parser().parse_args(["--optimizer", "sgd", "--adam-betas", "[0.9, 0.99]",
                                      "--robust-params", '{"eps": 0.1}', "--amp"])
    assert (args.optimizer, args.adam_betas, args.robust_params, args.amp) == (
        "sgd", [0.9, 0.99], {"eps": 0.1}, True)
    for clash in ("--gamma", "--step-size"):  # RAT's gamma, the attacks' step_size
        with pytest.raises(SystemExit):
            build_parser().parse_args([clash, "1"])
    _, dp, rp = _resolve_sets(["gamma=0.5", "recipe.gamma=0.2"], "cb3d", "rat")
    assert dp == {"gamma": 0.5} and rp == {"gamma": 0.2}
