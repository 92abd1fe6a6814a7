"""Data-path throughput: training slices supplied per second against the slices a GPU step demands.

Measures the path exactly as `unetscout train` feeds its network: the memory-mapped SliceStore,
SliceSampler with the nnunet preset's oversample_foreground, BatchStream with N loader threads
(pinned memory on CUDA), then `device_batch` with the nnunet preset's Augmenter on the training
device (on CUDA that is the device-side path: the loader threads read, the GPU augments). It is
timed twice in interleaved rounds, so that machine noise hits both alike: the loader alone (the
batches BatchStream hands over) and the full path (loader + transfer + augmentation).

Demand: 435 slices/s, twice the 6.8 iterations/s nnU-Net 2-D is reported to train at on an A100,
counted at this benchmark's batch of 32 slices (2 x 6.8 x 32 = 435.2). A ratio supply/demand >= 1
means the data path keeps such a GPU busy.

The store is built once from the synthetic generator's MRI patients through `unetscout slices`'
own code: the generator makes two channels (T1, T2), so a store of more channels repeats them in
turn (the loader's cost depends on the shape of a slice, not on its values). Its volumes are
56-76 voxels in-plane, so most of a 256 px slice is zero padding; the bytes read and augmented
are the same as for a full image. The page cache holds the store after the warm-up, as it holds a
training store after the first epoch.

    python bench/loader.py [--device cpu|cuda] [--workers 2] [--size 256] [--channels 4] [--batch 32]
                           [--batches 8] [--rounds 5] [--work /tmp/unetscout-loader]
Prints slices/s for the loader alone and for the full path, and last `supply/demand ratio R`
(the full path). On a shared CPU set OMP_NUM_THREADS=1: an oversubscribed machine's spinning
OpenMP threads make the augmentation several times slower and its times erratic.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from unetscout.data.convert import make_case_folders, write_dataset_json
from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import extract_slices
from unetscout.data.synthetic import CHANNEL_NAMES, FILE_ENDING, LABELS, generate_case, nifti_gz_bytes
from unetscout.device import fast_path, resolve_device
from unetscout.runs import derived_seed, device_settings
from unetscout.train.augment import Augmenter, device_batch
from unetscout.train.presets import PRESETS
from unetscout.train.batch import capped_batch_size
from unetscout.train.sampler import BatchStream, SliceSampler

DEMAND_SLICES_PER_S = 435.0
PRESET = "nnunet"
SEED = 0


def write_raw(raw: Path, cases: int, channels: int) -> None:
    """Synthetic MRI patients in nnU-Net raw format with `channels` channels, T1 and T2 in turn."""
    images, labels = make_case_folders(raw)
    for index in range(cases):
        case = generate_case(SEED, index, cases, "mri")
        for channel in range(channels):
            volume = case.channels[channel % len(case.channels)]
            (images / f"{case.case}_{channel:04d}{FILE_ENDING}").write_bytes(nifti_gz_bytes(volume, case.affine))
        (labels / f"{case.case}{FILE_ENDING}").write_bytes(nifti_gz_bytes(case.label, case.affine))
    mri = CHANNEL_NAMES["mri"]
    # Distinct names (T1_0, T2_1, T1_2, ...): each channel is z-scored on its own, as any MRI channel.
    names = {str(c): f"{mri[str(c % len(mri))]}_{c}" for c in range(channels)}
    write_dataset_json(raw, name=f"synthetic_mri_{channels}ch", channel_names=names, labels=dict(LABELS),
                       num_training=cases, description="bench/loader.py: synthetic MRI channels repeated")


def slice_store(work: Path, cases: int, size: int, channels: int) -> SliceStore:
    """The store for these settings under `work`, written unless a finished one is there
    (`extract_slices` writes all or nothing, so an existing slices.json means a whole store)."""
    store = work / f"slices_{size}px_{channels}ch_{cases}cases"
    if not (store / "slices.json").exists():
        with tempfile.TemporaryDirectory(prefix="raw-", dir=work) as raw:
            write_raw(Path(raw), cases, channels)
            extract_slices(Path(raw), store, size=size, seed=SEED)
    return SliceStore(store)


def sync(device: torch.device) -> None:
    # Augmentation kernels are queued asynchronously on CUDA: count them when they have run.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slices_per_second(fetch: Callable[[], int], batches: int, warmup: int, device: torch.device) -> float:
    """Slices per second over `batches` calls of `fetch` (returns the slices it delivered), after
    `warmup` calls that are not timed."""
    for _ in range(warmup):
        fetch()
    sync(device)
    started = time.perf_counter()
    slices = sum(fetch() for _ in range(batches))
    sync(device)
    return slices / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--workers", type=int, default=2, help="loader threads (default 2, a 2-core machine's)")
    parser.add_argument("--size", type=int, default=256, help="slice size in pixels (default 256)")
    parser.add_argument("--channels", type=int, default=4, help="image channels (default 4)")
    parser.add_argument("--batch", type=int, default=32, help="slices per batch (default 32)")
    parser.add_argument("--batches", type=int, default=8, help="batches per timed round (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path; the median counts (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before the first round (default 3)")
    parser.add_argument("--cases", type=int, default=10, help="synthetic patients in the store (default 10)")
    parser.add_argument("--work", type=Path, help="folder for the store, reused if present (default: a temporary one)")
    args = parser.parse_args()
    if min(args.workers + 1, args.size, args.channels, args.batch, args.batches, args.rounds) < 1:
        parser.error("--size, --channels, --batch, --batches and --rounds must be >= 1, --workers >= 0")

    device = resolve_device(args.device)
    config = PRESETS[PRESET]
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        work = args.work if args.work is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = slice_store(work, args.cases, args.size, args.channels)
        # The trainer's own construction (train/loop.py): its seeds, its checks, its device flags.
        train_slices = len(store.slice_index("train"))
        batch = capped_batch_size(args.batch, train_slices, "loader bench", f"the {train_slices} train slices")
        sampler = SliceSampler(store, "train", batch, config.oversample_foreground, seed=derived_seed(SEED, 1))
        generator = torch.Generator(device=device)
        generator.manual_seed(derived_seed(SEED, 2))
        augmenter = Augmenter(config, generator)
        stream = BatchStream(sampler, args.workers, pin_memory=device.type == "cuda")

        def loader() -> int:
            return len(next(stream)[0])

        def full_path() -> int:
            image, label, _ = next(stream)
            image, _ = device_batch(image, label, device, augmenter, channels_last=fast_path(device))
            return len(image)

        paths = {"loader": loader, "full": full_path}
        rates: dict[str, list[float]] = {name: [] for name in paths}
        try:
            with device_settings(device):
                for fetch in paths.values():
                    for _ in range(args.warmup):  # page cache, allocator, thread start
                        fetch()
                for round_index in range(args.rounds):
                    order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
                    for name in order:
                        # The batches the stream prefetched while the other path ran would come
                        # for free: its prefetch depth (workers + 1) is discarded every round.
                        rates[name].append(slices_per_second(paths[name], args.batches, args.workers + 1, device))
        finally:
            stream.close()
        train_slices = len(sampler.index)

    loader_rate, full_rate = statistics.median(rates["loader"]), statistics.median(rates["full"])
    where = f"{device} (device-side path)" if device.type == "cuda" else str(device)
    print(f"device {device}, {args.workers} loader threads, {torch.get_num_threads()} torch threads; "
          f"batch {batch} x {args.channels} x {args.size}^2, preset {PRESET} "
          f"(oversample_foreground {config.oversample_foreground})")
    print(f"store: {train_slices} train slices of {args.cases} synthetic patients; "
          f"{args.rounds} rounds x {args.batches} batches per path, median")
    print(f"demand: {DEMAND_SLICES_PER_S:.0f} slices/s (2 x 6.8 it/s x 32 slices, nnU-Net 2-D on an A100)")
    for label, rate in (("loader only (no augmentation)", loader_rate),
                        (f"loader + augmentation on {where}", full_rate)):
        print(f"{label + ':':<50} {rate:9.1f} slices/s  supply/demand {rate / DEMAND_SLICES_PER_S:.2f}")
    print(f"supply/demand ratio {full_rate / DEMAND_SLICES_PER_S:.2f}")


if __name__ == "__main__":
    main()
