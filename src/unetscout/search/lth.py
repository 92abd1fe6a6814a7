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

Whatever `tau_rule` the search runs, an `AbsoluteRuleShadow` replays the paper's absolute rule
on the search's own measurements (docs/methods.md#stopping-and-floor-bound-runs), so the summary
also says when the paper's rule would have stopped this search (`absolute_rule_stop_epoch`) and
whether it would have been floor-bound, without a second search.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch

from unetscout.data.slice_store import SliceStore
from unetscout.models.cell import EDGES, N_EDGES, edge_name
from unetscout.models.ops import N_OPS, OP_NAMES
from unetscout.search.js import edge_drift, prune_edge
from unetscout.search.supernet import TRAIN_STREAM, Batch, SupernetSearch

ONE_OP_LEFT, EPOCH_CAP = "every edge has one op", "epoch cap"


def _pruned_names(pruned: list[tuple[int, int]]) -> list[list[str]]:
    """(edge, op) indices as the log names them: [["0_2", "sep_conv_3x3"], ...]."""
    return [[edge_name(*EDGES[e]), OP_NAMES[o]] for e, o in pruned]


def _warmup_entry() -> dict[str, Any]:
    """The shadow's log entry of an epoch without a test (warm-up)."""
    return {"tau": None, "decision": ["warmup"] * N_EDGES, "pruned": []}


class AbsoluteRuleShadow:
    """The paper's absolute stability rule, replayed on the measurements of the search that runs.

    It keeps its own threshold per edge (tau0_absolute at the start, x gamma whenever it judges
    the edge unstable), its own active-op mask, its own decision counts and the epoch at which
    it stopped (every edge of its mask down to one op). It does not run the supernet: for every
    search epoch it is handed the search's per-edge JS drift and its importances [14, 7], exactly
    as the search measured them (before the search prunes in that epoch), and decides with the
    same `prune_edge` rule. What it therefore sees where its mask and the search's differ:
    - its edge is judged on the search's JS of that edge, which runs over the ops the *search*
      still has (an op only the shadow pruned is still in that JS; an op only the search pruned
      is not);
    - an op the search has pruned but the shadow kept has importance 0, so it is the shadow's
      weakest op on that edge (pruned first once the edge is stable) and enters its mean and std;
    - an edge the search has down to one op has JS 0, so the shadow judges it stable every epoch.
    It cannot observe the trajectory the paper's rule would have produced (pruning changes the
    supernet, and so the later drift): it is the paper's decision rule on this search's drift.
    """

    def __init__(self, tau0: float, gamma: float, std_factor: float):
        self.gamma, self.std_factor = gamma, std_factor
        self.tau = np.full(N_EDGES, float(tau0))
        self.active = np.ones((N_EDGES, N_OPS), dtype=bool)
        self.stop_epoch: int | None = None
        self.stable, self.unstable = 0, 0

    @property
    def done(self) -> bool:
        return bool((self.active.sum(axis=1) <= 1).all())

    def observe(self, epoch: int, js: np.ndarray, importances: np.ndarray) -> dict[str, Any]:
        """Test and prune after search epoch `epoch` (1-based) on the search's `js` [14] and
        `importances` [14, 7]; the log entry {tau tested against, decision per edge, pruned}."""
        tau_used = self.tau.tolist()
        decisions, pruned = [], []
        for e in range(N_EDGES):
            if self.active[e].sum() <= 1:
                decisions.append("single")
                continue
            decision = prune_edge(importances[e], self.active[e], float(js[e]), float(self.tau[e]), self.gamma,
                                  self.std_factor)
            decisions.append("stable" if decision.prune else "unstable")
            self.tau[e] = decision.tau
            pruned += [(e, o) for o in decision.prune]
        for e, o in pruned:
            self.active[e, o] = False
        self.stable += decisions.count("stable")
        self.unstable += decisions.count("unstable")
        if self.stop_epoch is None and self.done:
            self.stop_epoch = epoch
        return {"tau": tau_used, "decision": decisions, "pruned": _pruned_names(pruned)}

    def completed(self, epoch: int, cap: int, importances: np.ndarray) -> tuple["AbsoluteRuleShadow", int]:
        """A copy carried on after the search stopped at `epoch` with one op on every edge: each
        further epoch the search would measure JS 0 on every edge (one op each) and the importances
        it ends with (0 for every op it pruned), so the copy is fed exactly those up to `cap` or
        its own stop. Returns the copy and how many epochs it was carried on."""
        shadow, start = copy.deepcopy(self), epoch
        while shadow.stop_epoch is None and epoch < cap:
            epoch += 1
            shadow.observe(epoch, np.zeros(N_EDGES), importances)
        return shadow, epoch - start

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau.tolist(), "active": self.active.tolist(), "stop_epoch": self.stop_epoch,
                "stable": self.stable, "unstable": self.unstable}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = np.asarray(state["tau"], dtype=np.float64)
        self.active = np.asarray(state["active"], dtype=bool)
        self.stop_epoch = state["stop_epoch"]
        self.stable, self.unstable = int(state["stable"]), int(state["unstable"])


