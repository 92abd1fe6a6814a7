"""Search analysis figures (unetscout.search.figures): the pure functions on hand-made arrays
with hand-computed answers, and `search_figures` end to end on fabricated search logs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unetscout.errors import UnetscoutError
from unetscout.models.cell import N_EDGES
from unetscout.models.ops import N_OPS, OP_NAMES
from unetscout.models.genotype import Genotype
from unetscout.search.figures import (
    cosine_similarity_matrix,
    cosine_to_final,
    edge_set_epoch,
    first_entry_epochs,
    hamming_similarity,
    positive_finite,
    pruned_epochs,
    search_figures,
    topk_masks,
)


def test_cosine_similarity_matrix_and_to_final():
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    s = cosine_similarity_matrix(vectors)
    r = 1 / math.sqrt(2)
    expected = np.array([[1, r, 0, 0], [r, 1, r, 0], [0, r, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(s, expected, atol=1e-12)
    np.testing.assert_allclose(cosine_to_final(vectors[:3]), [0.0, r, 1.0], atol=1e-12)


def test_topk_masks_break_ties_by_op_index_and_skip_pruned_ops():
    imp = np.zeros((1, N_EDGES, N_OPS))
    active = np.ones((1, N_EDGES, N_OPS), dtype=bool)
    # edge 0: op 4 has the largest value but is pruned; ops 0, 2, 3 tie at 0.3
    imp[0, 0] = [0.3, 0.5, 0.3, 0.3, 0.9, 0.0, 0.0]
    active[0, 0, 4] = False
    # edge 1: only ops 5 and 6 are left
    imp[0, 1] = [0, 0, 0, 0, 0, 0.1, 0.2]
    active[0, 1] = [False] * 5 + [True, True]
    # every other edge: all zero, all active -> the first k ops

    top1, top2, top3 = (topk_masks(imp, active, k)[0] for k in (1, 2, 3))
    assert top1.shape == (N_EDGES, N_OPS) and top1.dtype == bool
    assert list(np.flatnonzero(top1[0])) == [1]
    assert list(np.flatnonzero(top2[0])) == [0, 1]
    assert list(np.flatnonzero(top3[0])) == [0, 1, 2]
    assert list(np.flatnonzero(top1[1])) == [6]
    assert list(np.flatnonzero(top3[1])) == [5, 6]          # fewer than 3 active: keeps both
    assert list(np.flatnonzero(top2[2])) == [0, 1]
    assert top1.sum() == 14 and top2.sum() == 28 and top3.sum() == 3 + 2 + 12 * 3


def test_hamming_similarity():
    a = np.zeros((N_EDGES, N_OPS), dtype=bool)
    b = a.copy()
    b[0, :] = True                                           # 7 of 98 positions differ
    assert hamming_similarity(a, b) == pytest.approx(91 / 98)
    assert hamming_similarity(b, b) == 1.0
    assert hamming_similarity(a, ~a) == 0.0
    with pytest.raises(ValueError):
        hamming_similarity(a, a[:5])


def test_first_entry_epochs_counts_the_first_entry_not_the_last():
    epochs = np.array([3, 4, 5, 6, 7])
    imp = np.zeros((5, N_EDGES, N_OPS))
    active = np.ones((5, N_EDGES, N_OPS), dtype=bool)
    e = 3
    # op 2 ranks 3, 1, 3, 2 (ties op 1, which has the lower index), 0
    imp[0, e] = [0.4, 0.3, 0.1, 0.2, 0.05, 0.0, 1.0]
    imp[1, e] = [0.4, 0.1, 0.3, 0.2, 0.05, 0.0, 1.0]
    imp[2, e] = [0.4, 0.3, 0.1, 0.2, 0.05, 0.0, 1.0]
    imp[3, e] = [0.5, 0.3, 0.3, 0.1, 0.05, 0.0, 1.0]
    imp[4, e] = [0.1, 0.2, 0.6, 0.1, 0.05, 0.0, 1.0]
    active[:, e, 6] = False                                  # op 6: pruned, its 1.0 must not count
    assert first_entry_epochs(imp, active, epochs, e, 2) == {3: 4, 2: 4, 1: 7}
    assert first_entry_epochs(imp, active, epochs, e, 0) == {3: 3, 2: 3, 1: 3}
    assert first_entry_epochs(imp, active, epochs, e, 4) == {3: None, 2: None, 1: None}
    assert first_entry_epochs(imp, active, epochs, e, 6) == {3: None, 2: None, 1: None}
    # op 1: rank 1, 3, 1, 1 (ties op 2 but wins), 1 -> top-2 from epoch 3, never top-1
    assert first_entry_epochs(imp, active, epochs, e, 1) == {3: 3, 2: 3, 1: None}


def test_edge_set_epoch():
    epochs = np.array([3, 4, 5, 6, 7])
    kept = np.zeros((5, N_EDGES), dtype=bool)
    kept[:, [0, 1]] = True                                   # node 2: always {0, 1}
    for t, pair in enumerate([(2, 3), (2, 4), (2, 3), (2, 4), (2, 4)]):
        kept[t, list(pair)] = True                           # node 3 (edges 2, 3, 4)
    kept[:, [5, 6]] = True                                   # node 4 (edges 5..8)
    kept[:, [9, 10]] = True                                  # node 5 (edges 9..13)
    final = np.zeros(N_EDGES, dtype=bool)
    final[[0, 1, 2, 4, 7, 8, 9, 10]] = True
    assert edge_set_epoch(kept, final, epochs, 2) == 3
    assert edge_set_epoch(kept, final, epochs, 3) == 6       # {0, 2} from epoch 6 on (also at 4)
    assert edge_set_epoch(kept, final, epochs, 4) is None    # differs at the last epoch
    assert edge_set_epoch(kept, final, epochs, 5) == 3


def test_positive_finite_and_pruned_epochs():
    assert list(positive_finite([1e-3, 0.0, -1.0, np.nan, np.inf])) == [True, False, False, False, False]
    rows = [{"epoch": 1, "pruned": []}, {"epoch": 2, "pruned": [["0_2", "identity"], ["0_2", "max_pool_3x3"]]},
            {"epoch": 3, "pruned": [["1_3", "identity"]]}, {"epoch": 4}]
    got = pruned_epochs(rows)
    assert got[0] == [2] and got[3] == [3] and sum(len(v) for v in got.values()) == 2


# -- end to end -----------------------------------------------------------------------------------------
GENOTYPE = Genotype((((0, "sep_conv_3x3"), (1, "identity")),
                     ((0, "dil_conv_3x3"), (2, "max_pool_3x3")),
                     ((1, "sep_conv_5x5"), (3, "avg_pool_3x3")),
                     ((0, "dil_conv_5x5"), (4, "sep_conv_3x3"))))


def _row(epoch, phase, alpha, edge_weights, active, js, tau, decision, pruned):
    logits = np.where(active, alpha, -np.inf)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    imp = soft * edge_weights[:, None]
    row = {"epoch": epoch, "phase": phase, "loss": 1.0, "val_loss": None, "alpha": alpha.tolist(),
           "beta": np.zeros(N_EDGES).tolist(), "edge_weights": edge_weights.tolist(),
           "importance": imp.reshape(-1).tolist(), "p": (imp / imp.sum(axis=1, keepdims=True)).tolist(),
           "active": [[OP_NAMES[o] for o in np.flatnonzero(a)] for a in active],
           "js": js, "tau": tau, "pruned": pruned}
    if decision is not None:
        row["decision"] = decision
    return row


def _write_search(path, lth: bool):
    rng = np.random.default_rng(0)
    path.mkdir()
    active = np.ones((N_EDGES, N_OPS), dtype=bool)
    rows = []
    for epoch in (1, 2, 3, 4):
        warm = epoch <= 2
        alpha = np.zeros((N_EDGES, N_OPS)) if warm else rng.normal(size=(N_EDGES, N_OPS))
        weights = np.full(N_EDGES, 0.4) if warm else rng.uniform(0.1, 0.5, N_EDGES)
        js = None if warm else rng.uniform(1e-4, 1e-2, N_EDGES).tolist()
        pruned = []
        if not lth:
            tau, decision = None, None
        elif warm:
            tau, decision = None, ["warmup"] * N_EDGES
        elif epoch == 3:
            tau, decision = None, ["calibration"] * N_EDGES
        else:
            tau = [1e-3] * N_EDGES
            tau[5] = None                                    # a null entry is skipped on the log axis
            js[1] = 0.0                                      # so is a zero
            decision = ["stable" if j is not None and j < 1e-3 else "unstable" for j in js]
            pruned = [["0_2", "identity"], ["1_3", "max_pool_3x3"]]
        rows.append(_row(epoch, "warmup" if warm else "search", alpha, weights, active.copy(), js, tau,
                         decision, pruned))
        for name, op in pruned:
            active[["0_2", "1_2", "0_3", "1_3"].index(name), OP_NAMES.index(op)] = False
    if lth:
        rows[-1]["stability_rule"] = "relative"
    (path / "search_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    GENOTYPE.save(path / "genotype.json")
    return path


EXPECTED_LINES = {"importance_trajectories.tsv": 1 + 4 * 98, "importance_similarity.tsv": 1 + 4,
                  "importance_to_final.tsv": 1 + 4, "mask_similarity.tsv": 1 + 4, "final_op_entry.tsv": 1 + 8,
                  "edge_set_epoch.tsv": 1 + 4, "js_vs_tau.tsv": 1 + 4 * 14}
FIGURES = ("importance_trajectories", "importance_similarity", "importance_to_final", "mask_similarity",
           "final_op_entry", "js_vs_tau")


@pytest.mark.parametrize("lth", [True, False], ids=["iac_lth", "iac"])
def test_search_figures_writes_every_file(tmp_path, lth):
    search_dir = _write_search(tmp_path / "search", lth)
    out = tmp_path / "figures"
    written = search_figures(search_dir, out)
    expected = {out / f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "pdf")} | {out / n for n in EXPECTED_LINES}
    assert set(written) == expected and len(written) == len(expected)
    for path in expected:
        assert path.stat().st_size > 0, path
    for name, lines in EXPECTED_LINES.items():
        assert len((out / name).read_text().splitlines()) == lines, name

    entry = [line.split("\t") for line in (out / "final_op_entry.tsv").read_text().splitlines()]
    assert entry[0] == ["edge", "op", "top3_first_epoch", "top2_first_epoch", "top1_first_epoch"]
    assert [r[:2] for r in entry[1:3]] == [["0_2", "sep_conv_3x3"], ["1_2", "identity"]]
    # counted over the search epochs (3, 4) only
    assert all(v in ("3", "4", "NaN") for r in entry[1:] for v in r[2:])
    edge_set = [line.split("\t") for line in (out / "edge_set_epoch.tsv").read_text().splitlines()]
    assert edge_set[0] == ["node", "inputs", "epoch"]
    assert [r[:2] for r in edge_set[1:]] == [["2", "0,1"], ["3", "0,2"], ["4", "1,3"], ["5", "0,4"]]
    assert edge_set[1][2] == "3"                              # node 2 has only two inputs
    masks = [line.split("\t") for line in (out / "mask_similarity.tsv").read_text().splitlines()]
    assert masks[0] == ["epoch", "top1", "top2", "top3", "genotype"]
    assert masks[-1][1:4] == ["1", "1", "1"]                  # the final epoch against itself
    js_tau = [line.split("\t") for line in (out / "js_vs_tau.tsv").read_text().splitlines()]
    last = {r[1]: r for r in js_tau if r[0] == "4"}
    if lth:
        assert last["0_2"][4] in ("stable", "unstable") and last["0_2"][5] == "identity"
        assert last["1_3"][5] == "max_pool_3x3" and last["2_3"][5] == "-"
        assert last["1_2"][2] == "0" and last["0_4"][3] == "NaN" and last["0_2"][3] == "0.001"
    else:
        assert all(r[3] == "NaN" and r[4] == "NaN" for r in js_tau[1:])


def test_search_figures_one_line_errors(tmp_path):
    with pytest.raises(UnetscoutError, match="search log not found"):
        search_figures(tmp_path, tmp_path / "out")
    (tmp_path / "search_log.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(UnetscoutError, match="lacks alpha, edge_weights, importance, active"):
        search_figures(tmp_path, tmp_path / "out")
