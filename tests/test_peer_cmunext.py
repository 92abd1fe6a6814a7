"""CMUNeXt-S peer network (models/peers/cmunext.py).

Expected parameter counts are the XTinyU-Net paper's published figure (Table 1: 417.50k, Table 2:
417.60k) and tallies worked out by hand from the layer list; none is computed by the code
under test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unetscout.models.peers import cmunext
from unetscout.models.peers.cmunext import DIVISOR, PUBLISHED_CONFIG, PUBLISHED_PARAMETERS, CMUNeXtS

# XTinyU-Net Table 1 prints CMUNeXt-S at 417.50k parameters, i.e. a count in
# [417,495, 417,505]. The upper end is closed on purpose: the authors print
# f"{count / 1e3:.2f}" and 417505 / 1e3 is stored as 417.50499999..., which prints "417.50".
PUBLISHED_LOW, PUBLISHED_HIGH = 417_495, 417_505

# The layers that depend on the channels: the stem's 3x3 conv to 8 channels (weights only; its
# bias and BatchNorm do not depend on in_channels) and the 1x1 head from 8 channels (weights
# and one bias per class).
STEM_WIDTH, STEM_KERNEL = 8, 3
PER_INPUT_CHANNEL = STEM_KERNEL * STEM_KERNEL * STEM_WIDTH   # 72
PER_CLASS = STEM_WIDTH + 1                                   # 9


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_published_config_and_constants():
    assert PUBLISHED_PARAMETERS == 417_500
    assert PUBLISHED_CONFIG == dict(in_channels=3, num_classes=1)
    assert DIVISOR == 2 ** 4  # four max pools between five levels


def test_parameter_count_matches_xtinyunet_table_1():
    n = _count(CMUNeXtS(**PUBLISHED_CONFIG))
    assert PUBLISHED_LOW <= n <= PUBLISHED_HIGH
    assert f"{n / 1e3:.2f}" == "417.50"  # as the authors' notebook formats it


def test_parameter_count_equals_hand_tally():
    # Per layer, from the paper's block diagrams with the S widths (8, 16, 32, 64, 128) and
    # kernels (3, 3, 7, 7, 9); every conv has a bias, every BatchNorm a weight and a bias.
    #   3x3 conv a->b + BN: 9ab + 3b;  depthwise kxk at c + BN: k*k*c + 3c;
    #   CMUNeXt block at c (1x1 c->4c->c): k*k*c + 8c^2 + 18c;
    #   Skip-Fusion at c (3x3 2c->2c in 2 groups, 1x1 2c->4c->c): 30c^2 + 21c.
    stem = 9 * 3 * 8 + 3 * 8                                   # 240
    encoder = [
        (9 * 8 + 8 * 8**2 + 18 * 8) + (9 * 8 * 8 + 3 * 8),        # 1328
        (9 * 8 + 8 * 8**2 + 18 * 8) + (9 * 8 * 16 + 3 * 16),      # 1928
        (49 * 16 + 8 * 16**2 + 18 * 16) + (9 * 16 * 32 + 3 * 32),  # 7824
        (49 * 32 + 8 * 32**2 + 18 * 32) + (9 * 32 * 64 + 3 * 64),  # 28960
        (81 * 64 + 8 * 64**2 + 18 * 64) + (9 * 64 * 128 + 3 * 128),  # 113216
    ]
    up = [9 * 128 * 64 + 3 * 64, 9 * 64 * 32 + 3 * 32, 9 * 32 * 16 + 3 * 16, 9 * 16 * 8 + 3 * 8]
    fuse = [30 * c * c + 21 * c for c in (64, 32, 16, 8)]
    head = 8 * 1 + 1
    expected = stem + sum(encoder) + sum(up) + sum(fuse) + head
    assert expected == 417_505
    assert _count(CMUNeXtS(3, 1)) == expected


@pytest.mark.parametrize("in_channels, num_classes", [(1, 4), (4, 3), (1, 2), (3, 2)])
def test_parameter_count_at_other_channels(in_channels, num_classes):
    published = _count(CMUNeXtS(**PUBLISHED_CONFIG))
    delta = (PER_INPUT_CHANNEL * (in_channels - PUBLISHED_CONFIG["in_channels"])
             + PER_CLASS * (num_classes - PUBLISHED_CONFIG["num_classes"]))
    assert _count(CMUNeXtS(in_channels, num_classes)) - published == delta


def test_parameter_count_matches_xtinyunet_table_2():
    # Table 2 prints 417.60k: BraTS has 4 input channels and 3 region outputs.
    n = _count(CMUNeXtS(4, 3))
    assert n == 417_505 + PER_INPUT_CHANNEL * 1 + PER_CLASS * 2  # 417,595
    assert f"{n / 1e3:.2f}" == "417.60"


@pytest.mark.parametrize("in_channels", [1, 3, 4])
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("height, width", [(2 * DIVISOR, 2 * DIVISOR), (64, 64), (2 * DIVISOR, 64)])
def test_forward_shape(in_channels, num_classes, height, width):
    torch.manual_seed(0)
    model = CMUNeXtS(in_channels, num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, height, width))
    assert out.shape == (2, num_classes, height, width)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def _bias_cancelled_by_batchnorm(model: CMUNeXtS) -> set[str]:
    # Biases of convs feeding a BatchNorm directly (stem, width changes, up-convs): in train()
    # the norm subtracts the batch mean, so their gradient is exactly zero in theory (float noise
    # in practice). Where a GELU sits between conv and norm, the bias is not cancelled.
    return {f"{name}.conv.bias" for name, m in model.named_modules() if isinstance(m, cmunext.ConvNormReLU)}


def _gradients(model: nn.Module, train: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 2 * DIVISOR, 2 * DIVISOR)
    weight = torch.randn(2, 1, 2 * DIVISOR, 2 * DIVISOR)
    model.train(train)
    (model(x) * weight).sum().backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_backward_train_mode_every_parameter_but_cancelled_biases():
    torch.manual_seed(0)
    model = CMUNeXtS(3, 1)
    grads = _gradients(model, train=True)
    cancelled = _bias_cancelled_by_batchnorm(model)
    assert len(cancelled) == 1 + 5 + 4  # stem, five encoder levels, four up-convs
    assert all(torch.isfinite(g).all() for g in grads.values())
    scale = max(g.abs().max() for g in grads.values())
    for name, g in grads.items():
        if name in cancelled:
            assert g.abs().max() < 1e-4 * scale, name
        else:
            assert g.abs().max() > 0, name


def test_backward_eval_mode_every_parameter():
    # With running statistics nothing cancels: every parameter gets a gradient.
    torch.manual_seed(0)
    grads = _gradients(CMUNeXtS(3, 1), train=False)
    for name, g in grads.items():
        assert torch.isfinite(g).all() and g.abs().max() > 0, name


def test_eval_is_deterministic():
    torch.manual_seed(0)
    model = CMUNeXtS(3, 2).eval()
    x = torch.randn(2, 3, 2 * DIVISOR, 2 * DIVISOR)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_train_and_eval_differ_only_through_batchnorm():
    # The network has BatchNorm and no dropout: with the norms held in eval(), train() must
    # give the eval() output exactly; with batch statistics it must not.
    torch.manual_seed(0)
    model = CMUNeXtS(3, 2)
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 2 * DIVISOR, 2 * DIVISOR)
    with torch.no_grad():
        reference = model.eval()(x)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        assert torch.equal(model(x), reference)
        batch_stats = model.train()(x)  # last: it moves the running statistics
    assert not torch.allclose(batch_stats, reference)


def test_rejects_other_level_counts():
    with pytest.raises(ValueError, match="5 levels"):
        CMUNeXtS(3, 1, widths=(8, 16, 32, 64))
