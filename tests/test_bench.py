"""Smoke tests of the performance benchmarks (bench/loader.py, bench/search_epoch.py): each runs at
its smallest settings, exits 0 and ends with its ratio line holding a finite positive number.
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


def ratio_of(script: str, pattern: str, *args: str) -> float:
    """Run bench/`script` with `args`; the number its last line carries (`pattern` has one group)."""
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(pattern, last)
    assert match, done.stdout
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
