"""The whole default workflow really runs (tiny settings), and single-rule reruns are precise."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from workflow_helpers import copy_workflow, planned_jobs, snakemake, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("run"), tiny_config())
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


def test_nothing_left_to_do_after_the_run(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_forcerun_select_width_reruns_only_what_depends_on_the_pick(finished_run):
    result = snakemake(finished_run, "-n", "--forcerun", "select_width")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    # the pick, the xtiny backbone trained at it and its evaluation, and the sweep report
    assert jobs.pop("select_width") == 1
    assert jobs.pop("train_backbone") == 1 and jobs.pop("evaluate") == 1
    assert jobs.pop("sweep_report") == 1
    jobs.pop("all", None)
    assert jobs == {}, jobs
    assert "backbones/xtiny" in result.stdout and "backbones/plain/paper/seed0/done.json" not in result.stdout


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
    assert jobs == {"train_backbone": 1, "evaluate": 1}, result.stdout[-2000:]
    assert "backbones/lean" in result.stdout
