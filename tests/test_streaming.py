"""Streamed outputs (issue 11 item 8): attack, classify and simulate-dataset write their
results batch by batch, so memory is bounded by the batch, and the files equal the ones
written from the whole result at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from napari_cryoguard.data import (
    DatasetWriter,
    NpzWriter,
    iter_rows,
    load_dataset,
    save_dataset,
)
from napari_cryoguard.errors import CryoGuardError
from napari_cryoguard.models import build_model, save_checkpoint, tiny_params

CUBE = 16
NAMES = ["a", "b", "c"]


def _volumes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, CUBE, CUBE, CUBE)).astype(np.float32)


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    torch.manual_seed(0)
    model = build_model("cb3d", 3, cube=CUBE, **tiny_params("cb3d"))
    return save_checkpoint(d / "m.safetensors", model, {"class_names": NAMES})


def _dataset(path, n: int, seed: int = 0):
    labels = np.arange(n) % 3
    coords = np.stack([np.arange(n), np.arange(n) * 2.0, np.arange(n) * 0.5], axis=1)
    return save_dataset(path, volumes=_volumes(n, seed), labels=labels, class_names=NAMES,
                        coords=coords, tomo_names="t1", voxel_size=10.0)


# --------------------------------------------------------------------------- writers


def test_dataset_writer_in_blocks_is_byte_identical_to_save_dataset(tmp_path):
    v = _volumes(50)
    labels = np.arange(50) % 3
    names = np.array([f"tomo{i % 4}" for i in range(50)])
    coords = np.arange(150, dtype=float).reshape(50, 3)
    a = save_dataset(tmp_path / "a.npz", volumes=v, labels=labels, class_names=NAMES,
                     coords=coords, tomo_names=names, voxel_size=7.5, meta={"k": 1})
    with DatasetWriter(tmp_path / "b.npz", class_names=NAMES, voxel_size=7.5,
                       meta={"k": 1}) as w:
        for lo in range(0, 50, 16):  # blocks of 16, 16, 16, 2
            w.append(v[lo:lo + 16], labels[lo:lo + 16], coords[lo:lo + 16], names[lo:lo + 16])
    assert a.read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no spool left


def test_load_dataset_mmap_maps_the_volumes_and_equals_the_plain_read(tmp_path):
    path = _dataset(tmp_path / "d.npz", 40)
    plain = load_dataset(path)
    mapped = load_dataset(path, mmap=True)
    base = mapped.volumes
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) and base.mode == "r"
    np.testing.assert_array_equal(plain.volumes, mapped.volumes)
    np.testing.assert_array_equal(plain.coords, mapped.coords)
    blocks = list(iter_rows(mapped.volumes, 16))
    assert [lo for lo, _ in blocks] == [0, 16, 32] and [len(b) for _, b in blocks] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), plain.volumes)


def test_writer_error_leaves_the_old_file_and_no_spool(tmp_path):
    out = tmp_path / "r.npz"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), NpzWriter(out) as w:
        w.append("x", np.zeros((4, 3)))
        raise RuntimeError("killed")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["r.npz"]
    w = NpzWriter(tmp_path / "s.npz")
    w.append("x", np.zeros((2, 3)))
    with pytest.raises(CryoGuardError, match="rows of shape"):
        w.append("x", np.zeros((2, 4)))
    w.abort()
    with pytest.raises(CryoGuardError, match="same fields"), \
            DatasetWriter(tmp_path / "t.npz", class_names=NAMES) as dw:
        dw.append(_volumes(2), [0, 1])
        dw.append(_volumes(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]


def test_streamed_members_are_stored_uncompressed_and_read_by_numpy(tmp_path):
    with NpzWriter(tmp_path / "x.npz") as w:
        for i in range(3):
            w.append("rows", np.full((2, 5), i, dtype=np.int16))
        w.set("meta", np.array("hi"))
    with zipfile.ZipFile(tmp_path / "x.npz") as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    with np.load(tmp_path / "x.npz") as z:
        assert z["rows"].dtype == np.int16 and z["rows"].shape == (6, 5)
        np.testing.assert_array_equal(z["rows"][:, 0], [0, 0, 1, 1, 2, 2])
        assert str(z["meta"]) == "hi"


# --------------------------------------------------------------------------- simulate


def test_simulated_blocks_concatenate_to_the_whole_simulation():
    from napari_cryoguard.simulate import simulate_subtomograms
    from napari_cryoguard.simulate.subtomograms import iter_simulated_blocks

    whole = simulate_subtomograms(n_per_class=3, cube=CUBE, seed=5)
    blocks = list(iter_simulated_blocks(n_per_class=3, cube=CUBE, seed=5, block_size=4))
    n = len(whole)
    assert [len(b) for b in blocks] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    np.testing.assert_array_equal(np.concatenate([b.volumes for b in blocks]), whole.volumes)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]), whole.labels)
    np.testing.assert_array_equal(np.concatenate([b.rotations for b in blocks]), whole.rotations)
    assert blocks[0].params == whole.params and blocks[0].class_names == whole.class_names


def test_simulate_dataset_cli_writes_what_the_simulator_returns(tmp_path):
    from napari_cryoguard.cli import main
    from napari_cryoguard.simulate import simulate_subtomograms

    out = tmp_path / "d.npz"
    assert main(["simulate-dataset", "--out", str(out), "--per-class", "3", "--cube", "16",
                 "--snr", "0.1", "0.05", "--seed", "2", "--quiet"]) == 0
    ds = load_dataset(out)
    a = simulate_subtomograms(n_per_class=3, cube=16, snr=0.1, seed=2)
    b = simulate_subtomograms(n_per_class=3, cube=16, snr=0.05, seed=3)
    np.testing.assert_array_equal(ds.volumes, np.concatenate([a.volumes, b.volumes]))
    np.testing.assert_array_equal(ds.labels, np.concatenate([a.labels, b.labels]))
    assert ds.meta["snr_per_sample"] == [0.1] * len(a) + [0.05] * len(b)
    assert ds.meta["params"][1]["seed"] == 3 and ds.class_names == list(a.class_names)


# --------------------------------------------------------------------------- classify / attack


def test_streamed_classify_csv_equals_the_whole_result_written_at_once(tmp_path, model_ckpt):
    from napari_cryoguard.classify import align_labels, classify, load_model, write_predictions
    from napari_cryoguard.cli import main

    path = _dataset(tmp_path / "d.npz", 37)
    out = tmp_path / "p.csv"
    assert main(["classify", str(path), "--model", str(model_ckpt), "--device", "cpu",
                 "--batch-size", "8", "--out", str(out), "--quiet"]) == 0
    ds = load_dataset(path)
    loaded = load_model(str(model_ckpt))
    preds = classify(loaded, ds.volumes, normalized=ds.normalized, device="cpu", batch_size=8,
                     voxel_size=ds.voxel_size)
    labels = align_labels(ds.labels, ds.class_names, preds.class_names)
    ref = write_predictions(tmp_path / "ref.csv", preds, labels=labels, coords=ds.coords)
    assert out.read_text() == ref.read_text()
    assert len(out.read_text().splitlines()) == 38


def test_streamed_attack_file_equals_the_in_memory_attack(tmp_path, model_ckpt):
    from napari_cryoguard.attacks import attack_dataset
    from napari_cryoguard.classify import load_model
    from napari_cryoguard.cli import main

    path = _dataset(tmp_path / "d.npz", 21)
    out = tmp_path / "r.npz"
    assert main(["attack", str(path), "--model", str(model_ckpt), "--attack", "pgd",
                 "--eps", "0.05", "--steps", "2", "--set", "seed=3", "--device", "cpu",
                 "--batch-size", "8",
                 "--out", str(out), "--quiet"]) == 0
    ds = load_dataset(path)
    loaded = load_model(str(model_ckpt))
    res = attack_dataset(loaded.model, ds.volumes, ds.labels, "pgd", batch_size=8,
                         device="cpu", eps=0.05, steps=2, seed=3)
    ref = {k: v for k, v in res.numpy().items() if isinstance(v, np.ndarray)}
    with np.load(out, allow_pickle=False) as z:
        assert set(z.files) == {*ref, "indices", "metadata"}
        for key, value in ref.items():
            np.testing.assert_array_equal(z[key], value, err_msg=key)
        np.testing.assert_array_equal(z["indices"], np.arange(21))
        meta = json.loads(str(z["metadata"]))
    summary = res.summary()
    assert meta["summary"]["success_rate"] == summary["success_rate"]
    assert meta["summary"]["median_norm"] == pytest.approx(summary["median_norm"], nan_ok=True)


# --------------------------------------------------------------------------- memory

_PEAK = """
import sys
import torch, napari_cryoguard.attacks, napari_cryoguard.classify, napari_cryoguard.models
from napari_cryoguard.cli import main
try:  # reset the high-water mark, so the peak is the command's, not the imports'
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
rc = main(sys.argv[1:])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
print("PEAK", hwm, rc)
"""


def _peak_kib(*args) -> int:
    res = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)], capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = [x for x in res.stdout.splitlines() if x.startswith("PEAK")]
    assert res.returncode == 0 and line, res.stderr
    peak, rc = line[-1].split()[1:]
    assert rc == "0", res.stderr
    return int(peak)


@pytest.mark.slow
def test_attack_and_classify_memory_is_bounded_by_the_batch_not_the_dataset(tmp_path,
                                                                             model_ckpt):
    """2,000 vs 200 cubes of 16^3 (32 MB vs 3.2 MB of volumes; an attack result holding
    x_adv and perturbation in memory would add 58 MB more): the streamed commands' peak
    resident memory grows by far less than the data."""
    small = _dataset(tmp_path / "small.npz", 200)
    big = _dataset(tmp_path / "big.npz", 2000)
    data_mib = (2000 - 200) * CUBE**3 * 4 / 2**20  # 28 MiB more volumes
    for command, extra in (("classify", ["--out"]), ("attack", ["--attack", "fgsm", "--out"])):
        suffix = ".csv" if command == "classify" else ".npz"
        peaks = [
            _peak_kib(command, ds, "--model", model_ckpt, "--device", "cpu", "--batch-size",
                      "32", "--quiet", *extra, tmp_path / f"{command}{i}{suffix}")
            for i, ds in enumerate((small, big))
        ]
        grown_mib = (peaks[1] - peaks[0]) / 1024
        print(command, "peak MiB", [round(p / 1024, 1) for p in peaks], "grown", round(grown_mib, 1))
        assert grown_mib < 0.5 * data_mib, (command, peaks)


# --------------------------------------------------------------------------- prefetch


def test_prefetch_keeps_order_and_raises_worker_errors_in_the_caller():
    from napari_cryoguard.data import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("bad block")

    gen = prefetch(broken())
    assert next(gen) == 1
    with pytest.raises(ValueError, match="bad block"):
        next(gen)
    early = prefetch(iter(range(1000)), depth=2)
    assert next(early) == 0
    early.close()  # stops the worker without draining the rest


def test_extracted_batches_from_a_mapped_tomogram_equal_one_extraction(tmp_path):
    from napari_cryoguard.data import iter_extracted, prefetch
    from napari_cryoguard.io import read_tomogram, write_tomogram
    from napari_cryoguard.picking import extract_subtomograms

    vol = np.random.default_rng(3).standard_normal((24, 40, 40)).astype(np.float32)
    write_tomogram(tmp_path / "t.mrc", vol, 10.0)
    coords = np.array([[12, 20, 20], [0, 0, 0], [23, 39, 39], [10, 5, 30], [12, 12, 12]], float)
    ref = extract_subtomograms(vol, coords, size=8, border="pad").volumes
    with read_tomogram(tmp_path / "t.mrc") as tomo:
        blocks = list(prefetch(iter_extracted(tomo.data, coords, 8, 2)))
    assert [len(b) for b in blocks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), ref)
