"""Smoke tests of every script in bench/: each runs at its smallest settings, exits 0 and prints
its ratio line (or table) holding finite positive numbers, so a change elsewhere cannot break one
unseen (test_every_bench_script_has_a_smoke_test keeps the list complete; bench/faults.py's job
and workflow modes run in tests/test_faults_workflow.py).
Nothing here times anything: the numbers depend on the machine."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench"
# One intra-op thread: the CPU is shared with other jobs, and OpenMP's spinning threads slow
# to a crawl when oversubscribed.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_bench(script: str, *args: str) -> list[str]:
    """Run bench/`script` with `args`; the lines it printed."""
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def ratio_of(script: str, pattern: str, *args: str) -> float:
    """Run bench/`script` with `args`; the number its last line carries (`pattern` has one group)."""
    lines = run_bench(script, *args)
    match = re.fullmatch(pattern, lines[-1])
    assert match, "\n".join(lines)
    return float(match.group(1))


def test_loader_bench_prints_its_supply_demand_ratio(tmp_path):
    ratio = ratio_of("loader.py", r"supply/demand ratio (\S+)", "--device", "cpu", "--size", "32", "--cases", "3",
                     "--batch", "8", "--batches", "2", "--rounds", "1", "--warmup", "1", "--work", str(tmp_path))
    assert math.isfinite(ratio) and ratio > 0


def test_search_epoch_bench_prints_its_late_early_ratio(tmp_path):
    ratio = ratio_of("search_epoch.py", r"late/early LTH epoch ratio (\S+)", "--device", "cpu", "--size", "16",
                     "--cases", "5", "--batch", "4", "--iterations", "2", "--epochs", "2", "--warmup-epochs", "0",
                     "--window", "1", "--workers", "0", "--work", str(tmp_path))
    assert math.isfinite(ratio) and ratio > 0


def test_epoch_scaling_bench_prints_a_row_per_size_and_cap():
    lines = run_bench("epoch_scaling.py", "--device", "cpu", "--sizes", "16", "32", "--caps", "2", "8",
                      "--batch", "1", "--steps", "1")
    rows = [line.split() for line in lines[2:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(16, 2), (16, 8), (32, 2), (32, 8)]
    for row in rows:  # params, GFLOPs, ms/slice, min/epoch, ms/GFLOP
        numbers = [float(value.replace(",", "")) for value in row[2:]]
        assert len(numbers) == 5 and all(math.isfinite(x) and x > 0 for x in numbers), row
    # a wider network at the same size has more parameters and more GFLOPs
    assert float(rows[1][2].replace(",", "")) > float(rows[0][2].replace(",", "")) and float(rows[1][3]) > float(rows[0][3])


def test_train_step_bench_prints_its_ratio_against_nnunets_plainconvunet():
    pytest.importorskip("dynamic_network_architectures")
    ratio = ratio_of("train_step.py", r"ratio ours/theirs: (\S+)", "--device", "cpu", "--size", "32", "--cap", "4",
                     "--batch", "2", "--steps", "1", "--rounds", "1")
    assert math.isfinite(ratio) and ratio > 0


def test_width_score_bench_runs_on_its_own_store_and_says_the_batch_it_trained(tmp_path):
    """Its synthetic store is smaller than the preset's batch of 128: the batch is lowered to the
    train split (unetscout.train.batch) and the training line says which batch was timed."""
    lines = run_bench("width_score.py", "--device", "cpu", "--cases", "5", "--size", "32", "--k", "2",
                      "--iterations", "1")
    training = next(line for line in lines if line.startswith("training:"))
    assert re.search(r"batch (\d+):", training) and int(re.search(r"batch (\d+):", training).group(1)) < 128
    ratio = float(re.fullmatch(r"ratio: (\S+)%", lines[-1]).group(1))
    assert math.isfinite(ratio) and ratio > 0


def test_every_bench_script_has_a_smoke_test():
    called = set(re.findall(r'(?:run_bench|ratio_of)\("(\w+\.py)"', Path(__file__).read_text()))
    workflow_faults = Path(__file__).parent / "test_faults_workflow.py"
    if workflow_faults.exists() and "faults.py" in workflow_faults.read_text():
        called.add("faults.py")
    assert sorted(path.name for path in BENCH.glob("*.py")) == sorted(called)
