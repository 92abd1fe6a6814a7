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


def backbone_model(backbone):
    """What the config declares of a backbone's network, as model.json fields: the architecture
    and its width setting (xtiny: the plain U-Net; its cap comes from the width pick)."""
    models = config["models"]
    if backbone == XTINY:
        return {"backbone": "plain"}
    if backbone.startswith("cap"):
        return {"backbone": "plain", "cap": int(backbone[3:])}
    architecture = ARCHITECTURES[backbone]
    if architecture.smp_encoder or architecture.peer:  # encoder widths, or a peer's fixed design
        return {"backbone": backbone}
    if architecture.constant_width:
        return {"backbone": backbone, "width": models[backbone]["width"]}
    return {"backbone": backbone, "cap": models[backbone]["cap"]}


def backbone_arguments(wildcards):
    """`unetscout train` model flags for a backbone name of the config."""
    model = backbone_model(wildcards.backbone)
    words = ["--backbone", model["backbone"]]
    if wildcards.backbone == XTINY:
        words += ["--cap-from", selection_json(wildcards.dataset)]
    words += [word for key in ("cap", "width") if key in model for word in (f"--{key}", model[key])]
    if ARCHITECTURES[model["backbone"]].smp_encoder:
        words += ["--encoder-weights", config["models"][wildcards.backbone]["encoder_weights"],
                  "--weights-cache", config["weights_cache"]]
    return shlex.join(str(word) for word in words)


def set_flags(overrides: dict) -> str:
    """`--set key=value` flags, one shell word each, sorted: key order in a YAML file must not
    count as a parameter change (Snakemake reruns jobs whose params changed)."""
    return shlex.join(word for key, value in sorted(overrides.items()) for word in ("--set", f"{key}={value}"))


def train_settings(preset):
    """The config's overrides of a training preset."""
    return config["train"].get(preset, {})


def train_overrides(wildcards):
    return set_flags(train_settings(wildcards.preset))


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
    return {**train_settings(preset), **config["width"]["sweep_train"]}


def sweep_overrides(wildcards):
    return set_flags(sweep_settings(wildcards.preset))


def sweep_runs(dataset):
    """{cap: run folder} of the sweep; the nnU-Net backbone's own run serves as its cap (no
    retraining) unless the sweep has a schedule of its own (width.sweep_train)."""
    preset, seed = config["width"]["sweep_preset"], config["width"]["sweep_seed"]
    return {cap: (backbone_dir(dataset, "plain", preset, seed)
                  if cap == config["models"]["plain"]["cap"] and not config["width"]["sweep_train"]
                  else sweep_dir(dataset, cap, preset, seed)) for cap in WIDTH_CAPS}


def sweep_inputs(wildcards):
    """patients.tsv of every cap."""
    return [f"{run}/patients.tsv" for run in sweep_runs(wildcards.dataset).values()]


def width_targets():
    targets = [selection_json(d) for d in DATASETS]
    if config["width"]["sweep"]:
        targets += [f"results/{d}/width/sweep.tsv" for d in DATASETS]
    return targets


# ---------------------------------------------------------------- skips and searched cells

from unetscout.names import BASELINE_SKIPS, CELL_METHODS, SEARCH_METHODS


def search_settings(method):
    """Search settings shared by all cell methods, then the method's own."""
    return {**config["search"]["all"], **config["search"].get(method, {})}


def search_overrides(wildcards):
    return set_flags(search_settings(wildcards.method))


def skip_dir(dataset, backbone, preset, method, seed):
    return f"results/{dataset}/skips/{backbone}/{preset}/{method}/seed{seed}"


def skip_runs():
    """(dataset, backbone, preset, method, seed) of the skip methods on every grid cell whose
    backbone is in skips.search_backbones."""
    skips = config["skips"]
    return [(d, b, p, m, s) for d in DATASETS for b, p, s in GRID if b in skips["search_backbones"]
            for m in skips["methods"]]