def replay_absolute_rule(log: list[dict[str, Any]], tau0: float, gamma: float,
                         std_factor: float) -> AbsoluteRuleShadow:
    """The shadow rebuilt from a search log's search epochs (their `js` and `importance`, exact
    float64 in JSON and in state.pt), filling in each row's `absolute_rule` entry: for a search
    resumed from a state.pt written before the shadow existed. Bit-identical to having run it."""
    shadow = AbsoluteRuleShadow(tau0, gamma, std_factor)
    for row in log:
        if row.get("phase") != "search" or row.get("js") is None:
            row["absolute_rule"] = _warmup_entry()
            continue
        importances = np.asarray(row["importance"], dtype=np.float64).reshape(N_EDGES, N_OPS)
        row["absolute_rule"] = shadow.observe(int(row["epoch"]), np.asarray(row["js"], dtype=np.float64),
                                              importances)
    return shadow


class LTHSearch(SupernetSearch):
    method = "iac_lth"
    batches_per_step = 1

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.shadow = self._new_shadow()

    def _new_shadow(self) -> AbsoluteRuleShadow:
        c = self.config
        return AbsoluteRuleShadow(c.tau0_absolute, c.gamma, c.prune_std_factor)

    @staticmethod
    def streams(store: SliceStore) -> dict[str, tuple[SliceStore, int]]:
        return {"train": (store, TRAIN_STREAM)}

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
            return {"js": None, "tau": None, "js_reference": None, "decision": ["warmup"] * N_EDGES, "pruned": [],
                    "absolute_rule": _warmup_entry()}
        js = edge_drift(snapshot["p"], self.previous_p, active, c.js_smoothing)
        # the paper's rule on this epoch's measurements, before the search prunes anything
        shadow = self.shadow.observe(self.epoch + 1, js, snapshot["importance"])
        single = active.sum(axis=1) <= 1
        if c.tau_rule == "relative" and self.js_reference is None:
            self.js_reference = js.copy()
            self.tau = c.tau0 * np.maximum(js, c.js_smoothing)
            return {"js": js.tolist(), "tau": None, "js_reference": self.js_reference.tolist(),
                    "decision": ["single" if one else "calibration" for one in single], "pruned": [],
                    "absolute_rule": shadow}
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
                "pruned": _pruned_names(pruned),
                "absolute_rule": shadow}

    def finished(self) -> str | None:
        if bool((self.arch.active.sum(dim=1) == 1).all()):
            return ONE_OP_LEFT
        return super().finished()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "absolute_rule": self.shadow.state_dict()}

    def resume(self, state: dict[str, Any]) -> None:
        super().resume(state)
        if state.get("absolute_rule") is not None:
            self.shadow = self._new_shadow()
            self.shadow.load_state_dict(state["absolute_rule"])
        else:  # a state.pt from before the shadow: replay it from the log
            c = self.config
            self.shadow = replay_absolute_rule(self.log, c.tau0_absolute, c.gamma, c.prune_std_factor)

    def absolute_rule_fields(self) -> dict[str, Any]:
        """The shadow's entries of search_summary.json (docs/methods.md#stopping-and-floor-bound-runs).
        If the search stopped with one op on every edge before the shadow did, the shadow is carried
        on with JS 0 and the final importances (AbsoluteRuleShadow.completed)."""
        shadow, carried = self.shadow, 0
        if shadow.stop_epoch is None and bool((self.arch.active.sum(dim=1) == 1).all()):
            shadow, carried = shadow.completed(self.epoch, self.config.epochs, self._snapshot()["importance"])
        tested = shadow.stable + shadow.unstable
        stopped = shadow.stop_epoch is not None
        return {"absolute_rule_stop_epoch": shadow.stop_epoch,
                "absolute_rule_stopped_because": ONE_OP_LEFT if stopped else EPOCH_CAP,
                "absolute_rule_epochs_after_search": carried if stopped else 0,
                "absolute_rule_floor_bound": tested > 0 and shadow.unstable == 0,
                "absolute_rule_unstable_decisions": shadow.unstable,
                "absolute_rule_stable_decisions": shadow.stable}

    def summary_fields(self) -> dict[str, Any]:
        unstable = sum(row["decision"].count("unstable") for row in self.log)
        tested = sum(row["decision"].count("stable") + row["decision"].count("unstable") for row in self.log)
        return {"floor_bound": tested > 0 and unstable == 0, "unstable_decisions": unstable,
                "stable_decisions": tested - unstable, "stability_rule": self.config.tau_rule,
                **self.absolute_rule_fields()}
