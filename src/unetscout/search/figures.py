"""Analysis figures of one cell search, from its `search_log.jsonl` and `genotype.json`
(docs/methods.md#search-figures): what the IAC-LTH paper plots.

Each figure is written as PNG and PDF, with the numbers behind it as a TSV:
- `importance_trajectories`: I_{e,o} per epoch, one panel per edge, one line per op;
- `importance_similarity`: cosine similarity of the 98-d importance vector between every
  pair of epochs (heatmap; the TSV is the T x T matrix);
- `importance_to_final`: cosine similarity of each epoch's importance vector to the final
  epoch's (line plot);
- `mask_similarity`: Hamming similarity to the final epoch of the per-epoch top-1 / top-2 /
  top-3 op masks, and of the per-epoch genotype (the discretisation rule applied to that
  epoch's weights) to the final genotype;
- `final_op_entry`: for each (edge, op) of the final genotype the epoch at which the op
  *first* enters the top-3 / top-2 / top-1 of its edge (`final_op_entry.tsv`), and for each
  node the epoch from which its final incoming-edge set is kept to the end
  (`edge_set_epoch.tsv`). Both count search epochs only: during warm-up alpha and beta are
  frozen at zero, so every edge's ops tie and the ranking is the tie rule, not the search;
- `js_vs_tau`: per edge the Jensen-Shannon drift of p_e and the threshold tau_e it was tested
  against, on a log axis, with markers at the epochs where the edge lost an op.

A log without a stability test (IAC: `tau` null, `decision` missing) still gets every file;
the parts that need the missing fields are left empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from unetscout.atomic import atomic_file, write_text_atomic
from unetscout.errors import file_error
from unetscout.models.cell import EDGES, N_EDGES, edges_into
from unetscout.models.ops import N_OPS, OP_NAMES
from unetscout.models.genotype import N_INPUT_NODES, N_INTERMEDIATE_NODES, Genotype
from unetscout.search.discretise import discretise_weights

TOP_K = (3, 2, 1)
REQUIRED_KEYS = ("epoch", "alpha", "edge_weights", "importance", "active")
EDGE_NAMES = tuple(f"{i}_{j}" for i, j in EDGES)


# -- reading the log ---------------------------------------------------------------------------------
def read_search_log(search_dir: Path) -> list[dict]:
    path = Path(search_dir) / "search_log.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise file_error(path, "search log not found; run `unetscout search` first") from None
    except json.JSONDecodeError as err:
        raise file_error(path, f"corrupt search log ({err.msg} at line {err.lineno})") from None
    if not rows:
        raise file_error(path, "the search log has no epochs")
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise file_error(path, f"line {n} is not a JSON object")
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise file_error(path, f"line {n} lacks {', '.join(missing)}; was it written by `unetscout search`?")
    return rows


def _array(path: Path, rows: list[dict], key: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return np.array([row[key] for row in rows], dtype=np.float64).reshape(len(rows), *shape)
    except (TypeError, ValueError):
        raise file_error(path, f"'{key}' must hold {' x '.join(map(str, shape))} numbers in every line") from None


def importance_matrix(rows: list[dict], path: Path = Path("search_log.jsonl")) -> np.ndarray:
    """[T, 14, 7] importances I_{e,o} (pruned ops 0)."""
    return _array(path, rows, "importance", (N_EDGES, N_OPS))


def active_matrix(rows: list[dict], path: Path = Path("search_log.jsonl")) -> np.ndarray:
    """[T, 14, 7] bool: op o of edge e is still active at that epoch."""
    active = np.zeros((len(rows), N_EDGES, N_OPS), dtype=bool)
    for t, row in enumerate(rows):
        if not isinstance(row["active"], list) or len(row["active"]) != N_EDGES:
            raise file_error(path, f"'active' must list the active ops of each of the {N_EDGES} edges")
        for e, names in enumerate(row["active"]):
            for name in names:
                if name not in OP_NAMES:
                    raise file_error(path, f"epoch {row['epoch']}: unknown op {name!r} in 'active'")
                active[t, e, OP_NAMES.index(name)] = True
    return active


def edge_series(rows: list[dict], key: str) -> np.ndarray:
    """[T, 14] per-edge values of `key` (e.g. "js", "tau"); NaN where a row lacks the key,
    holds null, or holds null for that edge."""
    out = np.full((len(rows), N_EDGES), np.nan)
    for t, row in enumerate(rows):
        values = row.get(key)
        if isinstance(values, list) and len(values) == N_EDGES:
            out[t] = [np.nan if v is None else float(v) for v in values]
    return out


def pruned_epochs(rows: list[dict]) -> dict[int, list[int]]:
    """Edge index -> the epochs (ascending, each once) at which that edge lost at least one op,
    from the rows' `pruned` lists of [edge name "i_j", op name]."""
    out: dict[int, list[int]] = {e: [] for e in range(N_EDGES)}
    for row in rows:
        for name, _op in row.get("pruned") or []:
            e = EDGE_NAMES.index(name) if name in EDGE_NAMES else None
            if e is not None and row["epoch"] not in out[e]:
                out[e].append(int(row["epoch"]))
    return out


