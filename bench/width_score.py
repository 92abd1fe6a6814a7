"""Cost of training-free width selection against its peer: training the model it selects.

Measures (1) the wall time of `score_widths` over the ten caps on K slices (default 32),
one seed, plus the knee selection, and (2) the steady-state time of one training iteration
of the selected cap with a preset (default `paper`, docs/methods.md#training-presets) through `unetscout.train`,
and extrapolates (2) to the preset's full budget, epochs x iterations_per_epoch
(paper: 200 x 250). Validation passes are not in the extrapolation, so the training cost
is a lower bound and the printed ratio an upper bound.

    python bench/width_score.py                 # builds a synthetic slices folder (64 px)
    python bench/width_score.py results/X/slices --device cuda
Prints `ratio: X.XX%` = scoring time / estimated training time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from unetscout.data.slices import extract_slices
from unetscout.data.slice_store import SliceStore
from unetscout.data.synthetic import write_synthetic_dataset
from unetscout.models.spec import ModelSpec
from unetscout.train.loop import train
from unetscout.train.presets import PRESETS, resolve_config
from unetscout.width.cli_args import scoring_count
from unetscout.width.jacobian import CAPS, DEFAULT_K, DEFAULT_SEED, score_widths
from unetscout.width.knee import select_width

# The first epoch pays for allocator warm-up and thread start; the second one is timed.
TIMED_EPOCH = 2


def synthetic_slices(root: Path, cases: int, size: int) -> Path:
    write_synthetic_dataset(root / "raw", cases=cases, seed=0)
    extract_slices(root / "raw", root / "slices", size=size, seed=0)
    return root / "slices"


def time_scoring(slices: Path, work: Path, k: int, device: str) -> tuple[float, dict]:
    started = time.perf_counter()
    score_widths(slices, work / "scores.tsv", k=k, seeds=(DEFAULT_SEED,), caps=CAPS, device=device)
    selection = select_width(work / "scores.tsv", work / "selection.json")
    return time.perf_counter() - started, selection


def time_iteration(slices: Path, work: Path, cap: int, preset: str, iterations: int, device: str) -> tuple[float, int]:
    """Seconds per training iteration of the plain U-Net at `cap` (second epoch, no validation)
    and the batch it trained with (the preset's, lowered to the train split when larger)."""
    store = SliceStore(slices)
    spec = ModelSpec("plain", in_channels=len(store.channel_names), num_classes=store.num_classes,
                     image_size=store.size, cap=cap)
    config = resolve_config(preset, {"epochs": str(TIMED_EPOCH), "iterations_per_epoch": str(iterations),
                                     "val_every": str(TIMED_EPOCH)})
    out = train(slices, work / "train", spec, config, device=device)
    log = pd.read_csv(out / "log.tsv", sep="\t")
    batch = json.loads((out / "done.json").read_text())["batch_size"]
    return 1.0 / float(log.loc[log["epoch"] == TIMED_EPOCH, "it_per_s"].iloc[0]), batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slices", type=Path, nargs="?", help="slices folder (default: build a synthetic one)")
    parser.add_argument("--k", type=scoring_count, default=DEFAULT_K,
                        help="train cases scored per cap, one central slice each (default all)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="training preset (default paper)")
    parser.add_argument("--iterations", type=int, default=5, help="training iterations timed (default 5)")
    parser.add_argument("--cases", type=int, default=10, help="synthetic patients (default 10)")
    parser.add_argument("--size", type=int, default=64, help="synthetic slice size (default 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="width-bench-") as tmp:
        work = Path(tmp)
        slices = args.slices if args.slices is not None else synthetic_slices(work, args.cases, args.size)
        store = SliceStore(slices)
        scoring_s, selection = time_scoring(slices, work, args.k, args.device)
        cap = selection["selected_cap"]
        per_iteration_s, batch = time_iteration(slices, work, cap, args.preset, args.iterations, args.device)

    preset = PRESETS[args.preset]
    budget = preset.epochs * preset.iterations_per_epoch
    training_s = per_iteration_s * budget
    print(f"data: {slices if args.slices else 'synthetic'} ({store.size} px, {len(store.channel_names)} channels, "
          f"{store.num_classes} classes)")
    print(f"scoring: {len(CAPS)} caps x {min(args.k, len(store.slice_index('train')))} slices + knee rule: "
          f"{scoring_s:.2f} s (measured) -> selected cap {cap} ({selection['selected_params']:,} parameters)")
    print(f"training: cap {cap}, preset {args.preset}, batch {batch}: {per_iteration_s:.4f} s/iteration "
          f"(measured over {args.iterations} iterations of epoch {TIMED_EPOCH} with unetscout.train) x "
          f"{preset.epochs} epochs x {preset.iterations_per_epoch} iterations = {training_s:.1f} s "
          "(extrapolated, validation excluded)")
    print(f"ratio: {100 * scoring_s / training_s:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
