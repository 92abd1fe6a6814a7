"""2-D image datasets through the whole workflow on CPU: a grey PNG set and an RGB one, made from
slices of a real head scan, slice to one slice per case (1 and 3 channels), score and pick a
width, train nnU-Net, XTinyU-Net, LUnet and the three lightweight peers under the nnunet preset,
and reach Table 5 with its paired statistics and HD95 in pixels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rawdata import RGB_CHANNELS, anatomy_slices, colourise, make_image_dataset, tissue_label

from unetscout.names import PEERS
from workflow_helpers import copy_workflow, snakemake, tiny_config

pytestmark = pytest.mark.slow

CASES = 10
MODELS = ["plain", "xtiny", "lean", *PEERS]


def image_config(grey, rgb) -> dict:
    config = tiny_config()
    config["datasets"] = [str(grey), str(rgb)]
    config["slices"]["size"] = 64
    config["backbones"], config["presets"], config["seeds"] = MODELS, ["nnunet"], [0]
    config["train"] = {"nnunet": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 4, "val_every": 1,
                                  "num_workers": 0}}
    config["width"].update(k="all", sweep=False)
    config["skips"] = {"search_backbones": [], "methods": []}
    return config


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    greys = anatomy_slices(CASES)
    labels = [tissue_label(g) for g in greys]
    grey = make_image_dataset(root / "data" / "head_grey", greys, labels, {"0": "MRI"})
    rgb = make_image_dataset(root / "data" / "head_rgb", [colourise(g) for g in greys], labels, RGB_CHANNELS)
    workdir = copy_workflow(root / "wf", image_config(grey, rgb))
    result = snakemake(workdir, "--cores", "2", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


@pytest.mark.parametrize("dataset, channels", [("head_grey", 1), ("head_rgb", 3)])
def test_every_case_is_one_slice_with_its_channels(image_run, dataset, channels):
    slices = image_run / "results" / dataset / "slices"
    manifest = pd.read_csv(slices / "manifest.tsv", sep="\t")
    assert len(manifest) == CASES and (manifest["slices"] == 1).all()
    assert (manifest[["spacing_x", "spacing_y", "spacing_z"]] == 1.0).all().all()
    image = np.load(slices / "cases" / f"{manifest['case'][0]}_image.npy")
    assert image.shape == (1, channels, 64, 64)
    assert json.loads((slices / "slices.json").read_text())["spacing_unit"] == "px"
    # the scoring protocol: one image per train case (its only slice), all of them
    scores = pd.read_csv(image_run / "results" / dataset / "width" / "scores.tsv", sep="\t")
    seeds = tiny_config()["width"]["seeds"]                      # the default's three scoring seeds
    assert len(seeds) == 3 and sorted(scores["seed"].unique()) == sorted(seeds)
    assert (scores.groupby("seed").size() == 10).all() and scores["score"].notna().all()


def test_table5_compares_every_model_with_nnunet_in_pixels(image_run):
    table = pd.read_csv(image_run / "results" / "tables" / "table5.csv")
    for dataset in ("head_grey", "head_rgb"):
        rows = table[table["dataset"] == dataset].set_index("backbone")
        assert list(rows.index) == MODELS
        assert rows["dice_mean"].notna().all() and rows["params"].notna().all() and (rows["hd95_unit"] == "px").all()
        compact = rows.drop(index="plain")
        assert compact["delta_dice_mean"].notna().all() and (compact["n_pairs"] == 2).all()  # 2 test patients
        assert (compact["ci_low"] <= compact["delta_dice_mean"]).all()
        assert (compact["delta_dice_mean"] <= compact["ci_high"]).all()
        assert compact["fewer_params_than_plain"].gt(1).all()       # every compact model is smaller
        assert rows.loc["xtiny", "fewer_params_than_unext"] > 1
        for peer in PEERS:  # the peers trained under nnunet with deep supervision switched off
            config = json.loads((image_run / "results" / dataset / "backbones" / peer / "nnunet" / "seed0"
                                 / "config.json").read_text())
            assert config["deep_supervision"] is False and config["optimizer"] == "sgd"
    md = (image_run / "results" / "tables" / "table5.md").read_text()
    assert " px |" in md and "fewer than the lightweight peers" in md and "| UNeXt | paper's |" in md