def stability_rule(rows: list[dict], search_dir: Path) -> str | None:
    """The IAC-LTH threshold rule ("relative" / "absolute") if the log rows or, failing that,
    search_summary.json record it; None otherwise."""
    for row in rows:
        for key in ("stability_rule", "tau_rule"):
            if isinstance(row.get(key), str):
                return row[key]
    try:
        summary = json.loads((Path(search_dir) / "search_summary.json").read_text())
    except (OSError, ValueError):
        return None
    rule = summary.get("stability_rule") if isinstance(summary, dict) else None
    return rule if isinstance(rule, str) else None


# -- the numbers ---------------------------------------------------------------------------------------
def cosine_similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """[T, T] cosine similarity between the rows of [T, D]: S[s, t] = <v_s, v_t> / (|v_s| |v_t|);
    a zero row has similarity 0 to every row (itself included)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def cosine_to_final(vectors: np.ndarray) -> np.ndarray:
    """[T]: cosine similarity of each row of [T, D] to the last row (the last column of
    `cosine_similarity_matrix`)."""
    return cosine_similarity_matrix(vectors)[:, -1]


def op_ranks(importances: np.ndarray, active: np.ndarray) -> np.ndarray:
    """[..., 7] int: rank of each op among the active ops of its edge by importance, 0 = largest;
    of two equal importances the lower op index ranks first. Inactive ops get rank 7 (N_OPS)."""
    imp = np.asarray(importances, dtype=np.float64)
    act = np.asarray(active, dtype=bool)
    other, this = imp[..., None, :], imp[..., :, None]        # [..., o, o']
    lower = np.arange(N_OPS)[None, :] < np.arange(N_OPS)[:, None]
    ahead = act[..., None, :] & ((other > this) | ((other == this) & lower))
    return np.where(act, ahead.sum(axis=-1), N_OPS)


def topk_masks(importances: np.ndarray, active: np.ndarray, k: int) -> np.ndarray:
    """bool [T, 14, 7]: per epoch and edge the k active ops of largest importance (ties: the
    lower op index); an edge with fewer than k active ops keeps all of them, pruned ops never."""
    return op_ranks(importances, active) < k


def hamming_similarity(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Fraction of positions where the two binary masks agree (1 - normalised Hamming
    distance); over the 98 (edge, op) positions for [14, 7] masks."""
    a, b = np.asarray(mask_a, dtype=bool), np.asarray(mask_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"hamming_similarity: masks of shapes {a.shape} and {b.shape}")
    return float(np.mean(a == b))


def genotype_mask(genotype: Genotype) -> np.ndarray:
    """bool [14, 7]: True at the (edge, op) pairs a genotype keeps (8 of the 98)."""
    mask = np.zeros((N_EDGES, N_OPS), dtype=bool)
    for i, j, op in genotype.edges():
        mask[EDGES.index((i, j)), OP_NAMES.index(op)] = True
    return mask


def epoch_genotype_masks(alpha: np.ndarray, edge_weights: np.ndarray, active: np.ndarray) -> np.ndarray:
    """bool [T, 14, 7]: the genotype the discretisation rule (`discretise_weights`) gives for
    each epoch's alpha [T, 14, 7], capped edge weights [T, 14] and active mask [T, 14, 7]."""
    return np.array([genotype_mask(discretise_weights(a, w, m)) for a, w, m in zip(alpha, edge_weights, active)],
                    dtype=bool).reshape(len(alpha), N_EDGES, N_OPS)


