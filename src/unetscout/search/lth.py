"""IAC-LTH search (docs/methods.md#iac-lth-search): single-level updates and per-edge pruning by the
Jensen-Shannon drift of the op distribution.

Per step one batch of the whole train split, one backward pass, then the SGD step on the
cell weights and (after warm-up) the Adam step on (alpha, beta) together; an epoch is
N = ceil(|train| / B) steps, rounded up to even (as IAC's, search/supernet.py). After every post-warm-up epoch each edge compares its op
distribution with the previous epoch's: a stable edge (JS < tau_e) loses its outlier ops (or
its weakest one), a moving edge raises its tau by gamma. Pruned ops are deleted from every
cell, so later epochs cost less. The search stops when every edge has one op, or at the cap.

The threshold (`tau_rule`):
- `relative` (default, our rule): the first search epoch measures each edge's own drift
  JS_e^ref (nothing is tested or pruned then: "calibration") and tau_e starts at
  tau0 x JS_e^ref. JS per epoch grows with the number of Adam steps in an epoch, and so
  does JS^ref: the test compares an edge's drift with its own early drift, whatever the
  dataset size. A reference below the JS smoothing constant is raised to it.
- `absolute` (the paper's): tau_e starts at tau0_absolute nats.

Every test is logged per edge ("stable", "unstable"; "calibration", "single" = one op left,
"warmup"). A search in which no edge was ever judged unstable is floor-bound: it stopped as
early as pruning one op per epoch allows, and the summary says so.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from unetscout.models.cell import EDGES, N_EDGES
from unetscout.models.ops import OP_NAMES
from unetscout.search.js import edge_drift, prune_edge
from unetscout.search.supernet import TRAIN_STREAM, Batch, SupernetSearch
from unetscout.train.sampler import SliceSampler


class LTHSearch(SupernetSearch):
    method = "iac_lth"
    batches_per_step = 1

    def _samplers(self) -> dict[str, SliceSampler]:
        return {"train": self._sampler(self.store, TRAIN_STREAM)}

    def step(self, draw: Callable[[str], Batch], searching: bool) -> dict[str, torch.Tensor]:
        loss = self.loss(draw("train"))
        self.backward(loss)
        self.cell_optimizer.step()
        if searching:
            self.arch_optimizer.step()
        return {"loss": loss.detach()}

    def after_epoch(self, snapshot: dict[str, Any], searching: bool) -> dict[str, Any]:
        c = self.config
        active = snapshot["active"]
        if not searching:
            return {"js": None, "tau": None, "js_reference": None, "decision": ["warmup"] * N_EDGES, "pruned": []}
        js = edge_drift(snapshot["p"], self.previous_p, active, c.js_smoothing)
        single = active.sum(axis=1) <= 1
        if c.tau_rule == "relative" and self.js_reference is None:
            self.js_reference = js.copy()
            self.tau = c.tau0 * np.maximum(js, c.js_smoothing)
            return {"js": js.tolist(), "tau": None, "js_reference": self.js_reference.tolist(),
                    "decision": ["single" if one else "calibration" for one in single], "pruned": []}
        tau_used = self.tau.tolist()
        pruned, decisions = [], []
        for e in range(N_EDGES):
            if single[e]:
                decisions.append("single")
                continue
            decision = prune_edge(snapshot["importance"][e], active[e], js[e], self.tau[e], c.gamma,
                                  c.prune_std_factor)
            decisions.append("stable" if decision.prune else "unstable")
            self.tau[e] = decision.tau
            pruned += [(e, o) for o in decision.prune]
        if pruned:
            with torch.no_grad():
                for e, o in pruned:
                    self.arch.active[e, o] = False
            self.remove_pruned_ops()
        return {"js": js.tolist(), "tau": tau_used,
                "js_reference": None if self.js_reference is None else self.js_reference.tolist(),
                "decision": decisions,
                "pruned": [[f"{EDGES[e][0]}_{EDGES[e][1]}", OP_NAMES[o]] for e, o in pruned]}

    def finished(self) -> str | None:
        if bool((self.arch.active.sum(dim=1) == 1).all()):
            return "every edge has one op"
        return super().finished()

    def summary_fields(self) -> dict[str, Any]:
        unstable = sum(row["decision"].count("unstable") for row in self.log)
        tested = sum(row["decision"].count("stable") + row["decision"].count("unstable") for row in self.log)
        return {"floor_bound": tested > 0 and unstable == 0, "unstable_decisions": unstable,
                "stable_decisions": tested - unstable, "stability_rule": self.config.tau_rule}
