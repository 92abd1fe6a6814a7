# Runtime requests (minutes) of the training and search rules, computed from the configured
# schedule and the data size, so that a paper-length run asks Slurm for hours and the default
# CPU-sized run for minutes. The other rules' sizes are fixed and live in profiles/default.
#
# Which request wins (Snakemake 9, strongest first): `--set-resources` on the command line
# (it replaces a profile's whole set-resources list, not just the entries it names),
# `set-resources` in a profile, a rule's own `resources:`, `default-resources`. The rules below
# therefore carry their runtime (and gpu) themselves and profiles/default names no runtime for
# them: an entry there would silently replace the estimate. tests/test_workflow.py checks that
# every rule gets its runtime from exactly one of the two places.
#
# The estimate: milliseconds per 256 x 256 slice on one reference GPU (A100 class, bf16
# autocast and channels_last, as training runs on CUDA) times the slices a run passes, times
# SAFETY_FACTOR, at least FLOOR_MINUTES and at most CEILING_MINUTES. Every run resumes after
# Slurm's time-limit SIGTERM, so an estimate that is too short costs a retry, not the work.
#
# Resources are evaluated again when a job is submitted (its input exists then), so the
# submitted request uses the real slice counts (slices.json) and the real width pick
# (selection.json); a dry run before those exist uses the estimates below.

import json
import math

from unetscout.search.config import resolve_search_config
from unetscout.train.presets import resolve_config

SAFETY_FACTOR = 2.0
FLOOR_MINUTES = 15  # interpreter and CUDA start, reading the slices, writing checkpoints
# 48 h, a common MaxTime of GPU partitions (`sinfo -o "%P %l"` shows yours); a run that needs
# longer continues in the next attempt (`retries` in profiles/slurm) or the next `snakemake`.
CEILING_MINUTES = 2880

# A training step (forward, backward, optimiser) is about three forward passes; U-Nets reach
# about 45 TFLOP/s of an A100's bf16 peak (instance norms and activations are memory-bound):
# 3 x 1 GFLOP / 45 TFLOP/s = 0.067 ms per forward GFLOP of a slice.
MS_PER_GFLOP = 0.067
# Loader and batch assembly per slice (memory-mapped .npy slices, batched augmentation).
LOADER_MS = 0.3
# A frozen backbone (search, cell training) computes activation gradients but no weight gradients.
FROZEN_SHARE = 2 / 3
# The IAC supernet: 14 edges x 7 ops on C/4 channels at every skip level, memory-bound, so its
# cost follows the channels of the first (full-resolution) skip: about 2.7 ms per slice for
# the plain U-Net's 32.
SUPERNET_MS_PER_CHANNEL = 0.085
# A discrete cell: 8 edges with one op each on all C channels, a third of the supernet's work.
CELL_SHARE = 1 / 3

# Forward GFLOPs of one 1-channel 256 x 256 slice, `unetscout describe-model --backbone plain
# --cap CAP --size 256 --in-channels 1 --classes 4`. lean at width W computes what plain at
# cap W does (both are W wide at every stage); resenc is at most 2.4 x plain at its cap.
PLAIN_GFLOPS = {512: 29.53, 256: 24.10, 128: 18.46, 64: 12.78, 32: 7.08,
                16: 1.78, 8: 0.45, 4: 0.12, 2: 0.031, 1: 0.0086}
RESENC_FACTOR = 2.4
# Encoder U-Nets (describe-model --backbone NAME --size 256 --in-channels 1 --classes 4): forward
# GFLOPs, and the supernet width that costs what their cells do. A cell's work follows
# channels x pixels summed over the skip levels (level l at 1/2^(l+1) of the edge), which for the
# plain U-Net is 62.5 full-resolution channels against its first skip's 32: halved likewise.
ENCODER_COSTS = {"vgg16": (49.38, 29.0), "resnet50": (21.12, 22.0), "mobilenetv3_large": (6.17, 3.3),
                 "efficientnetv2_s": (12.48, 5.3), "efficientnetv2_m": (19.35, 5.5)}
# The lightweight peers likewise (describe-model, 3 channels, 256 x 256; first encoder width).
PEER_COSTS = {"unext": (1.13, 16.0), "cmunext_s": (2.03, 8.0), "tinyunet": (3.13, 64.0)}
# Skip modules trained in place of the identity: time relative to the same backbone with identity
# skips, the larger of the FLOP ratio (describe-model --skip) and the measured CPU time ratio,
# rounded up. UNet++'s nested nodes grow with the stage count (3.4x the FLOPs at 64 px, 6.1x for
# lean 8 at 256 px); the residual attention module costs 1.2x the FLOPs but about 3x the time (its
# many instance norms at full resolution). A skip module added later (docs/extending.md) is costed
# as the dearest of these until it gets its own entry.
SKIP_FACTORS = {"attention": 1.3, "resattention": 3.0, "nested": 6.5}

