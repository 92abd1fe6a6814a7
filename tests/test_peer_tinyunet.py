"""TinyU-Net peer (Chen et al., MICCAI 2024): size, shapes, gradients, train/eval behaviour.

Expected counts come from the XTinyU-Net paper's table ("481.11k") and from the layer formulas
of the TinyU-Net paper (Sec. 2.1-2.2), written out by hand below, never from the module.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unetscout.errors import UnetscoutError
from unetscout.models.peers.tinyunet import DIVISOR, PUBLISHED_CONFIG, PUBLISHED_PARAMETERS, TinyUNet


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cmrf_parameters_by_hand(c_in: int, c_out: int, n: int) -> int:
    """Paper Sec. 2.1: PWConv-BN-Act to C_out/N, N-1 DWConv(3x3)-BN on C_out/2N, PWConv-BN-Act to C_out.

    Convolutions before a BN carry no bias; each BN holds a weight and a bias per channel.
    """
    squeezed, branch = c_out // n, c_out // (2 * n)
    squeeze = c_in * squeezed + 2 * squeezed
    cascade = (n - 1) * (branch * 3 * 3 + 2 * branch)
    expand = (c_out // 2) * c_out + 2 * c_out
    return squeeze + cascade + expand


def _tinyunet_parameters_by_hand(in_channels: int, num_classes: int, n: int = 8) -> int:
    encoder = [(in_channels, 64), (64, 128), (128, 256), (256, 512)]
    decoder = [(512 + 512, 512), (512 + 256, 256), (256 + 128, 128), (128 + 64, 64)]
    head = 64 * num_classes + num_classes
    return sum(_cmrf_parameters_by_hand(i, o, n) for i, o in encoder + decoder) + head


# ---------------------------------------------------------------- parameter counts

def test_published_parameter_count() -> None:
    # XTinyU-Net paper: 481.11k, i.e. anything that rounds to it at two decimals of a thousand.
    assert PUBLISHED_PARAMETERS == 481_110
    count = _count(TinyUNet(**PUBLISHED_CONFIG))
    assert 481_105 <= count < 481_115
    assert PUBLISHED_CONFIG == dict(in_channels=3, num_classes=1)


def test_original_papers_setting_rounds_to_its_048m() -> None:
    # TinyU-Net paper Table 1 (ISIC2018, C0 = 3, lesion + background): 0.48M.
    assert round(_count(TinyUNet(3, 2)) / 1e6, 2) == 0.48


def test_second_configuration_differs_only_in_stem_and_head() -> None:
    # Only the first CMRF's squeeze conv (64 / 8 = 8 weights per input channel, no bias) and the
    # 1x1 head (64 weights + 1 bias per class) see in_channels / num_classes.
    published = _count(TinyUNet(**PUBLISHED_CONFIG))
    other = _count(TinyUNet(in_channels=1, num_classes=4))
    expected_difference = (1 - 3) * (64 // 8) + (4 - 1) * (64 + 1)
    assert expected_difference == 179
    assert other - published == expected_difference


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])   # the paper's ablation of N (Table 4)
def test_count_matches_the_papers_layer_formulas(n: int) -> None:
    assert _count(TinyUNet(3, 2, receptive_fields=n)) == _tinyunet_parameters_by_hand(3, 2, n)


# ---------------------------------------------------------------- shapes and errors

@pytest.mark.parametrize("size", [DIVISOR * 2, 64])
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_forward_shape(in_channels: int, num_classes: int, size: int) -> None:
    torch.manual_seed(0)
    model = TinyUNet(in_channels, num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes, size, size)
    assert out.dtype == torch.float32


def test_divisor_is_four_poolings() -> None:
    assert DIVISOR == 2 ** 4 == TinyUNet(1, 2).size_divisor


def test_rejects_a_size_that_is_not_a_multiple_of_the_divisor() -> None:
    with pytest.raises(UnetscoutError, match="not divisible by 16"):
        TinyUNet(1, 2)(torch.zeros(1, 1, DIVISOR * 2 + 8, DIVISOR * 2))


def test_rejects_widths_the_parity_split_cannot_divide() -> None:
    with pytest.raises(UnetscoutError, match="multiple of 16"):
        TinyUNet(1, 2, widths=(24, 48, 96, 192))


# ---------------------------------------------------------------- gradients

def test_every_parameter_gets_a_finite_nonzero_gradient() -> None:
    torch.manual_seed(0)
    model = TinyUNet(3, 2).train()
    x = torch.randn(2, 3, DIVISOR * 2, DIVISOR * 2)
    target = torch.randint(0, 2, (2, DIVISOR * 2, DIVISOR * 2))
    F.cross_entropy(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- train / eval

def test_eval_output_is_deterministic() -> None:
    torch.manual_seed(0)
    model = TinyUNet(3, 2).eval()
    x = torch.randn(2, 3, DIVISOR * 2, DIVISOR * 2)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_norm_layers_are_batchnorm_with_the_official_settings() -> None:
    model = TinyUNet(3, 2)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in norms)
    # 8 CMRFs, each with squeeze BN + 7 cascade BNs + expand BN.
    assert len(norms) == 8 * (1 + 7 + 1)


def test_train_and_eval_differ_only_through_batchnorm() -> None:
    torch.manual_seed(0)
    model = TinyUNet(3, 2)
    x = torch.randn(2, 3, DIVISOR * 2, DIVISOR * 2)
    with torch.no_grad():
        evaluated = model.eval()(x)
        # Training mode with only the BatchNorms back in eval: nothing else may change the output
        # (TinyU-Net has no dropout or other mode-dependent layer).
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        assert torch.equal(model(x), evaluated)
        # Full training mode normalises with batch statistics: a different output.
        trained = model.train()(x)
    assert not torch.allclose(trained, evaluated)
