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
                     encoder_weights=None if args.encoder_weights == "none" else args.encoder_weights,
                     widths=explicit_widths(args, store.size))
    train(args.slices, args.out, spec, config, device=args.device, weights_cache=args.weights_cache)


def explicit_widths(args: argparse.Namespace, image_size: int) -> str | None:
    """The plain U-Net's per-conv widths from --top-width / --width-scale (doubling from the top,
    scaled) or --widths-from (a pruned network's model.json, rebuilt and re-initialised)."""
    from unetscout.errors import UnetscoutError, file_error
    from unetscout.models.spec import ModelSpec, stages_for_size
    from unetscout.models.widths import CONVS_PER_STAGE, UNetWidths

    if args.top_width is None and args.widths_from is None:
        if args.width_scale != 1.0:
            raise UnetscoutError("--width-scale scales the widths of --top-width; give --top-width too")
        return None
    if args.backbone != "plain":
        raise UnetscoutError(f"--top-width and --widths-from build a plain U-Net, not --backbone {args.backbone}")
    if args.widths_from is not None:
        if args.top_width is not None:
            raise UnetscoutError("--top-width and --widths-from both set the widths; give one")
        source = ModelSpec.load(args.widths_from)
        if source.widths is None:
            raise file_error(args.widths_from, "has no explicit widths (not a pruned or scaled U-Net)")
        if source.image_size != image_size:
            raise file_error(args.widths_from, f"is a network for {source.image_size} px slices, "
                                               f"not the {image_size} px of the slice store")
        return source.widths
    return UNetWidths.doubling(args.top_width, stages_for_size(image_size), CONVS_PER_STAGE,
                               args.width_scale).to_json()


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
    p.add_argument("--top-width", type=int, default=None,
                   help="plain: widths doubling from this many channels at the top (instead of nnU-Net's 32, capped)")
    p.add_argument("--width-scale", type=float, default=1.0,
                   help="with --top-width: every width times this, rounded, at least 1 (the scaled U-Nets)")
    p.add_argument("--widths-from", type=Path, default=None, metavar="MODEL_JSON",
                   help="plain: the per-conv widths of a pruned network's model.json, re-initialised")
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
