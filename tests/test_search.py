"""IAC / IAC-LTH search: schedule, JS, pruning rule, discretisation, frozen backbone, pruning,
resume, train-cell (evaluate-able, lottery-ticket reset), figures, CLI."""

from __future__ import annotations

import argparse
import collections
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from test_train import make_store, tiny_config
from unetscout.errors import UnetscoutError
from unetscout.evaluate.predict import predict_split
from unetscout.models.cell import N_EDGES, ArchitectureParameters, SupernetCell, capped_edge_weights
from unetscout.models.ops import N_OPS, OP_NAMES
from unetscout.models.genotype import Genotype
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.search import cli_args, supernet
from unetscout.search.cell_training import cell_training_config
from unetscout.search.config import SearchConfig, load_backbone, resolve_search_config
from unetscout.search.discretise import discretise_weights
from unetscout.search.iac import IACSearch
from unetscout.search.run import random_genotype, run_search
from unetscout.search.supernet import cosine_power_lr, split_search_patients, store_with_train_cases
from unetscout.search.js import edge_drift, js_divergence, prune_edge
from unetscout.search.lth import AbsoluteRuleShadow, LTHSearch, replay_absolute_rule
from unetscout.train import loop
from unetscout.runs import load_checkpoint, save_checkpoint

CASES = (("c0", "p0", "train"), ("c1", "p1", "train"), ("c2", "p2", "train"), ("c3", "p3", "train"),
         ("c4", "p4", "val"), ("c5", "p5", "test"))
SPEC = ModelSpec(backbone="lean", in_channels=2, num_classes=3, image_size=32, width=8)
TINY = {"epochs": "3", "warmup_epochs": "1", "iterations_per_epoch": "2", "batch_size": "4", "num_workers": "0"}
# The paper's absolute rule with a threshold above ln 2 (the largest JS): every edge is stable.
ALWAYS_STABLE = {"tau_rule": "absolute", "tau0_absolute": "1"}


def tiny_search(**extra: str) -> SearchConfig:
    return resolve_search_config({**TINY, **extra})


# -- config, schedule, JS, pruning rule, discretisation ---------------------------------------------

def test_search_config_defaults_are_methods_section_4():
    c = SearchConfig()
    assert (c.epochs, c.warmup_epochs, c.cell_lr, c.cosine_power_base, c.arch_lr, c.batch_size) == \
        (200, 15, 0.01, 10.0, 1e-3, 128)
    assert (c.partial_channels, c.edge_cap, c.prune_std_factor, c.js_smoothing) == (4, 0.5, 2.0, 1e-10)
    # one pass over the data per epoch; our relative stability rule, the paper's kept as an option
    assert c.iterations_per_epoch == 0 and c.tau_rule == "relative" and c.tau0_absolute == 1e-4
    assert c.residual is False


