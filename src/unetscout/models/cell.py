"""Implantable Adaptive Cells (docs/methods.md#cell): operations, PC-DARTS mixed edge, supernet, discrete cell.

A cell is a skip module (`cell(skip, up)` returns skip's shape). Nodes 0 and 1 are 1x1
convs of `skip` and `up` to C channels; nodes 2..5 each read every earlier node, which gives
14 edges, numbered node by node (`EDGES[e] = (input node, node)`); the output is a 1x1 conv
of the concatenated nodes 2..5 back to skip's channels.

The architecture parameters (alpha [14, 7] per edge and op, beta [14] per edge) live in one
`ArchitectureParameters` module shared by every skip level (one genotype for all levels)
and held outside the cells' registered submodules, so `model.parameters()` never yields them
and no optimiser mixes them up with the cell weights.

State-dict names are chosen so the same role has the same name in both cells: the edge
from node i to node j is `edges.{i}_{j}`; in the supernet its op `o` is `edges.{i}_{j}.ops.{o}`,
in the discrete cell the chosen op is `edges.{i}_{j}` itself (see `supernet_key`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from unetscout.models.genotype import N_INPUT_NODES, N_INTERMEDIATE_NODES, Genotype
from unetscout.models.ops import N_OPS, OP_INDEX, OP_NAMES, OPS

LEAKY_SLOPE = 1e-2  # conv init as the backbone's (kaiming normal, a = 0.01, zero bias)


# (input node, node) of every edge, node by node: 2 + 3 + 4 + 5 = 14.
EDGES: tuple[tuple[int, int], ...] = tuple(
    (i, j) for j in range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES) for i in range(j))
N_EDGES = len(EDGES)


def edge_name(i: int, j: int) -> str:
    return f"{i}_{j}"


def edges_into(node: int) -> list[int]:
    """Edge indices whose target is `node`, in input-node order."""
    return [e for e, (_, j) in enumerate(EDGES) if j == node]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: [g groups of c/g] -> interleaved, so the next edge's partial
    channels mix processed and bypassed ones."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def cap_weights(weights: torch.Tensor, cap: float) -> torch.Tensor:
    """The cap (docs/methods.md#edge-weights) on one node's edge weights (sum 1): if the largest exceeds `cap`, it
    becomes `cap` and the others are rescaled proportionally to sum `1 - cap`."""
    largest, index = weights.max(dim=0)
    if float(largest.detach()) <= cap:
        return weights
    scaled = weights * ((1 - cap) / (1 - largest))
    is_largest = torch.arange(len(weights), device=weights.device) == index
    return torch.where(is_largest, torch.full_like(weights, cap), scaled)


def capped_edge_weights(beta: torch.Tensor, cap: float) -> torch.Tensor:
    """w~ [14]: per node, softmax over its incoming edges of tanh(beta), then capped."""
    out = torch.empty_like(beta)
    for node in range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES):
        idx = edges_into(node)
        out[idx] = cap_weights(torch.softmax(torch.tanh(beta[idx]), dim=0), cap)
    return out


def op_weights(alpha: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """[14, 7]: per edge softmax of alpha over its active ops; exactly 0 for pruned ops."""
    return torch.softmax(alpha.masked_fill(~active, float("-inf")), dim=1)


def _init_convs(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def cell_channels(skip_channels: int, groups: int) -> int:
    """C: skip channels rounded up to a multiple of the partial-channel factor K."""
    return -(-skip_channels // groups) * groups


class ArchitectureParameters(nn.Module):
    """alpha [14, 7], beta [14] (start at zero) and the active-op mask [14, 7] (a buffer, so
    it travels with the state); one instance is shared by all skip levels of a supernet."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(N_EDGES, N_OPS))
        self.beta = nn.Parameter(torch.zeros(N_EDGES))
        self.register_buffer("active", torch.ones(N_EDGES, N_OPS, dtype=torch.bool))

    def op_weights(self) -> torch.Tensor:
        return op_weights(self.alpha, self.active)

    def edge_weights(self, cap: float) -> torch.Tensor:
        return capped_edge_weights(self.beta, cap)

    def active_ops(self, edge: int) -> list[str]:
        return [OP_NAMES[o] for o in torch.flatnonzero(self.active[edge]).tolist()]


class MixedEdge(nn.Module):
    """PC-DARTS edge: the ops see only the first C/K channels, the rest bypass them; the
    weighted sum and the bypass are concatenated and channel-shuffled."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"mixed edge: {channels} channels are not divisible by K = {groups}")
        self.groups = groups
        part = channels // groups
        ops = {}
        for name, build in OPS.items():
            op = build(part, False)
            if "pool" in name:  # PC-DARTS normalises pool outputs in the search
                op = nn.Sequential(op, nn.BatchNorm2d(part, affine=False))
            ops[name] = op
        self.ops = nn.ModuleDict(ops)

    def remove(self, name: str) -> None:
        """Delete a pruned op: it is no longer computed, stored or optimised."""
        del self.ops[name]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`weights` [7] in OP_NAMES order (pruned ops' entries are ignored)."""
        part = x.shape[1] // self.groups
        x_a, x_b = x[:, :part], x[:, part:]
        y = sum(weights[OP_INDEX[name]] * op(x_a) for name, op in self.ops.items())
        return channel_shuffle(torch.cat((y, x_b), dim=1), self.groups)


class _CellBase(nn.Module):
    """The cell's fixed parts: input projections, output projection, optional residual."""

    def __init__(self, skip_channels: int, up_channels: int, channels: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.preprocess_skip = nn.Conv2d(skip_channels, channels, 1)
        self.preprocess_up = nn.Conv2d(up_channels, channels, 1)
        self.output = nn.Conv2d(N_INTERMEDIATE_NODES * channels, skip_channels, 1)

    def _init(self) -> None:
        _init_convs(self)
        if self.residual:  # a fresh residual cell is exactly the identity skip it replaces
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def _finish(self, skip: torch.Tensor, nodes: list[torch.Tensor]) -> torch.Tensor:
        out = self.output(torch.cat(nodes[N_INPUT_NODES:], dim=1))
        return skip + out if self.residual else out


class SupernetCell(_CellBase):
    """The continuous cell searched over: every edge a MixedEdge, node j =
    sum_i w~_{i->j} * mixed_{i->j}(node_i)."""

    def __init__(self, skip_channels: int, up_channels: int, arch: ArchitectureParameters,
                 groups: int = 4, edge_cap: float = 0.5, residual: bool = False):
        channels = cell_channels(skip_channels, groups)
        super().__init__(skip_channels, up_channels, channels, residual)
        self.edge_cap = edge_cap
        self.edges = nn.ModuleDict({edge_name(i, j): MixedEdge(channels, groups) for i, j in EDGES})
        self._init()
        # Kept out of the module tree on purpose: see the module docstring.
        self.__dict__["arch"] = arch

    def remove_op(self, edge: int, name: str) -> None:
        self.edges[edge_name(*EDGES[edge])].remove(name)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        arch = self.__dict__["arch"]
        alphas, betas = arch.op_weights(), arch.edge_weights(self.edge_cap)
        nodes = [self.preprocess_skip(skip), self.preprocess_up(up)]
        for j in range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES):
            nodes.append(sum(betas[e] * self.edges[edge_name(i, j)](nodes[i], alphas[e])
                             for e, (i, _) in ((e, EDGES[e]) for e in edges_into(j))))
        return self._finish(skip, nodes)


class DiscreteCell(_CellBase):
    """The cell a genotype describes, full channels and affine BN: node j is the plain sum
    of its two chosen ops. Its width C is the supernet's (skip channels rounded up to a
    multiple of the search's K), so the 1x1 convs match the supernet's shapes.

    Every tensor is drawn from the distribution its supernet counterpart was drawn from
    (docs/methods.md#lottery-ticket): an op's pointwise convs have fan-in C here but C/K in
    the supernet's partial-channel edge, so they are scaled by sqrt(K) after kaiming's draw.
    A lottery ticket's copied entries and the fresh ones are then one sample of one
    distribution, and IAC's fresh cells another sample of it. Each pointwise conv is followed
    by batch norm, so the factor does not change what an op computes at the start."""

    def __init__(self, skip_channels: int, up_channels: int, genotype: Genotype):
        channels = cell_channels(skip_channels, genotype.partial_channels)
        super().__init__(skip_channels, up_channels, channels, genotype.residual)
        self.genotype = genotype
        self.edges = nn.ModuleDict({edge_name(i, j): OPS[op](channels, True) for i, j, op in genotype.edges()})
        self._init()
        with torch.no_grad():
            for layer in self.edges.modules():
                if isinstance(layer, nn.Conv2d) and layer.groups == 1:  # depthwise fan-in (k x k) is the same
                    layer.weight.mul_(math.sqrt(genotype.partial_channels))

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        nodes = [self.preprocess_skip(skip), self.preprocess_up(up)]
        for k, choices in enumerate(self.genotype.nodes):
            j = k + N_INPUT_NODES
            nodes.append(sum(self.edges[edge_name(i, j)](nodes[i]) for i, _ in choices))
        return self._finish(skip, nodes)


def supernet_key(discrete_key: str, genotype: Genotype) -> str:
    """The supernet state-dict name of the tensor with the same role as a discrete-cell one:
    `edges.{i}_{j}.rest` -> `edges.{i}_{j}.ops.{op}.rest`; projections keep their names."""
    parts = discrete_key.split(".")
    if parts[0] != "edges":
        return discrete_key
    ops = {edge_name(i, j): op for i, j, op in genotype.edges()}
    return ".".join([parts[0], parts[1], "ops", ops[parts[1]], *parts[2:]])


def discrete_cell_factory(genotype: Genotype) -> Callable[[int, int], nn.Module]:
    """A skip factory for `UNet.replace_skips`: the genotype's cell at every level."""
    def build(skip_channels: int, up_channels: int) -> nn.Module:
        return DiscreteCell(skip_channels, up_channels, genotype)
    return build
