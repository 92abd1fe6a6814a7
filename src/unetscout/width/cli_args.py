"""`unetscout score-widths` and `unetscout select-width` (registered by cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

# Mirrors of width.jacobian's defaults, kept here so `--help` does not import torch.
_CAPS = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
_K = "all"


def scoring_count(text: str) -> int | None:
    """`--k`: 'all' (None: every train case) or a positive number of cases."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or a positive integer, got {value}")
    return value
_SEED = 369


def _cmd_score_widths(args: argparse.Namespace) -> None:
    from unetscout.width.jacobian import score_widths

    score_widths(args.slices, args.out, k=args.k, seeds=args.seeds, caps=args.caps, device=args.device,
                 slice_seed=args.slice_seed)


def _cmd_select_width(args: argparse.Namespace) -> None:
    from unetscout.width.knee import describe_selection, select_width

    print(describe_selection(select_width(args.scores, args.out, caps=args.caps)))


def add_score_widths_parser(sub: argparse._SubParsersAction) -> None:
    caps = " ".join(map(str, _CAPS))
    p = sub.add_parser(
        "score-widths", help="training-free width scores of the plain U-Net at every width cap",
        description="Build the nnU-Net plain U-Net at every width cap from the same RNG state and score "
                    "each at initialisation: the mean over unlabeled train images (the central slice of every "
                    "train case, or of K of them) of the 2-norm of the input gradient of the summed "
                    "logits (XTinyU-Net). Writes a TSV: seed, cap, params, "
                    "gflops, score, score_norm.")
    p.add_argument("slices", type=Path, help="slices folder made by `unetscout slices` (labels are not read)")
    p.add_argument("--out", type=Path, required=True, help="output TSV (scores.tsv)")
    p.add_argument("--k", type=scoring_count, default=None,
                   help=f"train cases scored, one image each (their central slice): 'all' or a number, "
                        f"evenly spread (default {_K})")
    p.add_argument("--seeds", type=int, nargs="+", default=[_SEED],
                   help=f"initialisation seeds; several give the agreement of the pick (default {_SEED})")
    p.add_argument("--caps", type=int, nargs="+", default=list(_CAPS), help=f"width caps (default {caps})")
    p.add_argument("--slice-seed", type=int, default=_SEED,
                   help=f"seed of the choice of K cases, shared by all seeds (default {_SEED})")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.set_defaults(func=_cmd_score_widths)


def add_select_width_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select-width", help="pick the width cap from the scores by the knee rule",
        description="Normalise each seed's scores over the caps, place the knee (authors' rule, "
                    "docs/methods.md#knee-rule) and pick the cap; with several seeds the most frequent pick "
                    "wins (ties: larger cap). Writes selection.json and prints the pick.")
    p.add_argument("scores", type=Path, help="scores TSV written by `unetscout score-widths`")
    p.add_argument("--out", type=Path, required=True, help="output JSON (selection.json)")
    p.add_argument("--caps", type=int, nargs="+", default=list(_CAPS),
                   help="caps every seed must have been scored at (default: the ten caps 512 ... 1)")
    p.set_defaults(func=_cmd_select_width)


def _cmd_sweep_report(args: argparse.Namespace) -> None:
    from unetscout.width.sweep import describe_summary, sweep_report

    summary = sweep_report(args.patients, args.scores, args.selection, args.out, args.summary,
                           args.figure, margin=args.margin)
    print(describe_summary(summary))


def add_sweep_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep-report", help="join init-time scores with the trained Dice of every cap (the width sweep)",
        description="Tabulate the normalised score and the trained test Dice of every cap, the Spearman "
                    "rank correlation between them, and whether the next larger cap trains clearly better "
                    "than the pick (which would falsify it); draws the sweep figure.")
    p.add_argument("patients", type=Path, nargs="+",
                   help="patients.tsv of every trained cap (the cap is read from the model.json beside it)")
    p.add_argument("--scores", type=Path, required=True, help="scores.tsv of `unetscout score-widths`")
    p.add_argument("--selection", type=Path, required=True, help="selection.json of `unetscout select-width`")
    p.add_argument("--out", type=Path, required=True, help="output TSV (sweep.tsv)")
    p.add_argument("--summary", type=Path, required=True, help="output JSON (Spearman, pick check)")
    p.add_argument("--figure", type=Path, required=True, help="output PNG (a PDF is written beside it)")
    p.add_argument("--margin", type=float, default=0.02,
                   help="Dice by which the next larger cap must beat the pick to falsify it (default 0.02)")
    p.set_defaults(func=_cmd_sweep_report)
