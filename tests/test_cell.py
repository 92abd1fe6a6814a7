"""IAC cells: ops, partial channels, shuffle, edge-weight cap, supernet, discrete cell, genotype."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from unetscout.errors import UnetscoutError
from unetscout.models.cell import EDGES, N_EDGES, ArchitectureParameters, DiscreteCell, MixedEdge, SupernetCell, cap_weights, capped_edge_weights, cell_channels, channel_shuffle, op_weights, supernet_key
from unetscout.models.ops import N_OPS, OPS, OP_NAMES
from unetscout.models.describe import count_macs
from unetscout.models.genotype import Genotype
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model

GENOTYPE = Genotype(((( 0, "sep_conv_3x3"), (1, "identity")),
                     ((0, "max_pool_3x3"), (2, "dil_conv_5x5")),
                     ((1, "avg_pool_3x3"), (3, "sep_conv_5x5")),
                     ((2, "dil_conv_3x3"), (4, "identity"))))
SPEC = ModelSpec("lean", in_channels=2, num_classes=3, image_size=32, width=8)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("affine", [False, True])
def test_every_op_keeps_shape_and_follows_affine(name, affine):
    op = OPS[name](6, affine)
    x = torch.randn(2, 6, 9, 11)
    assert op(x).shape == x.shape
    norms = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(n.affine == affine for n in norms)
    expected_norms = {"sep_conv_3x3": 2, "sep_conv_5x5": 2, "dil_conv_3x3": 1, "dil_conv_5x5": 1}
    assert len(norms) == expected_norms.get(name, 0)


def test_op_dict_has_the_seven_ops_and_no_zero():
    assert set(OPS) == {"identity", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
                        "dil_conv_3x3", "dil_conv_5x5"}


def test_avg_pool_excludes_padding():
    x = torch.ones(1, 1, 3, 3)
    assert torch.equal(OPS["avg_pool_3x3"](1, True)(x), x)  # corners average 4 ones, not 4/9


def test_dil_conv_is_dilated_depthwise_then_pointwise():
    depthwise, pointwise = [m for m in OPS["dil_conv_5x5"](4, True).modules() if isinstance(m, nn.Conv2d)]
    assert depthwise.dilation == (2, 2) and depthwise.groups == 4 and depthwise.kernel_size == (5, 5)
    assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1


def test_channel_shuffle_is_the_expected_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    y = torch.randn(2, 12, 3, 3)
    shuffled = channel_shuffle(y, 4)
    assert sorted(shuffled.sum((0, 2, 3)).tolist()) == sorted(y.sum((0, 2, 3)).tolist())
    assert torch.equal(channel_shuffle(shuffled, 3), y)  # shuffling by c/g undoes it


def test_mixed_edge_touches_only_the_first_c_over_k_channels():
    torch.manual_seed(0)
    edge = MixedEdge(8, 4).eval()
    weights = torch.softmax(torch.randn(N_OPS), 0)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    unshuffle = lambda out: channel_shuffle(out, 2)  # noqa: E731  (inverse of groups=4 for 8 channels)
    out = unshuffle(edge(x, weights))
    assert torch.equal(out[:, 2:], x[:, 2:])             # bypassed channels pass through unchanged
    perturbed = x.detach().clone()
    perturbed[:, 2:] += 5.0
    assert torch.equal(unshuffle(edge(perturbed, weights))[:, :2], out[:, :2].detach())
    out[:, :2].sum().backward()
    assert x.grad[:, 2:].abs().sum() == 0 and x.grad[:, :2].abs().sum() > 0
    convs = [m for m in edge.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.in_channels == 2 for c in convs)


def test_pools_in_the_supernet_are_followed_by_non_affine_bn():
    edge = MixedEdge(8, 4)
    for name in ("max_pool_3x3", "avg_pool_3x3"):
        pool, norm = edge.ops[name]
        assert isinstance(norm, nn.BatchNorm2d) and not norm.affine


@pytest.mark.parametrize("weights, expected", [
    ([0.7, 0.2, 0.1], [0.5, 0.5 * 2 / 3, 0.5 / 3]),
    ([0.1, 0.6, 0.3], [0.125, 0.5, 0.375]),
    ([0.4, 0.35, 0.25], [0.4, 0.35, 0.25]),      # max <= 0.5: unchanged
    ([0.5, 0.5], [0.5, 0.5]),
])
def test_cap_by_hand(weights, expected):
    capped = cap_weights(torch.tensor(weights, dtype=torch.float64), 0.5)
    assert capped.tolist() == pytest.approx(expected)
    assert float(capped.sum()) == pytest.approx(1.0) and float(capped.max()) <= 0.5 + 1e-12
    order = torch.argsort(torch.tensor(weights), descending=True)
    assert torch.all(capped[order][:-1] >= capped[order][1:])


def test_capped_edge_weights_per_node():
    w = capped_edge_weights(torch.zeros(N_EDGES, dtype=torch.float64), 0.5)
    assert w[:2].tolist() == [0.5, 0.5]
    assert w[2:5].tolist() == pytest.approx([1 / 3] * 3) and w[9:].tolist() == pytest.approx([0.2] * 5)
    beta = torch.zeros(N_EDGES, dtype=torch.float64)
    beta[0] = 3.0  # node 2: softmax(tanh 3, 0) = (0.730085, 0.269915)
    assert capped_edge_weights(beta, 0.5)[:2].tolist() == pytest.approx([0.5, 0.5])
    assert capped_edge_weights(beta, 0.7)[:2].tolist() == pytest.approx([0.7, 0.3])
    assert capped_edge_weights(beta, 0.8)[:2].tolist() == pytest.approx([0.730085, 0.269915], abs=1e-6)


def test_op_weights_ignore_pruned_ops():
    alpha = torch.zeros(N_EDGES, N_OPS)
    active = torch.ones(N_EDGES, N_OPS, dtype=torch.bool)
    active[3, [0, 4]] = False
    w = op_weights(alpha, active)
    assert w[3].tolist() == pytest.approx([0, 0.2, 0.2, 0.2, 0, 0.2, 0.2])
    assert w[0].tolist() == pytest.approx([1 / 7] * 7)


def _supernet(residual=False, groups=4):
    model = build_model(SPEC)
    arch = ArchitectureParameters()
    model.replace_skips(lambda s, u: SupernetCell(s, u, arch, groups=groups, residual=residual))
    return model, arch


def test_architecture_parameters_are_not_model_parameters():
    model, arch = _supernet()
    ids = {id(p) for p in model.parameters()}
    assert id(arch.alpha) not in ids and id(arch.beta) not in ids
    assert not any("alpha" in k or "beta" in k for k in model.state_dict())
    assert arch.alpha.shape == (14, 7) and arch.beta.shape == (14,)
    assert not arch.alpha.any() and not arch.beta.any()
    # one instance for every level: a change is seen by all cells
    assert all(cell.__dict__["arch"] is arch for cell in model.skip_modules)


def test_supernet_forward_and_gradients_reach_alpha_and_beta():
    model, arch = _supernet()
    x = torch.randn(2, 2, 32, 32)
    model(x).sum().backward()
    assert arch.alpha.grad is not None and arch.alpha.grad.abs().sum() > 0
    assert arch.beta.grad is not None and arch.beta.grad.abs().sum() > 0


def test_cell_has_fourteen_edges_and_channels_rounded_to_k():
    assert len(EDGES) == 14 and EDGES[:2] == ((0, 2), (1, 2)) and EDGES[-1] == (4, 5)
    assert cell_channels(5, 4) == 8 and cell_channels(8, 4) == 8
    cell = SupernetCell(5, 7, ArchitectureParameters(), groups=4)
    assert cell.preprocess_skip.out_channels == 8 and cell.output.in_channels == 32 and cell.output.out_channels == 5
    assert cell(torch.randn(1, 5, 8, 8), torch.randn(1, 7, 8, 8)).shape == (1, 5, 8, 8)


@pytest.mark.parametrize("make", [lambda: SupernetCell(8, 8, ArchitectureParameters(), residual=True),
                                  lambda: DiscreteCell(8, 8, Genotype(GENOTYPE.nodes, residual=True))])
def test_fresh_residual_cell_is_the_identity_skip(make):
    cell = make()
    skip, up = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    assert torch.equal(cell(skip, up), skip)


def test_pruning_removes_ops_and_reduces_macs():
    model, arch = _supernet()
    model.eval()
    before = count_macs(model, SPEC)
    for cell in model.skip_modules:
        cell.remove_op(0, "sep_conv_5x5")
    after_one = count_macs(model, SPEC)
    for cell in model.skip_modules:
        for e in range(N_EDGES):
            for name in ("sep_conv_3x3", "dil_conv_3x3", "dil_conv_5x5") + (("sep_conv_5x5",) if e else ()):
                cell.remove_op(e, name)
    after_all = count_macs(model, SPEC)
    assert before > after_one > after_all
    assert all(set(cell.edges["0_2"].ops) == {"identity", "max_pool_3x3", "avg_pool_3x3"}
               for cell in model.skip_modules)
    assert not any("sep_conv" in k or "dil_conv" in k for k in model.state_dict())
    # the MACs saved by removing edge 0->2's sep_conv_5x5 at every level, by hand: per level the
    # op runs on C/K = 2 channels of an s x s map: 2 x (25 * 2 + 2 * 2) MACs per pixel.
    pixels = sum(s * s for s in (32, 16, 8))
    assert before - after_one == pixels * 2 * (25 * 2 + 2 * 2)


def test_discrete_cell_has_the_genotypes_ops_with_full_channels():
    cell = DiscreteCell(8, 8, GENOTYPE)
    assert set(cell.edges) == {"0_2", "1_2", "0_3", "2_3", "1_4", "3_4", "2_5", "4_5"}
    assert isinstance(cell.edges["1_2"], nn.Identity)
    assert cell.edges["0_2"][1].in_channels == 8
    assert all(m.affine for m in cell.modules() if isinstance(m, nn.BatchNorm2d))
    assert cell(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)).shape == (2, 8, 8, 8)


def test_spec_with_genotype_rebuilds_the_cell(tmp_path):
    spec = SPEC.replace(skip="cell", genotype=GENOTYPE.to_json())
    spec.save(tmp_path / "model.json")
    loaded = ModelSpec.load(tmp_path / "model.json")
    assert loaded == spec
    torch.manual_seed(0)
    first = build_model(loaded).state_dict()
    torch.manual_seed(0)
    model = build_model(spec)
    assert all(isinstance(m, DiscreteCell) for m in model.skip_modules) and len(model.skip_modules) == 3
    assert first.keys() == model.state_dict().keys()
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    assert model(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_spec_without_genotype_serialises_as_before():
    assert "genotype" not in SPEC.to_dict()
    with pytest.raises(UnetscoutError, match="go together"):
        SPEC.replace(skip="cell")
    with pytest.raises(UnetscoutError, match="go together"):
        SPEC.replace(genotype=GENOTYPE.to_json())


def test_bad_genotype_in_model_json_names_the_file(tmp_path):
    data = SPEC.replace(skip="cell", genotype=GENOTYPE.to_json()).to_dict()
    data["genotype"] = data["genotype"].replace("sep_conv_3x3", "conv_7x7")
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(UnetscoutError, match=r"model.json: .*unknown operation 'conv_7x7'"):
        ModelSpec.load(tmp_path / "model.json")


def test_genotype_json_round_trip(tmp_path):
    GENOTYPE.save(tmp_path / "genotype.json")
    assert Genotype.load(tmp_path / "genotype.json") == GENOTYPE
    assert Genotype.from_json(GENOTYPE.to_json()) == GENOTYPE
    data = json.loads((tmp_path / "genotype.json").read_text())
    assert data["nodes"][0] == [[0, "sep_conv_3x3"], [1, "identity"]] and data["residual"] is False
    assert hash(GENOTYPE) == hash(Genotype.from_dict(data))


@pytest.mark.parametrize("nodes, words", [
    ([[[0, "identity"], [1, "identity"]]] * 3, "4 intermediate nodes"),
    ([[[0, "identity"], [2, "identity"]]] + [[[0, "identity"], [1, "identity"]]] * 3, "cannot take node 2"),
    ([[[0, "identity"], [0, "identity"]]] + [[[0, "identity"], [1, "identity"]]] * 3, "takes node 0 twice"),
    ([[[0, "zero"], [1, "identity"]]] + [[[0, "identity"], [1, "identity"]]] * 3, "unknown operation 'zero'"),
])
def test_invalid_genotypes_are_one_line_errors(tmp_path, nodes, words):
    (tmp_path / "genotype.json").write_text(json.dumps({"nodes": nodes}))
    with pytest.raises(UnetscoutError) as err:
        Genotype.load(tmp_path / "genotype.json")
    assert words in str(err.value) and str(err.value).startswith(str(tmp_path)) and "\n" not in str(err.value)


def test_supernet_key_maps_roles():
    assert supernet_key("edges.0_2.1.weight", GENOTYPE) == "edges.0_2.ops.sep_conv_3x3.1.weight"
    assert supernet_key("edges.2_5.3.bias", GENOTYPE) == "edges.2_5.ops.dil_conv_3x3.3.bias"
    assert supernet_key("output.weight", GENOTYPE) == "output.weight"
    # K = 1: every discrete tensor with a same-role supernet tensor has its shape; only the
    # affine BN parameters (absent in the supernet's affine=False BN) have none.
    supernet = SupernetCell(8, 8, ArchitectureParameters(), groups=1).state_dict()
    discrete = DiscreteCell(8, 8, GENOTYPE)
    norms = {name for name, m in discrete.named_modules() if isinstance(m, nn.BatchNorm2d)}
    matched = 0
    for key, tensor in discrete.state_dict().items():
        source = supernet.get(supernet_key(key, GENOTYPE))
        if source is None:
            assert key.rsplit(".", 1)[0] in norms and key.endswith(("weight", "bias")), key
        else:
            assert source.shape == tensor.shape, key
            matched += 1
    assert matched > 6
