"""UNeXt peer (models/peers/unext.py).

Expected counts come from the XTinyU-Net paper's table (1,471.94 k and 1,471.67 k) and from
hand arithmetic over the layers that depend on the input channels and classes; the shift is
checked against hand-written tensors.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from unetscout.models.peers.unext import (DIVISOR, PUBLISHED_CONFIG, PUBLISHED_PARAMETERS, UNeXt,
                                          axial_shift)


def _count(in_channels: int, num_classes: int, **kw) -> int:
    return sum(p.numel() for p in UNeXt(in_channels, num_classes, **kw).parameters())


def _model(in_channels: int = 3, num_classes: int = 2, seed: int = 0) -> UNeXt:
    torch.manual_seed(seed)
    return UNeXt(in_channels, num_classes)


@functools.lru_cache(maxsize=None)
def _eval_model(in_channels: int, num_classes: int) -> UNeXt:
    """One shared eval-mode model per configuration, for the tests that only run forward."""
    return _model(in_channels, num_classes).eval()


# ---------------------------------------------------------------- parameter counts

def test_published_count_at_published_config():
    # XTinyU-Net Table 1 prints 1,471.94 k: every count that rounds to it lies in this interval.
    assert PUBLISHED_PARAMETERS == 1_471_940
    assert 1_471_935 <= _count(**PUBLISHED_CONFIG) < 1_471_945


def test_table_two_count_is_one_channel_three_classes():
    # XTinyU-Net Table 2 prints 1,471.67 k for the same network on its grey-level datasets.
    assert 1_471_665 <= _count(1, 3) < 1_471_675


def test_count_difference_is_first_conv_and_head_only():
    # Only the first 3x3 conv (16 filters, in_channels * 9 weights each) and the 1x1 head
    # (16 weights + 1 bias per class) see in_channels / num_classes.
    c1, k = 16, 3
    published = PUBLISHED_CONFIG["in_channels"], PUBLISHED_CONFIG["num_classes"]
    other = 1, 4
    expected = (other[0] - published[0]) * c1 * k * k + (other[1] - published[1]) * (c1 + 1)
    assert expected == -254
    assert _count(*other) - _count(*published) == expected


def test_text_widths_are_a_different_network():
    # The paper's text widths (32, 64, 128) do not give the paper's 1.47 M; the code's do.
    assert _count(3, 2, conv_widths=(32, 64, 128)) > 1_550_000


# ---------------------------------------------------------------- shapes

def test_divisor_is_two_to_the_number_of_halvings():
    assert DIVISOR == 2 ** 5  # 3 max-pools + 2 stride-2 token embeddings


@pytest.mark.parametrize("size", [DIVISOR * 2, 128])
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_forward_shape(in_channels, num_classes, size):
    batch = 2 if size == DIVISOR * 2 else 1  # the batch axis once is enough; keeps CPU time down
    model = _eval_model(in_channels, num_classes)
    with torch.no_grad():
        out = model(torch.randn(batch, in_channels, size, size))
    assert out.shape == (batch, num_classes, size, size)
    assert out.dtype == torch.float32


def test_forward_non_square_and_bottleneck_resolution():
    model = _model().eval()
    seen = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["bottleneck"] = output.shape

    model.token_encoder[1].register_forward_hook(record)
    with torch.no_grad():
        out = model(torch.randn(1, 3, DIVISOR * 2, DIVISOR * 3))
    assert out.shape == (1, 2, DIVISOR * 2, DIVISOR * 3)
    assert seen["bottleneck"] == (1, 256, 2, 3)


# ---------------------------------------------------------------- the axial shift

def test_shift_moves_each_group_with_zero_fill():
    # 5 channels -> 5 groups of one, offsets -2..2 along the width: out[w] = x[w - offset].
    row = torch.arange(1.0, 6.0)
    x = row.expand(1, 5, 1, 5).clone()
    expected = torch.tensor([[3., 4., 5., 0., 0.],    # offset -2
                             [2., 3., 4., 5., 0.],    # offset -1
                             [1., 2., 3., 4., 5.],    # offset  0
                             [0., 1., 2., 3., 4.],    # offset +1
                             [0., 0., 1., 2., 3.]])   # offset +2
    assert torch.equal(axial_shift(x, 5, dim=3)[0, :, 0, :], expected)
    # Along the height the same offsets move rows.
    assert torch.equal(axial_shift(x.transpose(2, 3), 5, dim=2)[0, :, :, 0], expected)


def test_shift_groups_like_torch_chunk():
    # 7 channels in 5 groups: chunks of ceil(7 / 5) = 2, i.e. 2, 2, 2, 1 with offsets -2, -1, 0, +1.
    x = torch.ones(1, 7, 1, 4)
    out = axial_shift(x, 5, dim=3)[0, :, 0, :]
    expected_rows = [[1, 1, 0, 0]] * 2 + [[1, 1, 1, 0]] * 2 + [[1, 1, 1, 1]] * 2 + [[0, 1, 1, 1]]
    assert torch.equal(out, torch.tensor(expected_rows, dtype=torch.float32))


# ---------------------------------------------------------------- gradients, modes, init

def test_every_parameter_gets_a_finite_nonzero_gradient():
    model = _model(3, 2).train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, DIVISOR * 2, DIVISOR * 2)
    weights = torch.randn(2, 2, DIVISOR * 2, DIVISOR * 2)
    (model(x) * weights).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_is_deterministic():
    model = _model().eval()
    x = torch.randn(2, 3, DIVISOR * 2, DIVISOR * 2)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_train_and_eval_differ_only_through_batchnorm():
    # UNeXt has BatchNorm2d in its conv blocks and no dropout / drop-path: with the BatchNorms
    # held in eval mode, train() gives eval()'s output exactly.
    model = _model()
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 7
    x = torch.randn(2, 3, DIVISOR * 2, DIVISOR * 2)
    with torch.no_grad():
        reference = model.eval()(x)
        model.train()
        for bn in batch_norms:
            bn.eval()
        assert torch.equal(model(x), reference)
        model.train()  # batch statistics now: a different output
        assert not torch.allclose(model(x), reference)


def test_initialisation_follows_the_authors_code():
    model = _model()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 8  # two per shifted-MLP block, four blocks
    for linear in linears:
        assert torch.all(linear.bias == 0)
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
    depthwise = model.token_encoder[0].stage.blocks[0].depthwise  # 160 channels x 9 weights
    assert torch.all(depthwise.bias == 0)
    assert depthwise.weight.std().item() == pytest.approx(math.sqrt(2.0 / 9), rel=0.1)
    embed = model.token_encoder[0].embed  # fan_out = 9 * 160
    assert embed.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 160)), rel=0.1)
    # The conv stage keeps PyTorch's default: kaiming-uniform(a=sqrt(5)), bound 1 / sqrt(fan_in).
    first = model.conv_encoder[0][0]
    bound = 1.0 / math.sqrt(3 * 9)
    assert first.weight.abs().max().item() <= bound
    assert first.bias.abs().max().item() <= bound
    assert first.bias.abs().max().item() > 0
