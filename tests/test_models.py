"""U-Net backbones, skip modules and describe-model.

Expected values come from docs/methods.md#backbones, from nnU-Net's own implementation (the peer
dynamic-network-architectures, built with nnU-Net's 2-D settings) or are worked out by hand.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from unetscout.cli import main
from unetscout.errors import UnetscoutError
from unetscout.models.describe import count_gflops, count_macs, count_parameters, describe_model
from unetscout.models.skips import SKIP_MODULES, IdentitySkip, build_skip_modules
from unetscout.models.spec import BACKBONES, ModelSpec
from unetscout.models.unet import ENCODERS, build_model

KAIMING_GAIN = math.sqrt(2.0 / (1 + 0.01 ** 2))


def _spec(backbone: str, size: int = 64, cap: int = 16, **kw) -> ModelSpec:
    # `cap` doubles as the lean width so one parametrisation covers every backbone.
    kw.setdefault("in_channels", 2)
    kw.setdefault("num_classes", 3)
    return ModelSpec(backbone, image_size=size, cap=cap, width=cap, **kw)


def _peer(spec: ModelSpec) -> nn.Module:
    """nnU-Net's network for the same spec, configured as nnU-Net's 2-D plans do."""
    arch = pytest.importorskip("dynamic_network_architectures.architectures.unet",
                               reason="the peer dynamic-network-architectures is not installed")
    n = spec.n_stages
    common = dict(input_channels=spec.in_channels, n_stages=n, features_per_stage=spec.features(),
                  conv_op=nn.Conv2d, kernel_sizes=3, strides=spec.strides(), num_classes=spec.num_classes,
                  n_conv_per_stage_decoder=2, conv_bias=True, norm_op=nn.InstanceNorm2d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=spec.deep_supervision)
    if spec.backbone == "resenc":
        blocks = [1, 3, 4, 6, 6, 6, 6] + [6] * max(0, n - 7)  # nnU-Net ResEnc M, written out by hand
        return arch.ResidualEncoderUNet(n_blocks_per_stage=blocks[:n], **common)
    return arch.PlainConvUNet(n_conv_per_stage=2, **common)


# ---------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("in_channels, cap, expected", [(3, 512, 33_472_396), (3, 8, 20_388), (1, 8, 20_244)])
def test_methods_reference_counts(in_channels, cap, expected):
    spec = ModelSpec("plain", in_channels=in_channels, num_classes=2, image_size=256, cap=cap)
    assert spec.n_stages == 7
    with torch.device("meta"):  # shapes only: the count needs no memory
        model = build_model(spec)
    assert count_parameters(model) == expected


PEER_CONFIGS = [
    ModelSpec("plain", in_channels=1, num_classes=2, image_size=32, cap=512),
    ModelSpec("plain", in_channels=4, num_classes=3, image_size=64, cap=16),
    ModelSpec("plain", in_channels=2, num_classes=5, image_size=128, cap=64),
    ModelSpec("plain", in_channels=1, num_classes=2, image_size=512, cap=512),
    ModelSpec("plain", in_channels=3, num_classes=4, image_size=256, cap=1),
    ModelSpec("plain", in_channels=1, num_classes=2, image_size=256, cap=128, stages=4),
    ModelSpec("lean", in_channels=1, num_classes=2, image_size=64, width=8),
    ModelSpec("lean", in_channels=3, num_classes=3, image_size=256, width=1),
    ModelSpec("resenc", in_channels=3, num_classes=2, image_size=256, cap=512),
    ModelSpec("resenc", in_channels=1, num_classes=3, image_size=64, cap=32),
    ModelSpec("resenc", in_channels=2, num_classes=2, image_size=1024, cap=8),  # 9 stages: blocks extended
]


@pytest.mark.parametrize("spec", PEER_CONFIGS, ids=lambda s: f"{s.backbone}-{s.image_size}-{s.cap}-{s.width}")
def test_same_parameter_shapes_in_the_same_order_as_nnunet(spec):
    with torch.device("meta"):
        ours, peer = build_model(spec), _peer(spec)
    assert count_parameters(ours) == count_parameters(peer)
    # The peer's state_dict repeats tensors under aliases; parameters() lists each once.
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(p.shape) for p in peer.parameters()]


@pytest.mark.parametrize("backbone", ["plain", "resenc"])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_peer_weights_give_the_peer_outputs(backbone, deep_supervision):
    spec = _spec(backbone, size=32, cap=8, deep_supervision=deep_supervision)
    torch.manual_seed(0)
    peer, ours = _peer(spec), build_model(spec)
    with torch.no_grad():
        for p in peer.parameters():  # random everywhere, including the zero-initialised norms
            p.copy_(torch.randn_like(p) * 0.3)
    ours.load_state_dict(dict(zip(ours.state_dict().keys(), peer.parameters())))
    x = torch.randn(2, spec.in_channels, 32, 32)
    expected, got = peer(x), ours(x)
    if not deep_supervision:
        expected, got = [expected], [got]
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the shared backbone contract

@pytest.fixture(params=tuple(ENCODERS))
def backbone(request) -> str:
    """The nnU-Net-style designs (the encoder U-Nets' own contract: tests/test_encoder_unet.py)."""
    return request.param


@pytest.fixture(params=BACKBONES)
def any_backbone(request) -> str:
    return request.param


def _a_skip(backbone: str, skip: str) -> str:
    """`skip` where the backbone has a skip hook; the lightweight peers keep their own skips."""
    from unetscout.names import ARCHITECTURES

    return skip if ARCHITECTURES[backbone].skip_hook else "identity"


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("cap", [1, 4, 32])
def test_output_shape(backbone, size, cap):
    model = build_model(_spec(backbone, size=size, cap=cap))
    out = model(torch.randn(2, 2, size, size))
    assert out.shape == (2, 3, size, size)


def test_deep_supervision_gives_every_head_highest_resolution_first(backbone):
    model = build_model(_spec(backbone, size=64, deep_supervision=True))  # 5 stages: 4 heads
    x = torch.randn(1, 2, 64, 64)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 16, 16), (1, 3, 8, 8)]
    model.deep_supervision = False  # as at inference: the full-resolution head alone
    torch.testing.assert_close(model(x), outs[0])