def first_entry_epochs(importances: np.ndarray, active: np.ndarray, epochs: Sequence[int], edge: int,
                       op: int) -> dict[int, int | None]:
    """For k in (3, 2, 1): the FIRST epoch (from `epochs`, aligned with the T rows of
    importances [T, 14, 7] and active [T, 14, 7]) at which `op` is in the top-k of `edge`, ranked
    among the edge's active ops by importance (ties: the lower op index); None if it never is."""
    inside = op_ranks(importances[:, edge, :], active[:, edge, :])[:, op]
    result: dict[int, int | None] = {}
    for k in TOP_K:
        hits = np.flatnonzero(inside < k)
        result[k] = int(epochs[hits[0]]) if len(hits) else None
    return result


def edge_set_epoch(kept: np.ndarray, final_kept: np.ndarray, epochs: Sequence[int], node: int) -> int | None:
    """The first epoch from which the set of edges into `node` kept at each epoch (kept [T, 14]
    bool, e.g. `epoch_genotype_masks(...).any(axis=2)`) equals the final one (final_kept [14])
    and stays equal to the last epoch; None if it differs at the last epoch."""
    into = edges_into(node)
    same = (np.asarray(kept, dtype=bool)[:, into] == np.asarray(final_kept, dtype=bool)[into]).all(axis=1)
    if not same[-1]:
        return None
    differ = np.flatnonzero(~same)
    return int(epochs[differ[-1] + 1]) if len(differ) else int(epochs[0])


def positive_finite(values: np.ndarray) -> np.ndarray:
    """bool mask of the entries a log axis can show: finite and > 0."""
    values = np.asarray(values, dtype=np.float64)
    return np.isfinite(values) & (values > 0)


# -- writing -------------------------------------------------------------------------------------------
def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    return paths


def _tsv(out: Path, name: str, header: Sequence[str], lines: list[Sequence[Any]]) -> Path:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "NaN"
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.6g}"
        return str(value)

    path = out / name
    write_text_atomic(path, "\n".join("\t".join(cell(v) for v in line) for line in [header, *lines]) + "\n")
    return path


def _edge_grid(plt, **kwargs):
    """4 x 5 axes; the panel of edge (i, j) is axes[j - 2, i]; unused panels hidden."""
    fig, axes = plt.subplots(4, 5, figsize=(16, 11), sharex=True, **kwargs)
    for ax in axes.flat:
        ax.set_visible(False)
    return fig, axes


def _shade_warmup(ax, epochs: np.ndarray, warmup: np.ndarray) -> None:
    if warmup.any():
        ax.axvspan(epochs[0] - 0.5, epochs[warmup][-1] + 0.5, color="0.9", zorder=0, label="warm-up")


