"""`snakemake --report` builds after a whole (tiny) run, and embeds every table and figure with its caption."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from workflow_helpers import snakemake

pytestmark = pytest.mark.slow

TABLES = {f"table{n}" for n in range(1, 7)} | {"width_picks"}
PRUNING_FIGURES = ("pruning_dice", "pruning_channels", "pruning_distribution")


@pytest.fixture(scope="module")
def report(finished_run) -> tuple[Path, dict]:
    """The finished tiny run (conftest.py; with the Lean U-Net study) and its report's results:
    report path -> entry."""
    workdir = finished_run
    built = snakemake(workdir, "--report", "report.html")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return workdir, embedded_results((workdir / "report.html").read_text(encoding="utf-8"))


def embedded_results(html: str) -> dict:
    """Snakemake 9's self-contained report carries its results as `var results = {...};`, one entry
    per file (keyed by its path) with the rendered caption and the bytes as a base64 data URI."""
    match = re.search(r'<script id="results">\s*var results = ', html)  # the bundled JS has its own
    assert match, "report.html has no results block"
    results, _ = json.JSONDecoder().raw_decode(html, match.end())
    return results


def embedded_bytes(entry: dict) -> bytes:
    header, _, data = entry["data_uri"].partition(";base64,")
    assert header.startswith("data:") and data, entry["data_uri"][:200]
    return base64.b64decode(data)


def expected_files(workdir: Path) -> list[str]:
    """What the report must hold, found on disk: the tables' CSVs, the summary figures, every
    search's figures and every dataset's width sweep."""
    patterns = ("results/tables/*.csv", "results/figures/*.png",
                "results/*/skips/*/*/*/seed*/search/figures/*.png", "results/*/width/sweep.png")
    return sorted(str(path.relative_to(workdir)) for pattern in patterns for path in workdir.glob(pattern))


def test_report_embeds_every_table_and_figure(report):
    workdir, results = report
    expected = expected_files(workdir)
    names = {Path(path).name for path in expected}
    assert {f"{table}.csv" for table in TABLES} <= names
    assert {f"{figure}_synthetic_paper.png" for figure in PRUNING_FIGURES} <= names
    assert "sweep.png" in names and any("/search/figures/" in path for path in expected)
    assert any(name.startswith(("width_sensitivity_", "paired_dice_", "search_cost_")) for name in names)
    missing = [path for path in expected if path not in results]
    assert not missing, f"not in the report: {missing}"
    for path in expected:
        entry = results[path]
        assert entry["filename"] == Path(path).name, (path, entry["filename"])
        assert embedded_bytes(entry) == (workdir / path).read_bytes(), f"{path}: embedded content differs"
        assert entry["caption"].strip(), f"{path}: no caption"


def test_every_result_in_the_report_is_a_file_of_the_run(report):
    workdir, results = report
    assert results
    for path, entry in results.items():
        assert (workdir / path).is_file(), path
        assert embedded_bytes(entry) == (workdir / path).read_bytes(), path


def test_captions_describe_their_result(report):
    _, results = report
    table6 = results["results/tables/table6.csv"]["caption"]
    assert "Lean U-Net" in table6 and "median absolute deviation" in table6 and "retrained" in table6
    assert "Width picks" in results["results/tables/width_picks.csv"]["caption"]
    figures = {Path(path).stem: entry["caption"] for path, entry in results.items()
               if path.startswith("results/figures/")}
    assert "Dice against parameters" in figures["pruning_dice_synthetic_paper"]
    assert "channels per layer during pruning" in figures["pruning_channels_synthetic_paper"]
    assert "channel distribution" in figures["pruning_distribution_synthetic_paper"]
    for stem, caption in figures.items():
        assert stem in caption, f"{stem}: the caption does not name its figure"