def test_channels_last_and_bfloat16_autocast(any_backbone):
    torch.manual_seed(0)
    # eval mode: BatchNorm (the encoder U-Nets) over a 1 x 1 bottleneck of two images in train
    # mode would amplify any rounding into a sign flip
    model = build_model(_spec(any_backbone, size=32, cap=8, skip=_a_skip(any_backbone, "attention"))).eval()
    x = torch.randn(2, 2, 32, 32)
    reference = model(x).detach()
    model = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.to(memory_format=torch.channels_last))
    assert out.shape == reference.shape and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    # bf16 keeps ~3 significant digits; the logits must still be the same function. The attention
    # gate's instance norms over the deepest skip (2 x 2 here: a mean close to the values) amplify
    # the rounding: up to 0.12 of the largest logit on efficientnetv2_m (0.06 with identity skips).
    assert (out.float() - reference).abs().max() < 0.2 * reference.abs().max()
    out.float().sum().backward()
    # the encoder (unused deep-supervision heads get none); a peer has no separate encoder
    assert all(p.grad is not None for p in getattr(model, "encoder", model).parameters())


def test_init_biases_zero_and_weights_kaiming(backbone):
    torch.manual_seed(0)
    model = build_model(_spec(backbone, size=64, cap=512))  # plain/resenc: a 512 -> 512 conv
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
            assert torch.count_nonzero(module.bias) == 0
    deepest = [m for m in model.encoder.stages[-1].modules() if isinstance(m, nn.Conv2d)][-1]
    fan_in = deepest.in_channels * 9
    assert deepest.weight.numel() >= 4096
    assert deepest.weight.std().item() == pytest.approx(KAIMING_GAIN / math.sqrt(fan_in), rel=0.03)
    assert abs(deepest.weight.mean().item()) < 0.1 * KAIMING_GAIN / math.sqrt(fan_in)
    up = model.decoder.upsamplers[0]  # torch's fan_in of a transposed conv: out_channels * k * k
    assert up.weight.std().item() == pytest.approx(KAIMING_GAIN / math.sqrt(up.out_channels * 4), rel=0.05)


def test_resenc_blocks_start_as_identity_on_their_residual_branch():
    model = build_model(_spec("resenc", size=32, cap=8))
    for block in model.encoder.stages[1]:
        last_norm = block.conv2[1]
        assert torch.count_nonzero(last_norm.weight) == 0 and torch.count_nonzero(last_norm.bias) == 0


def test_spec_json_round_trip_rebuilds_the_same_model(any_backbone, tmp_path):
    spec = _spec(any_backbone, size=32, cap=8, skip=_a_skip(any_backbone, "nested"),
                 deep_supervision=any_backbone in ENCODERS)
    spec.save(tmp_path / "model.json")
    torch.manual_seed(7)
    first = build_model(spec).state_dict()
    torch.manual_seed(7)
    again = build_model(ModelSpec.load(tmp_path / "model.json")).state_dict()
    assert list(first) == list(again)
    assert all(torch.equal(first[k], again[k]) for k in first)


