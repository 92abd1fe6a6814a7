"""The papers' summary figures, drawn from result files alone (PNG and PDF).

Per dataset: the width sensitivity curve with the knee pick (`width/scores.tsv`,
`width/selection.json`), per-patient paired Dice of the reference against every skip method,
the random cell baseline included (`patients.tsv`), and the search cost of IAC against
IAC-LTH (`search_summary.json`; the random baseline searches nothing and is left out), and the
Lean U-Net study's figures (unetscout.stats.pruning_figures).
A figure whose inputs are missing is skipped and reported, never drawn from invented values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from unetscout.atomic import write_json_atomic
from unetscout.errors import file_error
from unetscout.names import METHOD_LABELS, REFERENCE, REFERENCE_LABEL, SEARCH_METHODS, SKIP_METHODS
from unetscout.stats.plotting import pyplot as _pyplot, save as _save, skip as _skip
from unetscout.stats.pruning_figures import pruning_figures
from unetscout.stats.tables.results import Results
from unetscout.stats.tests import bootstrap_ci

# The figures also show the identity-skip reference; the methods' labels are the tables'.
LABELS = {REFERENCE: REFERENCE_LABEL, **METHOD_LABELS}


def width_sensitivity(results: Results, dataset: str, out_dir: Path) -> list[Path]:
    dataset_dir = results.root / dataset
    scores_tsv, selection_json = dataset_dir / "width" / "scores.tsv", dataset_dir / "width" / "selection.json"
    if not results.is_file(scores_tsv) or not results.is_file(selection_json):
        _skip(f"width sensitivity of {dataset_dir.name}", "no width/scores.tsv or width/selection.json")
        return []
    scores = pd.read_csv(scores_tsv, sep="\t")
    try:
        selection = json.loads(selection_json.read_text())
        picked = int(selection["selected_cap"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise file_error(selection_json, "not a width selection (no selected_cap)") from None
    curve = scores.groupby("cap")["score_norm"].agg(["mean", "min", "max"]).sort_index()
    params = scores.groupby("cap")["params"].first().sort_index()
    plt = _pyplot()
    fig, (ax, knee_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True,
                                      gridspec_kw={"width_ratios": [2, 1]})
    caps = curve.index.to_numpy()
    ax.plot(caps, curve["mean"], "o-", color="tab:blue", label="normalised score (mean over seeds)")
    if scores["seed"].nunique() > 1:
        ax.fill_between(caps, curve["min"], curve["max"], color="tab:blue", alpha=0.2, label="range over seeds")
    ax.axvline(picked, color="tab:green", linestyle=":", linewidth=2, label=f"pick: cap {picked}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(caps, [str(c) for c in caps])
    ax.set_xlabel("width cap")
    ax.set_ylabel("Jacobian sensitivity at init (normalised)")
    top = ax.secondary_xaxis("top")
    top.set_xticks(caps, [f"{p / 1e3:.3g}k" if p < 1e6 else f"{p / 1e6:.3g}M" for p in params], fontsize=7)
    top.set_xlabel("parameters")
    ax.legend(fontsize=8)
    knee = {int(k): v for k, v in selection.get("knee_scores", {}).items()}
    if knee:
        knee_ax.bar(list(knee), list(knee.values()), color="tab:gray")
        knee_ax.set_xlabel("k (knee position)")
        knee_ax.set_ylabel("post(k) - pre(k)")
        knee_ax.set_title("knee scores", fontsize=9)
    fig.suptitle(f"{dataset_dir.name}: training-free width selection")
    return _save(fig, out_dir, f"width_sensitivity_{dataset_dir.name}")


def paired_dice_data(results: Results, dataset: str, backbone: str, preset: str, seed: str) -> pd.DataFrame:
    """Per-patient Dice, one column per method present (Ref first), patients as rows."""
    ref = results.backbone_dir(dataset, backbone, preset) / seed / "patients.tsv"
    columns = {}
    if results.is_file(ref):
        columns[REFERENCE] = results.patients(ref).set_index("patient")["dice"]
    for method in SKIP_METHODS:
        path = results.skip_dir(dataset, backbone, preset, method) / seed / "patients.tsv"
        if results.is_file(path):
            columns[method] = results.patients(path).set_index("patient")["dice"]
    return pd.DataFrame(columns)


def _skip_runs(results: Results, dataset: str) -> list[tuple[str, str, str]]:
    """(backbone, preset, seed) of every visible skip-method run, sorted."""
    skips = results.root / dataset / "skips"
    return sorted({(backbone, preset, seed) for backbone in results.subdirs(skips)
                   for preset in results.subdirs(skips / backbone)
                   for method in results.subdirs(skips / backbone / preset)
                   for seed in results.seed_dirs(skips / backbone / preset / method)})


def paired_dice(results: Results, dataset: str, out_dir: Path) -> list[Path]:
    written = []
    for backbone, preset, seed in _skip_runs(results, dataset):
        stem = f"paired_dice_{dataset}_{backbone}_{preset}_{seed}"
        data = paired_dice_data(results, dataset, backbone, preset, seed)
        if REFERENCE not in data or data.shape[1] < 2:
            _skip(stem, "needs the reference and at least one skip method")
            continue
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(1.3 * data.shape[1] + 2, 4), constrained_layout=True)
        positions = range(data.shape[1])
        for _, row in data.iterrows():
            ax.plot(positions, row.to_numpy(), "-", color="0.75", linewidth=0.8, zorder=1)
        for x, method in zip(positions, data.columns):
            values = data[method].dropna().to_numpy()
            ax.scatter([x] * len(values), values, s=14, zorder=2)
            low, high = bootstrap_ci(values) if len(values) else (float("nan"), float("nan"))
            ax.errorbar([x + 0.15], [values.mean()], yerr=[[values.mean() - low], [high - values.mean()]],
                        fmt="D", color="black", capsize=4, zorder=3)
        ax.set_xticks(list(positions), [LABELS[m] for m in data.columns])
        ax.set_ylabel("patient Dice (test)")
        ax.set_title(f"{dataset} {backbone} {preset} {seed}: per patient, mean [95 % CI]", fontsize=9)
        written += _save(fig, out_dir, stem)
    return written


def search_cost(results: Results, dataset: str, out_dir: Path) -> list[Path]:
    rows = []
    for backbone, preset, seed in _skip_runs(results, dataset):
        for method in SEARCH_METHODS:
            # The tables' reader: a damaged summary is an error naming it, in figures as in tables.
            summary = results.search_summary(results.skip_dir(dataset, backbone, preset, method) / seed)
            if summary is not None:
                rows.append({"run": f"{backbone}/{preset}/{seed}", "method": method,
                             "seconds": float(summary.search_seconds), "epochs": int(summary.epochs_run)})
    if not rows:
        _skip(f"search cost of {dataset}", "no search_summary.json")
        return []
    table = pd.DataFrame(rows).pivot_table(index="run", columns="method", values=["seconds", "epochs"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(table)), 4), constrained_layout=True)
    methods = [m for m in SEARCH_METHODS if m in table["seconds"]]
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [x + i * width for x in range(len(table))]
        bars = ax.bar(xs, table["seconds"][method], width, label=LABELS[method])
        for bar, epochs in zip(bars, table["epochs"][method]):
            ax.annotate(f"{epochs:.0f} ep", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
    labels = []
    for run in table.index:
        if len(methods) == 2:
            labels.append(f"{run}\nspeed-up {table['seconds']['iac'][run] / table['seconds']['iac_lth'][run]:.1f}x")
        else:
            labels.append(run)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(table))], labels, fontsize=8)
    ax.set_ylabel("search time (s)")
    ax.set_title(f"{dataset}: search cost", fontsize=10)
    ax.legend()
    return _save(fig, out_dir, f"search_cost_{dataset}")


def build_figures(results: Results | Path, out_dir: Path) -> list[Path]:
    """Every figure of every dataset `results` sees (a folder: all of it), to `out_dir`;
    `figures.json` lists them."""
    results, out_dir = Results.of(results), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for dataset in results.datasets():
        written += width_sensitivity(results, dataset, out_dir)
        written += paired_dice(results, dataset, out_dir)
        written += search_cost(results, dataset, out_dir)
        written += pruning_figures(results, dataset, out_dir)
    write_json_atomic(out_dir / "figures.json", [str(p) for p in written])
    return written
