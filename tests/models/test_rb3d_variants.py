"""RB3D block variants: the authors' block ("paper", default) and the earlier one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.models import build_model, load_checkpoint, save_checkpoint, tiny_params
from napari_cryoguard.models.rb3d import BottleneckBlock3d

DATA = Path(__file__).resolve().parents[1] / "data" / "rb3d"


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, BottleneckBlock3d)]


def test_default_is_the_authors_block():
    model = build_model("rb3d", 23, 28)
    p = model.params
    assert p.variant == "paper"
    assert p.block_widths == (32, 32, 32, 32) and p.block_strides == (1, 1, 1, 1)
    assert not [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    blocks = _blocks(model)
    assert len(blocks) == 4 and all(b.merge == "concat" for b in blocks)
    for b in blocks:
        path = [m for m in b.path if isinstance(m, nn.Conv3d)]
        assert [c.kernel_size for c in path] == [(1, 1, 1), (3, 3, 3), (1, 1, 1)]
        # the authors' widths: reduce 16, 3x3x3 32, restore 16; shortcut 16; all stride 1
        assert [c.out_channels for c in path] == [16, 32, 16]
        short = [m for m in b.shortcut if isinstance(m, nn.Conv3d)]
        assert [(c.kernel_size, c.out_channels) for c in short] == [((3, 3, 3), 16)]
        assert all(c.stride == (1, 1, 1) for c in path + short)
        # dropout 0.7 right after the restoring convolution, inside the block
        assert isinstance(b.path[-1], nn.Dropout) and b.path[-1].p == 0.7
    assert sorted({m.p for m in model.modules() if isinstance(m, nn.Dropout)}) == [0.5, 0.7]
    # no strides: 28 -> 14 after the stem pool, 32 channels out of the last block
    assert model.classifier[0].in_features == 14**3 * 32


def test_paper_block_concatenates_shortcut_then_path():
    torch.manual_seed(0)
    block = BottleneckBlock3d(3, 2, 6, merge="concat", dropout=0.7).eval()
    x = torch.randn(2, 3, 5, 5, 5)
    with torch.no_grad():
        y = block(x)
        short = block.shortcut(x)
        path = block.path(x)
    assert y.shape == (2, 6, 5, 5, 5)
    assert torch.equal(y[:, :3], torch.relu(short)) and torch.equal(y[:, 3:], torch.relu(path))
    # in training mode the in-block dropout acts (Keras' Dropout(0.7))
    block.train()
    torch.manual_seed(1)
    zeros = (block.path(x) == 0).float().mean().item()
    assert 0.6 < zeros < 0.85


def test_residual_bn_variant_is_the_earlier_block():
    model = build_model("rb3d", 4, 28, variant="residual-bn")
    p = model.params
    assert p.block_widths == (32, 64, 64, 128) and p.block_strides == (1, 2, 1, 2)
    assert all(b.merge == "sum" for b in _blocks(model))
    assert [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.5}
    x = torch.randn(2, 1, 28, 28, 28)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 4)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(CryoGuardError, match="variant"):
        build_model("rb3d", 4, 28, variant="resnet")


@pytest.mark.parametrize("variant", ["paper", "residual-bn"])
def test_round_trip_keeps_the_variant(tmp_path, variant):
    torch.manual_seed(0)
    model = build_model("rb3d", 3, 16, variant=variant, **tiny_params("rb3d")).eval()
    path = save_checkpoint(tmp_path / "m", model, {})
    loaded, meta = load_checkpoint(path)
    assert meta["arch_params"]["variant"] == variant and loaded.params.variant == variant
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_saved_before_the_variants_loads_as_residual_bn():
    model, meta = load_checkpoint(DATA / "rb3d-pre-variant.safetensors")
    assert "variant" not in meta["arch_params"]  # the old file, as written
    assert model.params.variant == "residual-bn"
    io = np.load(DATA / "rb3d-pre-variant-io.npy")
    n = 2 * 16**3
    x = torch.from_numpy(io[:n].reshape(2, 1, 16, 16, 16))
    want = io[n:].reshape(2, 3)
    with torch.no_grad():
        got = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want[0], [2.9178, -4.0981, 0.1177], atol=1e-3)


def test_bundled_checkpoints_are_not_rb3d_and_still_load():
    from napari_cryoguard.models import bundled_models, load_default

    for name in bundled_models():
        model, meta = load_default(name)
        assert meta["arch"] != "rb3d"


@pytest.mark.parametrize("arch, extra", [("rb3d", {}), ("rb3d", {"variant": "residual-bn"}),
                                         ("autoencoder", {})])
def test_pool_before_relu_is_the_papers_relu_then_pool(arch, extra):
    """The stem's max pool runs before its ReLU: the same values and input gradients as
    the paper's ReLU-then-pool order (ReLU is monotonic)."""
    import copy

    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model(arch, 3, 17, **{**tiny_params(arch), **extra}).eval()
    ref = copy.deepcopy(model)
    swapped = 0
    for seq in ref.modules():  # put ref back into the paper's order
        if isinstance(seq, nn.Sequential):
            keys = list(seq._modules)
            for a, b in zip(keys, keys[1:], strict=False):
                if type(seq._modules[a]) is nn.MaxPool3d and isinstance(seq._modules[b], nn.ReLU):
                    seq._modules[a], seq._modules[b] = seq._modules[b], seq._modules[a]
                    swapped += 1
    assert swapped >= 1
    x, y = torch.randn(5, 1, 17, 17, 17), torch.arange(5) % 3
    out = []
    for m in (model, ref):
        xg = x.clone().requires_grad_(True)
        logits = m(xg)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y), xg)
        out.append((logits.detach(), g))
    assert torch.equal(out[0][0], out[1][0])
    assert torch.equal(out[0][1], out[1][1])
