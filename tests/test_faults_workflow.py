"""bench/faults.py at its smallest: every long job killed and rerun once (bitwise as an
uninterrupted run, two writers never both run), and its workflow mode's table comparison, which
sets only the timing columns aside. The workflow mode itself (the whole Snakemake run killed with
SIGKILL and rerun) costs two tiny workflow runs, about 3.5 minutes on 2 cores: it is run by hand
(`python bench/faults.py --workflow --tries 5`), not in CI, until it can reuse the session's
finished run as its reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).resolve().parents[1] / "bench" / "faults.py"
# One intra-op thread: two jobs at a time on a 2-core machine must not oversubscribe it.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_every_job_killed_and_two_writers_at_its_smallest(tmp_path):
    """bench/faults.py's job mode, one try each: train, search, train-cell and prune killed
    1-3 times and rerun end bitwise as their uninterrupted runs; two writers never break."""
    done = subprocess.run([sys.executable, str(FAULTS), "--tries", "1", "--seed", "0", "--work", str(tmp_path / "faults")],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("faults: ")]
    assert [line.split(":")[1].strip() for line in lines] == ["train", "search", "train-cell", "prune"]
    for line in lines:
        assert re.search(r"1 tries, \d+ kills \(\d+ after a checkpoint\), 1 identical to the uninterrupted run; "
                         r"two writers: [01] refused cleanly, [01] ran in turn, 0 broken; 1 survivors identical", line), line


def load_faults():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_faults", FAULTS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ext", ["csv", "md", "tex"])
def test_tables_are_compared_but_their_timing_columns(tmp_path, ext):
    """Two renderings of a Table 4-like table: other minutes compare equal, another epoch count
    or another note does not."""
    from unetscout.stats.tables.render import Column, Table, csv_text, latex_text, markdown_text

    faults = load_faults()
    render = {"csv": csv_text, "md": markdown_text, "tex": latex_text}[ext]

    def written(name: str, minutes: float, epochs: float, note: str) -> Path:
        table = Table(name="table4", title="Table 4: cost", description="times in minutes (wall clock)",
                      csv_columns=["dataset", "iac_minutes", "iac_epochs"],
                      display=[Column("Dataset", lambda r: r["dataset"]),
                               Column("IAC time (min)", lambda r: f"{r['iac_minutes']:.1f}"),
                               Column("IAC epochs", lambda r: f"{r['iac_epochs']:.1f}")],
                      rows=[{"dataset": "synthetic_a|b", "iac_minutes": minutes, "iac_epochs": epochs,
                             "notes": [note]}])
        path = tmp_path / f"{name}.{ext}"
        path.write_text(render(table))
        return path

    reference = faults.comparable(written("reference", 1.25, 3.0, "missing: x & y"))
    assert faults.comparable(written("slower", 7.5, 3.0, "missing: x & y")) == reference
    assert faults.comparable(written("other_epochs", 1.25, 4.0, "missing: x & y")) != reference
    assert faults.comparable(written("other_note", 1.25, 3.0, "missing: z")) != reference
