"""Every classifier: shapes, forward and backward, drop_max, cube limits, paper configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_cryoguard import CryoGuardError
from napari_cryoguard.models import DropMax3d, available_models, build_model, tiny_params
from napari_cryoguard.models.rb3d import BottleneckBlock3d

ARCHS = ["cb3d", "dsrf3d_v2", "rb3d", "autoencoder"]


def _batch(cube: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, cube, cube, cube, generator=torch.Generator().manual_seed(seed))


def test_all_architectures_registered():
    assert set(ARCHS) <= set(available_models())


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize(("cube", "num_classes"), [(28, 3), (32, 5)])
def test_forward_backward(name, cube, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes, cube, **tiny_params(name))
    model.train()
    x = _batch(cube).requires_grad_(True)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, torch.tensor([0, num_classes - 1]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        if name == "autoencoder" and pname.startswith(("decoder", "encoder_fc")):
            continue  # the classification loss does not reach the code and decoder
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ARCHS)
def test_smallest_cube_works_and_smaller_is_refused(name):
    model = build_model(name, 2, 16, **tiny_params(name))
    assert model(_batch(16)).shape == (2, 2)
    with pytest.raises(CryoGuardError, match="16"):
        build_model(name, 2, 15, **tiny_params(name))
    with pytest.raises(CryoGuardError, match="num_classes"):
        build_model(name, 1, 28, **tiny_params(name))


@pytest.mark.parametrize("name", ARCHS)
def test_wrong_input_size_is_a_clear_error(name):
    model = build_model(name, 2, 28, **tiny_params(name))
    with pytest.raises(CryoGuardError, match="28"):
        model(_batch(32))


@pytest.mark.parametrize("name", ARCHS)
def test_drop_max_replaces_only_the_first_pool(name):
    torch.manual_seed(0)
    plain = build_model(name, 3, 28, **tiny_params(name))
    dm = build_model(name, 3, 28, drop_max=True, **tiny_params(name))
    pools = [m for m in dm.modules() if isinstance(m, (nn.MaxPool3d, DropMax3d))]
    assert isinstance(pools[0], DropMax3d)
    assert not any(isinstance(m, DropMax3d) for m in pools[1:])
    assert not any(isinstance(m, DropMax3d) for m in plain.modules())
    dm.load_state_dict(plain.state_dict())  # pooling has no weights: same state dict
    plain.eval()
    dm.eval()
    x = _batch(28).requires_grad_(True)
    out = dm(x)
    assert out.shape == (2, 3)
    assert not torch.allclose(out, plain(x))
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_cb3d_default_width_is_the_papers_config():
    torch.manual_seed(0)
    model = build_model("cb3d", 10, 28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3, 3) for c in convs)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool3d)]
    assert len(pools) == 5
    assert pools[0].kernel_size == (1, 2, 2)
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [4096, 4096, 10]
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.5}
    model.eval()
    with torch.no_grad():
        out = model(_batch(28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_dsrf3d_v2_and_rb3d_default_structure():
    dsrf = build_model("dsrf3d_v2", 4, 28)
    convs = [m for m in dsrf.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 6
    assert len([m for m in dsrf.modules() if isinstance(m, nn.MaxPool3d)]) == 3
    assert [f.out_features for f in dsrf.modules() if isinstance(f, nn.Linear)] == [1024, 1024, 4]
    assert {m.p for m in dsrf.modules() if isinstance(m, nn.Dropout)} == {0.7}

    rb = build_model("rb3d", 4, 28)
    blocks = [m for m in rb.modules() if isinstance(m, BottleneckBlock3d)]
    assert len(blocks) == 4
    for b in blocks:
        path_convs = [m for m in b.path if isinstance(m, nn.Conv3d)]
        assert [c.kernel_size for c in path_convs] == [(1, 1, 1), (3, 3, 3), (1, 1, 1)]
        short = [m for m in b.shortcut if isinstance(m, nn.Conv3d)]
        assert [c.kernel_size for c in short] == [(3, 3, 3)]
    # the authors' block (variant "paper", the default) drops 0.7 inside every block; the
    # classifier head keeps 0.5
    assert {m.p for m in rb.modules() if isinstance(m, nn.Dropout)} == {0.5, 0.7}
    rb_bn = build_model("rb3d", 4, 28, variant="residual-bn")
    assert {m.p for m in rb_bn.modules() if isinstance(m, nn.Dropout)} == {0.5}


@pytest.mark.parametrize("cube", [27, 28, 32])
def test_autoencoder_reconstructs_the_input_size(cube):
    model = build_model("autoencoder", 3, cube, **tiny_params("autoencoder"))
    x = _batch(cube)
    assert model.reconstruct(x).shape == x.shape
    logits, recon, code = model.forward_all(x)
    assert logits.shape == (2, 3)
    assert recon.shape == x.shape
    assert code.shape == (2, 8)


def test_autoencoder_four_block_variant_and_default_config():
    deep = build_model("autoencoder", 8, 28, conv_widths=(4, 4, 4, 4), code_size=8)
    assert deep.reconstruct(_batch(28)).shape == (2, 1, 28, 28, 28)
    default = build_model("autoencoder", 8, 28)
    assert default.encoder_fc.out_features == 128
    assert [
        m.out_channels for m in default.encoder_blocks.modules() if isinstance(m, nn.Conv3d)
    ] == [32, 32]
    assert isinstance(default.classifier[0], nn.BatchNorm3d)


def test_autoencoder_joint_loss_trains_all_parts_and_forward_matches():
    torch.manual_seed(0)
    model = build_model("autoencoder", 3, 28, **tiny_params("autoencoder"))
    x = _batch(28)
    logits, recon, code = model.forward_all(x)
    sparsity = model.sparsity_loss(code)
    assert sparsity.dim() == 0 and sparsity.item() >= 0
    assert sparsity.item() == pytest.approx(1e-4 * code.abs().mean().item())
    loss = F.mse_loss(recon, x) + F.cross_entropy(logits, torch.tensor([0, 2])) + sparsity
    loss.backward()
    for part in (
        model.encoder_blocks,
        model.encoder_fc,
        model.decoder_fc,
        model.decoder_convs,
        model.classifier,
    ):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_all(x)[0])
