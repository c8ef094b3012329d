"""The ``standard`` and ``semi`` defenses and the defense registry."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cryoguard import CryoGuardError
from napari_cryoguard.defenses import (
    Batch,
    Defense,
    available_defenses,
    defense_params_class,
    get_defense,
    register_defense,
    train,
)
from napari_cryoguard.defenses.semi import select_labelled, semi_loss
from napari_cryoguard.defenses.standard import standard_loss
from napari_cryoguard.models import build_model, load_checkpoint, tiny_params


@pytest.fixture(scope="module")
def tiny_data():
    from napari_cryoguard.simulate import simulate_subtomograms

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_subtomograms(20, classes=["1bxn", "6pxm"], cube=20, snr=1.0, seed=2)


@pytest.fixture()
def autoencoder():
    torch.manual_seed(0)
    return build_model("autoencoder", 3, 20, **tiny_params("autoencoder")).eval()


def _batch(n=6, labels=(0, 2, -1, 1, -1, 0)):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 20, 20, 20, generator=g)
    return Batch(x=x, y=torch.tensor(labels), index=torch.arange(n))


# --------------------------------------------------------------------------- registry


def test_registry_lists_and_rejects_clearly():
    assert {"standard", "semi"} <= set(available_defenses())
    p = defense_params_class("semi")
    defaults = {f.name: f.default for f in dataclasses.fields(p)}
    assert defaults["alpha"] == 1.0 and defaults["beta"] == 1.0  # paper section 4
    assert defaults["labelled_fraction"] == 1.0
    d = get_defense("semi", labelled_fraction=0.1)
    assert d.name == "semi" and d.params.labelled_fraction == pytest.approx(0.1)
    assert d.describe()["params"]["labelled_fraction"] == pytest.approx(0.1)
    with pytest.raises(CryoGuardError, match="known: .*semi.*standard"):
        get_defense("madry")
    with pytest.raises(CryoGuardError, match="valid: alpha, beta, labelled_fraction"):
        get_defense("semi", gamma=2)
    with pytest.raises(CryoGuardError, match="labelled_fraction"):
        get_defense("semi", labelled_fraction=0.0)


# --------------------------------------------------------------------------- standard


def test_standard_loss_is_cross_entropy_over_labelled_samples(autoencoder):
    b = _batch()
    loss, logs = standard_loss(autoencoder, b, get_defense("standard").params)
    logits = autoencoder(b.x)
    keep = b.y >= 0
    expected = F.cross_entropy(logits[keep], b.y[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["ce"] == pytest.approx(expected.item(), rel=1e-6)
    all_unlabelled = Batch(x=b.x, y=torch.full((6,), -1), index=b.index)
    loss0, _ = standard_loss(autoencoder, all_unlabelled, get_defense("standard").params)
    assert loss0.item() == 0.0 and loss0.requires_grad


# --------------------------------------------------------------------------- semi


def test_semi_loss_matches_algorithm_1_by_hand(autoencoder):
    b = _batch()
    params = get_defense("semi", alpha=0.7, beta=1.3, sparsity_weight=0.0).params
    loss, logs = semi_loss(autoencoder, b, params)
    logits, recon, _ = autoencoder.forward_all(b.x)
    total = 0.0
    for i in range(6):
        mse = ((recon[i] - b.x[i]) ** 2).mean().item()  # Eq. 1
        if b.y[i] >= 0:  # Algorithm 1 line 8
            ce = F.cross_entropy(logits[i : i + 1], b.y[i : i + 1]).item()
            total += 0.7 * mse + 1.3 * ce
        else:  # line 10
            total += mse
    assert loss.item() == pytest.approx(total / 6, rel=1e-5)
    assert logs["labelled"] == pytest.approx(4 / 6)
    # the sparsity term adds weight * mean |code|
    w = 0.01
    loss_s, _ = semi_loss(autoencoder, b, dataclasses.replace(params, sparsity_weight=w))
    code = autoencoder.forward_all(b.x)[2]
    assert loss_s.item() == pytest.approx(total / 6 + w * code.abs().mean().item(), rel=1e-5)
    # None uses the model's own sparsity_loss
    loss_m, _ = semi_loss(autoencoder, b, dataclasses.replace(params, sparsity_weight=None))
    assert loss_m.item() == pytest.approx(
        total / 6 + autoencoder.sparsity_loss(code).item(), rel=1e-5
    )


def test_unlabelled_samples_contribute_no_cross_entropy(autoencoder):
    b = _batch(labels=(-1,) * 6)
    params = get_defense("semi", sparsity_weight=0.0).params
    loss, logs = semi_loss(autoencoder, b, params)
    _, recon, _ = autoencoder.forward_all(b.x)
    assert loss.item() == pytest.approx(F.mse_loss(recon, b.x).item(), rel=1e-5)
    assert logs["ce"] == 0.0
    autoencoder.zero_grad()
    loss.backward()
    head = autoencoder.classifier[-1].weight.grad
    assert head is None or torch.count_nonzero(head) == 0
    # whereas one labelled sample moves the classifier
    autoencoder.zero_grad()
    semi_loss(autoencoder, _batch(labels=(1, -1, -1, -1, -1, -1)), params)[0].backward()
    assert torch.count_nonzero(autoencoder.classifier[-1].weight.grad) > 0


def test_semi_refuses_a_model_without_reconstruction(tiny_data, tmp_path):
    with pytest.raises(CryoGuardError, match="forward_all"):
        train(
            tiny_data,
            "cb3d",
            "semi",
            model_params=tiny_params("cb3d"),
            out=tmp_path / "x",
            epochs=1,
            device="cpu",
        )


def test_select_labelled_is_stratified_and_seeded():
    labels = np.array([0] * 40 + [1] * 20 + [-1] * 5)
    rows = np.arange(60)
    keep = select_labelled(labels, rows, 0.1, seed=3)
    assert np.bincount(labels[keep]).tolist() == [4, 2]
    assert np.array_equal(keep, select_labelled(labels, rows, 0.1, seed=3))
    assert not np.array_equal(keep, select_labelled(labels, rows, 0.1, seed=4))
    assert len(select_labelled(labels, rows, 0.01, seed=3)) == 2  # at least one per class


def test_semi_training_masks_labels_and_learns(tiny_data, tmp_path):
    res = train(
        tiny_data,
        "autoencoder",
        "semi",
        model_params=tiny_params("autoencoder"),
        defense_params={"labelled_fraction": 0.25},
        out=tmp_path / "semi",
        epochs=4,
        lr=3e-3,
        batch_size=32,
        device="cpu",
    )
    # 16 training samples per class -> 4 labelled each: 8 of 32 (one batch per epoch)
    assert res.history[0]["train_labelled"] == pytest.approx(8 / 32)
    assert res.history[-1]["train_mse"] < res.history[0]["train_mse"]
    _, meta = load_checkpoint(res.checkpoint)
    assert meta["defense"] == "semi" and meta["defense_params"]["labelled_fraction"] == 0.25


# --------------------------------------------------------------------------- extension


def test_a_new_defense_registers_and_keeps_per_sample_state(tiny_data, tmp_path):
    from napari_cryoguard.defenses import base

    @dataclasses.dataclass
    class CountParams:
        weight: float = 1.0

    name = "_test_counting"
    try:

        @register_defense(name, CountParams)
        class Counting(Defense):
            def setup(self, trainer):
                super().setup(trainer)
                self.seen = torch.zeros(trainer.num_samples)
                self.epochs_started = 0

            def on_epoch_start(self, trainer):
                self.epochs_started += 1

            def loss(self, model, batch):
                assert batch.x.device == batch.index.device
                self.seen[batch.index.cpu()] += 1
                logits = model(batch.x)
                return self.params.weight * F.cross_entropy(logits, batch.y), {}

            def state_tensors(self):
                return {"seen": self.seen}

            def load_state_tensors(self, tensors):
                self.seen = tensors["seen"].clone()

        assert name in available_defenses()
        res = train(
            tiny_data,
            "cb3d",
            name,
            model_params=tiny_params("cb3d"),
            out=tmp_path / "cnt",
            epochs=2,
            device="cpu",
        )
        _, meta = load_checkpoint(res.checkpoint)
        seen = meta["extra_tensors"]["defense.seen"]
        assert seen.shape == (len(tiny_data),)
        assert seen.sum().item() == 2 * meta["training"]["n_train"]  # each train sample twice
        assert set(seen.unique().tolist()) == {0.0, 2.0}  # validation samples never seen
        more = train(tiny_data, out=res.checkpoint, resume=res.checkpoint, epochs=3, device="cpu")
        _, meta3 = load_checkpoint(more.checkpoint)
        assert set(meta3["extra_tensors"]["defense.seen"].unique().tolist()) == {0.0, 3.0}
    finally:
        base._REGISTRY.pop(name, None)
