"""`unetscout prune`: the argument parser and the command (registered by cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from unetscout.names import DEVICES, PRESETS
from unetscout.prune.settings import CRITERIA, PruneSettings


def _cmd_prune(args: argparse.Namespace) -> None:
    from unetscout.errors import UnetscoutError
    from unetscout.prune.loop import prune
    from unetscout.train.presets import parse_assignments, resolve_config

    overrides = parse_assignments(args.set)
    if args.seed is not None:
        if "seed" in overrides and overrides["seed"].strip() != str(args.seed):
            raise UnetscoutError(f"--seed {args.seed} and --set seed={overrides['seed']} disagree")
        overrides["seed"] = str(args.seed)
    settings = PruneSettings(criterion=args.criterion, top_width=args.top_width,
                             recovery_epochs=args.recovery_epochs, channels_per_step=args.channels_per_step,
                             base_dropout=args.base_dropout, collapse_fraction=args.collapse_fraction)
    prune(args.slices, args.out, resolve_config(args.preset, overrides), settings, device=args.device,
          init=args.init)


def add_prune_parser(sub: argparse._SubParsersAction) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(PruneSettings)}
    p = sub.add_parser(
        "prune", help="prune a plain U-Net channel by channel while training (the Lean U-Net study; resumable)",
        description="Gradual channel pruning (docs/methods.md#channel-pruning): train recovery epochs, rank the "
                    "channels, remove one physically, repeat until every layer is at one channel or the "
                    "validation Dice collapses. Criteria: stamp (the globally smallest normalised L2 "
                    "activation), stamp_random_in_block (a random channel of the block, one stage's "
                    "convs, holding the conv stamp picks), widest_block (a random channel of the stage with "
                    "the most channels). Writes log.tsv (one row per step), "
                    "at75/ at50/ at25/ (the network at those shares of its channels), model.json + best.pt "
                    "(the step with the best validation Dice). Rerunning resumes; SIGTERM saves and exits 143.")
    p.add_argument("slices", type=Path, help="slice store written by `unetscout slices`")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--criterion", required=True, metavar="CRITERION", help=" | ".join(CRITERIA))
    p.add_argument("--preset", choices=PRESETS, required=True,
                   help="training preset of the recovery epochs (its epochs setting is not used)")
    p.add_argument("--top-width", type=int, default=defaults["top_width"],
                   help=f"channels at the top level, doubling below (default {defaults['top_width']})")
    p.add_argument("--recovery-epochs", type=int, default=defaults["recovery_epochs"],
                   help=f"epochs trained before each removal (default {defaults['recovery_epochs']})")
    p.add_argument("--channels-per-step", type=int, default=defaults["channels_per_step"],
                   help=f"channels removed per step (default {defaults['channels_per_step']}, as the paper)")
    p.add_argument("--base-dropout", type=float, default=defaults["base_dropout"],
                   help=f"targeted dropout's base probability (default {defaults['base_dropout']})")
    p.add_argument("--collapse-fraction", type=float, default=defaults["collapse_fraction"],
                   help="stop once validation Dice falls below this share of the best, past the 25%% "
                        f"checkpoint (default {defaults['collapse_fraction']})")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL_DIR",
                   help="start from a trained plain U-Net of the same widths (model.json + best.pt; "
                        "default: a fresh initialisation)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the preset's, 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override one training setting, e.g. --set lr=0.01 (repeatable)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when available, else CPU")
    p.set_defaults(func=_cmd_prune)