@pytest.mark.parametrize("overrides, words", [
    ({"epoch": "3"}, "unknown search setting 'epoch'"),
    ({"epochs": "x"}, "expected an integer"),
    ({"residual": "maybe"}, "expected true or false"),
    ({"gamma": "0.9"}, "tau never shrinks"),
    ({"warmup_epochs": "200"}, "leaves no search epoch"),
    ({"arch_lr": "inf"}, "finite number"),
    ({"tau0": "0"}, "tau0 must be > 0"),
    ({"tau0": "-1"}, "tau0 must be > 0"),
    ({"tau0_absolute": "0"}, "tau0_absolute must be > 0"),
    ({"tau_rule": "fixed"}, "tau_rule='fixed'"),
])
def test_search_config_errors_are_one_line(overrides, words):
    with pytest.raises(UnetscoutError) as err:
        resolve_search_config(overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_search_config_overrides_convert_types():
    c = resolve_search_config({"residual": "true", "tau0": "0.01", "epochs": "20"})
    assert (c.residual, c.tau0, c.epochs) == (True, 0.01, 20)


def test_cosine_power_annealing_by_hand():
    assert cosine_power_lr(0, 200, 0.01, 1e-4, 10) == pytest.approx(0.01)
    assert cosine_power_lr(200, 200, 0.01, 1e-4, 10) == pytest.approx(1e-4)
    # t = T/2: c = 0.5, p = 10^1.5 = 31.6228, (p - 10) / (100 - 10) = 0.240253
    assert cosine_power_lr(100, 200, 0.01, 1e-4, 10) == pytest.approx(1e-4 + 0.0099 * 0.240253, rel=1e-5)
    lrs = [cosine_power_lr(t, 50, 0.01, 0.0, 10) for t in range(51)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("seed", range(4))
def test_js_matches_scipy_squared(seed):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
    assert js_divergence(p, q, 1e-10) == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-6)
    assert js_divergence(p, p, 1e-10) == pytest.approx(0.0, abs=1e-15)


def test_js_with_a_zero_entry_is_finite():
    assert js_divergence([1.0, 0.0], [0.0, 1.0], 1e-10) == pytest.approx(math.log(2), rel=1e-6)


def test_drift_renormalises_the_previous_distribution_over_active_ops():
    now = np.zeros((N_EDGES, N_OPS))
    now[:] = 1 / N_OPS
    active = np.ones((N_EDGES, N_OPS), dtype=bool)
    active[0, 6] = False
    now[0] = [1 / 6] * 6 + [0]
    before = np.full((N_EDGES, N_OPS), 1 / N_OPS)  # op 6 of edge 0 pruned since: renormalised -> uniform
    drift = edge_drift(now, before, active, 1e-10)
    assert drift == pytest.approx(np.zeros(N_EDGES), abs=1e-12)
    now[1] = [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    drift = edge_drift(now, before, active, 1e-10)
    assert drift[1] == pytest.approx(jensenshannon(now[1], before[1]) ** 2, rel=1e-6)


ALL = np.ones(N_OPS, dtype=bool)


def test_prune_outlier():
    # mean 6/7 = 0.857, population std sqrt(42)/7/sqrt(7) = 0.350, threshold 0.157: only the 0 is below
    importances = np.array([1, 1, 1, 1, 1, 1, 0.0])
    decision = prune_edge(importances, ALL, js=1e-6, tau=1e-4, gamma=1.1, std_factor=2.0)
    assert decision.prune == (6,) and decision.tau == 1e-4


def test_prune_falls_back_to_the_single_lowest():
    importances = np.array([0.20, 0.15, 0.10, 0.18, 0.12, 0.14, 0.11])
    decision = prune_edge(importances, ALL, js=1e-6, tau=1e-4, gamma=1.1, std_factor=2.0)
    assert decision.prune == (2,)


def test_prune_ignores_inactive_ops():
    active = ALL.copy()
    active[[2, 6]] = False
    importances = np.array([0.20, 0.15, 0.0, 0.18, 0.12, 0.14, 0.0])
    assert prune_edge(importances, active, 0.0, 1e-4, 1.1, 2.0).prune == (4,)


def test_prune_never_removes_the_last_op():
    one = np.zeros(N_OPS, dtype=bool)
    one[3] = True
    decision = prune_edge(np.full(N_OPS, 0.1), one, js=0.0, tau=1e-4, gamma=1.1, std_factor=2.0)
    assert decision.prune == () and decision.tau == 1e-4
    two = one.copy()
    two[5] = True
    assert prune_edge(np.full(N_OPS, 0.1), two, 0.0, 1e-4, 1.1, 2.0).prune == (3,)


def test_moving_edge_grows_tau_and_prunes_nothing():
    decision = prune_edge(np.array([1, 1, 1, 1, 1, 1, 0.0]), ALL, js=2e-4, tau=1e-4, gamma=1.1, std_factor=2.0)
    assert decision.prune == () and decision.tau == pytest.approx(1.1e-4)


# -- the paper's absolute rule as a shadow of the search (lth.AbsoluteRuleShadow) -----------------------

def _shadow_epochs():
    """A made-up search, epochs 3-12 after a two-epoch warm-up: (epoch, JS [14], importances [14, 7]).
    Edge 0 drifts 1e-4 (exactly its first tau) then 1.5e-4, edge 1 drifts 5e-4 throughout, every
    other edge 0. Importances are all 1 (so a stable edge loses its lowest-index op), except that
    in epoch 3 op 5 of edge 2 has importance 0, as if the search had pruned it."""
    epochs = []
    for epoch in range(3, 13):
        js = np.zeros(N_EDGES)
        js[0] = 1e-4 if epoch == 3 else 1.5e-4
        js[1] = 5e-4
        importances = np.ones((N_EDGES, N_OPS))
        if epoch == 3:
            importances[2, 5] = 0.0
        epochs.append((epoch, js, importances))
    return epochs


def _edge(e):
    from unetscout.models.cell import EDGES
    return f"{EDGES[e][0]}_{EDGES[e][1]}"


def test_absolute_rule_shadow_by_hand():
    # tau0 1e-4, gamma 2 (so the thresholds are exact doublings), prune factor 2.
    # edge 0: epoch 3 JS = tau = 1e-4 is not < tau: unstable, tau 2e-4; epochs 4-9 stable
    #         (1.5e-4 < 2e-4), one op each (all importances equal: the lowest index): one op left after 9.
    # edge 1: 5e-4 >= 1e-4, 2e-4, 4e-4: unstable in epochs 3-5 (tau 8e-4); stable 6-11: one op after 11.
    # edges 2-13: JS 0, stable from epoch 3; edge 2 loses op 5 first (0 < mean 6/7 - 2 x 0.350 =
    #         0.157, an outlier), the others op 0; one op left after epoch 8.
    # So the shadow stops at epoch 11 with 1 + 3 unstable and 12 x 6 + 6 + 6 stable decisions.
    shadow = AbsoluteRuleShadow(1e-4, 2.0, 2.0)
    logged = {epoch: shadow.observe(epoch, js, importances) for epoch, js, importances in _shadow_epochs()}
    others = list(range(2, N_EDGES))
    assert logged[3]["decision"] == ["unstable", "unstable"] + ["stable"] * 12
    assert logged[3]["tau"] == [1e-4] * N_EDGES
    assert logged[3]["pruned"] == [[_edge(2), OP_NAMES[5]]] + [[_edge(e), OP_NAMES[0]] for e in others[1:]]
    assert logged[4]["decision"] == ["stable", "unstable"] + ["stable"] * 12
    assert logged[4]["pruned"][:2] == [[_edge(0), OP_NAMES[0]], [_edge(2), OP_NAMES[0]]]
    assert logged[5]["tau"][:2] == [2e-4, 4e-4] and logged[5]["decision"][1] == "unstable"
    assert logged[6]["decision"] == ["stable"] * N_EDGES and logged[6]["tau"][1] == 8e-4
    assert logged[8]["decision"] == ["stable"] * N_EDGES
    assert logged[9]["decision"] == ["stable", "stable"] + ["single"] * 12
    assert logged[10]["decision"] == logged[11]["decision"] == ["single", "stable"] + ["single"] * 12
    assert logged[12]["decision"] == ["single"] * N_EDGES and logged[12]["pruned"] == []
    assert shadow.stop_epoch == 11 and shadow.done
    assert (shadow.unstable, shadow.stable) == (4, 84)
    assert shadow.tau.tolist() == [2e-4, 8e-4] + [1e-4] * 12
    assert (shadow.active.sum(axis=1) == 1).all() and shadow.active[:, 6].all()   # ops 0-5 went first


def test_absolute_rule_shadow_is_carried_on_after_the_search_stops():
    # After epoch 4 the shadow has 6 ops on edge 0, 7 on edge 1 and 5 on the others. If the
    # search stopped then with one op per edge (op 3, importance 0.2; its pruned ops 0), every
    # later epoch it would measure JS 0, so every edge is stable and loses one op an epoch (the
    # lowest-index op of importance 0: op 3 stays): 7 - 1 = 6 more epochs, the stop at 4 + 6 = 10.
    shadow = AbsoluteRuleShadow(1e-4, 2.0, 2.0)
    for epoch, js, importances in _shadow_epochs()[:2]:
        shadow.observe(epoch, js, importances)
    assert shadow.active.sum(axis=1).tolist() == [6, 7] + [5] * 12
    final = np.zeros((N_EDGES, N_OPS))
    final[:, 3] = 0.2
    carried, epochs = shadow.completed(4, 200, final)
    assert (carried.stop_epoch, epochs) == (10, 6)
    assert carried.active[:, 3].all() and carried.active.sum() == N_EDGES
    assert carried.unstable == shadow.unstable == 3           # 1 + 2 so far; JS 0 is never unstable
    assert shadow.stop_epoch is None and shadow.active.sum() == 6 + 7 + 5 * 12   # the original is untouched
    # with the cap at 9 it would not stop: the summary then says "epoch cap"
    capped, epochs = shadow.completed(4, 9, final)
    assert capped.stop_epoch is None and epochs == 5
    # a shadow that already stopped is not carried on
    done = AbsoluteRuleShadow(1e-4, 2.0, 2.0)
    for epoch, js, importances in _shadow_epochs():
        done.observe(epoch, js, importances)
    assert done.completed(12, 200, final)[0].stop_epoch == 11 and done.completed(12, 200, final)[1] == 0


def test_absolute_rule_shadow_state_round_trip_and_replay_from_the_log():
    epochs = _shadow_epochs()
    straight = AbsoluteRuleShadow(1e-4, 2.0, 2.0)
    entries = [straight.observe(*epoch) for epoch in epochs]
    # stopped after epoch 5 and restored from its state dict (as state.pt stores it)
    first = AbsoluteRuleShadow(1e-4, 2.0, 2.0)
    for epoch in epochs[:3]:
        first.observe(*epoch)
    restored = AbsoluteRuleShadow(1e-4, 2.0, 2.0)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for epoch in epochs[3:]:
        restored.observe(*epoch)
    assert restored.state_dict() == straight.state_dict()
    # a state.pt from before the shadow: rebuilt from the log's js and importances
    log = [{"epoch": e, "phase": "warmup", "js": None, "importance": [0.0] * 98} for e in (1, 2)]
    log += [{"epoch": e, "phase": "search", "js": js.tolist(), "importance": imp.reshape(-1).tolist()}
            for e, js, imp in epochs]
    replayed = replay_absolute_rule(log, 1e-4, 2.0, 2.0)
    assert replayed.state_dict() == straight.state_dict()
    assert [row["absolute_rule"] for row in log[2:]] == entries
    assert log[0]["absolute_rule"] == {"tau": None, "decision": ["warmup"] * N_EDGES, "pruned": []}


def test_discretise_by_hand():
    alpha = torch.zeros(N_EDGES, N_OPS)
    best = [3, 0, 5, 1, 6, 2, 2, 4, 0, 1, 3, 5, 6, 4]
    alpha[torch.arange(N_EDGES), best] = 1.0
    active = torch.ones(N_EDGES, N_OPS, dtype=torch.bool)
    alpha[4, 2] = 5.0
    active[4, 2] = False        # the largest alpha of edge 4 is pruned: its best active op (6) wins
    beta = torch.tensor([0.0, 0.0,              # node 2 (edges from 0, 1)
                         0.3, -0.2, 0.1,        # node 3: inputs 0 and 2
                         -1.0, -1.0, 1.0, 1.0,  # node 4: inputs 2 and 3
                         0.0, 2.0, -1.0, 1.0, 0.5])  # node 5: inputs 1 and 3
    genotype = discretise_weights(alpha.numpy(), capped_edge_weights(beta, 0.5).numpy(), active.numpy())
    name = lambda o: OP_NAMES[o]  # noqa: E731
    assert genotype.nodes == (((0, name(3)), (1, name(0))),
                              ((0, name(5)), (2, name(6))),
                              ((2, name(4)), (3, name(0))),
                              ((1, name(3)), (3, name(6))))
    assert not genotype.residual


def test_patient_split_for_iac_is_half_and_seeded(tmp_path):
    from unetscout.data.slice_store import SliceStore

    store = SliceStore(make_store(tmp_path / "slices", cases=CASES))
    train, val = split_search_patients(store, seed=0)
    assert sorted(train + val) == ["c0", "c1", "c2", "c3"] and len(train) == len(val) == 2
    assert split_search_patients(store, seed=0) == (train, val)
    view = store_with_train_cases(store, val)
    assert view.cases("train") == val and store.cases("train") == ["c0", "c1", "c2", "c3"]


# -- end to end on a tiny backbone ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("iac")
    slices = make_store(root / "slices", cases=CASES)
    config = tiny_config("paper", epochs="1", iterations_per_epoch="1", num_workers="0")
    loop.train(slices, root / "backbone", SPEC, config, device="cpu")
    return root, slices, root / "backbone"


def _backbone_tensors(backbone_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(backbone_dir / "best.pt")["model"]


@pytest.mark.slow
@pytest.mark.parametrize("search_class", [IACSearch, LTHSearch])
def test_search_leaves_the_backbone_bitwise_unchanged(trained, tmp_path, search_class):
    root, slices, backbone_dir = trained
    from unetscout.data.slice_store import SliceStore

    backbone = load_backbone(backbone_dir)
    config = tiny_search(epochs="2", **ALWAYS_STABLE)
    search = search_class(backbone, SliceStore(slices), tmp_path, config, torch.device("cpu"), identity={})
    cells_before = {k: v.clone() for k, v in search.model.skip_modules.state_dict().items()}
    summary = search.run()
    assert summary["epochs_run"] == 2
    original = _backbone_tensors(backbone_dir)
    now = search.model.backbone_state_dict()
    assert now.keys() == original.keys()
    assert all(torch.equal(now[k], original[k]) for k in now)
    assert not any(p.requires_grad for n, p in search.model.named_parameters() if not n.startswith("skip_modules"))
    # the cells and the architecture did learn
    cells_after = search.model.skip_modules.state_dict()
    assert any(not torch.equal(cells_before[k], cells_after[k]) for k in cells_after if k in cells_before)
    assert search.arch.alpha.abs().sum() > 0 and search.arch.beta.abs().sum() > 0


@pytest.mark.slow
def test_lth_prunes_until_one_op_per_edge_and_is_reproducible(trained, tmp_path):
    root, slices, backbone_dir = trained
    # every edge counts as stable, so each post-warm-up epoch prunes at least its weakest op
    config = tiny_search(epochs="20", **ALWAYS_STABLE)
    out = run_search("iac_lth", backbone_dir, slices, tmp_path / "a", config, device="cpu")
    summary = json.loads((out / "search_summary.json").read_text())
    assert summary["method"] == "iac_lth" and summary["stopped_because"] == "every edge has one op"
    assert 2 <= summary["epochs_run"] <= 7
    # never judged unstable: the stop epoch is the floor, and the summary says so
    assert summary["floor_bound"] is True and summary["unstable_decisions"] == 0
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert len(log) == summary["epochs_run"] and log[0]["phase"] == "warmup" and log[0]["js"] is None
    active = [sum(len(a) for a in row["active"]) for row in log]
    assert active[0] == active[1] == 98 and all(a > b for a, b in zip(active[1:], active[2:]))
    assert len(log[1]["importance"]) == 98 and len(log[1]["js"]) == N_EDGES and len(log[1]["tau"]) == N_EDGES
    # the search runs the absolute rule itself: its shadow sees the same numbers and decides the same
    assert all(row["absolute_rule"] == {"tau": row["tau"], "decision": row["decision"], "pruned": row["pruned"]}
               for row in log)
    assert summary["absolute_rule_stop_epoch"] == summary["stop_epoch"]
    assert summary["absolute_rule_stopped_because"] == "every edge has one op"
    assert summary["absolute_rule_epochs_after_search"] == 0 and summary["absolute_rule_floor_bound"] is True
    assert summary["absolute_rule_unstable_decisions"] == 0
    genotype = Genotype.load(out / "genotype.json")
    assert genotype.to_dict() == summary["genotype"]
    init = load_checkpoint(out / "init_state.pt")
    assert init["seed"] == 0 and any(".ops.sep_conv_5x5." in k for k in init["skip_modules"])
    state = load_checkpoint(out / "state.pt")
    assert int(state["arch"]["active"].sum()) == N_EDGES  # one op per edge
    # pruned ops are gone from the stored cells: per level and edge at most the one kept op
    kept = {tuple(k.split(".ops.")[0].split(".")[:3]) + (k.split(".ops.")[1].split(".")[0],)
            for k in state["skip_modules"] if ".ops." in k}
    per_edge = {}
    for level, _, edge, op in kept:
        per_edge.setdefault((level, edge), set()).add(op)
    assert per_edge and all(len(ops) == 1 for ops in per_edge.values())
    # same seed, same genotype and the same architecture trajectory
    again = run_search("iac_lth", backbone_dir, slices, tmp_path / "b", config, device="cpu")
    assert Genotype.load(again / "genotype.json") == genotype
    log_b = [json.loads(line) for line in (again / "search_log.jsonl").read_text().splitlines()]
    assert [r["alpha"] for r in log_b] == [r["alpha"] for r in log]
    # a rerun of a finished search returns at once; another config searches afresh
    run_search("iac_lth", backbone_dir, slices, out, config, device="cpu")
    run_search("iac_lth", backbone_dir, slices, out, config.replace(tau0=0.25), device="cpu")
    assert json.loads((out / "search_summary.json").read_text())["identity"]["config"]["tau0"] == 0.25


def _search_crashing_after(epochs: int, backbone_dir: Path, slices: Path, out: Path, config: SearchConfig,
                           monkeypatch) -> None:
    """Run an IAC-LTH search into OUT that dies (a RuntimeError) after `epochs` epochs."""
    original = supernet.SupernetSearch._run_epoch
    calls = {"n": 0}

    def crash(self, streams, stop):
        original(self, streams, stop)
        calls["n"] += 1
        if calls["n"] == epochs:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(supernet.SupernetSearch, "_run_epoch", crash)
    with pytest.raises(RuntimeError):
        run_search("iac_lth", backbone_dir, slices, out, config, device="cpu")
    monkeypatch.setattr(supernet.SupernetSearch, "_run_epoch", original)


@pytest.mark.slow
def test_search_resumes_bit_identically(trained, tmp_path, monkeypatch):
    root, slices, backbone_dir = trained
    config = tiny_search(epochs="4", **ALWAYS_STABLE)
    straight = run_search("iac_lth", backbone_dir, slices, tmp_path / "straight", config, device="cpu")
    _search_crashing_after(2, backbone_dir, slices, tmp_path / "resumed", config, monkeypatch)
    assert not (tmp_path / "resumed" / "search_summary.json").exists()
    resumed = run_search("iac_lth", backbone_dir, slices, tmp_path / "resumed", config, device="cpu")
    a, b = load_checkpoint(straight / "state.pt"), load_checkpoint(resumed / "state.pt")
    assert a["skip_modules"].keys() == b["skip_modules"].keys()
    assert all(torch.equal(a["skip_modules"][k], b["skip_modules"][k]) for k in a["skip_modules"])
    assert torch.equal(a["arch"]["alpha"], b["arch"]["alpha"]) and torch.equal(a["arch"]["active"], b["arch"]["active"])
    assert a["absolute_rule"] == b["absolute_rule"]


def _shadow_fields(out: Path) -> dict:
    summary = json.loads((out / "search_summary.json").read_text())
    return {k: v for k, v in summary.items() if k.startswith("absolute_rule")}


@pytest.mark.slow
def test_absolute_rule_shadow_resumes_bit_identically(trained, tmp_path, monkeypatch):
    """The relative rule (every edge stable: it prunes from epoch 3 on) with the paper's rule as its
    shadow (testing from epoch 2 on), killed after epoch 3 and resumed: the shadow's state, log entries
    and summary fields match an uninterrupted search bit for bit, also when resumed from a state.pt
    written before the shadow existed (`old`: the shadow is rebuilt from the log)."""
    import shutil

    root, slices, backbone_dir = trained
    config = tiny_search(epochs="5", tau0="1e12")
    straight = run_search("iac_lth", backbone_dir, slices, tmp_path / "straight", config, device="cpu")
    resumed, old = tmp_path / "resumed", tmp_path / "old"
    _search_crashing_after(3, backbone_dir, slices, resumed, config, monkeypatch)
    shutil.copytree(resumed, old)
    state = load_checkpoint(old / "state.pt")
    assert state["epoch"] == 3 and state["absolute_rule"]["stable"] > 0
    del state["absolute_rule"]
    for row in state["log"]:
        del row["absolute_rule"]
    save_checkpoint(old / "state.pt", state)
    a = load_checkpoint(straight / "state.pt")
    for out in (resumed, old):
        run_search("iac_lth", backbone_dir, slices, out, config, device="cpu")
        b = load_checkpoint(out / "state.pt")
        assert a["absolute_rule"] == b["absolute_rule"], out
        assert [row["absolute_rule"] for row in a["log"]] == [row["absolute_rule"] for row in b["log"]], out
        assert torch.equal(a["arch"]["alpha"], b["arch"]["alpha"]) and torch.equal(a["arch"]["active"],
                                                                                   b["arch"]["active"])
        assert _shadow_fields(straight) == _shadow_fields(out), out
    assert _shadow_fields(straight)["absolute_rule_stopped_because"] in ("every edge has one op", "epoch cap")
    _check_shadow_against_the_log(straight, config)


def _check_shadow_against_the_log(out: Path, config: SearchConfig) -> None:
    """The shadow's log entries and summary fields against a replay of the logged JS and importances
    and the rule by hand: an edge is stable iff its JS < the shadow's tau; a shadow that had not
    stopped when the search stopped with one op per edge loses one op per edge and epoch after it."""
    summary = json.loads((out / "search_summary.json").read_text())
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    logged = [row.pop("absolute_rule") for row in log]
    shadow = replay_absolute_rule(log, config.tau0_absolute, config.gamma, config.prune_std_factor)
    assert [row["absolute_rule"] for row in log] == logged
    for row, entry in zip(log, logged):
        if row["phase"] != "search":
            assert entry["decision"] == ["warmup"] * N_EDGES
            continue
        for js, tau, decision in zip(row["js"], entry["tau"], entry["decision"]):
            assert decision == "single" or decision == ("stable" if js < tau else "unstable")
    carried = 0
    expected = shadow.stop_epoch
    if expected is None and summary["stopped_because"] == "every edge has one op":
        carried = int(shadow.active.sum(axis=1).max()) - 1
        expected = summary["stop_epoch"] + carried if summary["stop_epoch"] + carried <= config.epochs else None
    assert summary["absolute_rule_stop_epoch"] == expected
    assert summary["absolute_rule_stopped_because"] == ("epoch cap" if expected is None else "every edge has one op")
    assert summary["absolute_rule_epochs_after_search"] == (carried if expected is not None else 0)
    assert summary["absolute_rule_unstable_decisions"] == shadow.unstable
    assert summary["absolute_rule_floor_bound"] == (shadow.unstable == 0 and shadow.stable > 0)


def _best_dice_by_hand(model_dir: Path, slices: Path, case: str, batch_size: int) -> float:
    """Dice of a one-case patient under `model_dir`'s best.pt: the argmax in batches of
    `batch_size` (as the path being checked runs it), then per class 2|P & R| / (|P| + |R|),
    averaged over the classes present on either side."""
    from unetscout.data.slice_store import SliceStore
    from unetscout.evaluate.predict import load_model

    store, (_, model) = SliceStore(slices), load_model(model_dir, "best")
    model.eval()
    image, ref = np.asarray(store.image(case)), np.asarray(store.label(case))
    preds = []
    with torch.no_grad():
        for start in range(0, len(image), batch_size):
            logits = model(torch.from_numpy(image[start:start + batch_size].copy()))
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            preds.append(logits.argmax(1).numpy())
    pred = np.concatenate(preds)
    per_class = []
    for k in range(1, store.num_classes):
        p, r = pred == k, ref == k
        if p.sum() + r.sum():
            per_class.append(2 * (p & r).sum() / (p.sum() + r.sum()))
    return float(np.mean(per_class)) if per_class else float("nan")


@pytest.mark.slow
def test_iac_search_and_train_cell_give_an_evaluable_folder(trained, tmp_path):
    root, slices, backbone_dir = trained
    search_dir = tmp_path / "search"
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_args.add_search_parser(sub)
    cli_args.add_train_cell_parser(sub)
    cli_args.add_search_figures_parser(sub)
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    args = parser.parse_args(["search", str(backbone_dir), str(slices), "--method", "iac", "--out", str(search_dir),
                              "--seed", "0", "--device", "cpu", *sets])
    args.func(args)
    summary = json.loads((search_dir / "search_summary.json").read_text())
    assert summary["method"] == "iac" and summary["epochs_run"] == 3 and summary["stopped_because"] == "epoch cap"
    log = [json.loads(line) for line in (search_dir / "search_log.jsonl").read_text().splitlines()]
    assert log[1]["val_loss"] is not None and log[0]["val_loss"] is None  # arch steps only after warm-up
    assert all(sum(len(a) for a in row["active"]) == 98 for row in log)   # IAC never prunes

    out = tmp_path / "cell"
    args = parser.parse_args(["train-cell", str(backbone_dir), str(slices), "--genotype",
                              str(search_dir / "genotype.json"), "--method", "iac", "--out", str(out),
                              "--device", "cpu", "--set", "epochs=1", "--set", "iterations_per_epoch=2",
                              "--set", "num_workers=0"])
    args.func(args)
    for name in ("model.json", "best.pt", "last.pt", "config.json", "log.tsv", "done.json"):
        assert (out / name).is_file(), name
    spec = ModelSpec.load(out / "model.json")
    assert spec.skip == "cell" and Genotype.from_json(spec.genotype) == Genotype.load(search_dir / "genotype.json")
    config = json.loads((out / "config.json").read_text())
    backbone_config = json.loads((backbone_dir / "config.json").read_text())
    assert config == {**backbone_config, "epochs": 1, "iterations_per_epoch": 2, "num_workers": 0}
    best = load_checkpoint(out / "best.pt")["model"]
    original = _backbone_tensors(backbone_dir)
    assert all(torch.equal(best[k], v) for k, v in original.items())          # backbone frozen
    assert any(k.startswith("skip_modules.0.edges.") for k in best)
    patients = predict_split(out, slices, "test", device="cpu")
    assert list(patients["patient"]) == ["p5"]
    # The Dice the cell training reports for its best epoch (val: p4) and the one evaluate reports
    # (test: p5) are those of best.pt's predictions, recounted here by hand.
    assert load_checkpoint(out / "best.pt")["val_dice"] == pytest.approx(
        _best_dice_by_hand(out, slices, "c4", config["val_batch_size"]), abs=1e-12)
    assert patients["dice"].iloc[0] == pytest.approx(_best_dice_by_hand(out, slices, "c5", 64), abs=1e-12)

    figures = tmp_path / "figures"
    args = parser.parse_args(["search-figures", str(search_dir), "--out", str(figures)])
    args.func(args)
    for stem in ("importance_trajectories", "importance_similarity", "final_op_entry"):
        assert (figures / f"{stem}.png").stat().st_size > 0 and (figures / f"{stem}.pdf").stat().st_size > 0
    assert len((figures / "final_op_entry.tsv").read_text().splitlines()) == 1 + 8


@pytest.mark.slow
def test_train_cell_lth_resets_to_the_lottery_ticket(trained, tmp_path):
    from unetscout.search.cell_training import train_cell

    root, slices, backbone_dir = trained
    search_dir = run_search("iac_lth", backbone_dir, slices, tmp_path / "search", tiny_search(**ALWAYS_STABLE),
                            device="cpu")
    out = train_cell(backbone_dir, slices, search_dir / "genotype.json", "iac_lth", tmp_path / "cell",
                     {"epochs": "1", "iterations_per_epoch": "1", "num_workers": "0"}, device="cpu")
    done = json.loads((out / "done.json").read_text())
    assert done["init"]["method"] == "iac_lth" and "init_state_sha256" in done["init"]
    (search_dir / "init_state.pt").unlink()
    with pytest.raises(UnetscoutError, match="init_state.pt"):
        train_cell(backbone_dir, slices, search_dir / "genotype.json", "iac_lth", tmp_path / "cell2", {}, "cpu")


WEIGHTED = Genotype((((0, "sep_conv_3x3"), (1, "dil_conv_5x5")), ((0, "sep_conv_5x5"), (2, "dil_conv_3x3")),
                     ((1, "sep_conv_3x3"), (3, "max_pool_3x3")), ((2, "dil_conv_3x3"), (4, "identity"))))
# (index in the op's Sequential, kind) of every conv tensor of the ops that have weights
OP_CONVS = {"sep_conv_3x3": ((1, "dw"), (2, "pw"), (5, "dw"), (6, "pw")), "sep_conv_5x5": ((1, "dw"), (2, "pw"),
            (5, "dw"), (6, "pw")), "dil_conv_3x3": ((1, "dw"), (2, "pw")), "dil_conv_5x5": ((1, "dw"), (2, "pw"))}


def test_discrete_cell_width_is_the_supernets():
    odd = Genotype(WEIGHTED.nodes, partial_channels=4)
    from unetscout.models.cell import DiscreteCell
    cell = DiscreteCell(6, 10, odd)                       # 6 skip channels -> C = 8, as the supernet's
    assert cell.preprocess_skip.weight.shape == (8, 6, 1, 1) and cell.output.weight.shape == (6, 32, 1, 1)
    supernet = SupernetCell(6, 10, ArchitectureParameters(), groups=4)
    assert supernet.preprocess_skip.weight.shape == cell.preprocess_skip.weight.shape


def test_random_genotype_is_seeded_and_uniform():
    assert random_genotype(3) == random_genotype(3) and random_genotype(3) != random_genotype(4)
    draws = [random_genotype(seed) for seed in range(3000)]
    # node 5 picks one of C(5, 2) = 10 input pairs; every op is one of 7
    pairs = collections.Counter(tuple(i for i, _ in g.nodes[3]) for g in draws)
    ops = collections.Counter(op for g in draws for _, _, op in g.edges())
    assert len(pairs) == 10 and all(abs(n / 3000 - 0.1) < 0.025 for n in pairs.values())
    assert len(ops) == 7 and all(abs(n / (8 * 3000) - 1 / 7) < 0.015 for n in ops.values())


def test_cell_training_config_is_the_backbones_with_overrides():
    backbone = tiny_config("nnunet", lr="0.02")
    config = cell_training_config(backbone, {"epochs": "5", "seed": "3"})
    assert config == backbone.replace(epochs=5, seed=3)
    with pytest.raises(UnetscoutError, match="unknown training setting"):
        cell_training_config(backbone, {"cell_lr": "1"})


# -- epoch accounting, stability test, augmentation, ticket file, random baseline, bad input ---------

@pytest.mark.slow
def test_both_methods_pass_the_train_split_once_per_epoch(trained, tmp_path):
    root, slices, backbone_dir = trained
    # 4 train cases x 6 slices = 24 slices, B = 4: IAC-LTH 6 steps of one batch; IAC halves the
    # patients (12 slices) into 3 alternations of two batches. 24 samples per epoch either way,
    # warm-up (epoch 1) included.
    config = tiny_search(epochs="2", iterations_per_epoch="0", **ALWAYS_STABLE)
    summaries = {}
    for method in ("iac", "iac_lth"):
        out = run_search(method, backbone_dir, slices, tmp_path / method, config, device="cpu")
        summaries[method] = json.loads((out / "search_summary.json").read_text())
        log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
        assert [row["passes"] for row in log] == [24, 24]
    assert summaries["iac"]["steps_per_epoch"] == 3 and summaries["iac_lth"]["steps_per_epoch"] == 6
    # B = 5: ceil(24 / 5) = 5 batches, rounded up to 6 so IAC's alternations of two match:
    # 6 x 5 = 30 samples per epoch for both (unrounded: IAC-LTH 25, IAC ceil(12 / 5) x 2 x 5 = 30)
    for method in ("iac", "iac_lth"):
        odd = run_search(method, backbone_dir, slices, tmp_path / f"{method}_b5", config.replace(batch_size=5),
                         device="cpu")
        log = [json.loads(line) for line in (odd / "search_log.jsonl").read_text().splitlines()]
        assert [row["passes"] for row in log] == [30, 30], method
    for summary in summaries.values():
        assert summary["forward_backward_passes"] == 48 and summary["passes_per_epoch"] == 24.0
        assert summary["seconds_per_epoch"] == pytest.approx(summary["search_seconds"] / 2)
    # recalibrating IAC-LTH's stability test leaves the finished IAC search alone
    before = (tmp_path / "iac" / "search_summary.json").read_text()
    run_search("iac", backbone_dir, slices, tmp_path / "iac", config.replace(tau0=0.3, gamma=1.5), device="cpu")
    assert (tmp_path / "iac" / "search_summary.json").read_text() == before
    # an override keeps the equality: 6 batches = 6 LTH steps = 3 IAC alternations
    assert supernet.SupernetSearch.batches_per_step == 1 and IACSearch.batches_per_step == 2


@pytest.mark.slow
def test_train_search_split_is_the_datasets_not_the_run_seeds(trained, tmp_path):
    from unetscout.data.slice_store import SliceStore

    root, slices, backbone_dir = trained
    backbone, store = load_backbone(backbone_dir), SliceStore(slices)
    splits = {seed: IACSearch(backbone, store, tmp_path, tiny_search(seed=str(seed)), torch.device("cpu"), {})
              for seed in (0, 7)}
    drawn = {seed: (search.samplers["train"].cases, search.samplers["val"].cases) for seed, search in splits.items()}
    assert drawn[0] == drawn[7] == split_search_patients(store, store.split_seed)


@pytest.mark.slow
@pytest.mark.parametrize("augment", [False, True])
def test_search_augments_exactly_when_the_backbones_preset_does(trained, tmp_path, augment):
    from unetscout.data.slice_store import SliceStore
    from unetscout.train.augment import Augmenter

    root, slices, backbone_dir = trained
    backbone = load_backbone(backbone_dir)
    backbone = type(backbone)(backbone.path, backbone.spec, backbone.state, backbone.config.replace(augment=augment))
    search = IACSearch(backbone, SliceStore(slices), tmp_path, tiny_search(epochs="2"), torch.device("cpu"), {})
    assert isinstance(search.augmenter, Augmenter) == augment
    calls = []
    if augment:
        original = search.augmenter.__call__
        search.augmenter = lambda image, label: (calls.append(image.shape[0]), original(image, label))[1]
    search.run()
    assert calls == ([4] * 4 if augment else [])  # 2 batches an epoch (one alternation) x 2 epochs, all augmented


@pytest.mark.slow
def test_relative_rule_calibrates_on_the_first_search_epoch_then_tests(trained, tmp_path):
    root, slices, backbone_dir = trained
    # tau0 tiny and gamma 1: nothing is ever stable; the search runs to the cap and is not floor-bound
    out = run_search("iac_lth", backbone_dir, slices, tmp_path / "moving",
                     tiny_search(epochs="5", tau0="1e-9", gamma="1"), device="cpu")
    summary = json.loads((out / "search_summary.json").read_text())
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [row["decision"][0] for row in log] == ["warmup", "calibration", "unstable", "unstable", "unstable"]
    reference = np.maximum(np.array(log[1]["js"]), 1e-10)
    assert log[1]["tau"] is None and np.allclose(log[1]["js_reference"], log[1]["js"])
    assert np.allclose(log[2]["tau"], 1e-9 * reference, rtol=1e-12)
    assert summary["stopped_because"] == "epoch cap" and summary["floor_bound"] is False
    assert summary["unstable_decisions"] == 3 * N_EDGES and summary["stability_rule"] == "relative"
    assert all(sum(len(a) for a in row["active"]) == 98 for row in log)
    _check_shadow_against_the_log(out, tiny_search(epochs="5", tau0="1e-9", gamma="1"))
    # tau0 huge: every tested edge is stable and prunes: floor-bound
    out = run_search("iac_lth", backbone_dir, slices, tmp_path / "still",
                     tiny_search(epochs="20", tau0="1e12"), device="cpu")
    summary = json.loads((out / "search_summary.json").read_text())
    assert summary["floor_bound"] is True and summary["stopped_because"] == "every edge has one op"
    assert summary["epochs_run"] <= 1 + 1 + 6  # warm-up, calibration, at most six prunes per edge
    _check_shadow_against_the_log(out, tiny_search(epochs="20", tau0="1e12"))


@pytest.mark.slow
def test_train_cell_writes_the_ticket_and_starts_from_it(trained, tmp_path):
    from unetscout.search.cell_training import train_cell

    root, slices, backbone_dir = trained
    search_dir = run_search("iac_lth", backbone_dir, slices, tmp_path / "search", tiny_search(**ALWAYS_STABLE),
                            device="cpu")
    WEIGHTED.save(search_dir / "genotype.json")  # ops with weights on every node
    out = train_cell(backbone_dir, slices, search_dir / "genotype.json", "iac_lth", tmp_path / "cell",
                     {"epochs": "1", "iterations_per_epoch": "1", "num_workers": "0"}, device="cpu")
    ticket = json.loads((out / "ticket.json").read_text())
    start = load_checkpoint(out / "cell_init.pt")["skip_modules"]
    init = load_checkpoint(search_dir / "init_state.pt")["skip_modules"]
    levels = {k.split(".")[0] for k in start}
    assert len(ticket["copied_in_part"]) == len(levels) * sum(len(OP_CONVS.get(op, ())) for *_, op in WEIGHTED.edges())
    for level in levels:
        assert torch.equal(start[f"{level}.output.weight"], init[f"{level}.output.weight"])
        for i, j, op in WEIGHTED.edges():
            for index, kind in OP_CONVS.get(op, ()):
                source = init[f"{level}.edges.{i}_{j}.ops.{op}.{index}.weight"]
                target = start[f"{level}.edges.{i}_{j}.{index}.weight"]
                q = source.shape[0]
                rows = slice(0, None, 4) if index == OP_CONVS[op][-1][0] else slice(0, q)  # the op's output: every K-th
                assert torch.equal(target[rows] if kind == "dw" else target[rows, :q], source)
    # IAC draws afresh: no ticket, the op convs are not the supernet's
    out = train_cell(backbone_dir, slices, search_dir / "genotype.json", "iac", tmp_path / "iac_cell",
                     {"epochs": "1", "iterations_per_epoch": "1", "num_workers": "0"}, device="cpu")
    assert not (out / "ticket.json").exists()
    start = load_checkpoint(out / "cell_init.pt")["skip_modules"]
    source = init["0.edges.0_2.ops.sep_conv_3x3.1.weight"]
    assert not torch.equal(start["0.edges.0_2.1.weight"][: source.shape[0]], source)


@pytest.mark.slow
def test_random_method_draws_a_genotype_and_trains_like_iac(trained, tmp_path):
    from unetscout.cli import main

    root, slices, backbone_dir = trained
    search_dir = tmp_path / "search"
    assert main(["search", str(backbone_dir), str(slices), "--method", "random", "--out", str(search_dir),
                 "--seed", "5", "--device", "cpu"]) == 0
    summary = json.loads((search_dir / "search_summary.json").read_text())
    assert summary["method"] == "random" and summary["epochs_run"] == 0 and summary["forward_backward_passes"] == 0
    assert Genotype.load(search_dir / "genotype.json") == random_genotype(5)
    assert main(["train-cell", str(backbone_dir), str(slices), "--genotype", str(search_dir / "genotype.json"),
                 "--method", "random", "--out", str(tmp_path / "cell"), "--device", "cpu", "--set", "epochs=1",
                 "--set", "iterations_per_epoch=1", "--set", "num_workers=0"]) == 0
    assert json.loads((tmp_path / "cell" / "done.json").read_text())["init"]["method"] == "random"


@pytest.mark.parametrize("nodes, words", [
    ([[[0, "sep_conv_3x3"], [1, "conv_9x9"]]] + [[[0, "identity"], [1, "identity"]]] * 3, "unknown operation 'conv_9x9'"),
    ([[[0, "identity"], [3, "identity"]]] + [[[0, "identity"], [1, "identity"]]] * 3, "node 2 cannot take node 3"),
])
def test_train_cell_refuses_a_bad_genotype_and_writes_nothing(tmp_path, capsys, nodes, words):
    from unetscout.cli import main

    genotype = tmp_path / "genotype.json"
    genotype.write_text(json.dumps({"nodes": nodes}))
    out = tmp_path / "cell"
    code = main(["train-cell", str(tmp_path / "backbone"), str(tmp_path / "slices"), "--genotype", str(genotype),
                 "--method", "iac", "--out", str(out), "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(err) == 1 and str(genotype) in err[0] and words in err[0], err
    assert not out.exists()


def test_search_refuses_tau0_not_positive_and_writes_nothing(tmp_path, capsys):
    from unetscout.cli import main

    out = tmp_path / "search"
    code = main(["search", str(tmp_path / "backbone"), str(tmp_path / "slices"), "--method", "iac_lth",
                 "--out", str(out), "--set", "tau0=0", "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(err) == 1 and "tau0 must be > 0" in err[0], err
    assert not out.exists()
