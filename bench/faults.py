"""Fault injection: kill the long jobs, or the whole workflow, at random; rerun; compare.

Every long `unetscout` job (train, search, train-cell, prune) is killed at random moments and
rerun until it finishes, and every result must be bitwise the uninterrupted run's; then two
writers of one output start at once, and exactly one must run while the other is refused. With
--workflow, the whole Snakemake workflow is killed and rerun instead.

    python bench/faults.py [--tries 10] [--seed 0] [--work /tmp/unetscout-faults]
    python bench/faults.py --workflow [--tries 10] [--seed 0] [--kills K] [--cases N] [--small]

Jobs. Each try of a job kills it 1-3 times (SIGKILL, or SIGTERM, Slurm's warning, drawn at
random) at a uniformly random moment of its uninterrupted duration, reruns the same command
after each kill and compares the final results tensor by tensor with the reference run
(train and train-cell: `last.pt` and `best.pt` weights; search: `state.pt`'s cells and
architecture, and `genotype.json`; prune: the weights of `last.pt`, `best.pt` and the
`at75/ at50/ at25/` snapshots, every `model.json`, `log.tsv` and `done.json` but their timing
columns). train-cell trains the IAC-LTH cell the reference search found, implanted in the
reference training's network. Each two-writer try starts the job twice, a random moment apart:
the second must be refused with a one-line error naming the first (or, if the first had
finished, find the result done), and the result must again be the reference's. Prints, per job,
tries / identical / refused cleanly and exits 1 on any difference or broken pair.

Workflow (--workflow). Copies the workflow (Snakefile, workflow/, config/, profiles/ ...) into
the work folder with the default config shrunk to seconds per job (config/config.yaml read now:
synthetic data, --cases patients of 32 x 32, every stage on: the width pick and sweep, every
skip method, the pruning study, the tables), runs `snakemake --cores 2` once uninterrupted (the
reference: the default profile applies, as for a user), then per try runs it in a fresh copy,
kills Snakemake's whole process group (its jobs included) with SIGKILL at a uniformly random
moment of the reference's duration, runs `snakemake --unlock` if Snakemake's lock stayed behind
(what the README tells a user whose Snakemake was killed) and `snakemake --cores 2` again, 1-3
kills a try (--kills K: exactly K tries to kill), and lets the last run finish. Every run that
ends on its own must exit 0 (after a failed last run, one more shows whether a rerun mends it).
Compares every table (results/tables/*, results/*/width/*.tsv) and every patients.tsv with the
reference's, byte for byte but the timing columns (TIMING_COLUMNS). Prints one line and exits 1
on any difference or failed run. --small shrinks the run further for CI (XTinyU-Net alone, no
width sweep, two skip methods, one pruning criterion, one study baseline), every stage still
running.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from unetscout.runs import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# One intra-op thread: the runs compared must all run with the same setting, and two writers
# at once on a 2-core machine must not oversubscribe it.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN_SETTINGS = ("epochs=12", "iterations_per_epoch=4", "batch_size=8", "val_batch_size=8", "num_workers=1")
SEARCH_SETTINGS = ("epochs=6", "warmup_epochs=1", "iterations_per_epoch=4", "batch_size=8", "num_workers=1")
# On top of the trained backbone's settings (train-cell starts from its config.json).
CELL_SETTINGS = ("epochs=8",)
# 32 px: widths doubling from 2 (88 channels), 8 removed a step: about ten steps down to one
# channel a layer.
PRUNE_OPTIONS = ("--criterion", "stamp_random_in_block", "--top-width", "2", "--recovery-epochs", "1",
                 "--channels-per-step", "8")
PRUNE_SETTINGS = ("iterations_per_epoch=3", "batch_size=6", "val_batch_size=6", "num_workers=1")

# Columns (and JSON keys) whose values depend on wall time only: a killed and resumed run spends
# other seconds on the same work, so they are masked in every file compared. The run logs (a
# training's log.tsv: seconds, it_per_s; a prune run's log.tsv and done.json: seconds,
# seconds_this_session) and Table 4, the search cost (its CSV names, then the headers its
# Markdown and LaTeX show): wall-clock minutes, seconds per epoch and the speed-ups, their
# ratios. No other table and no patients.tsv holds a time.
TIMING_COLUMNS = frozenset({
    "seconds", "seconds_this_session", "it_per_s",
    "iac_minutes", "iac_lth_minutes", "speedup", "iac_seconds_per_epoch", "iac_lth_seconds_per_epoch",
    "absolute_rule_speedup_estimate",
    "IAC time (min)", "IAC-LTH time (min)", "Speed-up", "IAC s/epoch", "IAC-LTH s/epoch",
    "Abs. rule speed-up (est.)",
})
MASKED = "<timing>"


def unetscout(*args: str) -> list[str]:
    return [sys.executable, "-m", "unetscout.cli", *args]


def with_settings(command: list[str], settings: tuple[str, ...]) -> list[str]:
    for setting in settings:
        command += ["--set", setting]
    return command


def train_job(slices: Path, out: Path) -> list[str]:
    return with_settings(unetscout("train", str(slices), "--out", str(out), "--backbone", "lean", "--width", "4",
                                   "--preset", "nnunet", "--device", "cpu"), TRAIN_SETTINGS)


def search_job(backbone: Path, slices: Path, out: Path) -> list[str]:
    return with_settings(unetscout("search", str(backbone), str(slices), "--method", "iac_lth", "--out", str(out),
                                   "--device", "cpu"), SEARCH_SETTINGS)


def cell_job(backbone: Path, slices: Path, searched: Path, out: Path) -> list[str]:
    return with_settings(unetscout("train-cell", str(backbone), str(slices), "--genotype",
                                   str(searched / "genotype.json"), "--method", "iac_lth", "--out", str(out),
                                   "--device", "cpu"), CELL_SETTINGS)


def prune_job(slices: Path, out: Path) -> list[str]:
    return with_settings(unetscout("prune", str(slices), "--out", str(out), "--preset", "nnunet", "--device", "cpu",
                                   *PRUNE_OPTIONS), PRUNE_SETTINGS)


def run(command: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        raise SystemExit(f"faults: {' '.join(command)} failed:\n{done.stderr}")
    return time.monotonic() - started


def tensors(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    flat = {}
    for key in keys:
        for name, tensor in state[key].items():
            flat[f"{key}.{name}"] = tensor
    return flat


def delimited_rows(text: str, delimiter: str) -> list[list[str]] | str:
    """The rows of a CSV / TSV text, every cell under a TIMING_COLUMNS header masked (the text
    itself when it has no such column)."""
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    timing = {i for i, name in enumerate(rows[0] if rows else []) if name in TIMING_COLUMNS}
    if not timing:
        return text
    return [rows[0]] + [[MASKED if i in timing else cell for i, cell in enumerate(row)] for row in rows[1:]]


def weights_of(out: Path, files: tuple[str, ...]) -> dict[str, torch.Tensor]:
    result = {}
    for name in files:
        result.update({f"{name}:{k}": v for k, v in tensors(out / name, ("model",)).items()})
    return result


def fingerprint(kind: str, out: Path) -> dict[str, torch.Tensor | str]:
    if kind in ("train", "train-cell"):
        return weights_of(out, ("last.pt", "best.pt"))
    if kind == "search":
        result: dict = tensors(out / "state.pt", ("skip_modules", "arch"))
        result["genotype"] = (out / "genotype.json").read_text()
        return result
    # prune: every network it writes, its steps and its summary, but their seconds
    snapshots = tuple(f"{folder}/best.pt" for folder in ("at75", "at50", "at25"))
    result = weights_of(out, ("last.pt", "best.pt", *snapshots))
    for name in ("model.json", *(s.replace("best.pt", "model.json") for s in snapshots)):
        result[name] = (out / name).read_text()
    result["log.tsv"] = json.dumps(delimited_rows((out / "log.tsv").read_text(), "\t"))
    done = json.loads((out / "done.json").read_text())
    result["done.json"] = json.dumps({k: v for k, v in done.items() if k not in TIMING_COLUMNS}, sort_keys=True)
    return result


def identical(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] if isinstance(a[k], str) else torch.equal(a[k], b[k]) for k in a)


@dataclass(frozen=True)
class Job:
    command: Callable[[Path], list[str]]
    checkpoint: str   # the file a rerun resumes from


def killed_and_resumed(command: list[str], checkpoint: Path, duration: float,
                       rng: random.Random) -> tuple[int, int, str]:
    """Kill the job 1-3 times at random moments, rerunning after each; then let it finish.
    Returns (kills that landed before the job finished, of them after a checkpoint existed,
    the last rerun's stderr if it failed)."""
    kills = resumed_kills = 0
    for _ in range(rng.randint(1, 3)):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            process.wait(timeout=rng.uniform(0.0, duration))
        except subprocess.TimeoutExpired:
            had_checkpoint = checkpoint.exists()
            process.send_signal(rng.choice((signal.SIGKILL, signal.SIGTERM)))
            process.wait()
            kills += 1
            resumed_kills += had_checkpoint
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    return kills, resumed_kills, "" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-3000:]}"


