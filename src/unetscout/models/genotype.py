"""The searched cell as a tiny immutable record (DARTS' `Genotype`), saved as JSON.

A genotype lists, for each intermediate node 2..5 of the cell, the two `(input node, op)`
pairs it sums (docs/methods.md#discretisation). One genotype is shared by every skip level;
each level builds its own weights from it. `residual` records how the cell is wired to the
skip it replaces (`skip + cell(...)`, our addition, off in the paper) and `partial_channels`
the K of the search, which sets the cell width C (skip channels rounded up to a multiple of
K, as in the supernet), so a saved genotype rebuilds exactly the cell that was searched and
the lottery ticket's 1x1 convs have the supernet's shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unetscout.errors import UnetscoutError, file_error
from unetscout.models.ops import OPS

N_INPUT_NODES = 2          # node 0 = skip, node 1 = up
N_INTERMEDIATE_NODES = 4   # nodes 2..5
INPUTS_PER_NODE = 2

Choice = tuple[int, str]   # (input node, operation name)


@dataclass(frozen=True)
class Genotype:
    """`nodes[k]` are the two (input node, op) choices of node k + 2, input nodes ascending."""

    nodes: tuple[tuple[Choice, ...], ...]
    residual: bool = False
    partial_channels: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.partial_channels, bool) or not isinstance(self.partial_channels, int) \
                or self.partial_channels < 1:
            raise UnetscoutError(f"genotype 'partial_channels' must be a positive integer, got {self.partial_channels!r}")
        if len(self.nodes) != N_INTERMEDIATE_NODES:
            raise UnetscoutError(f"a genotype has {N_INTERMEDIATE_NODES} intermediate nodes, got {len(self.nodes)}")
        for k, choices in enumerate(self.nodes):
            node = k + N_INPUT_NODES
            if len(choices) != INPUTS_PER_NODE:
                raise UnetscoutError(f"genotype node {node} needs {INPUTS_PER_NODE} inputs, got {len(choices)}")
            inputs = [i for i, _ in choices]
            if len(set(inputs)) != len(inputs):
                raise UnetscoutError(f"genotype node {node} takes node {inputs[0]} twice")
            for i, op in choices:
                if not 0 <= i < node:
                    raise UnetscoutError(f"genotype node {node} cannot take node {i} (only nodes 0..{node - 1})")
                if op not in OPS:
                    raise UnetscoutError(f"genotype node {node}: unknown operation {op!r}; "
                                         f"choose one of {', '.join(OPS)}")

    def edges(self) -> list[tuple[int, int, str]]:
        """(input node, node, op) of every kept edge, node by node."""
        return [(i, k + N_INPUT_NODES, op) for k, choices in enumerate(self.nodes) for i, op in choices]

    def to_dict(self) -> dict:
        return {"nodes": [[[i, op] for i, op in choices] for choices in self.nodes], "residual": self.residual,
                "partial_channels": self.partial_channels}

    @classmethod
    def from_dict(cls, data: dict) -> "Genotype":
        if not isinstance(data, dict) or "nodes" not in data:
            raise UnetscoutError("a genotype is a JSON object with a 'nodes' list")
        unknown = set(data) - {"nodes", "residual", "partial_channels"}
        if unknown:
            raise UnetscoutError(f"genotype has unknown keys: {', '.join(sorted(unknown))}")
        try:
            nodes = tuple(tuple((int(i), str(op)) for i, op in choices) for choices in data["nodes"])
        except (TypeError, ValueError):
            raise UnetscoutError("genotype 'nodes' must be a list of [[input node, op], [input node, op]] "
                                 "per intermediate node") from None
        residual = data.get("residual", False)
        if not isinstance(residual, bool):
            raise UnetscoutError(f"genotype 'residual' must be true or false, got {residual!r}")
        return cls(nodes, residual, data.get("partial_channels", 4))

    def to_json(self) -> str:
        """Compact, key-ordered JSON: the form stored in `ModelSpec.genotype`."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise UnetscoutError(f"genotype is not valid JSON ({err.msg})") from None

    def save(self, path: str | Path) -> None:
        from unetscout.atomic import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Genotype":
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise file_error(path, "genotype not found; run `unetscout search` first") from None
        try:
            return cls.from_json(text)
        except UnetscoutError as err:
            raise file_error(path, str(err)) from None
