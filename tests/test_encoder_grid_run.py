"""A small CPU version of the IAC-LTH backbone grid runs through the workflow: two encoder U-Nets
on synthetic data, the reference and skip methods on each, Table 1 over the two backbones."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workflow_helpers import copy_workflow, snakemake, tiny_config

pytestmark = pytest.mark.slow

ENCODERS = ["mobilenetv3_large", "efficientnetv2_s"]
# A trained baseline skip and the searched cell with its lottery ticket: the grid's two kinds of
# job on an encoder (IAC and the random cell run the same code paths on the default's backbones).
METHODS = ["attention", "iac_lth"]


def small_grid_config() -> dict:
    config = tiny_config()
    config["grid"] = [{"backbones": ENCODERS, "presets": ["paper"], "seeds": [0]}]
    config["width"]["sweep"] = False
    config["skips"] = {"search_backbones": ENCODERS, "methods": METHODS}
    return config


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("grid"), small_grid_config())
    result = snakemake(workdir, "--cores", "2", timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def test_the_grid_trains_and_searches_every_encoder(grid_run):
    results = grid_run / "results" / "synthetic"
    for backbone in ENCODERS:
        spec = json.loads((results / "backbones" / backbone / "paper" / "seed0" / "model.json").read_text())
        assert spec["backbone"] == backbone
        for method in METHODS:
            assert (results / "skips" / backbone / "paper" / method / "seed0" / "patients.tsv").is_file()
        summary = json.loads((results / "skips" / backbone / "paper" / "iac_lth" / "seed0" / "search"
                              / "search_summary.json").read_text())
        assert summary["method"] == "iac_lth" and summary["epochs_run"] >= 1
    # only the grid's backbones: the top-level `backbones` list is not crossed in
    assert sorted(p.name for p in (results / "backbones").iterdir()) == sorted(ENCODERS)


def test_table1_is_over_the_two_encoder_backbones(grid_run):
    table = pd.read_csv(grid_run / "results" / "tables" / "table1.csv", dtype={"dataset": str})
    rows = table.set_index("method")
    for method in METHODS:
        row = rows.loc[method]
        assert row["n_backbones"] == 2 and row["backbones"] == " ".join(sorted(ENCODERS))
        assert row["ci_low"] <= row["delta_dice_mean"] <= row["ci_high"]
        assert 0 <= row["p_wilcoxon"] <= 1 and 0 <= row["p_fisher"] <= 1
        assert row["n_pairs"] == 2  # one test patient per backbone
    md = (grid_run / "results" / "tables" / "table1.md").read_text()
    assert "patients × backbones" in md
