"""`unetscout search`, `unetscout train-cell` and `unetscout search-figures` (registered by cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetscout.names import CELL_METHODS, DEVICES


def _seeded(overrides: dict[str, str], seed: int | None) -> dict[str, str]:
    from unetscout.errors import UnetscoutError

    if seed is not None:
        if "seed" in overrides and overrides["seed"].strip() != str(seed):
            raise UnetscoutError(f"--seed {seed} and --set seed={overrides['seed']} disagree")
        overrides["seed"] = str(seed)
    return overrides


def _cmd_search(args: argparse.Namespace) -> None:
    from unetscout.search.config import resolve_search_config
    from unetscout.search.run import run_search
    from unetscout.train.presets import parse_assignments

    config = resolve_search_config(_seeded(parse_assignments(args.set), args.seed))
    run_search(args.method, args.backbone_dir, args.slices, args.out, config, device=args.device)


def _cmd_train_cell(args: argparse.Namespace) -> None:
    from unetscout.search.cell_training import train_cell
    from unetscout.train.presets import parse_assignments

    overrides = _seeded(parse_assignments(args.set), args.seed)
    train_cell(args.backbone_dir, args.slices, args.genotype, args.method, args.out, overrides, device=args.device)


def _cmd_search_figures(args: argparse.Namespace) -> None:
    from unetscout.search.figures import search_figures

    for path in search_figures(args.search_dir, args.out):
        print(path)


def _add_common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("backbone_dir", type=Path, help="trained backbone folder (`unetscout train`: model.json, "
                                                   "best.pt, config.json)")
    p.add_argument("slices", type=Path, help="slice store written by `unetscout slices`")
    p.add_argument("--method", choices=CELL_METHODS, required=True, help="iac (bilevel), iac_lth (single-level "
                                                                     "with JS pruning) or random (a seeded random genotype, the baseline)")
    p.add_argument("--seed", type=int, default=None, help=f"{what} seed (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help=f"override one {what} setting, e.g. --set epochs=50 (repeatable)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when available")


def add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="search an IAC cell on a frozen backbone (resumable)",
        description="Search the skip cell (docs/methods.md#cell) with the backbone frozen: IAC (bilevel, first order, "
                    "train split halved into train_search / val_search) or IAC-LTH (single level, ops pruned by "
                    "the Jensen-Shannon drift of their weights). Writes genotype.json, init_state.pt, the "
                    "per-epoch logs and search_summary.json. Rerunning resumes; SIGTERM saves and exits 143.")
    _add_common(p, "search")
    p.add_argument("--out", type=Path, required=True, help="search folder (SEARCH_DIR)")
    p.set_defaults(func=_cmd_search)


def add_train_cell_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-cell", help="train a searched cell implanted in a frozen backbone (resumable)",
        description="Implant the genotype's discrete cell at every skip level of the frozen backbone and train "
                    "the cells only, with the backbone's training config (--set overrides it). IAC: fresh "
                    "init; IAC-LTH: lottery-ticket reset from SEARCH_DIR/init_state.pt. The output folder is "
                    "a training folder that `unetscout evaluate` reads.")
    _add_common(p, "training")
    p.add_argument("--genotype", type=Path, required=True, help="SEARCH_DIR/genotype.json")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, logs, config)")
    p.set_defaults(func=_cmd_train_cell)


def add_search_figures_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search-figures", help="analysis figures of a cell search (PNG and PDF)",
        description="From SEARCH_DIR/search_log.jsonl: importance trajectories per edge; cosine similarity of "
                    "the 98-d importance vector across epochs and to the final epoch; Hamming similarity of the "
                    "top-1/2/3 masks and of the per-epoch genotype to the final ones; the epoch at which each final "
                    "op first enters the top-3 / top-2 / top-1 of its edge and each node's final input set forms; "
                    "JS against tau per edge with the prunes (IAC-LTH). Numbers also as TSV.")
    p.add_argument("search_dir", type=Path, help="folder written by `unetscout search`")
    p.add_argument("--out", type=Path, required=True, help="output folder for the figures")
    p.set_defaults(func=_cmd_search_figures)
