"""`unetscout <command>`: argument parsing only; every command calls into a stage module.

Stage modules are imported inside the command functions so `unetscout --help` stays fast
(torch takes seconds to import).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from unetscout.errors import UnetscoutError


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
                   fractions=tuple(args.fractions))


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic nnU-Net raw dataset (the embedded default)",
                       description="Write a deterministic synthetic 3-D dataset in nnU-Net raw format.")
    p.add_argument("--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--cases", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical bytes")
    p.add_argument("--modality", choices=("mri", "ct"), default="mri",
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
    p.set_defaults(func=_cmd_slices)


# Each stage registers its commands here; order is the order of the pipeline.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_synth,
    _add_fetch,
    _add_slices,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UnetscoutError as err:
        print(f"unetscout: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unetscout: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
