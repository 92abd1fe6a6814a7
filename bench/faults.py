"""Fault injection: kill `unetscout train` and `unetscout search` at random moments, rerun them
until they finish, and check that every result is bitwise the uninterrupted run's; then start
two writers of one output at once and check that exactly one runs and the other is refused.

    python bench/faults.py [--tries 10] [--seed 0] [--work /tmp/unetscout-faults]

Each try of a job kills it 1-3 times (SIGKILL, or SIGTERM, Slurm's warning, drawn at random) at
a uniformly random moment of its uninterrupted duration, reruns the same command after each
kill and compares the final checkpoints tensor by tensor with the reference run (training:
`last.pt` and `best.pt` weights; search: `state.pt`'s cells and architecture, and
`genotype.json`). Each two-writer try starts the job twice, a random moment apart: the second
must be refused with a one-line error naming the first (or, if the first had finished, find
the result done), and the result must again be the reference's. Prints, per job, tries /
identical / refused cleanly and exits 1 on any difference or broken pair.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from unetscout.runs import load_checkpoint

# One intra-op thread: the runs compared must all run with the same setting, and two writers
# at once on a 2-core machine must not oversubscribe it.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN_SETTINGS = ("epochs=12", "iterations_per_epoch=4", "batch_size=8", "val_batch_size=8", "num_workers=1")
SEARCH_SETTINGS = ("epochs=6", "warmup_epochs=1", "iterations_per_epoch=4", "batch_size=8", "num_workers=1")


def unetscout(*args: str) -> list[str]:
    return [sys.executable, "-m", "unetscout.cli", *args]


def train_job(slices: Path, out: Path) -> list[str]:
    command = unetscout("train", str(slices), "--out", str(out), "--backbone", "lean", "--width", "4",
                        "--preset", "nnunet", "--device", "cpu")
    for setting in TRAIN_SETTINGS:
        command += ["--set", setting]
    return command


def search_job(backbone: Path, slices: Path, out: Path) -> list[str]:
    command = unetscout("search", str(backbone), str(slices), "--method", "iac_lth", "--out", str(out),
                        "--device", "cpu")
    for setting in SEARCH_SETTINGS:
        command += ["--set", setting]
    return command


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


def fingerprint(kind: str, out: Path) -> dict[str, torch.Tensor | str]:
    if kind == "train":
        result: dict = {f"last.{k}": v for k, v in tensors(out / "last.pt", ("model",)).items()}
        result.update({f"best.{k}": v for k, v in tensors(out / "best.pt", ("model",)).items()})
        return result
    result = tensors(out / "state.pt", ("skip_modules", "arch"))
    result["genotype"] = (out / "genotype.json").read_text()
    return result


def identical(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k] == b[k] if isinstance(a[k], str) else torch.equal(a[k], b[k]) for k in a)


CHECKPOINT = {"train": "last.pt", "search": "state.pt"}


def killed_and_resumed(command: list[str], checkpoint: Path, duration: float, rng: random.Random) -> tuple[int, int]:
    """Kill the job 1-3 times at random moments, rerunning after each; then let it finish.
    Returns (kills that landed before the job finished, of them after a checkpoint existed)."""
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
    run(command)
    return kills, resumed_kills


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=10, help="kill-and-resume tries per job (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and signals")
    parser.add_argument("--work", type=Path, default=Path("/tmp/unetscout-faults"), help="scratch folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    _, slices = prepare(args.work)

    backbone = args.work / "backbone"
    jobs = {"train": lambda out: train_job(slices, out), "search": lambda out: search_job(backbone, slices, out)}
    report, failed = {}, False
    for kind, job in jobs.items():
        reference = args.work / f"{kind}_reference"
        duration = run(job(reference))
        if kind == "train":
            shutil.copytree(reference, backbone)  # the search's frozen backbone
        expected = fingerprint(kind, reference)
        same = kills = resumed_kills = 0
        for attempt in range(args.tries):
            out = args.work / f"{kind}_try{attempt}"
            landed, after_checkpoint = killed_and_resumed(job(out), out / CHECKPOINT[kind], duration, rng)
            kills, resumed_kills = kills + landed, resumed_kills + after_checkpoint
            same += identical(expected, fingerprint(kind, out))
        outcomes = {"refused": 0, "in turn": 0, "BROKEN": 0}
        survivors_same, example = 0, ""
        for attempt in range(args.tries):
            out = args.work / f"{kind}_two_writers{attempt}"
            outcome, message = two_writers(job(out), rng.uniform(0.0, duration))
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


if __name__ == "__main__":
    sys.exit(main())
