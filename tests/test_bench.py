"""Smoke tests of the performance benchmarks (bench/loader.py, bench/search_epoch.py,
bench/epoch_scaling.py): each runs at its smallest settings, exits 0 and prints its ratio line
(or table) holding finite positive numbers.
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
