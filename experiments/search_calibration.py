"""Choose IAC-LTH's stability-test constants on one dataset, report them on another (docs/search_calibration.md).

Two synthetic datasets of different size (so a one-pass epoch has a different number of Adam
steps). On the *tuning* dataset: a backbone, the full IAC search, IAC-LTH over the relative
rule's tau0 x gamma grid and under the paper's absolute rule, each genotype's cell trained
(IAC-LTH from its lottery ticket) and evaluated. The constants are chosen there by
`choose_constants`: the genotype's agreement with IAC's (shared (node, input, op) choices out
of 8), then the cell's test Dice; never by the stop epoch. On the *held-out* dataset only IAC,
the chosen point, the current default (if it differs) and the absolute rule are run and
reported. Writes `calibration.tsv`, `calibration.md` and `chosen.json` into the work folder.

Every step is an ordinary `unetscout` command, run in parallel (`--jobs`, one torch thread
each); rerunning skips what is done (each command resumes or returns at once).

    python experiments/search_calibration.py --workdir results/calibration --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

# The synthetic default generator at two sizes; slices at 32 px to keep the CPU cost bearable.
DATASETS = {"synthetic12": 12, "synthetic24": 24}
SLICE_SIZE = 32
BACKBONE = ["--backbone", "plain", "--cap", "16"]  # the default run's width pick (XTinyU-Net, cap 16)
TRAIN = {"epochs": 4, "iterations_per_epoch": 25, "batch_size": 16, "val_every": 2, "num_workers": 0}
# The paper's schedule scaled to 80 epochs (warm-up 15/200 -> 6/80); one pass over the data per epoch.
SEARCH = {"epochs": 80, "warmup_epochs": 6, "batch_size": 16, "num_workers": 0}
TUNING, HELD_OUT = "synthetic12", "synthetic24"
# The relative rule's grid, run on the tuning dataset only.
RELATIVE_GRID = [(tau0, gamma) for tau0 in (0.25, 0.5, 1.0) for gamma in (1.05, 1.2)]
DEFAULT = (0.5, 1.2)      # SearchConfig's tau0, gamma when this experiment was run
ABSOLUTE = [(1e-4, 1.1)]  # the paper's rule with our earlier default


def sets(settings: dict) -> list[str]:
    return [arg for key, value in sorted(settings.items()) for arg in ("--set", f"{key}={value}")]


def run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def prepare(root: Path, name: str, cases: int) -> None:
    raw, slices, backbone = root / name / "raw", root / name / "slices", root / name / "backbone"
    if not (raw / "dataset.json").exists():
        run(["unetscout", "synth", "--out", str(raw), "--cases", str(cases), "--seed", "0"], root / "logs" / f"{name}_synth.log")
    if not (slices / "slices.json").exists():
        run(["unetscout", "slices", str(raw), "--out", str(slices), "--size", str(SLICE_SIZE), "--seed", "0"],
            root / "logs" / f"{name}_slices.log")
    run(["unetscout", "train", str(slices), "--out", str(backbone), *BACKBONE, "--preset", "paper", "--seed", "0",
         *sets(TRAIN), "--device", "cpu"], root / "logs" / f"{name}_backbone.log")


def run_label(rule: str, tau0: float, gamma: float) -> str:
    return f"{rule}_tau{tau0:g}_gamma{gamma:g}"


def search_jobs(name: str, relative: list[tuple[float, float]]) -> list[tuple[str, str, dict]]:
    """IAC, IAC-LTH at each relative point and under the absolute rule, on one dataset."""
    jobs = [(name, "iac", {})]
    for rule, grid in (("relative", relative), ("absolute", ABSOLUTE)):
        for tau0, gamma in grid:
            key = "tau0" if rule == "relative" else "tau0_absolute"
            jobs.append((name, run_label(rule, tau0, gamma), {"tau_rule": rule, key: tau0, "gamma": gamma}))
    return jobs


def choose_constants(table: pd.DataFrame) -> tuple[float, float]:
    """The relative point whose genotype agrees most with IAC's, then whose cell scores the higher
    test Dice, then (a tie on both) the smaller tau0 and gamma: the stop epoch plays no part."""
    relative = table[table["rule"] == "relative"]
    best = relative.sort_values(["agreement_with_iac", "test_dice", "tau0", "gamma"],
                                ascending=[False, False, True, True]).iloc[0]
    return float(best["tau0"]), float(best["gamma"])


def search(root: Path, job: tuple[str, str, dict]) -> None:
    name, label, settings = job
    method = "iac" if label == "iac" else "iac_lth"
    out = root / name / "search" / label
    log = root / "logs" / f"{name}_{label}_search.log"
    # A search of an earlier, interrupted instance of this script may still be running: one writer.
    while log.exists() and not (out / "search_summary.json").exists() and time.time() - log.stat().st_mtime < 180:
        time.sleep(30)
    run(["unetscout", "search", str(root / name / "backbone"), str(root / name / "slices"), "--method", method,
         "--out", str(out), "--seed", "0", *sets({**SEARCH, **settings}), "--device", "cpu"],
        log)


def cell(root: Path, job: tuple[str, str, dict]) -> None:
    name, label, _ = job
    method = "iac" if label == "iac" else "iac_lth"
    search_dir, out = root / name / "search" / label, root / name / "cell" / label
    slices = str(root / name / "slices")
    run(["unetscout", "train-cell", str(root / name / "backbone"), slices, "--genotype",
         str(search_dir / "genotype.json"), "--method", method, "--out", str(out), "--seed", "0",
         "--set", "num_workers=0", "--device", "cpu"], root / "logs" / f"{name}_{label}_cell.log")
    run(["unetscout", "evaluate", str(out), slices, "--out", str(out / "patients.tsv"), "--device", "cpu"],
        root / "logs" / f"{name}_{label}_evaluate.log")


def choices(genotype: dict) -> set[tuple[int, int, str]]:
    return {(k + 2, int(i), op) for k, node in enumerate(genotype["nodes"]) for i, op in node}


def collect(root: Path, jobs: list[tuple[str, str, dict]]) -> pd.DataFrame:
    rows = []
    for name in dict.fromkeys(job[0] for job in jobs):
        iac = json.loads((root / name / "search" / "iac" / "search_summary.json").read_text())
        for _, label, settings in [j for j in jobs if j[0] == name]:
            summary = json.loads((root / name / "search" / label / "search_summary.json").read_text())
            log = [json.loads(line) for line in (root / name / "search" / label / "search_log.jsonl").open()]
            prunes = [row["epoch"] for row in log if row["pruned"]]
            dice = pd.read_csv(root / name / "cell" / label / "patients.tsv", sep="\t")["dice"].mean()
            rows.append({
                "dataset": name, "role": "tuning" if name == TUNING else "held out", "run": label,
                "rule": settings.get("tau_rule", "iac"),
                "tau0": settings.get("tau0", settings.get("tau0_absolute")), "gamma": settings.get("gamma"),
                "steps_per_epoch": summary["steps_per_epoch"], "passes_per_epoch": summary["passes_per_epoch"],
                "stop_epoch": summary["stop_epoch"], "first_prune_epoch": prunes[0] if prunes else None,
                "floor_bound": summary["floor_bound"], "unstable_decisions": summary["unstable_decisions"],
                "seconds": round(summary["search_seconds"], 1), "test_dice": round(float(dice), 4),
                "agreement_with_iac": len(choices(summary["genotype"]) & choices(iac["genotype"])),
            })
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def run_all(root: Path, pool: ThreadPoolExecutor, jobs: list[tuple[str, str, dict]]) -> pd.DataFrame:
    # IAC-LTH first, IAC (the longest) last.
    jobs = sorted(jobs, key=lambda j: j[1] == "iac")
    list(pool.map(lambda job: search(root, job), jobs))
    list(pool.map(lambda job: cell(root, job), jobs))
    return collect(root, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("results/calibration"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    root = args.workdir
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda item: prepare(root, *item), DATASETS.items()))
        tuning = run_all(root, pool, search_jobs(TUNING, RELATIVE_GRID))
        chosen = choose_constants(tuning)
        held_out = run_all(root, pool, search_jobs(HELD_OUT, list(dict.fromkeys([chosen, DEFAULT]))))
    table = pd.concat([tuning, held_out], ignore_index=True)
    table.to_csv(root / "calibration.tsv", sep="\t", index=False)
    (root / "calibration.md").write_text(markdown(table))
    (root / "chosen.json").write_text(json.dumps({"tuned_on": TUNING, "held_out": HELD_OUT, "tau0": chosen[0],
                                                  "gamma": chosen[1], "criterion": choose_constants.__doc__.strip()},
                                                 indent=2) + "\n")
    print(table.to_string(index=False), file=sys.stdout)
    print(f"chosen on {TUNING}: tau0 {chosen[0]:g}, gamma {chosen[1]:g}", file=sys.stdout)


if __name__ == "__main__":
    main()
