"""The Snakemake workflow plans, lints, and rejects bad configuration clearly."""

from __future__ import annotations

import re

import pytest
import yaml

from workflow_helpers import ROOT, copy_workflow, snakemake


def _default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_workflow_plans_without_warnings(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert not re.search(r"warning", output, re.IGNORECASE), output
    for rule in ("synth", "slices"):
        assert re.search(rf"^{rule}\s+1$", output, re.MULTILINE), f"{rule} not planned"


def test_lint_is_clean(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["slices"].update(sise=3), r"slices: Additional properties are not allowed \('sise'"),
    (lambda c: c["synthetic"].update(cases="many"), r"synthetic\.cases: 'many' is not of type 'integer'"),
    (lambda c: c.update(dataset=["synthetic"]), r"Additional properties are not allowed \('dataset'"),
])
def test_bad_config_is_one_clear_error(tmp_path, mutate, expected):
    config = _default_config()
    mutate(config)
    workdir = copy_workflow(tmp_path, config)
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    assert re.search(expected, result.stderr + result.stdout), result.stderr


def test_a_user_folder_is_read_in_place_not_fetched(tmp_path):
    own = tmp_path / "data" / "MyHospital"
    (own / "imagesTr").mkdir(parents=True)
    (own / "labelsTr").mkdir()
    (own / "dataset.json").write_text("{}")
    config = _default_config()
    config["datasets"] = [str(own)]
    workdir = copy_workflow(tmp_path / "wf", config)
    result = snakemake(workdir, "-n", "-p")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "results/MyHospital/slices" in output
    assert f"unetscout slices {own}" in output
    assert not re.search(r"^(fetch|synth)\s+\d", output, re.MULTILINE)


@pytest.mark.parametrize("experiment, expected", [
    # datasets x backbones x presets x seeds x cell methods (random, iac, iac_lth)
    ("iac_lth.yaml", {"fetch": 4, "search": 4 * 3 * 3 * 3 * 3, "train_cell": 4 * 3 * 3 * 3 * 3}),
    ("xtiny.yaml", {"fetch": 2, "score_widths": 2, "width_sweep": 2 * 9}),
])
def test_experiment_configs_plan_the_whole_grid(tmp_path, experiment, expected):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", f"config/experiments/{experiment}")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = {rule: int(n) for rule, n in re.findall(r"^([a-z_]+)\s+(\d+)$", result.stdout, re.MULTILINE)}
    for rule, count in expected.items():
        assert jobs.get(rule) == count, (rule, jobs)
    # an experiment file is a whole configuration: none of the default's short CPU schedules leak in
    assert "--set epochs=" not in result.stdout
