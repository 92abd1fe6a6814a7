"""The smallest real case a new user brings: 24 grey PNG cases of real head anatomy, one slice
each, run with the default config (config/config.yaml). Only the schedules are shortened so
the test takes minutes; every batch size, stage and method is the default's. The default's
training batch of 16 is larger than the 14 train slices: the jobs lower it (unetscout.train.batch)
instead of failing, and every stage reaches its tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from rawdata import anatomy_slices, make_image_dataset, tissue_label

from workflow_helpers import ROOT, copy_workflow, snakemake

pytestmark = pytest.mark.slow

CASES = 24


def default_config_on(dataset) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"] = [str(dataset)]
    config["train"]["paper"].update(epochs=1, iterations_per_epoch=1, val_every=1)
    config["search"]["all"].update(epochs=3, warmup_epochs=1, iterations_per_epoch=1)
    config["prune"]["train"].update(epochs=1, iterations_per_epoch=1)
    return config


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_images")
    greys = anatomy_slices(CASES)
    dataset = make_image_dataset(root / "data" / "head24", greys, [tissue_label(g) for g in greys], {"0": "MRI"})
    config = default_config_on(dataset)
    workdir = copy_workflow(root / "wf", config)
    result = snakemake(workdir, "--cores", "2", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, config


def test_the_default_config_runs_every_stage_on_24_png_cases(small_run):
    workdir, config = small_run
    results = workdir / "results" / "head24"
    manifest = pd.read_csv(results / "slices" / "manifest.tsv", sep="\t")
    train_slices = int(manifest.loc[manifest["split"] == "train", "slices"].sum())
    assert len(manifest) == CASES and train_slices == 14 < config["train"]["paper"]["batch_size"]
    for backbone in config["backbones"]:
        recorded = json.loads((results / "backbones" / backbone / "paper" / "seed0" / "done.json").read_text())
        assert recorded["batch_size"] == train_slices  # the default's 16, lowered to the split
        assert recorded["config"]["batch_size"] == config["train"]["paper"]["batch_size"]  # as declared
    searched = list((results / "skips").rglob("search_summary.json"))
    assert searched and all(json.loads(p.read_text())["batch_size"] <= config["search"]["all"]["batch_size"]
                            for p in searched)
    tables = workdir / "results" / "tables"
    for name in ("table1.csv", "table4.csv", "table5.csv", "table6.csv", "width_picks.csv"):
        assert len(pd.read_csv(tables / name)) > 0, name
