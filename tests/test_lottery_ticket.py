"""IAC-LTH's lottery ticket (search/cell_training.lottery_ticket_reset): the supernet's initial op
tensors land where the partial-channel edge used them, at one scale with the fresh entries.

Expected positions come from the channel shuffle by hand (output m of the op -> node channel
m * K) and, independently, from running the supernet's own MixedEdge; expected scales from
kaiming's formula with the supernet op's fan-in."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unetscout.models.cell import ArchitectureParameters, DiscreteCell, MixedEdge, SupernetCell
from unetscout.models.genotype import Genotype
from unetscout.models.ops import N_OPS, OP_INDEX
from unetscout.search.cell_training import lottery_ticket_reset

K = 4
# Ops with weights on every node but one (max pool, identity: no tensors).
WEIGHTED = Genotype((((0, "sep_conv_3x3"), (1, "dil_conv_5x5")), ((0, "sep_conv_5x5"), (2, "dil_conv_3x3")),
                     ((1, "sep_conv_3x3"), (3, "max_pool_3x3")), ((2, "dil_conv_3x3"), (4, "identity"))),
                    partial_channels=K)
# (index in the op's Sequential, kind) of every conv of the ops that have weights; "out" writes the node
OP_CONVS = {"sep_conv_3x3": ((1, "dw"), (2, "pw"), (5, "dw"), (6, "out")),
            "sep_conv_5x5": ((1, "dw"), (2, "pw"), (5, "dw"), (6, "out")),
            "dil_conv_3x3": ((1, "dw"), (2, "out")), "dil_conv_5x5": ((1, "dw"), (2, "out"))}
KAIMING_GAIN = math.sqrt(2 / (1 + 0.01 ** 2))


class _Host(nn.Module):
    """The one attribute lottery_ticket_reset reads of a model: its skip modules."""

    def __init__(self, cells: list[nn.Module]):
        super().__init__()
        self.skip_modules = nn.ModuleList(cells)


def _ticket(skip_channels: int, up_channels: int, levels: int = 1, seeds: tuple[int, int] = (1, 2)):
    torch.manual_seed(seeds[0])
    arch = ArchitectureParameters()
    supernet = _Host([SupernetCell(skip_channels, up_channels, arch, groups=K) for _ in range(levels)])
    init = {k: v.clone() for k, v in supernet.skip_modules.state_dict().items()}
    torch.manual_seed(seeds[1])
    model = _Host([DiscreteCell(skip_channels, up_channels, WEIGHTED) for _ in range(levels)])
    drawn = {k: v.clone() for k, v in model.skip_modules.state_dict().items()}
    ticket = lottery_ticket_reset(model, init, WEIGHTED)
    return supernet, model, init, drawn, ticket


def _copied_mask(kind: str, target: torch.Tensor, q: int) -> torch.Tensor:
    """Which entries of a discrete op tensor come from the ticket, by hand: rows m * K for the
    conv that writes the node (the shuffle's destination of op output m), the first q rows
    otherwise; the first q input channels for pointwise convs."""
    mask = torch.zeros_like(target, dtype=torch.bool)
    if kind == "dw":
        mask[:q] = True
    elif kind == "pw":
        mask[:q, :q] = True
    else:
        mask[[m * K for m in range(q)], :q] = True
    return mask


def test_ticket_copies_projections_whole_and_op_tensors_to_the_supernets_positions():
    supernet, model, init, drawn, ticket = _ticket(8, 6, levels=2)
    cells = model.skip_modules.state_dict()
    part = {entry["tensor"]: entry for entry in ticket["copied_in_part"]}
    for level in range(2):
        for name in ("preprocess_skip.weight", "preprocess_up.bias", "output.weight"):
            assert torch.equal(cells[f"{level}.{name}"], init[f"{level}.{name}"])
            assert f"skip_modules.{level}.{name}" in ticket["copied_whole"]
        for i, j, op in WEIGHTED.edges():
            for index, kind in OP_CONVS.get(op, ()):
                key = f"{level}.edges.{i}_{j}.{index}.weight"
                source = init[f"{level}.edges.{i}_{j}.ops.{op}.{index}.weight"]
                target = cells[key]
                q = source.shape[0]
                assert target.shape[0] == K * q == 8
                mask = _copied_mask(kind, target, q)
                assert torch.equal(target[mask].reshape(source.shape), source), key
                assert torch.equal(target[~mask], drawn[key][~mask]), key   # the rest keeps its draw
                expected_slice = {"dw": f"[:{q}, :1, :{source.shape[2]}, :{source.shape[3]}]",
                                  "pw": f"[:{q}, :{q}, :1, :1]", "out": f"[::{K}, :{q}, :1, :1]"}[kind]
                assert part[f"skip_modules.{key}"]["slice"] == expected_slice
            for index in {"sep_conv_3x3": (3, 7), "sep_conv_5x5": (3, 7)}.get(op, (3,) if "dil" in op else ()):
                assert torch.equal(cells[f"{level}.edges.{i}_{j}.{index}.weight"], torch.ones(8))
                assert torch.equal(cells[f"{level}.edges.{i}_{j}.{index}.bias"], torch.zeros(8))
    assert not ticket["drawn"]  # every tensor with weights has a supernet counterpart


@pytest.mark.parametrize("op", ["sep_conv_3x3", "dil_conv_5x5"])
def test_ticket_op_computes_what_the_supernets_edge_computed_where_it_wrote(op):
    """With its fresh entries zeroed, a discrete op reset to the ticket computes, at the node
    channels the supernet's edge wrote its op's output to, exactly that output. The supernet side
    is its own MixedEdge with all weight on the op (so the shuffle is the module's, not ours)."""
    genotype = Genotype((((0, op), (1, op)), ((0, op), (1, op)), ((0, op), (1, op)), ((0, op), (1, op))),
                        partial_channels=K)
    torch.manual_seed(4)
    supernet = SupernetCell(8, 8, ArchitectureParameters(), groups=K)
    init = {f"0.{k}": v.clone() for k, v in supernet.state_dict().items()}
    model = _Host([DiscreteCell(8, 8, genotype)])
    ticket = lottery_ticket_reset(model, init, genotype)
    cell = model.skip_modules[0]
    with torch.no_grad():  # keep only the ticket's entries
        for entry in ticket["copied_in_part"]:
            if ".edges.0_2." not in entry["tensor"]:
                continue
            tensor = cell.get_parameter(entry["tensor"].removeprefix("skip_modules.0."))
            source = init[entry["from"].removeprefix("skip_modules.")]
            kept = torch.zeros_like(tensor)
            index = entry["tensor"].split(".")[-2]
            mask = _copied_mask({"1": "dw", "5": "dw", "2": "pw" if "sep" in op else "out"}.get(index, "out"),
                                tensor, source.shape[0])
            kept[mask] = tensor[mask]
            tensor.copy_(kept)
    edge: MixedEdge = supernet.edges["0_2"]
    weights = torch.zeros(N_OPS)
    weights[OP_INDEX[op]] = 1.0
    x = torch.randn(2, 8, 6, 6)
    edge.train(), cell.train()
    expected = edge(x, weights)
    got = cell.edges["0_2"](x)
    rows = [m * K for m in range(8 // K)]
    torch.testing.assert_close(got[:, rows], expected[:, rows])
    others = [c for c in range(8) if c not in rows]
    assert torch.count_nonzero(got[:, others]) == 0   # the fresh rows, zeroed, write nothing
    # the supernet bypassed the other channels: node channel m * K + g holds input channel 2 g + m
    torch.testing.assert_close(expected[:, others], x[:, [2, 4, 6, 3, 5, 7]])


def test_ticket_copied_and_fresh_entries_and_iacs_cells_have_one_scale():
    """Pointwise convs: kaiming with the supernet op's fan-in C/K = 16 gives std gain / 4 for the
    copied entries, the fresh ones and a fresh IAC cell alike (the old leading-block copy into a
    fan-in-64 draw had copied entries twice the fresh ones' std). Depthwise: fan-in k x k in both."""
    supernet, model, init, drawn, ticket = _ticket(64, 16)
    cells = model.skip_modules.state_dict()
    torch.manual_seed(3)
    iac = DiscreteCell(64, 16, WEIGHTED).state_dict()
    copied, fresh, fresh_iac = [], [], []
    for i, j, op in WEIGHTED.edges():
        for index, kind in OP_CONVS.get(op, ()):
            if kind == "dw":
                continue
            key = f"edges.{i}_{j}.{index}.weight"
            target = cells[f"0.{key}"]
            mask = _copied_mask(kind, target, 64 // K)
            copied.append(target[mask])
            fresh.append(target[~mask])
            fresh_iac.append(iac[key].reshape(-1))
    expected = KAIMING_GAIN / math.sqrt(64 // K)
    copied_std, fresh_std, iac_std = (torch.cat(v).std().item() for v in (copied, fresh, fresh_iac))
    assert torch.cat(copied).numel() == 9 * 16 * 16 and torch.cat(fresh).numel() == 9 * (64 * 64 - 256)
    assert copied_std == pytest.approx(expected, rel=0.06)
    assert fresh_std == pytest.approx(expected, rel=0.03) and iac_std == pytest.approx(expected, rel=0.03)
    assert 0.92 < copied_std / fresh_std < 1.08
    # depthwise kernels: one fan-in in both cells
    dw = cells["0.edges.0_2.1.weight"]                 # sep_conv_3x3's first depthwise kernel [64, 1, 3, 3]
    assert dw.std().item() == pytest.approx(KAIMING_GAIN / 3, rel=0.1)
