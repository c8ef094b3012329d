"""Checkpoints: safetensors round trip, clear errors, and no unpickling of user files."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_cryoguard import CryoGuardError
from napari_cryoguard.models import (
    build_model,
    bundled_models,
    load_checkpoint,
    load_default,
    save_checkpoint,
    tiny_params,
)
from napari_cryoguard.models import checkpoint as checkpoint_module


def _tiny(name: str = "cb3d", num_classes: int = 3, cube: int = 16, **extra):
    torch.manual_seed(0)
    return build_model(name, num_classes, cube, **{**tiny_params(name), **extra})


def _x(cube: int = 16) -> torch.Tensor:
    return torch.randn(3, 1, cube, cube, cube, generator=torch.Generator().manual_seed(5))


META = {
    "class_names": ["ribosome", "proteasome", "empty"],
    "voxel_size": 9.2,
    "normalization": "none",
    "training": {"defense": "rat", "epochs": 3, "lr": 1e-4},
    "metrics": {"clean_accuracy": 0.81, "robust_accuracy": np.float32(0.5)},
}


@pytest.mark.parametrize("name", ["cb3d", "dsrf3d_v2", "rb3d", "autoencoder"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = _tiny(name, drop_max=True)
    model.eval()
    margins = np.linspace(0.0, 1.0, 7, dtype=np.float32)
    path = save_checkpoint(tmp_path / "run", model, META, extra_tensors={"margins": margins})
    assert path == tmp_path / "run.safetensors"
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]  # no temp file left

    loaded, meta = load_checkpoint(path, expect_arch=name, expect_cube=16)
    assert not loaded.training
    assert loaded.arch_name == name and loaded.arch_params == model.arch_params
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["arch"] == name
    assert meta["cube"] == 16 and meta["num_classes"] == 3
    assert meta["class_names"] == META["class_names"]
    assert meta["voxel_size"] == 9.2
    assert meta["normalization"] == META["normalization"]
    assert meta["training"] == META["training"]
    assert meta["metrics"]["robust_accuracy"] == pytest.approx(0.5)
    assert meta["format_version"] == checkpoint_module.FORMAT_VERSION
    np.testing.assert_array_equal(meta["extra_tensors"]["margins"].numpy(), margins)


def test_metadata_is_one_json_string_under_cryoguard(tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "m.safetensors", _tiny(), {"class_names": ["a", "b", "c"]})
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert set(raw) == {"cryoguard"}
    header = json.loads(raw["cryoguard"])
    assert header["arch"] == "cb3d"
    assert header["normalization"] == "zscore"  # the documented default


def test_resave_of_loaded_metadata_round_trips(tmp_path):
    model = _tiny()
    p1 = save_checkpoint(tmp_path / "a.safetensors", model, META)
    _, meta = load_checkpoint(p1)
    p2 = save_checkpoint(tmp_path / "b.safetensors", model, meta)
    _, meta2 = load_checkpoint(p2)
    assert meta2["class_names"] == META["class_names"]
    assert meta2["training"] == META["training"]


def test_wrong_class_name_count_and_unserialisable_metadata(tmp_path):
    with pytest.raises(CryoGuardError, match="class names"):
        save_checkpoint(tmp_path / "x", _tiny(), {"class_names": ["only one"]})
    with pytest.raises(CryoGuardError, match="JSON"):
        save_checkpoint(tmp_path / "x", _tiny(), {"training": {"fn": object()}})
    with pytest.raises(CryoGuardError, match="build_model"):
        save_checkpoint(tmp_path / "x", torch.nn.Linear(2, 2), {})
    assert list(tmp_path.iterdir()) == []


def test_wrong_architecture_or_cube_names_both(tmp_path):
    path = save_checkpoint(tmp_path / "rb.safetensors", _tiny("rb3d"), {})
    with pytest.raises(CryoGuardError) as err:
        load_checkpoint(path, expect_arch="cb3d")
    assert "rb3d" in str(err.value) and "cb3d" in str(err.value)
    with pytest.raises(CryoGuardError) as err:
        load_checkpoint(path, expect_cube=28)
    assert "16" in str(err.value) and "28" in str(err.value)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CryoGuardError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(CryoGuardError, match="safetensors"):
        load_checkpoint(garbage)

    good = save_checkpoint(tmp_path / "good.safetensors", _tiny(), {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CryoGuardError):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(CryoGuardError, match="cryoguard"):
        load_checkpoint(foreign)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    model = _tiny()
    good = save_checkpoint(tmp_path / "good.safetensors", model, {})
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        header = f.metadata()
    other = build_model("cb3d", 3, 16, conv_widths=(4, 4, 8, 8, 8), fc_widths=(32, 16))
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(bad), metadata=header)
    with pytest.raises(CryoGuardError, match="do not fit"):
        load_checkpoint(bad)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop(next(iter(state)))
    missing = tmp_path / "missing.safetensors"
    save_file(state, str(missing), metadata=header)
    with pytest.raises(CryoGuardError, match="do not fit"):
        load_checkpoint(missing)



def test_weights_that_do_not_fit_are_named_in_one_line(tmp_path):
    """Found by the hostile-input probe: num_classes 7 over 5-class weights gave torch's
    multi-line "size mismatch" text, so the CLI error spanned several lines."""
    model = _tiny(num_classes=3)
    good = save_checkpoint(tmp_path / "good.safetensors", model, {})
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        header = dict(f.metadata())
    meta = json.loads(header["cryoguard"])
    meta.update(num_classes=5, class_names=list("abcde"))
    header["cryoguard"] = json.dumps(meta)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["bogus.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=header)
    with pytest.raises(CryoGuardError) as info:
        load_checkpoint(bad)
    text = str(info.value)
    assert "\n" not in text and "\t" not in text
    assert "wrong shapes: classifier.6.bias (3,) (the model has (5,))" in text
    assert "unexpected tensors: bogus.weight" in text

def test_legacy_pt_file_is_read_weights_only_with_a_warning(tmp_path):
    model = _tiny()
    model.eval()
    meta = {"arch": "cb3d", "arch_params": model.arch_params, "num_classes": 3, "cube": 16}
    path = tmp_path / "old.pt"
    torch.save({"state_dict": model.state_dict(), "metadata": meta}, path)
    with pytest.warns(UserWarning, match="weights_only"):
        loaded, got = load_checkpoint(path)
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert got["arch"] == "cb3d"

    torch.save({"weights": model.state_dict()}, tmp_path / "nostate.pt")
    with pytest.warns(UserWarning), pytest.raises(CryoGuardError, match="state_dict"):
        load_checkpoint(tmp_path / "nostate.pt")


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pt"
    with raw.open("wb") as f:
        pickle.dump({"state_dict": {}, "metadata": _Evil(marker)}, f)
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": {}, "metadata": _Evil(marker)}, zipped)
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(raw.read_bytes())

    for path in (raw, zipped):
        with pytest.warns(UserWarning), pytest.raises(CryoGuardError, match="refusing"):
            load_checkpoint(path)
    with pytest.raises(CryoGuardError):
        load_checkpoint(disguised)
    assert not marker.exists()
    # control: the same payload does run under a plain pickle.load
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()



def test_refused_pickle_is_named_in_one_line_without_torchs_advice(tmp_path):
    """Found by the hostile-input probe: torch's UnpicklingError text (several lines,
    advising weights_only=False) made the CLI error span many lines."""
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pt"
    raw.write_bytes(pickle.dumps({"state_dict": {}, "metadata": _Evil(marker)}))
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": {}, "metadata": _Evil(marker)}, zipped)
    for path, why in ((raw, "Unsupported operand"), (zipped, "GLOBAL posix.system")):
        with pytest.warns(UserWarning), pytest.raises(CryoGuardError) as info:
            load_checkpoint(path)
        text = str(info.value)
        assert "\n" not in text and why in text
        assert "weights_only` set to `False`" not in text
    assert not marker.exists()

def test_bundled_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "WEIGHTS_DIR", tmp_path / "weights")
    assert bundled_models() == []
    with pytest.raises(CryoGuardError, match="not there yet"):
        load_default()
    with pytest.raises(CryoGuardError, match="not there yet"):
        load_default("ae-default")
    with pytest.raises(CryoGuardError) as err:
        load_default("mystery")
    assert "cb3d-default" in str(err.value) and "ae-default" in str(err.value)

    model = _tiny()
    save_checkpoint(tmp_path / "weights" / "cb3d-default.safetensors", model, {})
    assert bundled_models() == ["cb3d-default"]
    loaded, meta = load_default("default")
    assert meta["arch"] == "cb3d"
    x = _x()
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_real_bundled_names_are_listed_from_the_package():
    # whatever is shipped must load; an empty folder is fine before training
    for name in bundled_models():
        model, meta = load_default(name)
        assert meta["arch"] == model.arch_name


def test_integer_weights_and_repeated_class_names_are_refused(tmp_path):
    """Found by the hostile-input probe: int8 weights were cast silently into the float
    model, and five classes all named 'a' classified with five columns p_a."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = _tiny(num_classes=3)
    good = save_checkpoint(tmp_path / "good.safetensors", model, {})
    with safe_open(str(good), framework="pt") as f:
        header = dict(f.metadata())
    tensors = load_file(str(good))
    name = next(k for k in sorted(tensors) if k.endswith("weight"))
    as_int = {**tensors, name: tensors[name].to(torch.int8)}
    save_file(as_int, str(tmp_path / "int8.safetensors"), metadata=header)
    with pytest.raises(CryoGuardError, match=f"weight '{name}' is stored as torch.int8"):
        load_checkpoint(tmp_path / "int8.safetensors")
    meta = json.loads(header["cryoguard"])
    meta["class_names"] = ["a", "b", "a"]
    save_file(tensors, str(tmp_path / "dupes.safetensors"),
              metadata={**header, "cryoguard": json.dumps(meta)})
    with pytest.raises(CryoGuardError, match=r"names \['a'\] more than once"):
        load_checkpoint(tmp_path / "dupes.safetensors")
    assert load_checkpoint(good)[1]["num_classes"] == 3


def test_metadata_is_read_without_the_weights(tmp_path):
    from napari_cryoguard.models.checkpoint import WEIGHTS_DIR, read_checkpoint_metadata

    meta = read_checkpoint_metadata(WEIGHTS_DIR / "cb3d-default.safetensors")
    assert meta["arch"] == "cb3d" and int(meta["cube"]) == 28
    with pytest.raises(CryoGuardError, match="checkpoint not found"):
        read_checkpoint_metadata(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CryoGuardError, match="not a readable .safetensors checkpoint"):
        read_checkpoint_metadata(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CryoGuardError, match="has no 'cryoguard' metadata"):
        read_checkpoint_metadata(foreign)
    # the widgets read it on the Qt thread, maybe before torch is imported: no torch
    import subprocess
    import sys

    code = ("import sys; from napari_cryoguard._checkpoint_header import "
            "read_checkpoint_metadata as r; "
            f"m = r({str(WEIGHTS_DIR / 'cb3d-default.safetensors')!r}); "
            "print(m['arch'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["cb3d", "False"], out.stderr
