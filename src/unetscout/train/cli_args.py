"""`unetscout train`: the argument parser and the command (registered by cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetscout.names import ARCHITECTURES, DEVICES, ENCODER_UNETS, ENCODER_WEIGHTS, ENCODER_WEIGHTS_CACHE, PRESETS


def _cmd_train(args: argparse.Namespace) -> None:
    from unetscout.data.slice_store import SliceStore
    from unetscout.errors import UnetscoutError
    from unetscout.models.spec import ModelSpec
    from unetscout.train.loop import train
    from unetscout.train.presets import parse_assignments, resolve_config

    overrides = parse_assignments(args.set)
    if args.seed is not None:
        if "seed" in overrides and overrides["seed"].strip() != str(args.seed):
            raise UnetscoutError(f"--seed {args.seed} and --set seed={overrides['seed']} disagree")
        overrides["seed"] = str(args.seed)
    config = resolve_config(args.preset, overrides)
    store = SliceStore(args.slices)
    cap = args.cap if args.cap_from is None else selected_cap(args.cap_from)
    spec = ModelSpec(backbone=args.backbone, in_channels=len(store.channel_names),
                     num_classes=store.num_classes, image_size=store.size, cap=cap,
                     width=args.width, skip=args.skip,
                     encoder_weights=None if args.encoder_weights == "none" else args.encoder_weights)
    train(args.slices, args.out, spec, config, device=args.device, weights_cache=args.weights_cache)


def selected_cap(selection: Path) -> int:
    """The width cap `unetscout select-width` picked (selection.json's `selected_cap`)."""
    import json

    from unetscout.errors import file_error

    try:
        cap = json.loads(Path(selection).read_text())["selected_cap"]
    except FileNotFoundError:
        raise file_error(selection, "width selection not found; run `unetscout select-width` first") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise file_error(selection, "not a width selection (no selected_cap)") from None
    if not isinstance(cap, int) or cap < 1:
        raise file_error(selection, f"selected_cap must be a positive integer, got {cap!r}")
    return cap


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a 2-D U-Net backbone on a slice store (resumable)",
        description="Train a 2-D U-Net on the train split of a slice store, validating by patient-level "
                    "Dice. Rerunning the same command resumes from OUT/last.pt; SIGTERM saves and exits 143.")
    p.add_argument("slices", type=Path, help="slice store written by `unetscout slices`")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, logs, config)")
    p.add_argument("--backbone", choices=ARCHITECTURES, required=True)
    p.add_argument("--cap", type=int, default=512, help="width cap for plain / resenc (default 512)")
    p.add_argument("--cap-from", type=Path, default=None, metavar="SELECTION_JSON",
                   help="take the cap from `unetscout select-width`'s selection.json (the xtiny backbone)")
    p.add_argument("--width", type=int, default=8, help="constant width for lean (default 8)")
    p.add_argument("--skip", default="identity", help="skip module name (default identity)")
    p.add_argument("--encoder-weights", choices=ENCODER_WEIGHTS, default="none",
                   help=f"encoder U-Nets ({', '.join(ENCODER_UNETS)}): start from scratch (none, the "
                        "default) or from ImageNet weights read from --weights-cache")
    p.add_argument("--weights-cache", type=Path, default=Path(ENCODER_WEIGHTS_CACHE),
                   help=f"folder of downloaded encoder weights (`unetscout fetch-weights`; default {ENCODER_WEIGHTS_CACHE})")
    p.add_argument("--preset", choices=PRESETS, required=True, help="training preset (docs/methods.md#training-presets)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's, 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one training setting, e.g. --set epochs=50 (repeatable)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: CUDA when available, else CPU")
    p.set_defaults(func=_cmd_train)
