# Input functions and dataset bookkeeping shared by every stage.
#
# Every value that reaches a shell command is quoted: the rules' fields with `{...:q}`, and the
# flag strings built here (several words in one parameter) with shlex.join, word by word. A
# config value is then one argument whatever it holds, never a second command. For plain
# values shlex.join writes what the unquoted strings were, so the parameters (and Snakemake's
# rerun decisions that compare them) do not change.

import shlex
from pathlib import Path


# Classified and checked by config_check.smk's dataset_entries (check_config has already run it).
DATASETS = dataset_entries(config["datasets"])
REGISTRY_DATASETS = [name for name, source in DATASETS.items() if "registry" in source]


wildcard_constraints:
    dataset="[^/]+",


def raw_dir(wildcards):
    """A user's own nnU-Net raw folder is read in place; everything else lands in resources/raw."""
    source = DATASETS[wildcards.dataset]
    return source.get("path", f"resources/raw/{wildcards.dataset}")


def slices_dir(dataset):
    return f"results/{dataset}/slices"


def all_targets():
    return ([slices_dir(dataset) for dataset in DATASETS] + backbone_targets() + width_targets() + skip_targets()
            + prune_targets() + stats_targets())


# ---------------------------------------------------------------- backbones

from unetscout.names import ARCHITECTURES, XTINY


def selection_json(dataset):
    return f"results/{dataset}/width/selection.json"


def selection_input(wildcards):
    """Only the xtiny backbone depends on the width pick: nothing else reruns when it changes."""
    return selection_json(wildcards.dataset) if wildcards.backbone == XTINY else []


def backbone_arguments(wildcards):
    """`unetscout train` model flags for a backbone name of the config."""
    models = config["models"]
    if wildcards.backbone == XTINY:
        words = ["--backbone", "plain", "--cap-from", selection_json(wildcards.dataset)]
    elif wildcards.backbone.startswith("cap"):
        words = ["--backbone", "plain", "--cap", wildcards.backbone[3:]]
    elif ARCHITECTURES[wildcards.backbone].smp_encoder:
        words = ["--backbone", wildcards.backbone, "--encoder-weights", models[wildcards.backbone]["encoder_weights"],
                 "--weights-cache", config["weights_cache"]]
    elif ARCHITECTURES[wildcards.backbone].peer:  # a fixed design: no width settings
        words = ["--backbone", wildcards.backbone]
    elif ARCHITECTURES[wildcards.backbone].constant_width:
        words = ["--backbone", wildcards.backbone, "--width", models[wildcards.backbone]["width"]]
    else:
        words = ["--backbone", wildcards.backbone, "--cap", models[wildcards.backbone]["cap"]]
    return shlex.join(str(word) for word in words)


def set_flags(overrides: dict) -> str:
    """`--set key=value` flags, one shell word each, sorted: key order in a YAML file must not
    count as a parameter change (Snakemake reruns jobs whose params changed)."""
    return shlex.join(word for key, value in sorted(overrides.items()) for word in ("--set", f"{key}={value}"))


def train_overrides(wildcards):
    """The config's per-preset overrides."""
    return set_flags(config["train"].get(wildcards.preset, {}))


def backbone_dir(dataset, backbone, preset, seed):
    return f"results/{dataset}/backbones/{backbone}/{preset}/seed{seed}"


# (backbone, preset, seed) of every backbone run: config_check.smk's grid_cells (`grid` blocks,
# or backbones x presets x seeds).
GRID = grid_cells(config)


def backbone_targets():
    return [f"{backbone_dir(d, b, p, s)}/patients.tsv" for d in DATASETS for b, p, s in GRID]


# ---------------------------------------------------------------- width selection and sweep

WIDTH_CAPS = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)


def sweep_dir(dataset, cap, preset, seed):
    return f"results/{dataset}/width/sweep/cap{cap}/{preset}/seed{seed}"


def sweep_settings(preset):
    """What a sweep run trains with: the preset's overrides, then width.sweep_train (the
    candidates' short schedule; the pick, a backbone, trains with the preset's full one)."""
    return {**config["train"].get(preset, {}), **config["width"]["sweep_train"]}


def sweep_overrides(wildcards):
    return set_flags(sweep_settings(wildcards.preset))


def sweep_inputs(wildcards):
    """patients.tsv of every cap; the nnU-Net backbone's own run serves as its cap (no retraining)
    unless the sweep has a schedule of its own (width.sweep_train)."""
    preset, seed = config["width"]["sweep_preset"], config["width"]["sweep_seed"]
    runs = []
    for cap in WIDTH_CAPS:
        if cap == config["models"]["plain"]["cap"] and not config["width"]["sweep_train"]:
            runs.append(f"{backbone_dir(wildcards.dataset, 'plain', preset, seed)}/patients.tsv")
        else:
            runs.append(f"{sweep_dir(wildcards.dataset, cap, preset, seed)}/patients.tsv")
    return runs


