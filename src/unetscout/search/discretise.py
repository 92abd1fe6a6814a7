"""From continuous architecture weights to a genotype (docs/methods.md#discretisation).

One home for the rule, used by the search at its end and by the analysis figures at every
logged epoch (numpy in, so a figure needs no torch model).
"""

from __future__ import annotations

import numpy as np

from unetscout.models.cell import EDGES, N_EDGES, edges_into
from unetscout.models.ops import OP_NAMES
from unetscout.models.genotype import INPUTS_PER_NODE, N_INPUT_NODES, N_INTERMEDIATE_NODES, Genotype


def discretise_weights(alpha: np.ndarray, edge_weights: np.ndarray, active: np.ndarray,
                       residual: bool = False, partial_channels: int = 4) -> Genotype:
    """Per edge the active op with the largest alpha; per node the 2 incoming edges with the
    largest capped weight w~ (ties: the lower input node).

    `alpha` [14, 7] logits, `edge_weights` [14] capped weights w~, `active` [14, 7] bool.
    """
    alpha = np.where(np.asarray(active, dtype=bool), np.asarray(alpha, dtype=np.float64), -np.inf)
    weights = np.asarray(edge_weights, dtype=np.float64)
    if alpha.shape != (N_EDGES, len(OP_NAMES)) or weights.shape != (N_EDGES,):
        raise ValueError(f"discretise: expected alpha [{N_EDGES}, {len(OP_NAMES)}] and edge weights [{N_EDGES}], "
                         f"got {alpha.shape} and {weights.shape}")
    nodes = []
    for node in range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES):
        # sorted() is stable, so equal weights keep input-node order.
        kept = sorted(edges_into(node), key=lambda e: -weights[e])[:INPUTS_PER_NODE]
        nodes.append(tuple(sorted((EDGES[e][0], OP_NAMES[int(np.argmax(alpha[e]))]) for e in kept)))
    return Genotype(tuple(nodes), residual, partial_channels)
