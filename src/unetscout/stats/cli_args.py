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
    from unetscout.stats.provenance import open_results
    from unetscout.stats.tables import build_tables

    opened = open_results("tables", args.results_dir, args.manifest)
    if args.check:
        print(f"{len(opened.digests)} declared runs agree with the config ({args.manifest})")
        return
    paths = build_tables(opened.results, args.out, seed=args.seed, n_resamples=args.resamples)
    paths.append(opened.write_provenance(args.out))
    for path in paths:
        print(path)


def _add_sources(p: argparse.ArgumentParser) -> None:
    """Where the tables and figures read from: the runs a manifest declares, or a whole folder."""
    p.add_argument("results_dir", type=Path, nargs="?",
                   help="results folder: read every run in it (by hand; the workflow passes --manifest)")
    p.add_argument("--manifest", type=Path,
                   help="the runs the config declares (results/manifest.json, written by the workflow): "
                        "only these are read, each checked against the config")


def _check_sources(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.results_dir is None) == (args.manifest is None):
        p.error("give one of a results folder (every run in it) and --manifest (the runs a config declares)")


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
    p = sub.add_parser("tables", help="rebuild the papers' Tables 1-6 and the width picks from the result files",
                       description="Write table1..table6 and width_picks as CSV, Markdown and LaTeX, and "
                                   "provenance.json (code version, config digest, every run used with its "
                                   "identity digest), from the runs a manifest declares or from a whole results "
                                   "folder; cells whose inputs are missing are marked, never filled in.")
    _add_sources(p)
    p.add_argument("--out", type=Path, help="output folder, e.g. results/tables/ (not with --check)")
    p.add_argument("--check", action="store_true",
                   help="with --manifest: only check every declared run against the config; write nothing")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--resamples", type=_positive_int, default=10_000, help="bootstrap resamples (default 10000)")
    p.set_defaults(func=_cmd_tables, validate=lambda args: _check_tables_args(p, args))


def _check_tables_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    _check_sources(p, args)
    if args.check and args.manifest is None:
        p.error("--check needs --manifest (the runs and what the config declares of them)")
    if not args.check and args.out is None:
        p.error("the following arguments are required: --out")


def _cmd_figures(args: argparse.Namespace) -> None:
    from unetscout.stats.figures import build_figures
    from unetscout.stats.provenance import open_results

    opened = open_results("figures", args.results_dir, args.manifest)
    written = build_figures(opened.results, args.out)
    opened.write_provenance(args.out)
    print(f"wrote {len(written)} figure files to {args.out}")


def add_figures_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="draw the summary figures from the result files",
                       description="Width sensitivity with the pick, per-patient paired Dice, search cost and "
                                   "the pruning study, per dataset, as PNG and PDF, with provenance.json; from "
                                   "the runs a manifest declares or from a whole results folder. Figures "
                                   "without inputs are skipped and reported.")
    _add_sources(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (results/figures/)")
    p.set_defaults(func=_cmd_figures, validate=lambda args: _check_sources(p, args))
