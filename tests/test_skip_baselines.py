"""The three baseline skips as their papers define them (docs/methods.md#skip-modules).

nested: UNet++'s dense nested pathway, checked node by node against segmentation-models-pytorch's
UnetPlusPlusDecoder (shapes, parameter counts, outputs with its weights), its dependency wiring by
perturbation, and the fused form's reduction to the plain U-Net. resattention: Wang et al.'s
attention module (no library has it), checked against hand compositions, a parameter formula
written out here and the receptive field its down-up mask adds. attention: MONAI's
AttentionBlock, parameter counts and outputs with its weights.
"""

from __future__ import annotations

from typing import Callable

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from monai.networks.nets.attentionunet import AttentionBlock
from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder
from torch import nn

from unetscout.models.describe import count_parameters
from unetscout.models.encoder_unet import EncoderUNet
from unetscout.models.skips import (SKIP_MODULES, AttentionGate, InstanceNorm, NestedPathway, PreActBottleneck,
                                    ResidualAttentionSkip, SkipModules, build_skip_modules)
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model

EPS = 1e-5  # InstanceNorm's here, BatchNorm's default in smp and MONAI


def _unet_skip_channels(stages: int, cap: int = 64) -> list[tuple[int, int]]:
    with torch.device("meta"):
        return build_model(ModelSpec("plain", 2, 3, 64, cap=cap, stages=stages)).skip_channels()


def _intermediate(levels: int) -> list[tuple[int, int]]:
    """(i, j) of every node off the main path: j >= 1, i + j <= L - 1."""
    return [(i, j) for i in range(levels) for j in range(1, levels - i)]


def _smp_name(i: int, j: int, levels: int) -> str:
    """smp's name of X^{i,j}: its layer_idx counts levels from the deepest skip, its depth_idx
    is 0 on the main path."""
    return f"x_{levels - i - j}_{levels - 1 - i}"


def _smp_decoder(skips: list[int], bottleneck: int) -> UnetPlusPlusDecoder:
    """smp's UNet++ decoder over our skip levels: encoder_channels = [input (dropped by smp),
    skip levels shallowest first, bottleneck]; one block a level plus smp's last, skip-less one."""
    levels = len(skips)
    return UnetPlusPlusDecoder(encoder_channels=[1, *skips, bottleneck],
                               decoder_channels=[max(skips)] * (levels + 1), n_blocks=levels + 1)


# ---------------------------------------------------------------- nested: UNet++

@pytest.mark.parametrize("stages", [5, 6])
def test_nested_nodes_have_smps_unetplusplus_shapes_and_counts(stages):
    channels = _unet_skip_channels(stages)
    skips = [s for s, _ in channels]
    levels = len(skips)
    assert levels == stages - 1 and len(set(skips)) > 1           # a real mix of widths
    ours = NestedPathway(channels)
    theirs = _smp_decoder(skips, 64)
    nodes = _intermediate(levels)
    assert len(nodes) == sum(1 for name in theirs.blocks if not name.startswith("x_0_"))
    for i, j in nodes:
        block = theirs.blocks[_smp_name(i, j, levels)]
        node = ours[i].nodes[j - 1]
        assert node[0].weight.shape == block.conv1[0].weight.shape, (i, j)
        assert node[3].weight.shape == block.conv2[0].weight.shape, (i, j)
        assert count_parameters(node) == count_parameters(block), (i, j)
    assert len(ours[levels - 1].nodes) == 0 and ours[levels - 1].fuse is None  # the deepest level has none
    fuses = sum(count_parameters(level.fuse) for level in ours if level.fuse is not None)
    assert fuses == sum((levels - 1 - i) * s * s for i, s in enumerate(skips))  # P_i: 1x1, no bias
    smp_nodes = sum(count_parameters(b) for name, b in theirs.blocks.items() if not name.startswith("x_0_"))
    assert count_parameters(ours) - fuses == smp_nodes