def search_figures(search_dir: str | Path, out: str | Path) -> list[Path]:
    """Write the analysis figures (PNG + PDF) and their TSVs into OUT; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    search_dir, out = Path(search_dir), Path(out)
    log_path = search_dir / "search_log.jsonl"
    rows = read_search_log(search_dir)
    genotype = Genotype.load(search_dir / "genotype.json")
    out.mkdir(parents=True, exist_ok=True)
    epochs = np.array([int(row["epoch"]) for row in rows])
    warmup = np.array([row.get("phase") == "warmup" for row in rows])
    imp = importance_matrix(rows, log_path)
    active = active_matrix(rows, log_path)
    alpha = _array(log_path, rows, "alpha", (N_EDGES, N_OPS))
    edge_weights = _array(log_path, rows, "edge_weights", (N_EDGES,))
    written: list[Path] = []

    # importance trajectories
    fig, axes = _edge_grid(plt)
    for e, (i, j) in enumerate(EDGES):
        ax = axes[j - 2, i]
        ax.set_visible(True)
        for o, name in enumerate(OP_NAMES):
            ax.plot(epochs, imp[:, e, o], label=name, linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"edge {i}->{j}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.supxlabel("epoch")
    fig.supylabel("importance softmax(alpha) x capped edge weight")
    written += _save(fig, out, "importance_trajectories")
    plt.close(fig)
    written.append(_tsv(out, "importance_trajectories.tsv", ("epoch", "edge", "op", "active", "importance"),
                        [(int(epochs[t]), EDGE_NAMES[e], OP_NAMES[o], int(active[t, e, o]), imp[t, e, o])
                         for t in range(len(rows)) for e in range(N_EDGES) for o in range(N_OPS)]))

    # cosine similarity: across epochs, and to the final epoch
    vectors = imp.reshape(len(rows), -1)
    similarity = cosine_similarity_matrix(vectors)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(similarity, origin="lower", cmap="viridis", vmin=min(0.0, float(similarity.min())), vmax=1.0,
                      extent=(epochs[0] - 0.5, epochs[-1] + 0.5, epochs[0] - 0.5, epochs[-1] + 0.5))
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch")
    ax.set_title("98-d importance vector across epochs")
    written += _save(fig, out, "importance_similarity")
    plt.close(fig)
    written.append(_tsv(out, "importance_similarity.tsv", ("epoch", *map(str, epochs)),
                        [(int(epochs[t]), *similarity[t]) for t in range(len(rows))]))

    to_final = cosine_to_final(vectors)
    fig, ax = plt.subplots(figsize=(7, 4))
    _shade_warmup(ax, epochs, warmup)
    ax.plot(epochs, to_final, marker=".", label="importance vector")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"cosine similarity to epoch {epochs[-1]}")
    ax.set_title("98-d importance vector vs the final epoch's")
    ax.legend(fontsize=8)
    written += _save(fig, out, "importance_to_final")
    plt.close(fig)
    written.append(_tsv(out, "importance_to_final.tsv", ("epoch", "cosine_to_final"),
                        list(zip(map(int, epochs), to_final))))

    # Hamming similarity of the top-k masks and of the per-epoch genotype
    masks = {k: topk_masks(imp, active, k) for k in sorted(TOP_K)}
    genotypes = epoch_genotype_masks(alpha, edge_weights, active)
    final_genotype = genotype_mask(genotype)
    curves = {f"top-{k}": [hamming_similarity(m[t], m[-1]) for t in range(len(rows))] for k, m in masks.items()}
    curves["genotype"] = [hamming_similarity(g, final_genotype) for g in genotypes]
    fig, ax = plt.subplots(figsize=(7, 4))
    _shade_warmup(ax, epochs, warmup)
    for label, values in curves.items():
        ax.plot(epochs, values, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Hamming similarity (98 edge-op positions)")
    ax.set_title("top-k masks vs the final epoch's; genotype vs the final genotype")
    ax.legend(fontsize=8)
    written += _save(fig, out, "mask_similarity")
    plt.close(fig)
    written.append(_tsv(out, "mask_similarity.tsv", ("epoch", "top1", "top2", "top3", "genotype"),
                        [(int(epochs[t]), *(curves[name][t] for name in ("top-1", "top-2", "top-3", "genotype")))
                         for t in range(len(rows))]))

    # when the final ops and edge sets appear (search epochs only; see the module docstring)
    searched = ~warmup if (~warmup).any() else np.ones(len(rows), dtype=bool)
    labels, entries, table = [], [], []
    for i, j, op in genotype.edges():
        entry = first_entry_epochs(imp[searched], active[searched], epochs[searched], EDGES.index((i, j)),
                                   OP_NAMES.index(op))
        labels.append(f"{i}->{j}\n{op}")
        entries.append(entry)
        table.append((f"{i}_{j}", op, *(entry[k] for k in TOP_K)))
    written.append(_tsv(out, "final_op_entry.tsv",
                        ("edge", "op", *(f"top{k}_first_epoch" for k in TOP_K)), table))
    kept = genotypes.any(axis=2)[searched]
    final_kept = final_genotype.any(axis=1)
    nodes = list(range(N_INPUT_NODES, N_INPUT_NODES + N_INTERMEDIATE_NODES))
    node_epochs = [edge_set_epoch(kept, final_kept, epochs[searched], node) for node in nodes]
    node_inputs = [",".join(str(EDGES[e][0]) for e in edges_into(node) if final_kept[e]) for node in nodes]
    written.append(_tsv(out, "edge_set_epoch.tsv", ("node", "inputs", "epoch"),
                        list(zip(nodes, node_inputs, node_epochs))))

    fig, (ax, ax_nodes) = plt.subplots(1, 2, figsize=(14, 4), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(labels))
    for n, k in enumerate(TOP_K):
        values = [np.nan if entry[k] is None else entry[k] for entry in entries]
        ax.bar(x + (n - 1) * 0.27, values, width=0.27, label=f"top-{k}")
        for xi, value in zip(x, values):
            if np.isnan(value):
                ax.text(xi + (n - 1) * 0.27, 0, "never", rotation=90, fontsize=6, ha="center", va="bottom")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("first epoch in the top-k")
    ax.set_title("when each final op first enters the top-k of its edge")
    values = [np.nan if v is None else v for v in node_epochs]
    ax_nodes.bar(np.arange(len(nodes)), values, color="tab:gray")
    for xi, value in enumerate(values):
        if np.isnan(value):
            ax_nodes.text(xi, 0, "never", rotation=90, fontsize=6, ha="center", va="bottom")
    ax_nodes.set_xticks(np.arange(len(nodes)), [f"node {n}\n<- {s}" for n, s in zip(nodes, node_inputs)], fontsize=7)
    ax_nodes.set_ylabel("epoch from which it stays")
    ax_nodes.set_title("final incoming-edge set", fontsize=10)
    for a in (ax, ax_nodes):
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
        if warmup.any():
            a.axhline(epochs[warmup][-1], color="0.5", linestyle=":", linewidth=1, label="last warm-up epoch")
    ax.legend(fontsize=8)
    written += _save(fig, out, "final_op_entry")
    plt.close(fig)

    # JS drift vs threshold
    js, tau = edge_series(rows, "js"), edge_series(rows, "tau")
    prunes = pruned_epochs(rows)
    rule = stability_rule(rows, search_dir)
    fig, axes = _edge_grid(plt)
    for e, (i, j) in enumerate(EDGES):
        ax = axes[j - 2, i]
        ax.set_visible(True)
        shown = False
        for values, label, style in ((js[:, e], "JS", "-"), (tau[:, e], "tau", "--")):
            ok = positive_finite(values)
            if ok.any():
                ax.plot(epochs[ok], values[ok], style, marker=".", markersize=3, linewidth=1, label=label)
                shown = True
        for epoch in prunes[e]:
            t = int(np.flatnonzero(epochs == epoch)[0])
            if positive_finite(js[t, e]):
                ax.plot([epoch], [js[t, e]], "v", color="tab:red", markersize=5,
                        label="pruned" if epoch == prunes[e][0] else None)
                shown = True
            else:
                ax.axvline(epoch, color="tab:red", linewidth=0.8, linestyle=":")
        if shown:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"edge {i}->{j}", fontsize=9)
        ax.tick_params(which="both", labelsize=7)
    if positive_finite(js).any() or positive_finite(tau).any():
        axes[0, 0].legend(fontsize=6, loc="best")
    fig.supxlabel("epoch")
    fig.supylabel("nats (log scale)")
    title = "Jensen-Shannon drift of p_e vs the threshold tau_e (markers: an op pruned)"
    if rule:
        title += f"; stability rule: {rule}"
    if not positive_finite(tau).any():
        title += "; no threshold in this log (no stability test)"
    fig.suptitle(title)
    written += _save(fig, out, "js_vs_tau")
    plt.close(fig)
    decisions = [row.get("decision") if isinstance(row.get("decision"), list) else None for row in rows]
    written.append(_tsv(out, "js_vs_tau.tsv", ("epoch", "edge", "js", "tau", "decision", "pruned"),
                        [(int(epochs[t]), EDGE_NAMES[e], js[t, e], tau[t, e],
                          decisions[t][e] if decisions[t] is not None and len(decisions[t]) == N_EDGES else "NaN",
                          ",".join(op for name, op in rows[t].get("pruned") or [] if name == EDGE_NAMES[e]) or "-")
                         for t in range(len(rows)) for e in range(N_EDGES)]))
    return written
