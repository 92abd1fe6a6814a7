"""Search cost per epoch: IAC against IAC-LTH on the same data, and IAC-LTH as it prunes ops.

Both searches run through `run_search` (what `unetscout search` runs) on the same synthetic slice
store and the same frozen backbone (a lean U-Net trained for one short epoch with the `paper`
preset, which does not augment, so no augmentation time is in the epochs), with the same epoch:
`iterations` batches, which IAC takes as alternations of two and IAC-LTH as single steps, so both
push the same slices through the supernet per epoch. The per-epoch `seconds` and `active_ops`
come from each run's search_log.tsv.

IAC-LTH runs its default (relative) stability rule with tau0 = 1e9: the first search epoch
calibrates with all ops, and from then on every edge counts as stable, so each later epoch
prunes at least one op per edge (98 ops -> 14 within seven search epochs; docs/search_calibration.md).
That is the fastest pruning the method can do: this measures what pruned ops save, not when a
real run's stability test lets them go. Early = the first `--window` search epochs (with the
default 2: the calibration epoch and the first pruning one, all 98 ops active), late = the last
`--window` (fewest ops); `late/early LTH epoch ratio X` < 1 means the pruned ops left the
computation.

    python bench/search_epoch.py [--device cpu|cuda] [--size 64] [--batch 8] [--iterations 8]
                                 [--epochs 8] [--warmup-epochs 1] [--window 2] [--work DIR]
Prints each run's epochs (seconds / active ops), the medians, and last `late/early LTH epoch
ratio X`. On a shared CPU set OMP_NUM_THREADS=1: with two OpenMP threads on an oversubscribed
2-core machine one epoch took 36 s to 200 s, with one thread 7 s steadily.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pandas as pd

from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import extract_slices
from unetscout.data.synthetic import write_synthetic_dataset
from unetscout.device import resolve_device
from unetscout.models.spec import ModelSpec
from unetscout.search.config import resolve_search_config
from unetscout.search.run import run_search
from unetscout.train.loop import train
from unetscout.train.presets import resolve_config
from unetscout.tsv import numeric_column, read_text_tsv

METHODS = ("iac", "iac_lth")
BACKBONE_PRESET = "paper"
# Stable whenever the drift is below 1e9 x its calibration epoch's: always, after calibrating.
ALWAYS_STABLE = {"tau_rule": "relative", "tau0": "1e9"}


def synthetic_store(work: Path, cases: int, size: int) -> Path:
    """The synthetic slice store for these settings under `work`, written unless it is there."""
    slices = work / f"slices_{size}px_{cases}cases"
    if not (slices / "slices.json").exists():  # extract_slices writes all or nothing
        with tempfile.TemporaryDirectory(prefix="raw-", dir=work) as raw:
            write_synthetic_dataset(Path(raw) / "raw", cases=cases, seed=0)
            extract_slices(Path(raw) / "raw", slices, size=size, seed=0)
    return slices


def trained_backbone(work: Path, slices: Path, width: int, batch: int, iterations: int, device: str) -> Path:
    """A lean U-Net trained for one epoch; `train` returns at once when the folder holds that run."""
    store = SliceStore(slices)
    spec = ModelSpec("lean", in_channels=len(store.channel_names), num_classes=store.num_classes,
                     image_size=store.size, width=width)
    config = resolve_config(BACKBONE_PRESET, {"epochs": "1", "iterations_per_epoch": str(iterations),
                                              "batch_size": str(batch), "val_batch_size": str(batch)})
    out = work / f"backbone_lean{width}_{store.size}px"
    return train(slices, out, spec, config, device=device)


def epoch_log(search: Path) -> pd.DataFrame:
    """search_log.tsv's phase, active ops and seconds, one row per epoch."""
    path = search / "search_log.tsv"
    table = read_text_tsv(path, "search log")
    return pd.DataFrame({"epoch": numeric_column(table, "epoch", path).astype(int), "phase": table["phase"],
                         "active_ops": numeric_column(table, "active_ops", path).astype(int),
                         "seconds": numeric_column(table, "seconds", path)})