# ---------------------------------------------------------------- skip modules

@pytest.mark.parametrize("name", sorted(SKIP_MODULES))
def test_skip_modules_keep_every_skips_shape(name):
    # built as a host builds them (a whole pathway from every level at once), odd sizes included
    modules = build_skip_modules(SKIP_MODULES[name], [(6, 10), (12, 4)])
    skips = [torch.randn(2, 6, 7, 7), torch.randn(2, 12, 4, 4)]
    ups = [torch.randn(2, 10, 7, 7), torch.randn(2, 4, 4, 4)]
    read = modules.transform_skips(skips)
    assert [m(s, u).shape for m, s, u in zip(modules, read, ups)] == [s.shape for s in skips]


def test_identity_skip_is_parameter_free_and_returns_skip():
    skip = torch.randn(1, 4, 8, 8)
    module = IdentitySkip(4, 4)
    assert count_parameters(module) == 0 and module(skip, torch.randn(1, 4, 8, 8)) is skip


def test_attention_gate_scales_skip_by_the_hand_computed_mask():
    module = SKIP_MODULES["attention"](4, 4)
    with torch.no_grad():  # psi's conv gives a constant map, its norm 0 + bias 0.5: the mask is sigmoid(0.5)
        module.psi[0].weight.zero_()
        module.psi[1].bias.fill_(0.5)
    skip = torch.randn(1, 4, 5, 5)
    alpha = 1 / (1 + math.exp(-0.5))
    torch.testing.assert_close(module(skip, torch.randn(1, 4, 5, 5)), skip * alpha)


def test_attention_mask_is_spatial_and_between_zero_and_one():
    module = SKIP_MODULES["attention"](4, 6)
    mask = module.mask(torch.randn(2, 4, 7, 7), torch.randn(2, 6, 7, 7))
    assert mask.shape == (2, 1, 7, 7) and (mask > 0).all() and (mask < 1).all()


def test_nested_pathway_hands_the_decoder_skip_plus_its_fused_nodes():
    pathway = build_skip_modules(SKIP_MODULES["nested"], [(3, 5), (4, 3)])
    skips = [torch.randn(1, 3, 6, 6), torch.randn(1, 4, 3, 3)]
    nodes = pathway.nodes(skips)
    assert sorted(nodes) == [(0, 0), (0, 1), (1, 0)]     # the deepest level has no intermediate node
    read = pathway.transform_skips(skips)
    torch.testing.assert_close(read[0], skips[0] + pathway[0].fuse(nodes[0, 1]))
    assert read[1] is skips[1]
    assert pathway[0](read[0], torch.randn(1, 5, 6, 6)) is read[0]  # the per-level call passes it on


