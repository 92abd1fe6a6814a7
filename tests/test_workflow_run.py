"""The whole default workflow really runs (tiny settings), and single-rule reruns are precise."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from workflow_helpers import copy_workflow, planned_jobs, planned_outputs, snakemake, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("run"), tiny_config(study=True))
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir


def test_default_run_produces_every_stage(finished_run):
    results = finished_run / "results" / "synthetic"
    assert (results / "slices" / "manifest.tsv").exists()
    for backbone in ("plain", "lean", "xtiny"):
        patients = pd.read_csv(results / "backbones" / backbone / "paper" / "seed0" / "patients.tsv", sep="\t")
        assert len(patients) == 1 and {"dice", "dice_lesion", "dice_texture", "hd95_lesion"} <= set(patients)
    selection = json.loads((results / "width" / "selection.json").read_text())
    xtiny = json.loads((results / "backbones" / "xtiny" / "paper" / "seed0" / "model.json").read_text())
    assert xtiny["cap"] == selection["selected_cap"]
    sweep = pd.read_csv(results / "width" / "sweep.tsv", sep="\t")
    assert list(sweep["cap"]) == [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert (results / "width" / "sweep.png").stat().st_size > 1000
    for backbone in ("lean", "xtiny"):
        for method in ("attention", "nested", "resattention", "random", "iac", "iac_lth"):
            assert (results / "skips" / backbone / "paper" / method / "seed0" / "patients.tsv").exists()
        for method in ("iac", "iac_lth"):
            summary = json.loads((results / "skips" / backbone / "paper" / method / "seed0" / "search"
                                  / "search_summary.json").read_text())
            assert summary["method"] == method and summary["epochs_run"] >= 1
    tables = finished_run / "results" / "tables"
    assert all((tables / f"table{n}.{ext}").exists() for n in range(1, 7) for ext in ("csv", "md", "tex"))
    study = pd.read_csv(tables / "table6.csv")
    assert set(study["method"]) == {"unet100", "unet25", "lunet4", "lunet2", "retrained_stamp_75",
                                    "retrained_stamp_50", "retrained_stamp_25",
                                    *(f"{c}_{kind}" for c in ("stamp", "stamp_random_in_block", "widest_block")
                                      for kind in ("max_test", "val_pick"))}
    assert study["dice_median"].notna().all() and (study["n_seeds"] == 1).all()
    for criterion in ("stamp", "stamp_random_in_block", "widest_block"):
        run = results / "prune" / criterion / "paper" / "seed0"
        assert all((run / f"at{pct}" / "model.json").exists() for pct in (75, 50, 25))
    for figure in ("pruning_dice", "pruning_channels", "pruning_distribution"):
        assert (finished_run / "results" / "figures" / f"{figure}_synthetic_paper.png").stat().st_size > 1000
    picks = pd.read_csv(tables / "width_picks.csv")
    assert picks["selected_cap"].tolist() == [selection["selected_cap"]] and picks["spearman_rho"].notna().all()
    assert any((finished_run / "results" / "figures").glob("*.png"))


def test_nothing_left_to_do_after_the_run(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_forcerun_select_width_reruns_only_what_depends_on_the_pick(finished_run):
    result = snakemake(finished_run, "-n", "--forcerun", "select_width")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    assert jobs["select_width"] == 1 and jobs["train_backbone"] == 1
    assert jobs["train_skip"] == 3 and jobs["search"] == 3 and jobs["train_cell"] == 3  # random, iac, iac_lth
    assert "width_sweep" not in jobs and "score_widths" not in jobs
    # Every planned output is the pick itself, something built on the xtiny backbone, or a summary.
    summaries = ("width/selection.json", "width/sweep.", "results/tables/", "results/figures")
    for output in planned_outputs(result):
        assert "/xtiny/" in output or any(part in output for part in summaries), output


def test_forcerun_slices_reruns_everything_downstream(finished_run):
    jobs = planned_jobs(snakemake(finished_run, "-n", "--forcerun", "slices"))
    assert jobs["slices"] == 1 and "synth" not in jobs
    assert jobs["train_backbone"] == 3 and jobs["width_sweep"] == 9 and jobs["score_widths"] == 1


def test_changing_one_parameter_reruns_only_the_affected_jobs(finished_run, tmp_path):
    config = yaml.safe_load((finished_run / "config" / "config.yaml").read_text())
    config["models"]["lean"]["width"] = 4
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(finished_run, "-n", "--configfile", str(changed))
    jobs = planned_jobs(result)
    jobs.pop("all", None)
    # the lean backbone and everything implanted into it (a search backbone of the default), nothing else
    assert jobs == {"train_backbone": 1, "train_skip": 3, "search": 3, "train_cell": 3, "search_figures": 2,
                    "evaluate": 7, "tables": 1, "figures": 1}, result.stdout[-2000:]
    summaries = ("results/tables/", "results/figures")
    for output in planned_outputs(result):
        assert "/lean/" in output or any(part in output for part in summaries), output
