"""The Lean U-Net study's figures (docs/methods.md#pruning-figures), per dataset and preset:

- `pruning_dice_*`: test Dice against parameters for every method: each prune run's steps
  (its log, one line per seed), and Table 6's medians of the validation picks, the retrained
  architectures, the scaled U-Nets and LUnet;
- `pruning_channels_*`: the channels of every layer over the pruning steps, one panel per
  criterion (the first seed): does pruning flatten the U-Net, widest layers first?
- `pruning_distribution_*`: the channels of every layer at 75 / 50 / 25 % of the channels
  (the snapshots, median over seeds), one panel per criterion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetscout.models.spec import ModelSpec
from unetscout.models.widths import UNetWidths, layer_depth
from unetscout.names import PRUNE_CRITERION_LABELS
from unetscout.prune.log import read_log
from unetscout.prune.settings import CHECKPOINT_FRACTIONS, parse_study_model
from unetscout.stats.plotting import pyplot, save, skip
from unetscout.stats.tables.pruning import table_pruning
from unetscout.stats.tables.results import Results

MARKERS = {"scaled": ("s", "tab:gray"), "retrained": ("^", "tab:green"), "lunet": ("*", "tab:red"),
           "val_pick": ("o", "tab:blue"), "max_test": ("x", "tab:purple")}


def _runs(results: Results, dataset_dir: Path, preset: str) -> dict[str, dict[str, Path]]:
    """criterion -> {seed: run folder with a log.tsv}."""
    found = {}
    for criterion in PRUNE_CRITERION_LABELS:
        runs = {s: d for s, d in results.seed_dirs(dataset_dir / "prune" / criterion / preset).items()
                if (d / "log.tsv").is_file()}
        if runs:
            found[criterion] = runs
    return found


def _presets(results: Results, dataset_dir: Path) -> list[str]:
    prune = dataset_dir / "prune"
    return sorted({p for criterion in results.subdirs(prune) for p in results.subdirs(prune / criterion)})


def _kind(method: str) -> str:
    for suffix in ("max_test", "val_pick"):
        if method.endswith(suffix):
            return suffix
    return parse_study_model(method)[0]


def dice_against_parameters(dataset_dir: Path, preset: str, runs: dict, rows: list[dict], out_dir: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for i, (criterion, seeds) in enumerate(runs.items()):
        for j, run in enumerate(seeds.values()):
            log = read_log(run / "log.tsv")
            ax.plot(log["params"], log["test_dice"], color=colours(i + 3), lw=0.8, alpha=0.7,
                    label=f"{PRUNE_CRITERION_LABELS[criterion]}: pruning steps" if j == 0 else None)
    for row in rows:
        if row["dice_median"] is None or row["params_median"] is None:
            continue
        marker, colour = MARKERS[_kind(row["method"])]
        ax.scatter(row["params_median"], row["dice_median"], marker=marker, color=colour, s=40, zorder=3)
        ax.annotate(row["label"], (row["params_median"], row["dice_median"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test Dice (patients' mean)")
    ax.set_title(f"{dataset_dir.name} {preset}: Dice against parameters (markers: medians over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: it hid points inside
    return save(fig, out_dir, f"pruning_dice_{dataset_dir.name}_{preset}")


def _layer_style(name: str, n_stages: int, cmap) -> dict:
    return {"color": cmap(layer_depth(name) / max(n_stages - 1, 1)), "ls": "-" if name.startswith("enc") else "--"}


def channels_over_steps(dataset_dir: Path, preset: str, runs: dict, out_dir: Path) -> list[Path]:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.8), squeeze=False, constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for ax, (criterion, seeds) in zip(axes[0], runs.items()):
        seed, run = next(iter(seeds.items()))
        log = read_log(run / "log.tsv")
        layers = list(log["widths"].iloc[0])
        n_stages = 1 + max(layer_depth(name) for name in layers)
        share = 100 * log["fraction"].to_numpy()
        for name in layers:
            ax.plot(share, [w[name] for w in log["widths"]], lw=1, label=name, **_layer_style(name, n_stages, cmap))
        ax.invert_xaxis()
        ax.set_yscale("log", base=2)
        ax.set_xlabel("channels remaining (%)")
        ax.set_ylabel("channels of the layer")
        ax.set_title(f"{PRUNE_CRITERION_LABELS[criterion]} ({seed})", fontsize=9)
    axes[0][-1].legend(fontsize=5, ncol=2, title="layer (colour: depth; dashed: decoder)", title_fontsize=6)
    fig.suptitle(f"{dataset_dir.name} {preset}: channels per layer during pruning", fontsize=10)
    return save(fig, out_dir, f"pruning_channels_{dataset_dir.name}_{preset}")


def snapshot_widths(run: Path, percent: int) -> dict[str, int] | None:
    spec = run / f"at{percent}" / "model.json"
    if not spec.is_file():
        return None
    return UNetWidths.from_json(ModelSpec.load(spec).widths).layer_widths()


def channels_at_snapshots(dataset_dir: Path, preset: str, runs: dict, out_dir: Path) -> list[Path]:
    plt = pyplot()
    percents = [round(f * 100) for f in CHECKPOINT_FRACTIONS]
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.6 * len(runs)), squeeze=False, constrained_layout=True)
    for ax, (criterion, seeds) in zip(axes[:, 0], runs.items()):
        start = read_log(next(iter(seeds.values())) / "log.tsv")["widths"].iloc[0]
        layers = list(start)
        x = np.arange(len(layers))
        bar = 0.8 / (len(percents) + 1)
        ax.bar(x, [start[n] for n in layers], bar, color="lightgray", label="start")
        for i, percent in enumerate(percents):
            widths = [w for run in seeds.values() if (w := snapshot_widths(run, percent)) is not None]
            if widths:
                ax.bar(x + (i + 1) * bar, [np.median([w[n] for w in widths]) for n in layers], bar,
                       label=f"{percent}% ({len(widths)} seeds)")
        ax.set_xticks(x + bar * len(percents) / 2, layers, fontsize=6, rotation=60)
        ax.set_yscale("log", base=2)
        ax.set_ylabel("channels")
        ax.set_title(PRUNE_CRITERION_LABELS[criterion], fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(f"{dataset_dir.name} {preset}: channels per layer at 75 / 50 / 25 % (median over seeds)",
                 fontsize=10)
    return save(fig, out_dir, f"pruning_distribution_{dataset_dir.name}_{preset}")


def pruning_figures(results: Results, dataset: str, out_dir: Path) -> list[Path]:
    dataset_dir = results.root / dataset
    presets = _presets(results, dataset_dir)
    if not presets:
        skip(f"pruning figures of {dataset_dir.name}", "no prune/ results")
        return []
    rows = [r for r in table_pruning(results).rows if r["dataset"] == dataset]
    written = []
    for preset in presets:
        runs = _runs(results, dataset_dir, preset)
        if not runs:
            skip(f"pruning figures of {dataset_dir.name} {preset}", "no prune run has a log.tsv")
            continue
        block = [r for r in rows if r["preset"] == preset]
        written += dice_against_parameters(dataset_dir, preset, runs, block, out_dir)
        written += channels_over_steps(dataset_dir, preset, runs, out_dir)
        written += channels_at_snapshots(dataset_dir, preset, runs, out_dir)
    return written
