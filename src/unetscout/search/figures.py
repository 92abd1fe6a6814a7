"""Analysis figures of one cell search, from its `search_log.jsonl` (METHODS §4 "What is logged").

- `importance_trajectories`: I_{e,o} per epoch, one panel per edge, one line per op;
- `importance_similarity`: cosine similarity of the 98-d importance vector between epochs;
- `final_op_entry`: for each op of the final genotype, the epoch from which it stays in the
  top-3 / top-2 / top-1 of its edge (ranked by importance; "stays" because the first
  post-warm-up epochs rank near-ties and an early, transient entry says little). The numbers
  are also written as `final_op_entry.tsv`.
Each figure is written as PNG and PDF.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unetscout.atomic import atomic_file, write_text_atomic
from unetscout.errors import file_error
from unetscout.models.cell import EDGES, N_EDGES, N_OPS, OP_NAMES
from unetscout.models.genotype import Genotype

TOP_K = (3, 2, 1)


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
    return rows


def importance_matrix(rows: list[dict]) -> np.ndarray:
    """[epochs, 14, 7] importances (pruned ops 0)."""
    return np.array([row["importance"] for row in rows], dtype=np.float64).reshape(len(rows), N_EDGES, N_OPS)


def cosine_similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """[T, T] cosine similarity between the rows of [T, D]."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    return unit @ unit.T


def entry_epochs(importances: np.ndarray, epochs: np.ndarray, edge: int, op: int) -> dict[int, int | None]:
    """For k in TOP_K: the first epoch from which `op` stays in the top-k of `edge` to the end
    (rank = number of ops with strictly larger importance); None if it is not there at the end."""
    values = importances[:, edge, :]
    rank = (values > values[:, [op]]).sum(axis=1)
    result: dict[int, int | None] = {}
    for k in TOP_K:
        inside = rank < k
        if not inside[-1]:
            result[k] = None
            continue
        outside = np.flatnonzero(~inside)
        result[k] = int(epochs[outside[-1] + 1]) if len(outside) else int(epochs[0])
    return result


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    return paths


def search_figures(search_dir: str | Path, out: str | Path) -> list[Path]:
    """Write the three analysis figures (PNG + PDF) and final_op_entry.tsv into OUT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    search_dir, out = Path(search_dir), Path(out)
    rows = read_search_log(search_dir)
    genotype = Genotype.load(search_dir / "genotype.json")
    out.mkdir(parents=True, exist_ok=True)
    epochs = np.array([row["epoch"] for row in rows])
    imp = importance_matrix(rows)
    written: list[Path] = []

    fig, axes = plt.subplots(4, 5, figsize=(16, 11), sharex=True)
    for ax in axes.flat:
        ax.set_visible(False)
    for e, (i, j) in enumerate(EDGES):
        ax = axes[j - 2, i]
        ax.set_visible(True)
        for o, name in enumerate(OP_NAMES):
            ax.plot(epochs, imp[:, e, o], label=name, linewidth=1)
        ax.set_title(f"edge {i}->{j}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.supxlabel("epoch")
    fig.supylabel("importance softmax(alpha) x capped edge weight")
    written += _save(fig, out, "importance_trajectories")
    plt.close(fig)

    similarity = cosine_similarity_matrix(imp.reshape(len(rows), -1))
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(similarity, origin="lower", cmap="viridis", vmin=min(0.0, float(similarity.min())), vmax=1.0,
                      extent=(epochs[0] - 0.5, epochs[-1] + 0.5, epochs[0] - 0.5, epochs[-1] + 0.5))
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch")
    ax.set_title("98-d importance vector across epochs")
    written += _save(fig, out, "importance_similarity")
    plt.close(fig)

    labels, table = [], ["edge\top\t" + "\t".join(f"top{k}_from_epoch" for k in TOP_K)]
    entries = []
    for i, j, op in genotype.edges():
        e = EDGES.index((i, j))
        entry = entry_epochs(imp, epochs, e, OP_NAMES.index(op))
        labels.append(f"{i}->{j}\n{op}")
        entries.append(entry)
        table.append(f"{i}_{j}\t{op}\t" + "\t".join("NaN" if entry[k] is None else str(entry[k]) for k in TOP_K))
    write_text_atomic(out / "final_op_entry.tsv", "\n".join(table) + "\n")
    written.append(out / "final_op_entry.tsv")
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(labels))
    for n, k in enumerate(TOP_K):
        values = [np.nan if entry[k] is None else entry[k] for entry in entries]
        ax.bar(x + (n - 1) * 0.27, values, width=0.27, label=f"top-{k}")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("epoch from which it stays")
    ax.set_title("when each final op enters the top-k of its edge")
    ax.legend(fontsize=8)
    written += _save(fig, out, "final_op_entry")
    plt.close(fig)
    return written
