"""`unetscout <command>`: argument parsing only; every command calls into a stage module.

Stage modules are imported inside the command functions so `unetscout --help` stays fast
(torch takes seconds to import).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Callable, Sequence

from unetscout.errors import UnetscoutError
from unetscout.names import ARCHITECTURES, ENCODER_UNETS, ENCODER_WEIGHTS_CACHE, IMAGENET, MODALITIES
from unetscout.evaluate.cli_args import add_evaluate_parser
from unetscout.prune.cli_args import add_prune_parser
from unetscout.search.cli_args import add_search_figures_parser, add_search_parser, add_train_cell_parser
from unetscout.stats.cli_args import add_compare_parser, add_figures_parser, add_tables_parser
from unetscout.train.cli_args import add_train_parser
from unetscout.width.cli_args import add_score_widths_parser, add_select_width_parser, add_sweep_report_parser


def _cmd_synth(args: argparse.Namespace) -> None:
    from unetscout.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(args.out, cases=args.cases, seed=args.seed, modality=args.modality)


def _cmd_fetch(args: argparse.Namespace) -> None:
    from unetscout.data.registry import describe_registry, fetch

    if args.list:
        print(describe_registry())
        return
    if args.name is None or args.out is None:
        raise UnetscoutError("fetch: give a dataset NAME and --out DIR (or --list)")
    fetch(args.name, args.out, from_dir=args.from_dir, cache_dir=args.cache)


def _cmd_slices(args: argparse.Namespace) -> None:
    from unetscout.data.slices import extract_slices

    extract_slices(args.raw, args.out, size=args.size, seed=args.seed,
                   fractions=tuple(args.fractions), image_fit=args.image_fit)


def _cmd_describe_model(args: argparse.Namespace) -> None:
    import json

    from unetscout.models.describe import describe_model
    from unetscout.models.spec import ModelSpec

    spec = ModelSpec(backbone=args.backbone, in_channels=args.in_channels, num_classes=args.classes,
                     image_size=args.size, cap=args.cap, width=args.width, stages=args.stages, skip=args.skip)
    info = describe_model(spec)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    if spec.is_encoder_unet:
        width = f"smp encoder {ARCHITECTURES[spec.backbone].smp_encoder}"
    elif spec.is_peer:
        width = f"{ARCHITECTURES[spec.backbone].label} as its paper builds it"
    elif ARCHITECTURES[spec.backbone].constant_width:
        width = f"width {spec.width}"
    else:
        width = f"cap {spec.cap}"
    print(f"backbone    {spec.backbone} ({width}), skip {spec.skip}")
    print(f"stages      {info['stages']}")
    print(f"features    {', '.join(map(str, info['features']))}")
    print(f"parameters  {info['params']:,}")
    shape = " x ".join(map(str, info["input_shape"]))
    print(f"GFLOPs      {info['gflops']:.4f}  (2 x multiply-adds, one {shape} image)")


def _cmd_fetch_weights(args: argparse.Namespace) -> None:
    from unetscout.models.encoder_unet import build_smp_unet, smp_encoder_name
    from unetscout.models.spec import ModelSpec

    spec = ModelSpec(backbone=args.backbone, in_channels=3, num_classes=2, image_size=64, encoder_weights=IMAGENET)
    print(f"unetscout fetch-weights: downloading the ImageNet weights of {smp_encoder_name(args.backbone)} "
          f"into {args.cache}", file=sys.stderr, flush=True)
    build_smp_unet(spec, args.cache, offline=False)
    print(args.cache)


def _add_fetch_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-weights", help="download an encoder U-Net's ImageNet weights (for encoder_weights: imagenet)",
                       description="Download an encoder's ImageNet weights through segmentation-models-pytorch "
                                   "into a folder that training then reads offline (huggingface_hub's layout).")
    p.add_argument("backbone", choices=ENCODER_UNETS, help=", ".join(ENCODER_UNETS))
    p.add_argument("--cache", type=Path, default=Path(ENCODER_WEIGHTS_CACHE),
                   help=f"weights folder (default {ENCODER_WEIGHTS_CACHE}); copy it to an offline cluster as it is")
    p.set_defaults(func=_cmd_fetch_weights)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic nnU-Net raw dataset (the embedded default)",
                       description="Write a deterministic synthetic 3-D dataset in nnU-Net raw format.")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--cases", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical bytes")
    p.add_argument("--modality", choices=MODALITIES, default="mri",
                   help="mri: 2 channels, arbitrary units; ct: 1 channel in Hounsfield-like units")
    p.set_defaults(func=_cmd_synth)


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download a public dataset (or convert a placed one) to nnU-Net raw",
                       description="Download, verify and convert a registry dataset to nnU-Net raw format.")
    p.add_argument("name", nargs="?", help="registry name (see --list)")
    p.add_argument("--out", type=Path, help="output dataset folder")
    p.add_argument("--from", dest="from_dir", type=Path, default=None,
                   help="folder where you placed a registration-only dataset (e.g. brats2021)")
    p.add_argument("--cache", type=Path, default=None,
                   help="where downloads are kept and resumed (default: OUT's parent/.downloads)")
    p.add_argument("--list", action="store_true", help="list the registry and exit")
    p.set_defaults(func=_cmd_fetch)


def _add_slices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slices", help="extract normalised 2-D slices, patient-wise split and manifest",
                       description="Turn an nnU-Net raw dataset into memory-mappable per-patient 2-D slices.")
    p.add_argument("raw", type=Path, help="nnU-Net raw dataset folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--size", type=int, default=256, help="in-plane size after centre crop / zero pad")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.6, 0.2, 0.2),
                   metavar=("TRAIN", "VAL", "TEST"), help="patient split fractions (default 0.6 0.2 0.2)")
    p.add_argument("--image-fit", choices=("crop", "resize"), default="crop",
                   help="2-D image datasets: crop an image larger than --size like a slice (default), or shrink "
                        "it to fit (aspect kept; HD95 stays in original pixels); volumes are always cropped")
    p.set_defaults(func=_cmd_slices)


def _add_describe_model(sub: argparse._SubParsersAction) -> None:
    import dataclasses

    from unetscout.models.spec import BASE_FEATURES, MAX_FEATURES, ModelSpec
    from unetscout.names import SKIP_KINDS

    defaults = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
    p = sub.add_parser("describe-model", help="print a model's parameter count and GFLOPs",
                       description="Build a U-Net from its description and print its size and cost "
                                   "(GFLOPs = 2 x multiply-adds of one forward pass).")
    p.add_argument("--backbone", choices=ARCHITECTURES, required=True, help=", ".join(ARCHITECTURES))
    p.add_argument("--cap", type=int, default=defaults["cap"],
                   help=f"width cap for plain/resenc: min(cap, {BASE_FEATURES} * 2**i, {MAX_FEATURES}) "
                        f"(default {defaults['cap']})")
    p.add_argument("--width", type=int, default=defaults["width"],
                   help=f"constant width of the lean backbone (default {defaults['width']})")
    p.add_argument("--stages", type=int, default=None,
                   help="resolution stages (default: halve while the bottleneck edge stays >= 4)")
    p.add_argument("--in-channels", type=int, required=True, help="input channels (modalities)")
    p.add_argument("--classes", type=int, required=True, help="output classes including background")
    p.add_argument("--size", type=int, required=True, help="square input edge in pixels")
    p.add_argument("--skip", default=defaults["skip"],
                   help=f"skip module: {', '.join(SKIP_KINDS)} (default {defaults['skip']})")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=_cmd_describe_model)


# Each stage registers its commands here; order is the order of the pipeline.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_synth,
    _add_fetch,
    _add_fetch_weights,
    _add_slices,
    _add_describe_model,
    add_train_parser,
    add_prune_parser,
    add_evaluate_parser,
    add_score_widths_parser,
    add_select_width_parser,
    add_sweep_report_parser,
    add_search_parser,
    add_train_cell_parser,
    add_search_figures_parser,
    add_compare_parser,
    add_tables_parser,
    add_figures_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetscout",
        description="Compact 2-D U-Nets for medical image segmentation: one command per pipeline stage.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _version() -> str:
    from unetscout import __version__

    return __version__


def _announce(command: str) -> None:
    """First log line of every job: where it ran, so a Slurm log proves it ran on the cluster."""
    import os
    import socket

    job = os.environ.get("SLURM_JOB_ID")
    where = f"slurm job {job}" if job else "no slurm job"
    print(f"unetscout {command}: host {socket.gethostname()}, {where}, SLURM_JOB_ID={job or '-'}",
          file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Argument rules argparse cannot state (one of two sources, a flag that needs another).
    getattr(args, "validate", lambda _: None)(args)
    _announce(args.command)
    try:
        with _one_writer(args):
            args.func(args)
    except UnetscoutError as err:
        print(f"unetscout: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unetscout: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        from unetscout.atomic import disk_full_error, is_no_space

        if not is_no_space(err):
            raise
        # A write outside the atomic writers (those report the output and its size).
        where = Path(err.filename or getattr(args, "out", None) or ".")
        print(f"unetscout: error: {disk_full_error(where, None)}", file=sys.stderr)
        return 2
    return 0


def _one_writer(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Every command that writes an output (`--out`) holds that output's lock while it runs."""
    out = getattr(args, "out", None)
    if out is None:
        return contextlib.nullcontext()
    from unetscout.atomic import exclusive_output

    return exclusive_output(out, args.command)


if __name__ == "__main__":
    sys.exit(main())
