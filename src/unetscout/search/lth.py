"""IAC-LTH search (METHODS §4): single-level updates and per-edge pruning by the
Jensen-Shannon drift of the op distribution.

Per step one batch of the whole train split, one backward pass, then the SGD step on the
cell weights and (after warm-up) the Adam step on (alpha, beta) together. After every
post-warm-up epoch each edge compares its op distribution with the previous epoch's; a
stable edge (JS < tau_e) loses its outlier ops (or its weakest one), a moving edge raises
its tau by gamma. Pruned ops are deleted from every cell, so later epochs cost less. The
search stops when every edge has one op, or at the epoch cap.
"""

from __future__ import annotations

from typing import Any

import torch

from unetscout.models.cell import EDGES, N_EDGES, OP_NAMES
from unetscout.search.iac import SupernetSearch
from unetscout.search.js import edge_drift, prune_edge
from unetscout.train.sampler import SliceSampler


class LTHSearch(SupernetSearch):
    method = "iac_lth"

    def _samplers(self) -> dict[str, SliceSampler]:
        return {"train": self._sampler(self.store, 1)}

    def step(self, batches, searching):
        loss = self.loss(*batches["train"])
        self.backward(loss)
        self.cell_optimizer.step()
        if searching:
            self.arch_optimizer.step()
        return {"loss": loss.detach()}

    def after_epoch(self, snapshot: dict[str, Any], searching: bool) -> dict[str, Any]:
        c = self.config
        active = snapshot["active"]
        js = edge_drift(snapshot["p"], self.previous_p, active, c.js_smoothing)
        if not searching:
            return {"js": None, "tau": self.tau.tolist(), "pruned": []}
        tau_used = self.tau.tolist()
        pruned = []
        for e in range(N_EDGES):
            decision = prune_edge(snapshot["importance"][e], active[e], js[e], self.tau[e], c.gamma,
                                  c.prune_std_factor)
            self.tau[e] = decision.tau
            pruned += [(e, o) for o in decision.prune]
        if pruned:
            with torch.no_grad():
                for e, o in pruned:
                    self.arch.active[e, o] = False
            self.remove_pruned_ops()
        return {"js": js.tolist(), "tau": tau_used,
                "pruned": [[f"{EDGES[e][0]}_{EDGES[e][1]}", OP_NAMES[o]] for e, o in pruned]}

    def finished(self) -> str | None:
        if bool((self.arch.active.sum(dim=1) == 1).all()):
            return "every edge has one op"
        return super().finished()