def two_writers(command: list[str], delay: float) -> tuple[str, str]:
    """Start the same job twice, `delay` seconds apart. Either one finishes (0) and the other is
    refused (2) with a one-line error naming the holder ("refused"), or the second took the lock
    after the first had finished and found the result done ("in turn"); anything else is "BROKEN"."""
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(delay)
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    outcomes = [(p.wait(), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in outcomes)
    refused = [err for code, err in outcomes if code == 2]
    errors = [line for err in refused for line in err.splitlines() if line.startswith("unetscout: error:")]
    if codes == [0, 2] and len(errors) == 1 and "is being written by unetscout" in errors[0] \
            and "Traceback" not in refused[0]:
        return "refused", errors[0]
    # Both finished: fine only if the second took the lock after the first had finished and
    # found the result done.
    if codes == [0, 0] and "nothing to do" in outcomes[1][1]:
        return "in turn", ""
    return "BROKEN", f"exit codes {codes}: {' | '.join(err.strip()[-300:] for _, err in outcomes)}"


def prepare(work: Path) -> tuple[Path, Path]:
    raw, slices = work / "raw", work / "slices"
    run(unetscout("synth", "--out", str(raw), "--cases", "6", "--seed", "0"))
    run(unetscout("slices", str(raw), "--out", str(slices), "--size", "32", "--seed", "0"))
    return raw, slices


def jobs_main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    _, slices = prepare(args.work)

    # Each later job starts from an earlier one's reference result, copied aside.
    backbone, searched = args.work / "backbone", args.work / "searched"
    jobs = {"train": Job(lambda out: train_job(slices, out), "last.pt"),
            "search": Job(lambda out: search_job(backbone, slices, out), "state.pt"),
            "train-cell": Job(lambda out: cell_job(backbone, slices, searched, out), "last.pt"),
            "prune": Job(lambda out: prune_job(slices, out), "last.pt")}
    report, failed = {}, False
    for kind, job in jobs.items():
        reference = args.work / f"{kind}_reference"
        duration = run(job.command(reference))
        if kind == "train":
            shutil.copytree(reference, backbone)  # the search's frozen backbone, the cell's network
        if kind == "search":
            shutil.copytree(reference, searched)  # the cell train-cell trains (genotype, init_state.pt)
        expected = fingerprint(kind, reference)
        same = kills = resumed_kills = 0
        for attempt in range(args.tries):
            out = args.work / f"{kind}_try{attempt}"
            landed, after_checkpoint, failure = killed_and_resumed(job.command(out), out / job.checkpoint,
                                                                   duration, rng)
            kills, resumed_kills = kills + landed, resumed_kills + after_checkpoint
            if failure:   # counts as a try that did not end identical
                print(f"faults: {kind}: try {attempt}: the rerun after the kills failed, {failure}", file=sys.stderr,
                      flush=True)
            else:
                same += identical(expected, fingerprint(kind, out))
        outcomes = {"refused": 0, "in turn": 0, "BROKEN": 0}
        survivors_same, example = 0, ""
        for attempt in range(args.tries):
            out = args.work / f"{kind}_two_writers{attempt}"
            outcome, message = two_writers(job.command(out), rng.uniform(0.0, duration))
            outcomes[outcome] += 1
            example = example or message if outcome != "BROKEN" else message
            survivors_same += outcome != "BROKEN" and identical(expected, fingerprint(kind, out))
        report[kind] = {"tries": args.tries, "kills": kills, "kills_after_a_checkpoint": resumed_kills,
                        "identical": same, "two_writer_tries": args.tries, "refused_cleanly": outcomes["refused"],
                        "ran_in_turn": outcomes["in turn"], "broken": outcomes["BROKEN"],
                        "survivor_identical": survivors_same, "reference_seconds": round(duration, 1),
                        "refusal": example}
        failed |= same != args.tries or outcomes["BROKEN"] > 0 or survivors_same != args.tries
        print(f"faults: {kind}: {args.tries} tries, {kills} kills ({resumed_kills} after a checkpoint), {same} "
              f"identical to the uninterrupted run; two writers: {outcomes['refused']} refused cleanly, "
              f"{outcomes['in turn']} ran in turn, {outcomes['BROKEN']} broken; {survivors_same} survivors "
              f"identical", flush=True)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


# -- the whole workflow -----------------------------------------------------------------------------

# What a clone holds of the workflow ("slurm": the root link slurm -> profiles/slurm).
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "envs", "slurm")
BIN = Path(sys.executable).parent
# Snakemake runs the `unetscout` of this environment; the user's own environment otherwise.
WORKFLOW_ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def workflow_config(cases: int, small: bool) -> dict:
    """config/config.yaml (as it is now) shrunk to seconds per job, every stage on: `cases`
    synthetic patients of 32 x 32, two-epoch trainings of two batches, three-epoch searches, the
    pruning study of config/experiments/lunet.yaml at one seed, 12 channels a step. `small`: the
    XTinyU-Net backbone alone (the width pick without the sweep), one trained and one searched
    skip method on it, one pruning criterion at 24 channels a step and one baseline (LUnet 2)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["synthetic"]["cases"] = cases
    config["slices"]["size"] = 32
    config["train"] = {preset: {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 4, "val_every": 1,
                                "num_workers": 0} for preset in config["presets"]}
    config["width"]["k"] = 4
    config["search"] = {"all": {"epochs": 3, "warmup_epochs": 1, "iterations_per_epoch": 1, "batch_size": 4,
                                "num_workers": 0}, "iac": {}, "iac_lth": {}, "random": {}}
    study = yaml.safe_load((ROOT / "config" / "experiments" / "lunet.yaml").read_text())["prune"]
    study.update(seeds=[0], recovery_epochs=1, channels_per_step=12, scales=[100, 25], retrain=["stamp"],
                 train={"iterations_per_epoch": 2, "batch_size": 4, "num_workers": 0})
    config["prune"] = study
    if small:
        config["backbones"] = ["xtiny"]
        config["width"]["sweep"] = False
        config["skips"].update(search_backbones=["xtiny"], methods=["attention", "iac_lth"])
        study.update(criteria=["stamp"], channels_per_step=24, scales=[], retrain=[], lunet_widths=[2])
    return config


def copy_workflow(dest: Path, config: dict) -> Path:
    """The workflow as a clone holds it (a link stays a link), with `config` as its config."""
    dest.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        if source.is_symlink():
            os.symlink(os.readlink(source), dest / part)
        elif source.is_dir():
            shutil.copytree(source, dest / part)
        else:
            shutil.copy2(source, dest / part)
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake(*args: str) -> list[str]:
    return [str(BIN / "snakemake"), *args]


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every job it started (its process group), and wait until they are gone."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass
class Start:
    """One `snakemake --cores 2` of a try: its exit status (None: killed) and its output."""
    code: int | None
    log: Path


def start_snakemake(workdir: Path, log: Path, kill_after: float | None) -> Start:
    """Run `snakemake --cores 2` in `workdir` in its own process group; kill the group after
    `kill_after` seconds if it is still running."""
    with log.open("w") as output:
        process = subprocess.Popen(snakemake("--cores", "2"), cwd=workdir, stdout=output, stderr=subprocess.STDOUT,
                                   env=WORKFLOW_ENV, start_new_session=True)
        try:
            return Start(process.wait(timeout=kill_after), log)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return Start(None, log)


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def compared_files(workdir: Path) -> set[str]:
    """Every table (results/tables/*, each dataset's width tables) and every patients.tsv."""
    results = workdir / "results"
    found = set()
    for path in results.rglob("*"):
        relative = path.relative_to(workdir)
        if path.is_file() and (relative.parts[:2] == ("results", "tables") or path.name == "patients.tsv"
                               or (path.parent.name == "width" and path.suffix == ".tsv")):
            found.add(relative.as_posix())
    return found


def _masked_cells(lines: list[str], split: Callable[[str], list[str] | None], strip: Callable[[str], str]) -> list:
    """Markdown / LaTeX lines, the cells under a timing header masked in each row of the table."""
    cells = [split(line) for line in lines]
    header = next((row for row in cells if row is not None), None)
    timing = {i for i, name in enumerate(header or []) if strip(name) in TIMING_COLUMNS}
    if not timing:
        return "\n".join(lines)
    masked = []
    for line, row in zip(lines, cells):
        if row is None or row is header or len(row) != len(header):
            masked.append(line)
        else:
            masked.append([MASKED if i in timing else cell for i, cell in enumerate(row)])
    return masked


def comparable(path: Path) -> object:
    """The file's content with its timing cells masked (its bytes when it has none)."""
    data = path.read_bytes()
    if path.suffix not in (".csv", ".tsv", ".md", ".tex"):
        return data
    text = data.decode()
    if path.suffix in (".csv", ".tsv"):
        return delimited_rows(text, "," if path.suffix == ".csv" else "\t")
    if path.suffix == ".md":
        return _masked_cells(text.split("\n"), lambda line: re.split(r"(?<!\\)\|", line) if line.startswith("|")
                             else None, str.strip)
    if path.suffix == ".tex":
        return _masked_cells(text.split("\n"), lambda line: line.split(" & ") if " & " in line else None,
                             lambda cell: cell.strip().removesuffix("\\\\").strip())
    return data


def differing(reference: Path, workdir: Path) -> tuple[int, list[str]]:
    """(files identical to the reference's, the files that differ or are missing on one side)."""
    names = compared_files(reference) | compared_files(workdir)
    different = []
    for name in sorted(names):
        a, b = reference / name, workdir / name
        if not (a.is_file() and b.is_file() and comparable(a) == comparable(b)):
            different.append(name)
    return len(names) - len(different), different


def workflow_try(workdir: Path, logs: Path, duration: float, kills: int, rng: random.Random) -> dict:
    """Start the workflow, kill it `kills` times at random moments (unlocking and rerunning
    after each) and let the last run finish."""
    landed = reruns = unlocks = 0
    failures = []
    for attempt in range(kills + 1):
        reruns += attempt > 0
        moment = rng.uniform(0.0, duration) if attempt < kills else None
        start = start_snakemake(workdir, logs / f"run{attempt}.log", moment)
        if start.code is None:
            landed += 1
            # Snakemake's lock outlives a SIGKILL (unless the kill came before Snakemake took
            # it): the next run would stop with "Directory cannot be locked". The README's remedy:
            if any((workdir / ".snakemake" / "locks").glob("*")):
                unlocks += 1
                unlock = subprocess.run(snakemake("--unlock"), cwd=workdir, capture_output=True, text=True,
                                        env=WORKFLOW_ENV)
                if unlock.returncode != 0:
                    failures.append(f"`snakemake --unlock` exited {unlock.returncode}:\n{unlock.stderr[-2000:]}")
            continue
        if start.code == 0:
            break
        failures.append(f"{start.log.name} exited {start.code}:\n{tail(start.log)}")
        if attempt == kills:
            # The last run failed: one more, to tell a failure that a rerun mends from one it does not.
            reruns += 1
            start = start_snakemake(workdir, logs / "once_more.log", None)
            if start.code != 0:
                failures.append(f"{start.log.name} (a rerun after the failed one) exited {start.code}:\n"
                                f"{tail(start.log)}")
    return {"kills": landed, "reruns": reruns, "unlocks": unlocks, "failures": failures, "finished": start.code == 0}


def workflow_main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    config = workflow_config(args.cases, args.small)
    reference = copy_workflow(args.work / "reference", config)
    (args.work / "logs").mkdir()
    started = time.monotonic()
    first = start_snakemake(reference, args.work / "logs" / "reference.log", None)
    duration = time.monotonic() - started
    if first.code != 0:
        raise SystemExit(f"faults: workflow: the uninterrupted run exited {first.code}:\n{tail(first.log)}")
    print(f"faults: workflow: reference run {duration:.0f} s", file=sys.stderr, flush=True)
    kills = reruns = same = 0
    different: list[str] = []
    failures: list[str] = []
    tries = []
    for attempt in range(args.tries):
        workdir = copy_workflow(args.work / f"try{attempt}", config)
        logs = args.work / "logs" / f"try{attempt}"
        logs.mkdir()
        planned = args.kills if args.kills is not None else rng.randint(1, 3)
        started = time.monotonic()
        outcome = workflow_try(workdir, logs, duration, planned, rng)
        seconds = time.monotonic() - started
        identical_files, differ = differing(reference, workdir)
        kills, reruns, same = kills + outcome["kills"], reruns + outcome["reruns"], same + identical_files
        different += [f"try{attempt}/{name}" for name in differ]
        failures += [f"try{attempt}: {failure}" for failure in outcome["failures"]]
        tries.append({"seconds": round(seconds, 1), "kills": outcome["kills"], "reruns": outcome["reruns"],
                      "unlocks": outcome["unlocks"], "identical": identical_files,
                      "different": differ, "failures": len(outcome["failures"]), "finished": outcome["finished"]})
        if not differ and not outcome["failures"]:
            shutil.rmtree(workdir)   # a clean try: its copy is only disk; a failed one stays to be read
    print(f"faults: workflow: {args.tries} tries, {kills} kills, {reruns} reruns, {same} identical / "
          f"{len(different)} different files; {len(failures)} failed runs"
          + (f"; differ: {', '.join(different)}" if different else ""), flush=True)
    for failure in failures:
        print(f"faults: workflow: {failure}", file=sys.stderr)
    print(json.dumps({"reference_seconds": round(duration, 1), "tries": tries}, indent=2))
    return 1 if different or failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10, help="kill-and-resume tries per job (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and signals")
    parser.add_argument("--work", type=Path, default=Path("/tmp/unetscout-faults"), help="scratch folder")
    parser.add_argument("--workflow", action="store_true",
                        help="kill the whole Snakemake workflow instead of single jobs")
    parser.add_argument("--kills", type=int, default=None,
                        help="--workflow: kills tried per try (default: 1-3 at random)")
    parser.add_argument("--cases", type=int, default=5, help="--workflow: synthetic patients (default 5)")
    parser.add_argument("--small", action="store_true",
                        help="--workflow: XTinyU-Net alone, no width sweep, two skip methods, one pruning "
                             "criterion (every stage still runs)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    return workflow_main(args) if args.workflow else jobs_main(args)


if __name__ == "__main__":
    sys.exit(main())
