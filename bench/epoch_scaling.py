"""Seconds per training epoch against slice size and network width, to size Slurm runtimes.

Times the training step `unetscout train` runs (train.step.optimisation_step: forward, the
preset's loss, backward, optimiser; bf16 autocast and channels_last on CUDA) of the plain U-Net
at slice sizes 64 / 128 / 256 and width caps 8 / 32 / 128 / 512, on random batches (the data
path has its own benchmark, bench/loader.py). Prints per cell the milliseconds per slice, the
preset's epoch (iterations_per_epoch x batch_size slices) in minutes, and milliseconds per forward
GFLOP of a slice, the constant workflow/rules/resources.smk's runtime estimate assumes for its
reference GPU (MS_PER_GFLOP): where that constant holds across the table, runtime follows
`describe-model`'s GFLOPs and the estimate scales; where it does not, the table says by how much.

    python bench/epoch_scaling.py [--device cpu|cuda] [--preset paper] [--sizes 64 128 256]
                                  [--caps 8 32 128 512] [--batch 4] [--steps 3]
On a shared CPU set OMP_NUM_THREADS to the cores the job may use.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unetscout.device import fast_layout, fast_path
from unetscout.models.describe import count_gflops
from unetscout.models.spec import ModelSpec
from unetscout.models.unet import build_model
from unetscout.train.loop import build_optimizer
from unetscout.train.losses import SegmentationLoss
from unetscout.train.presets import PRESETS
from unetscout.train.step import optimisation_step

IN_CHANNELS, CLASSES = 1, 4  # resources.smk's GFLOPs table is for 1-channel slices and 4 classes


def ms_per_slice(spec: ModelSpec, preset: str, device: torch.device, batch: int, steps: int) -> float:
    """Median over `steps` timed steps (after one warm-up) of one training step's time per slice."""
    config = PRESETS[preset]
    torch.manual_seed(0)
    fast = fast_path(device)
    model = fast_layout(build_model(spec).to(device), fast)
    model.train()
    optimizer = build_optimizer(model, config)
    loss_fn = SegmentationLoss.from_config(config)
    generator = torch.Generator().manual_seed(0)
    image = fast_layout(torch.randn(batch, IN_CHANNELS, spec.image_size, spec.image_size, generator=generator)
                        .to(device), fast)
    label = torch.randint(0, CLASSES, (batch, spec.image_size, spec.image_size), generator=generator).to(device)
    times = []
    for step in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimisation_step(model, optimizer, loss_fn, image, label, grad_clip=config.grad_clip, mixed_precision=fast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step pays for allocation (and cudnn's autotuning)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--caps", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--batch", type=int, default=4, help="slices per timed step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = PRESETS[args.preset]
    epoch_slices = config.iterations_per_epoch * config.batch_size
    print(f"device {device} ({torch.get_num_threads()} threads), plain U-Net, {IN_CHANNELS} channel, "
          f"{CLASSES} classes, preset {args.preset} (deep supervision {config.deep_supervision}); "
          f"an epoch = {config.iterations_per_epoch} x {config.batch_size} = {epoch_slices} slices; "
          f"median of {args.steps} steps of {args.batch} slices")
    print(f"{'size':>5} {'cap':>5} {'params':>11} {'GFLOPs':>8} {'ms/slice':>9} {'min/epoch':>10} {'ms/GFLOP':>9}")
    for size in args.sizes:
        for cap in args.caps:
            spec = ModelSpec("plain", in_channels=IN_CHANNELS, num_classes=CLASSES, image_size=size, cap=cap,
                             deep_supervision=config.deep_supervision)
            model = build_model(spec)
            gflops = count_gflops(model, spec)
            params = sum(p.numel() for p in model.parameters())
            ms = ms_per_slice(spec, args.preset, device, args.batch, args.steps)
            print(f"{size:>5} {cap:>5} {params:>11,} {gflops:>8.4g} {ms:>9.2f} {ms * epoch_slices / 60000:>10.1f} "
                  f"{ms / gflops:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