# Axial slices (all cases) of the registry's datasets, before `slices` has counted them:
# cases x typical slices per case. A dataset missing here is assumed as large as BraTS.
REGISTRY_SLICES = {
    "task01_braintumour": 484 * 155,
    "task02_heart": 20 * 115,
    "task04_hippocampus": 260 * 36,
    "task05_prostate": 32 * 20,
    "task09_spleen": 41 * 95,
    "acdc": 150 * 2 * 10,       # patients x (ED, ES) x slices
    "kits23": 489 * 250,
    "amos22": 300 * 150,        # labelled CT scans
    "brats2021": 1251 * 155,
    # 2-D image datasets: one slice per case
    "isic2018": 2594,
    "busbra": 1875,
    "fives": 800,
    "echonet_dynamic": 10030 * 2,  # videos x (ED, ES)
}
UNKNOWN_DATASET_SLICES = 1251 * 155
SYNTHETIC_SLICES_PER_CASE = 22  # unetscout.data.synthetic.SLICES, the largest depth
OWN_FOLDER_SLICES_PER_CASE = 250  # a user's folder: CT-like depth, counted per labelsTr file


def _split_slices(dataset, split):
    """Slices of one split: counted by `slices` when it has run, else estimated."""
    summary = Path(slices_dir(dataset)) / "slices.json"
    if summary.is_file():
        try:
            return int(json.loads(summary.read_text())["counts"][split]["slices"])
        except (KeyError, TypeError, ValueError):  # another format version: estimate instead
            pass
    source = DATASETS[dataset]
    if "synthetic" in source:
        total = config["synthetic"]["cases"] * SYNTHETIC_SLICES_PER_CASE
    elif "path" in source:
        from unetscout.data.images import LOSSLESS_ENDINGS  # a 2-D image dataset's label endings

        labels = Path(source["path"]) / "labelsTr"
        files = list(labels.iterdir()) if labels.is_dir() else []
        # a 2-D image (PNG, ...) is one slice; a volume CT-like deep
        depth = [1 if f.suffix.lower() in LOSSLESS_ENDINGS else OWN_FOLDER_SLICES_PER_CASE for f in files]
        total = sum(depth) or UNKNOWN_DATASET_SLICES
    else:
        total = REGISTRY_SLICES.get(dataset, UNKNOWN_DATASET_SLICES)
    fractions = config["split"]["fractions"]
    share = fractions[("train", "val", "test").index(split)] / sum(fractions)
    return math.ceil(total * share)


def _plain_gflops(cap):
    """The tabulated cost of the smallest tabulated cap at least `cap` (an upper bound)."""
    return PLAIN_GFLOPS[min((c for c in PLAIN_GFLOPS if c >= cap), default=512)]


def _selected_cap(dataset):
    """The width pick once select_width has run; until then the plain U-Net's cap bounds it."""
    selection = Path(selection_json(dataset))
    if selection.is_file():
        try:
            return int(json.loads(selection.read_text())["selected_cap"])
        except (KeyError, TypeError, ValueError):
            pass
    return config["models"]["plain"]["cap"]


def _backbone_cost(dataset, backbone):
    """(forward GFLOPs of a 256 x 256 slice, channels of the first skip) of a backbone name."""
    models = config["models"]
    if backbone == "lean":
        width = models["lean"]["width"]
        return PLAIN_GFLOPS[32] * (width / 32) ** 2, width
    if backbone in ENCODER_COSTS:
        return ENCODER_COSTS[backbone]
    if backbone in PEER_COSTS:
        return PEER_COSTS[backbone]
    if backbone == "resenc":
        cap = models["resenc"]["cap"]
        return RESENC_FACTOR * _plain_gflops(cap), min(cap, 32)
    if backbone == XTINY:
        cap = _selected_cap(dataset)
    elif backbone.startswith("cap"):
        cap = int(backbone[3:])
    elif backbone == "plain":
        cap = models["plain"]["cap"]
    else:  # a backbone added later (docs/extending.md): bounded by the dearest one
        return RESENC_FACTOR * PLAIN_GFLOPS[512], 32
    return _plain_gflops(cap), min(cap, 32)


def _pixel_scale():
    return (config["slices"]["size"] / 256) ** 2


def _minutes(milliseconds):
    return int(min(CEILING_MINUTES, max(FLOOR_MINUTES, math.ceil(SAFETY_FACTOR * milliseconds / 60_000))))


