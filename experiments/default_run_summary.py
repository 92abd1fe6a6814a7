"""The README's numbers of the default run, written from that run's outputs.

    python experiments/default_run_summary.py WORKDIR [--readme README.md]

WORKDIR is a finished `snakemake --cores 2` of the default config (a fresh clone). Prints, or
writes into the README between its `<!-- default-run:begin -->` and `<!-- default-run:end -->`
markers: the run's wall time and job count (from Snakemake's log of the run), seconds per rule
(benchmarks/), the width picks, chosen columns of Tables 1, 4, 5 and 6 as the workflow wrote them
(results/tables/*.md), and the pruned networks' channels at their 50 % snapshots. Nothing is
typed by hand, so the README cannot drift from a run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pandas as pd

BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def wall_time(workdir: Path) -> tuple[float, int]:
    """Seconds from the first to the last time stamp of the Snakemake log that ran the most jobs
    (the whole run; later calls such as --report run few or none), and how many it finished."""
    runs = []
    for log in (workdir / ".snakemake" / "log").glob("*.snakemake.log"):
        text = log.read_text()
        stamps = [datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
                  for line in text.splitlines() if (m := STAMP.match(line.strip()))]
        if len(stamps) > 1:
            runs.append((text.count("Finished job"), (stamps[-1] - stamps[0]).total_seconds()))
    if not runs:
        raise SystemExit(f"{workdir}: no Snakemake log of a run with jobs in .snakemake/log")
    finished, seconds = max(runs)
    return seconds, finished


def seconds_per_rule(workdir: Path) -> dict[str, tuple[float, int]]:
    totals: dict[str, list[float]] = defaultdict(list)
    for path in (workdir / "benchmarks").rglob("*.tsv"):
        rule = path.parent.name if path.parent.parent.name != "benchmarks" else path.stem
        totals[rule].append(float(pd.read_csv(path, sep="\t")["s"].iloc[-1]))
    return {rule: (sum(values), len(values)) for rule, values in sorted(totals.items(), key=lambda kv: -sum(kv[1]))}


def table_block(workdir: Path, name: str, columns: list[str]) -> str:
    """The table's Markdown rows as the workflow wrote them, only the named columns."""
    lines = [line.split("|")[1:-1] for line in (workdir / "results" / "tables" / f"{name}.md").read_text().splitlines()
             if line.startswith("|")]
    header = [cell.strip() for cell in lines[0]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise SystemExit(f"{workdir}/results/tables/{name}.md: no column(s) {', '.join(missing)}")
    keep = [header.index(c) for c in columns]
    return "\n".join("|" + "|".join(line[k] for k in keep) + "|" for line in lines)


def pruned_channels(workdir: Path) -> list[str]:
    """Per pruning criterion (seed 0): the channels of each level's convs at the 50 % snapshot."""
    lines = []
    for spec_path in sorted((workdir / "results").glob("*/prune/*/*/seed0/at50/model.json")):
        widths = json.loads(json.loads(spec_path.read_text())["widths"])
        level = lambda convs: "/".join(map(str, convs))
        lines.append(f"`{spec_path.parents[3].name}`: encoder {', '.join(map(level, widths['encoder']))}; "
                     f"decoder {', '.join(map(level, widths['decoder']))}")
    return lines


def summary(workdir: Path) -> str:
    seconds, jobs = wall_time(workdir)
    rules = seconds_per_rule(workdir)
    picks = pd.read_csv(workdir / "results" / "tables" / "width_picks.csv").iloc[0]
    table1 = pd.read_csv(workdir / "results" / "tables" / "table1.csv")
    iac = table1[table1["method"] == "iac"].iloc[0]
    table4 = pd.read_csv(workdir / "results" / "tables" / "table4.csv").iloc[0]
    breakdown = ", ".join(f"{rule} {total:.0f} s ({count})" for rule, (total, count) in rules.items() if total >= 5)
    return "\n".join([
        f"Measured on a fresh clone, `snakemake --cores 2` of the default config: **{jobs} jobs in "
        f"{seconds // 60:.0f} min {seconds % 60:.0f} s** of wall clock. Seconds per rule (its benchmarks/ folder) summed over its jobs "
        f"(two jobs at a time; number of jobs in brackets): {breakdown}.",
        "",
        f"Width pick: cap {picks['selected_cap']} ({picks['selected_params']:,} parameters); per scoring seed "
        f"{picks['seed_picks']} (agreement {picks['agreement']:.2f}); the sweep's next larger cap "
        f"{picks['next_larger_cap']:.0f} trains {picks['delta_next_larger']:+.3f} Dice better, Spearman(score, "
        f"Dice) = {picks['spearman_rho']:.2f} (p {picks['spearman_p']:.2f}): pick falsified "
        f"{'yes' if picks['pick_falsified'] else 'no'}.",
        "",
        "Table 5 (`results/tables/table5.md`, first columns; the peers are not trained by the default):",
        "",
        table_block(workdir, "table5", ["Dataset", "Preset", "Model", "Width", "Params", "GFLOPs", "Dice", "HD95",
                                        "ΔDice vs nnU-Net [95% CI]", "p"]),
        "",
        f"Table 1 (`results/tables/table1.md`): cells searched on {iac['n_backbones']:.0f} backbone unit(s) "
        f"({iac['backbones']}); IAC's ΔDice over them {iac['delta_dice_mean']:+.4f} "
        f"[{iac['ci_low']:+.4f}, {iac['ci_high']:+.4f}].",
        "",
        table_block(workdir, "table1", ["Dataset", "Method", "Dice", "ΔDice [95% CI, backbones]",
                                        "95% CI, patients × backbones", "Wilcoxon p", "Fisher p", "Backbones"]),
        "",
        f"Table 4 (`results/tables/table4.md`, chosen columns; backbones {table4['backbones']}; Abs. rule = the "
        "paper's absolute stability rule replayed on the same searches):",
        "",
        table_block(workdir, "table4", ["Dataset", "Backbones", "IAC time (min)", "IAC epochs", "IAC-LTH epochs",
                                        "IAC-LTH time (min)", "Speed-up", "Floor-bound", "Abs. rule stop epoch",
                                        "Abs. rule speed-up (est.)", "Abs. rule floor-bound"]),
        "",
        "Table 6 (`results/tables/table6.md`, the Lean U-Net study; one seed):",
        "",
        table_block(workdir, "table6", ["Method", "Params", "Channels", "Dice median (MAD)"]),
        "",
        "Channels of each level's two convs at the 50 % snapshot of each pruning run, top level first "
        "(the starting U-Net: 4, 8, 16, 32, 64):",
        "",
        *[f"- {line}" for line in pruned_channels(workdir)],
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a finished default run (the folder snakemake ran in)")
    parser.add_argument("--readme", type=Path, help=f"rewrite this file between {BEGIN} and {END}")
    args = parser.parse_args(argv)
    text = summary(args.workdir)
    if args.readme is None:
        print(text)
        return 0
    readme = args.readme.read_text()
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        print(f"{args.readme}: needs one {BEGIN} and one {END}", file=sys.stderr)
        return 2
    head, rest = readme.split(BEGIN)
    args.readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