def skip_targets():
    targets = []
    for d, b, p, m, s in skip_runs():
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
    return {**train_settings(preset), **PRUNE["train"]}


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


# ---------------------------------------------------------------- the manifest (what the tables read)
# Every run the config declares, with what the config says of it (unetscout.stats.manifest):
# the tables and figures read these runs and no other folder on disk, and refuse one whose
# recorded identity contradicts the config. Built from the functions the rules' params use.

from unetscout.search.config import LTH_ONLY_SETTINGS
from unetscout.stats.manifest import config_digest

MANIFEST = "results/manifest.json"


def training_expected(preset, seed, settings, model=None):
    """done.json of a training run: its preset, seed and overrides, its data as it is now. A
    backbone with one output head trains without deep supervision whatever the preset says
    (train/loop.py's single_output_config), so that setting is not declared for it."""
    settings = dict(settings)
    if model and not ARCHITECTURES[model["backbone"]].deep_supervision_heads:
        settings.pop("deep_supervision", None)
    expected = {"config": {"preset": preset, "seed": int(seed), **settings}, "data": True}
    if model:
        expected["model"] = model
    return {"done.json": expected}


def declared_run(path, dataset, expect):
    return {"path": str(path), "dataset": dataset, "expect": expect}


def declared_skip_run(dataset, backbone, preset, method, seed):
    path = skip_dir(dataset, backbone, preset, method, seed)
    if method not in CELL_METHODS:  # a baseline skip trained with the backbone's settings
        return declared_run(path, dataset, training_expected(
            preset, seed, train_settings(preset), {**backbone_model(backbone), "skip": method}))
    # A cell trains with its backbone's settings; its search (or draw) has the method's own.
    search = {k: v for k, v in search_settings(method).items() if method == "iac_lth" or k not in LTH_ONLY_SETTINGS}
    expect = training_expected(preset, seed, train_settings(preset))
    expect["search/search_summary.json"] = {"identity": {"method": method, "data": True,
                                                         "config": {**search, "seed": int(seed)}}}
    return declared_run(path, dataset, expect)


def study_model(name):
    """model.json fields a study baseline's name declares."""
    kind, number, _ = parse_study_model(name)
    return {"backbone": "lean", "width": number} if kind == "lunet" else {"backbone": "plain"}


def declared_runs():
    runs = []
    for d in DATASETS:
        for b, p, s in GRID:
            runs.append(declared_run(backbone_dir(d, b, p, s), d, training_expected(p, s, train_settings(p),
                                                                                     backbone_model(b))))
        runs += [declared_skip_run(*run) for run in skip_runs() if run[0] == d]
        if config["width"]["sweep"]:
            preset, seed = config["width"]["sweep_preset"], config["width"]["sweep_seed"]
            runs += [declared_run(path, d, training_expected(preset, seed, sweep_settings(preset),
                                                             {"backbone": "plain", "cap": cap}))
                     for cap, path in sweep_runs(d).items() if path == sweep_dir(d, cap, preset, seed)]
        if PRUNE["run"]:
            preset = PRUNE["preset"]
            prune = {key: PRUNE[key] for key in ("top_width", "recovery_epochs", "channels_per_step",
                                                 "base_dropout", "collapse_fraction")}
            for s in PRUNE["seeds"]:
                for c in PRUNE["criteria"]:
                    expect = training_expected(preset, s, study_settings(preset))
                    expect["done.json"]["prune"] = {"criterion": c, **prune}
                    runs.append(declared_run(prune_dir(d, c, preset, s), d, expect))
                for m in study_models():
                    runs.append(declared_run(study_dir(d, m, preset, s), d,
                                             training_expected(preset, s, study_settings(preset), study_model(m))))
    return runs


def declared_datasets():
    """Per dataset its slice store and the width stage's files the tables and figures read."""
    files = ["width/scores.tsv", "width/selection.json"] + (["width/sweep.json"] if config["width"]["sweep"] else [])
    return {d: {"slices": slices_dir(d), "files": [f"results/{d}/{name}" for name in files]} for d in DATASETS}
