"""bench/faults.py's workflow mode compares tables with only their timing columns set aside.
Running the harness itself (jobs: about 2 minutes at --tries 1; the workflow: two tiny workflow
runs, about 3 minutes) does not fit CI's 30 minutes beside the other workflow runs: it is run by
hand (`python bench/faults.py --tries 10 --seed 1`, `--workflow --tries 5`) until the workflow
mode can reuse the session's finished run as its reference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).resolve().parents[1] / "bench" / "faults.py"


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