def _copy_smp_block(block: nn.Module, node: nn.Sequential, skip: int, deeper: int, j: int) -> None:
    """smp's block into our node, by role. smp concatenates [Up(X^{i+1,j-1}), X^{i,j-1}, ..., X^{i,0}],
    ours [X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})]: the same parts in reverse order."""
    weight = block.conv1[0].weight
    parts = torch.split(weight, [deeper] + [skip] * j, dim=1)
    with torch.no_grad():
        node[0].weight.copy_(torch.cat(parts[::-1], dim=1))
        node[3].weight.copy_(block.conv2[0].weight)
        for ours, theirs in ((node[1], block.conv1[1]), (node[4], block.conv2[1])):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    for layer in node:
        if isinstance(layer, nn.LeakyReLU):
            layer.negative_slope = 0.0  # smp's ReLU; our slope 0.01 is the backbone's activation


@pytest.mark.parametrize("skips", [[3, 5, 4, 6], [4, 2, 5, 3, 6]])
def test_nested_nodes_compute_what_smps_blocks_compute_with_the_same_weights(skips):
    torch.manual_seed(0)
    levels = len(skips)
    theirs = _smp_decoder(skips, 7).train()  # BatchNorm over one image = InstanceNorm
    with torch.no_grad():
        for module in theirs.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    ours = NestedPathway([(s, 1) for s in skips])
    for i, j in _intermediate(levels):
        _copy_smp_block(theirs.blocks[_smp_name(i, j, levels)], ours[i].nodes[j - 1], skips[i], skips[i + 1], j)
    # level i is 4 x 2^(L-1-i) pixels wide, the bottleneck 2: smp's blocks upsample by exactly 2
    features = [torch.randn(1, s, 4 << (levels - 1 - i), 4 << (levels - 1 - i)) for i, s in enumerate(skips)]
    seen = {}
    for i, j in _intermediate(levels):
        theirs.blocks[_smp_name(i, j, levels)].register_forward_hook(
            lambda module, args, out, key=(i, j): seen.__setitem__(key, out))
    bottleneck = torch.randn(1, 7, 2, 2)
    with torch.no_grad():
        theirs([torch.zeros(1, 1, 1, 1), *features, bottleneck])
        nodes = ours.nodes(features)
    assert sorted(seen) == sorted(_intermediate(levels))
    for key, out in seen.items():
        torch.testing.assert_close(nodes[key], out, msg=lambda m, key=key: f"X^{key}: {m}")


def test_nested_nodes_depend_on_exactly_the_encoder_levels_below_them():
    torch.manual_seed(0)
    skips = [3, 4, 5, 2, 3]
    pathway = NestedPathway([(s, 1) for s in skips])
    features = [torch.randn(1, s, 32 >> i, 32 >> i) for i, s in enumerate(skips)]
    with torch.no_grad():
        base = pathway.nodes(features)
        for k in range(len(skips)):
            moved = list(features)
            moved[k] = features[k] + torch.randn_like(features[k])
            nodes = pathway.nodes(moved)
            for (i, j), x in base.items():
                # X^{i,j} covers encoder levels i..i+j (X^{i,0} its own only)
                assert (not torch.equal(nodes[i, j], x)) == (i <= k <= i + j), (k, i, j)


def _encoder_unet() -> EncoderUNet:
    """An smp resnet18 U-Net behind our skip hook (no download: from scratch)."""
    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=2, classes=3)
    model = EncoderUNet(ModelSpec("resnet50", 2, 3, 64), unet)
    model.replace_skips("identity")  # as build_encoder_unet does
    return model


def _backbone_models() -> dict[str, Callable[[], nn.Module]]:
    return {name: (lambda name=name: build_model(ModelSpec(name, 2, 3, 64, cap=16, width=8)))
            for name in ("plain", "lean", "resenc")} | {"encoder": _encoder_unet}


@pytest.mark.parametrize("backbone", sorted(_backbone_models()))
def test_nested_pathway_with_every_fuse_zeroed_is_the_identity_skip_network(backbone):
    torch.manual_seed(0)
    model = _backbone_models()[backbone]().eval()
    x = torch.randn(2, 2, 64, 64)
    with torch.no_grad():
        plain = model(x)
    model.replace_skips("nested")
    assert isinstance(model.skip_modules, NestedPathway)
    assert len(model.skip_modules) == len(model.skip_channels())
    with torch.no_grad():
        for level in model.skip_modules:
            if level.fuse is not None:
                level.fuse.weight.zero_()
        assert torch.equal(model(x), plain)