def _training_ms(dataset, preset, step_ms, forward_ms, overrides=None):
    """A training run of the preset (with the config's overrides): its iterations, plus every
    validation (each `val_every` epochs and the last) predicting the validation split."""
    schedule = resolve_config(preset, config["train"].get(preset, {}) if overrides is None else overrides)
    steps = schedule.epochs * schedule.iterations_per_epoch * schedule.batch_size * step_ms
    validations = -(-schedule.epochs // schedule.val_every) + 1
    return (steps + validations * _split_slices(dataset, "val") * forward_ms) * _pixel_scale()


def _training_runtime(dataset, preset, gflops, overrides=None):
    return _minutes(_training_ms(dataset, preset, LOADER_MS + MS_PER_GFLOP * gflops,
                                 LOADER_MS + MS_PER_GFLOP * gflops / 3, overrides))


def backbone_runtime(wildcards):
    gflops, _ = _backbone_cost(wildcards.dataset, wildcards.backbone)
    return _training_runtime(wildcards.dataset, wildcards.preset, gflops)


def sweep_runtime(wildcards):
    return _training_runtime(wildcards.dataset, wildcards.preset, _plain_gflops(int(wildcards.cap)),
                             sweep_settings(wildcards.preset))


def skip_runtime(wildcards):
    gflops, _ = _backbone_cost(wildcards.dataset, wildcards.backbone)
    factor = SKIP_FACTORS.get(wildcards.method, max(SKIP_FACTORS.values()))
    return _training_runtime(wildcards.dataset, wildcards.preset, gflops * factor)


def search_runtime(wildcards):
    """Every epoch of the cap (IAC runs them all; IAC-LTH's early stop is not counted on), each
    `iterations_per_epoch` batches or else one pass over the train split. random only draws."""
    if wildcards.method not in SEARCH_METHODS:
        return FLOOR_MINUTES
    overrides = {**config["search"]["all"], **config["search"].get(wildcards.method, {})}
    search = resolve_search_config({key: str(value) for key, value in overrides.items()})
    gflops, width = _backbone_cost(wildcards.dataset, wildcards.backbone)
    if search.iterations_per_epoch:
        passes = search.iterations_per_epoch * search.batch_size
    else:
        passes = _split_slices(wildcards.dataset, "train")
    slice_ms = LOADER_MS + MS_PER_GFLOP * gflops * FROZEN_SHARE + SUPERNET_MS_PER_CHANNEL * width
    return _minutes(search.epochs * passes * slice_ms * _pixel_scale())


def cell_runtime(wildcards):
    """The cells train with the backbone's schedule (its preset and the config's overrides)."""
    gflops, width = _backbone_cost(wildcards.dataset, wildcards.backbone)
    step_ms = (LOADER_MS + MS_PER_GFLOP * gflops * FROZEN_SHARE
               + CELL_SHARE * SUPERNET_MS_PER_CHANNEL * width)
    forward_ms = LOADER_MS + MS_PER_GFLOP * gflops / 3 + CELL_SHARE * SUPERNET_MS_PER_CHANNEL * width / 3
    return _minutes(_training_ms(wildcards.dataset, wildcards.preset, step_ms, forward_ms))


def _study_start():
    """The widths a prune run starts from (doubling from prune.top_width) and its forward
    GFLOPs per 256 x 256 slice: the plain U-Net's at cap 512 scaled by (top / 32)^2, an upper
    bound (the study's network is uncapped, but its deep levels cost little)."""
    from unetscout.models.spec import stages_for_size
    from unetscout.models.widths import CONVS_PER_STAGE, UNetWidths

    top = PRUNE["top_width"]
    widths = UNetWidths.doubling(top, stages_for_size(config["slices"]["size"]), CONVS_PER_STAGE)
    return widths, PLAIN_GFLOPS[512] * (top / 32) ** 2


def prune_runtime(wildcards):
    """Every step down to one channel per layer (a collapse stops sooner) at the starting
    network's cost: the recovery epochs, then val and test scored and a ranking pass over train."""
    widths, gflops = _study_start()
    layers = len(widths.layer_widths())
    steps = 1 + math.ceil((widths.total_channels() - layers) / PRUNE["channels_per_step"])
    schedule = resolve_config(wildcards.preset, study_settings(wildcards.preset))
    recovery = PRUNE["recovery_epochs"] * schedule.iterations_per_epoch * schedule.batch_size
    scored = sum(_split_slices(wildcards.dataset, split) for split in ("train", "val", "test"))
    step_ms = recovery * (LOADER_MS + MS_PER_GFLOP * gflops) + scored * (LOADER_MS + MS_PER_GFLOP * gflops / 3)
    return _minutes(steps * step_ms * _pixel_scale())


def study_runtime(wildcards):
    """A baseline trains with the study's schedule; none is wider than the prune runs' start."""
    _, gflops = _study_start()
    return _training_runtime(wildcards.dataset, wildcards.preset, gflops, study_settings(wildcards.preset))