@pytest.mark.parametrize("name", sorted(SKIP_MODULES))
def test_swapping_skips_leaves_the_backbone_untouched(backbone, name):
    torch.manual_seed(3)
    model = build_model(_spec(backbone, size=32, cap=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.replace_skips(name)
    assert model.spec.skip == name  # a checkpoint's saved spec rebuilds the swapped model
    after = model.backbone_state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Skip parameters come after every backbone parameter, so the peer's order still holds.
    assert list(model.state_dict())[:len(before)] == list(before)
    assert model(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_backbone_weights_do_not_depend_on_the_chosen_skip(backbone):
    states = []
    for name in ("identity", "attention", "nested"):
        torch.manual_seed(11)
        states.append(build_model(_spec(backbone, size=32, cap=8, skip=name)).backbone_state_dict())
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])


def test_skip_modules_see_each_encoder_level_shallowest_first(backbone):
    seen: list[tuple[int, int, tuple, tuple]] = []

    class Recorder(nn.Module):
        def __init__(self, skip_channels: int, up_channels: int):
            super().__init__()
            self.channels = (skip_channels, up_channels)

        def forward(self, skip, up):
            seen.append((*self.channels, tuple(skip.shape), tuple(up.shape)))
            return skip

    model = build_model(_spec(backbone, size=32, cap=16))  # 4 stages, plain/resenc widths 16,16,16,16
    model.replace_skips(Recorder)
    model(torch.randn(1, 2, 32, 32))
    f = model.spec.features()
    # The decoder runs deepest first; skip_modules[i] serves encoder level i.
    expected = [(f[i], f[i], (1, f[i], 32 >> i, 32 >> i), (1, f[i], 32 >> i, 32 >> i)) for i in (2, 1, 0)]
    assert seen == expected
    assert len(model.skip_modules) == 3


def test_a_zeroing_skip_changes_the_output():
    class Zero(nn.Module):
        def forward(self, skip, up):
            return torch.zeros_like(skip)

    torch.manual_seed(0)
    model = build_model(_spec("plain", size=32, cap=8))
    x = torch.randn(1, 2, 32, 32)
    plain = model(x)
    model.replace_skips(lambda s, u: Zero())
    assert not torch.allclose(plain, model(x))


def test_unknown_skip_and_impossible_geometry_are_one_line_errors():
    with pytest.raises(UnetscoutError, match="unknown skip module 'gate'"):
        build_model(_spec("plain", skip="gate"))
    with pytest.raises(UnetscoutError, match="cannot be halved 6 times"):
        build_model(_spec("plain", size=32, stages=7))
    with pytest.raises(UnetscoutError, match="at least 2 stages"):
        build_model(_spec("plain", stages=1))
    model = build_model(_spec("plain", size=32, cap=4))
    with pytest.raises(UnetscoutError, match="not divisible by 8"):
        model(torch.randn(1, 2, 36, 36))


# ---------------------------------------------------------------- GFLOPs and describe

def test_gflops_of_a_tiny_network_by_hand():
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),              # 8*8 outputs * 3 ch * (2*3*3)    = 3456
        nn.Conv2d(3, 3, 3, stride=2, padding=1),    # 4*4 outputs * 3 ch * (3*3*3)    = 1296
        nn.ConvTranspose2d(3, 4, 2, stride=2),      # 4*4 inputs * 3 ch * 4 out * 2*2 = 768
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),                    # 5 outputs * 256 inputs         = 1280
    )
    spec = ModelSpec("plain", in_channels=2, num_classes=2, image_size=8)
    assert count_macs(net, spec) == 3456 + 1296 + 768 + 1280
    assert count_gflops(net, spec) == pytest.approx(2 * 6800 / 1e9)


def _plain_unet_macs(spec: ModelSpec) -> int:
    """MACs of the plain U-Net written out from docs/methods.md#plain-and-capped-u-net, layer by layer."""
    f, size, total = spec.features(), spec.image_size, 0
    ins = [spec.in_channels, *f[:-1]]
    for i, (c_in, c) in enumerate(zip(ins, f)):
        pixels = (size >> i) ** 2
        total += pixels * c * c_in * 9 + pixels * c * c * 9
    for level in range(len(f) - 1):
        pixels = (size >> level) ** 2
        total += (size >> (level + 1)) ** 2 * f[level + 1] * f[level] * 4   # transposed conv
        total += pixels * f[level] * 2 * f[level] * 9 + pixels * f[level] * f[level] * 9
    return total + size * size * spec.num_classes * f[0]                    # the one head used


@pytest.mark.parametrize("cap", [1, 8, 512])
def test_unet_macs_match_the_layer_by_layer_formula(cap):
    spec = ModelSpec("plain", in_channels=3, num_classes=4, image_size=64, cap=cap)
    with torch.device("meta"):
        model = build_model(spec)
    assert count_macs(model, spec) == _plain_unet_macs(spec)


def test_gflops_grow_with_the_cap():
    caps = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    gflops = [describe_model(ModelSpec("plain", 1, 2, 64, cap=c))["gflops"] for c in caps]
    assert all(a < b for a, b in zip(gflops, gflops[1:]))


def test_describe_model_reports_the_built_model(backbone):
    spec = _spec(backbone, size=32, cap=8, skip="attention")
    info = describe_model(spec)
    model = build_model(spec)
    assert info["params"] == count_parameters(model)
    assert info["gflops"] == pytest.approx(count_gflops(model, spec))
    assert info["features"] == spec.features() and info["stages"] == 4
    assert ModelSpec.from_dict(info["spec"]) == spec


def test_describe_model_cli(capsys):
    argv = ["describe-model", "--backbone", "plain", "--cap", "8", "--in-channels", "3", "--classes", "2",
            "--size", "256"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "20,388" in out and "GFLOPs" in out
    assert main(argv + ["--stages", "7", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 20_388 and info["stages"] == 7


def test_describe_model_cli_lean_width_and_errors(capsys):
    assert main(["describe-model", "--backbone", "lean", "--width", "8", "--in-channels", "1", "--classes", "2",
                 "--size", "256", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 20_244  # lean 8 = plain cap 8 over 7 stages
    assert main(["describe-model", "--backbone", "plain", "--in-channels", "1", "--classes", "2",
                 "--size", "64", "--skip", "gate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("unetscout: error: unknown skip module 'gate'")