def span(rows: pd.DataFrame) -> str:
    """`epochs 2-3, active ops 98/98`: which epochs a median is over, and their op counts."""
    return (f"epochs {rows['epoch'].iloc[0]}-{rows['epoch'].iloc[-1]}, "
            f"active ops {'/'.join(str(n) for n in rows['active_ops'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--size", type=int, default=64, help="slice size in pixels (default 64, the default study's)")
    parser.add_argument("--cases", type=int, default=10, help="synthetic patients (default 10)")
    parser.add_argument("--width", type=int, default=8, help="lean U-Net width (default 8, the default study's)")
    parser.add_argument("--batch", type=int, default=8, help="search batch size (default 8)")
    parser.add_argument("--iterations", type=int, default=8, help="batches per epoch, both methods (default 8)")
    parser.add_argument("--epochs", type=int, default=8, help="epoch cap (default 8: warm-up + 7 search epochs)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="warm-up epochs, not counted (default 1)")
    parser.add_argument("--window", type=int, default=2, help="search epochs averaged as early and as late (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="loader threads (default 1)")
    parser.add_argument("--work", type=Path, help="folder for the store and backbone, reused if present "
                                                  "(default: a temporary one); the searches always run afresh")
    args = parser.parse_args()
    if args.window < 1:
        parser.error("--window must be >= 1")

    search_settings = {"epochs": str(args.epochs), "warmup_epochs": str(args.warmup_epochs),
                       "iterations_per_epoch": str(args.iterations), "batch_size": str(args.batch),
                       "num_workers": str(args.workers), **ALWAYS_STABLE}
    config = resolve_search_config(search_settings)
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        work = args.work if args.work is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        slices = synthetic_store(work, args.cases, args.size)
        backbone = trained_backbone(work, slices, args.width, args.batch, args.iterations, args.device)
        # A search folder with a finished run would be returned as it is, not timed: always a new one.
        logs = {method: epoch_log(run_search(method, backbone, slices, Path(tmp) / method, config, args.device))
                for method in METHODS}

    search = {method: log[log["phase"] == "search"] for method, log in logs.items()}
    lth = search["iac_lth"]
    if len(lth) < args.window:
        raise SystemExit(f"search_epoch: IAC-LTH ran {len(lth)} search epochs, fewer than --window {args.window}")
    early, late = lth.head(args.window), lth.tail(args.window)

    early_s, late_s = statistics.median(early["seconds"]), statistics.median(late["seconds"])
    print(f"device {resolve_device(args.device)}; lean U-Net width {args.width} at {args.size} px "
          f"(backbone: 1 epoch, preset {BACKBONE_PRESET}); {args.iterations} batches of {args.batch} per epoch; "
          f"{args.warmup_epochs} warm-up epoch(s), cap {args.epochs}")
    for method in METHODS:
        rows = logs[method]
        print(f"{method:8} epochs {len(rows)} ({len(search[method])} search): "
              + " ".join(f"{s:.2f}s/{n}" for s, n in zip(rows["seconds"], rows["active_ops"]))
              + "  [seconds/active ops per epoch]")
    print(f"IAC     median {statistics.median(search['iac']['seconds']):.2f} s/epoch over "
          f"{len(search['iac'])} search epochs (all {search['iac']['active_ops'].max()} ops)")
    print(f"IAC-LTH median {statistics.median(lth['seconds']):.2f} s/epoch over {len(lth)} search epochs")
    print(f"IAC-LTH early {early_s:.2f} s/epoch ({span(early)})")
    print(f"IAC-LTH late  {late_s:.2f} s/epoch ({span(late)})")
    print(f"late/early LTH epoch ratio {late_s / early_s:.2f}")


if __name__ == "__main__":
    main()