def width_targets():
    targets = [selection_json(d) for d in DATASETS]
    if config["width"]["sweep"]:
        targets += [f"results/{d}/width/sweep.tsv" for d in DATASETS]
    return targets


# ---------------------------------------------------------------- skips and searched cells

from unetscout.names import BASELINE_SKIPS, CELL_METHODS, SEARCH_METHODS


def search_overrides(wildcards):
    """Search settings shared by both methods, then the method's own; sorted."""
    overrides = dict(config["search"]["all"])
    overrides.update(config["search"].get(wildcards.method, {}))
    return set_flags(overrides)


def skip_dir(dataset, backbone, preset, method, seed):
    return f"results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}"


def skip_targets():
    """The skip methods on every grid cell whose backbone is in skips.search_backbones."""
    targets = []
    skips = config["skips"]
    for d in DATASETS:
        for b, p, s in GRID:
            if b not in skips["search_backbones"]:
                continue
            for m in skips["methods"]:
                targets.append(f"{skip_dir(d, b, p, m, s)}/patients.tsv")
                if m in SEARCH_METHODS:
                    targets.append(f"{skip_dir(d, b, p, m, s)}/search/figures")
    return targets


# ---------------------------------------------------------------- the Lean U-Net study (pruning)

from unetscout.names import PRUNE_CRITERIA
from unetscout.prune.settings import (CHECKPOINT_FRACTIONS, LUNET, RETRAINED, SCALED, lunet_name, parse_study_model,
                                      retrained_name, scaled_name)

PRUNE = config["prune"]
SNAPSHOTS = [round(fraction * 100) for fraction in CHECKPOINT_FRACTIONS]   # at75/, at50/, at25/


def prune_dir(dataset, criterion, preset, seed):
    return f"results/{dataset}/prune/{criterion}/{preset}/seed{seed}"


def study_dir(dataset, model, preset, seed):
    return f"results/{dataset}/prune_study/{model}/{preset}/seed{seed}"


def study_models():
    """The baselines trained from scratch: unet{percent} (every layer scaled), lunet{width}, and
    retrained_{criterion}_{percent} (a pruned architecture rebuilt and re-initialised)."""
    return ([scaled_name(scale) for scale in PRUNE["scales"]] + [lunet_name(width) for width in PRUNE["lunet_widths"]]
            + [retrained_name(criterion, pct) for criterion in PRUNE["retrain"] for pct in SNAPSHOTS])


def study_settings(preset):
    """The study's training settings: the preset's overrides, then prune.train."""
    return {**config["train"].get(preset, {}), **PRUNE["train"]}


def study_overrides(wildcards):
    return set_flags(study_settings(wildcards.preset))


def retrained_source(wildcards):
    """The pruned architecture a retrained baseline rebuilds (its model.json), or nothing."""
    kind, pct, criterion = parse_study_model(wildcards.model)
    if kind != "retrained":
        return []
    return f"{prune_dir(wildcards.dataset, criterion, wildcards.preset, wildcards.seed)}/at{pct}/model.json"


def study_model_arguments(wildcards):
    """`unetscout train` model flags of a baseline name."""
    kind, number, _ = parse_study_model(wildcards.model)
    if kind == "retrained":
        words = ["--backbone", "plain", "--widths-from", retrained_source(wildcards)]
    elif kind == "lunet":
        words = ["--backbone", "lean", "--width", number]
    else:
        words = ["--backbone", "plain", "--top-width", PRUNE["top_width"], "--width-scale", number / 100]
    return shlex.join(str(word) for word in words)


def prune_targets():
    """patients.tsv of every prune run (its validation pick) and every baseline, when prune.run."""
    if not PRUNE["run"]:
        return []
    preset = PRUNE["preset"]
    return ([f"{prune_dir(d, c, preset, s)}/patients.tsv" for d in DATASETS for c in PRUNE["criteria"]
             for s in PRUNE["seeds"]]
            + [f"{study_dir(d, m, preset, s)}/patients.tsv" for d in DATASETS for m in study_models()
               for s in PRUNE["seeds"]])


# ---------------------------------------------------------------- statistics

def evaluation_targets(wildcards=None):
    """Every patients.tsv of the configured grid: what the tables are computed from."""
    return backbone_targets() + [t for t in skip_targets() if t.endswith("patients.tsv")] + prune_targets()


def search_summaries(wildcards=None):
    return [str(Path(t).parent / "search_summary.json") for t in skip_targets() if Path(t).name == "figures"]


def stats_targets():
    return ["results/tables/table1.csv", "results/figures"]
