"""`unetscout compare` and `unetscout tables`: argument parsing only (registered by cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_compare(args: argparse.Namespace) -> None:
    from unetscout.stats.tests import compare

    result = compare(args.a, args.b, args.out, seed=args.seed, n_resamples=args.resamples)

    def show(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    dropped = f", {result['n_dropped']} dropped (undefined Dice)" if result["n_dropped"] else ""
    print(f"Delta Dice (B - A) = {show(result['mean_delta'], '+.4f')} "
          f"[{show(result['ci_low'], '+.4f')}, {show(result['ci_high'], '+.4f')}] "
          f"(95% bootstrap CI), Wilcoxon p = {show(result['p_wilcoxon'], '.3g')}, "
          f"{result['n_patients']} patients{dropped}")


def _cmd_tables(args: argparse.Namespace) -> None:
    from unetscout.stats.tables import build_tables

    for path in build_tables(args.results_dir, args.out, seed=args.seed, n_resamples=args.resamples):
        print(path)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired per-patient Dice comparison of two patients.tsv files",
                       description="Delta(A -> B) = Dice_B - Dice_A per patient: mean, 95% percentile "
                                   "bootstrap CI over patients and two-sided Wilcoxon signed-rank p.")
    p.add_argument("a", type=Path, help="patients.tsv of method A (the reference)")
    p.add_argument("b", type=Path, help="patients.tsv of method B")
    p.add_argument("--out", type=Path, required=True, help="output JSON")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--resamples", type=_positive_int, default=10_000, help="bootstrap resamples (default 10000)")
    p.set_defaults(func=_cmd_compare)


def add_tables_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="rebuild the papers' Tables 1-5 from the result files",
                       description="Write table1..table6 as CSV, Markdown and LaTeX from a results folder; "
                                   "cells whose inputs are missing are marked, never filled in.")
    p.add_argument("results_dir", type=Path, help="results folder (holds one folder per dataset)")
    p.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/tables/")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--resamples", type=_positive_int, default=10_000, help="bootstrap resamples (default 10000)")
    p.set_defaults(func=_cmd_tables)


def _cmd_figures(args: argparse.Namespace) -> None:
    from unetscout.stats.figures import build_figures

    written = build_figures(args.results, args.out)
    print(f"wrote {len(written)} figure files to {args.out}")


def add_figures_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="draw the summary figures from the result files",
                       description="Width sensitivity with the pick, per-patient paired Dice and search cost, "
                                   "per dataset, as PNG and PDF. Figures without inputs are skipped and reported.")
    p.add_argument("results", type=Path, help="results folder (results/)")
    p.add_argument("--out", type=Path, required=True, help="output folder (results/figures/)")
    p.set_defaults(func=_cmd_figures)