@pytest.mark.parametrize("backbone", sorted(_backbone_models()))
def test_nested_pathway_trains_end_to_end_in_every_host(backbone):
    torch.manual_seed(0)
    model = _backbone_models()[backbone]()
    model.replace_skips("nested")
    out = model(torch.randn(2, 2, 64, 64))
    out = out[0] if isinstance(out, list) else out
    out.square().mean().backward()
    grads = {name: p.grad for name, p in model.skip_modules.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # the skip state sits under skip_modules.{level}, after every backbone parameter
    names = list(model.state_dict())
    first = next(k for k, name in enumerate(names) if name.startswith("skip_modules."))
    assert all(name.startswith("skip_modules.") for name in names[first:])
    levels = len(model.skip_channels())  # every level but the deepest holds nodes and a fuse
    assert {name.split(".")[1] for name in names[first:]} == {str(i) for i in range(levels - 1)}


def test_a_per_level_factory_still_builds_one_module_per_level():
    modules = build_skip_modules(lambda s, u: nn.Conv2d(s, s, 1), [(3, 5), (4, 3)])
    assert type(modules) is SkipModules and [m.in_channels for m in modules] == [3, 4]
    skips = [torch.randn(1, 3, 4, 4), torch.randn(1, 4, 2, 2)]
    assert modules.transform_skips(skips) == skips


# ---------------------------------------------------------------- resattention: Wang et al. 2017

def _unit_by_hand(unit: PreActBottleneck, x: torch.Tensor) -> torch.Tensor:
    """x + conv1x1(a(conv3x3(a(conv1x1(a(x)))))), a = instance norm then ReLU, from the weights."""
    def a(y, norm):
        return F.relu(F.instance_norm(y, weight=norm.weight, bias=norm.bias, eps=EPS))

    b = unit.branch
    y = F.conv2d(a(x, b[0]), b[2].weight)
    y = F.conv2d(a(y, b[3]), b[5].weight, padding=1)
    return x + F.conv2d(a(y, b[6]), b[8].weight)


@pytest.mark.parametrize("size", [5, 7, 8])
def test_residual_attention_is_one_plus_mask_times_trunk(size):
    torch.manual_seed(0)
    module = ResidualAttentionSkip(8, 3)
    with torch.no_grad():
        module.mask.head[-1].weight.zero_()         # M = sigmoid(0) = 1/2 everywhere
        module.post[0].branch[-1].weight.zero_()    # the post unit is then the identity
    skip = torch.randn(2, 8, size, size)
    x = _unit_by_hand(module.pre[0], skip)
    trunk = _unit_by_hand(module.trunk[1], _unit_by_hand(module.trunk[0], x))
    out = module(skip, torch.randn(2, 3, size, size))
    torch.testing.assert_close(out, 1.5 * trunk)
    assert module.mask(x).shape == skip.shape


def test_residual_attention_mask_is_the_down_up_path_by_hand():
    torch.manual_seed(0)
    module = ResidualAttentionSkip(8, 8)
    x = torch.randn(1, 8, 7, 7)
    low = F.max_pool2d(x, 3, stride=2, padding=1)                      # 7 -> 4
    low = _unit_by_hand(module.mask.units[1], _unit_by_hand(module.mask.units[0], low))
    up = F.interpolate(low, size=(7, 7), mode="bilinear", align_corners=True)
    head = module.mask.head
    y = F.conv2d(F.relu(F.instance_norm(up, weight=head[0].weight, bias=head[0].bias, eps=EPS)), head[2].weight)
    y = F.conv2d(F.relu(F.instance_norm(y, weight=head[3].weight, bias=head[3].bias, eps=EPS)), head[5].weight)
    torch.testing.assert_close(module.mask(x), torch.sigmoid(y))


def _without_norms(module: nn.Module) -> nn.Module:
    """Every norm replaced by the identity: instance norm is global over the map, so only then is
    a receptive field a local property."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, InstanceNorm):
                setattr(parent, name, nn.Identity())
    return module


def test_residual_attention_mask_sees_twice_the_trunks_reach():
    torch.manual_seed(0)
    module = _without_norms(ResidualAttentionSkip(8, 8)).double()
    x = torch.randn(1, 8, 17, 17, dtype=torch.float64)
    centre = 8

    def changes(distance: int) -> tuple[bool, bool]:
        """Whether trunk and mask at the centre pixel change when a pixel `distance` rows up does."""
        moved = x.clone()
        moved[..., centre - distance, centre] += 100.0
        outs = []
        for inp in (x, moved):
            pre = module.pre(inp)
            outs.append((module.trunk(pre)[..., centre, centre], module.mask(pre)[..., centre, centre]))
        return (not torch.equal(outs[0][0], outs[1][0]), not torch.equal(outs[0][1], outs[1][1]))

    with torch.no_grad():
        # trunk: pre + 2 trunk units, one 3x3 conv each: radius 3. mask: pre (1), the pool (1) and
        # two units at half resolution (2 x 2): radius 6
        assert [changes(d)[0] for d in (3, 4)] == [True, False]
        assert [changes(d)[1] for d in (6, 7)] == [True, False]


def _residual_attention_parameters(c: int) -> int:
    """By hand: a pre-activation bottleneck unit has norms on C, q, q (2 each) and convs C*q,
    9*q*q, q*C (no bias), q = max(1, C // 4); the module has p + t + 2r + p = 6 units and a mask
    head of two norms on C and two 1x1 convs C*C (no bias)."""
    q = max(1, c // 4)
    unit = 2 * c + 4 * q + 2 * c * q + 9 * q * q
    return 6 * unit + 4 * c + 2 * c * c


@pytest.mark.parametrize("channels", [1, 3, 4, 8, 16, 32])
def test_residual_attention_parameter_count(channels):
    module = ResidualAttentionSkip(channels, 5)
    assert count_parameters(module) == _residual_attention_parameters(channels)
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in module.modules())


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_residual_attention_takes_any_size(size):
    module = SKIP_MODULES["resattention"](4, 4)
    skip = torch.randn(2, 4, size, size, requires_grad=True)
    out = module(skip, torch.randn(2, 4, size, size))
    assert out.shape == skip.shape
    out.sum().backward()
    assert skip.grad is not None


def test_residual_attention_ignores_up():
    torch.manual_seed(0)
    module = SKIP_MODULES["resattention"](4, 6)
    skip = torch.randn(1, 4, 6, 6)
    assert torch.equal(module(skip, torch.randn(1, 6, 6, 6)), module(skip, torch.randn(1, 6, 6, 6)))


# ---------------------------------------------------------------- attention: MONAI's AttentionBlock

def _monai_block(skip: int, up: int) -> AttentionBlock:
    return AttentionBlock(spatial_dims=2, f_int=max(1, skip // 2), f_g=up, f_l=skip)


@pytest.mark.parametrize("skip, up", [(1, 1), (2, 3), (4, 6), (8, 8), (16, 32), (32, 16), (64, 64)])
def test_attention_gate_has_monais_parameter_count(skip, up):
    assert count_parameters(AttentionGate(skip, up)) == count_parameters(_monai_block(skip, up))


def _copy_monai(block: AttentionBlock, gate: AttentionGate) -> None:
    """MONAI's weights into ours, by role: W_g -> gate_proj, W_x -> skip_proj, psi -> psi."""
    with torch.no_grad():
        for theirs, ours in ((block.W_g, gate.gate_proj), (block.W_x, gate.skip_proj), (block.psi, gate.psi)):
            ours[0].weight.copy_(theirs[0].conv.weight)
            ours[0].bias.copy_(theirs[0].conv.bias)
            ours[1].weight.copy_(theirs[1].weight)
            ours[1].bias.copy_(theirs[1].bias)


@pytest.mark.parametrize("skip, up, size", [(4, 6, 7), (8, 8, 5), (16, 32, 8)])
def test_attention_gate_computes_monais_block_with_its_weights(skip, up, size):
    torch.manual_seed(0)
    block = _monai_block(skip, up).train()  # BatchNorm over one image normalises per channel over H, W
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.eps == EPS
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    gate = AttentionGate(skip, up)
    _copy_monai(block, gate)
    x, g = torch.randn(1, skip, size, size), torch.randn(1, up, size, size)
    with torch.no_grad():
        torch.testing.assert_close(gate(x, g), block(g=g, x=x))


def test_attention_gate_inner_width_is_half_the_skip():
    assert [AttentionGate(s, 4).skip_proj[0].out_channels for s in (1, 2, 7, 16)] == [1, 1, 3, 8]
