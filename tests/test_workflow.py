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
    (lambda c: c["slices"].update(sise=3), r"unknown key 'sise' under slices; did you mean 'size'\?"),
    (lambda c: c["synthetic"].update(cases="many"), r"at synthetic\.cases: 'many' is not of type 'integer'"),
    (lambda c: c.update(dataset=["synthetic"]), r"unknown key 'dataset' under the top level; did you mean 'datasets'\?"),
    # the overrides' keys are the settings' own names, per method and per preset
    (lambda c: c["search"]["all"].update(tua0=0.3), r"unknown key 'tua0' under search\.all; did you mean 'tau0'\?"),
    (lambda c: c["search"].update(iac_lth={"gama": 1.1}), r"unknown key 'gama' under search\.iac_lth; did you mean 'gamma'\?"),
    (lambda c: c["search"].update(iac_ltf={"gamma": 1.1}), r"unknown key 'iac_ltf' under search; did you mean 'iac_lth'\?"),
    (lambda c: c["train"]["paper"].update(epocs=3), r"unknown key 'epocs' under train\.paper; did you mean 'epochs'\?"),
    (lambda c: c["skips"].update(methods=["iac", "nestd"]), r"at skips\.methods\.1: 'nestd' is not one of"),
])
def test_bad_config_is_one_clear_error(tmp_path, mutate, expected):
    config = _default_config()
    mutate(config)
    workdir = copy_workflow(tmp_path, config)
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert re.search(expected, output), output[-3000:]
    assert "config/config.yaml" in re.search(r"config error in (\S+)", output).group(1)


def test_a_misspelt_key_in_an_experiment_file_names_the_file(tmp_path):
    workdir = copy_workflow(tmp_path)
    experiment = yaml.safe_load((workdir / "config" / "experiments" / "iac_lth.yaml").read_text())
    experiment["search"].setdefault("iac_lth", {})["prune_std_facter"] = 2.0
    (workdir / "config" / "experiments" / "bad.yaml").write_text(yaml.safe_dump(experiment))
    result = snakemake(workdir, "-n", "--configfile", "config/experiments/bad.yaml")
    assert result.returncode != 0
    assert re.search(r"config error in \S*config/experiments/bad\.yaml: unknown key 'prune_std_facter' "
                     r"under search\.iac_lth; did you mean 'prune_std_factor'\?", result.stderr + result.stdout)


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
