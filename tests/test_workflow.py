"""The Snakemake workflow plans, lints, and rejects bad configuration clearly."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from workflow_helpers import ROOT, copy_workflow, planned_jobs, snakemake, tiny_config


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
    # datasets x (six backbones x paper x one seed + plain x two nnU-Net presets x three seeds),
    # each with the reference and six skip methods, three of them cells (random, iac, iac_lth)
    ("iac_lth.yaml", {"fetch": 4, "train_backbone": 4 * (6 + 6), "train_skip": 4 * (6 + 6) * 3,
                      "search": 4 * (6 + 6) * 3, "train_cell": 4 * (6 + 6) * 3}),
    # six datasets x (nnU-Net, the pick, LUnet, three peers), the ten caps of the sweep each
    ("xtiny.yaml", {"fetch": 6, "score_widths": 6, "select_width": 6, "train_backbone": 6 * 6,
                    "width_sweep": 6 * 10, "sweep_report": 6}),
    # three criteria x three seeds; (four scaled U-Nets, two LUnets, 3 x 3 retrained) x three seeds
    ("lunet.yaml", {"fetch": 1, "prune": 3 * 3, "train_study_baseline": (4 + 2 + 9) * 3}),
])
def test_experiment_configs_plan_the_whole_grid(tmp_path, experiment, expected):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "-p", "--configfile", f"config/experiments/{experiment}")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = {rule: int(n) for rule, n in re.findall(r"^([a-z_]+)\s+(\d+)$", result.stdout, re.MULTILINE)}
    for rule, count in expected.items():
        assert jobs.get(rule) == count, (rule, jobs)
    # an experiment file is a whole configuration: none of the default's short CPU schedules leak
    # in; only the width sweep has a schedule of its own (the authors' 100 epochs)
    commands = re.findall(r"^Shell command: (unetscout train .*)$", result.stdout + result.stderr, re.MULTILINE)
    sweep = [c for c in commands if "/width/sweep/" in c]
    assert not any("--set epochs=" in c for c in commands if c not in sweep)
    assert all("--set epochs=100" in c for c in sweep) and len(sweep) == expected.get("width_sweep", 0)


def test_the_lean_unet_study_plans_the_papers_settings(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "-p", "--configfile", "config/experiments/lunet.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    prunes = re.findall(r"^Shell command: (unetscout prune .*)$", output, re.MULTILINE)
    criteria = ("stamp", "stamp_random_in_block", "widest_block")
    assert sorted(re.search(r"--criterion (\S+)", c).group(1) for c in prunes) == sorted(criteria * 3)
    for command in prunes:
        for flags in ("--top-width 4", "--recovery-epochs 5", "--channels-per-step 1", "--base-dropout 0.05",
                      "--set batch_size=16", "--set lr=0.01", "--preset paper"):
            assert flags in command, (flags, command)
    trains = re.findall(r"^Shell command: (unetscout train .*/prune_study/.*)$", output, re.MULTILINE)
    for seed in (0, 1, 2):
        mine = [c for c in trains if f"/seed{seed} " in c]
        assert sum("--width-scale" in c for c in mine) == 4 and any("--width-scale 0.25" in c for c in mine)
        assert sum("--backbone lean" in c for c in mine) == 2
        for criterion in criteria:
            for pct in (75, 50, 25):
                source = f"results/task04_hippocampus/prune/{criterion}/paper/seed{seed}/at{pct}/model.json"
                assert sum(f"--widths-from {source}" in c for c in mine) == 1, source


def test_the_sweep_trains_on_its_own_short_schedule(tmp_path):
    """width.sweep_train: every cap (the plain backbone's too) with the short schedule, the
    backbones (the pick among them) with the preset's."""
    config = tiny_config()
    config["width"]["sweep_train"] = {"epochs": 7}
    result = snakemake(copy_workflow(tmp_path, config), "-n", "-p")
    assert result.returncode == 0, result.stderr[-2000:]
    commands = re.findall(r"^Shell command: (unetscout train .*)$", result.stdout + result.stderr, re.MULTILINE)
    sweep = [c for c in commands if "/width/sweep/" in c]
    backbones = [c for c in commands if "/backbones/" in c]
    assert len(sweep) == 10 and all("--set epochs=7" in c for c in sweep)
    assert "width/sweep/cap512/" in " ".join(sweep)
    assert backbones and all("--set epochs=1" in c and "epochs=7" not in c for c in backbones)


# ---------------------------------------------------------------- job sizes, groups, the Slurm profile

SCALED_RULES = ("train_backbone", "width_sweep", "train_skip", "search", "train_cell", "prune",
                "train_study_baseline")
# The rules' own `resources:` (what workflow/rules/*.smk declares), read through Snakemake's API.
RULE_RESOURCES = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, Quietness, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    rules = api.workflow(resource_settings=ResourceSettings(), snakefile=Path("Snakefile"))._workflow.rules
    print(json.dumps({r.name: {"resources": sorted(r.resources.keys()), "shell": r.shellcmd or ""} for r in rules}))
"""


def _profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())


def _job_resources(result) -> list[tuple[str, dict, dict]]:
    """(rule, wildcards, resources) of every job a dry run prints, grouped jobs included."""
    jobs = []
    for block in re.split(r"\n(?=\s*rule \w+:)", result.stdout + result.stderr):
        rule = re.match(r"\s*rule (\w+):", block)
        if not rule:
            continue
        wildcards = re.search(r"^\s*wildcards: (.*)$", block, re.MULTILINE)
        resources = re.search(r"^\s*resources: (.*)$", block, re.MULTILINE)
        jobs.append((rule.group(1),
                     dict(item.split("=", 1) for item in wildcards.group(1).split(", ")) if wildcards else {},
                     dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {}))
    return jobs


def _runtimes(result, rule: str, **wildcards: str) -> list[int]:
    return [int(res["runtime"]) for name, wc, res in _job_resources(result)
            if name == rule and all(wc.get(k) == v for k, v in wildcards.items())]


def _groups(result) -> dict[str, int]:
    counts: dict[str, int] = {}
    for group in re.findall(r"Group job (\w+) \(jobs", result.stdout + result.stderr):
        counts[group] = counts.get(group, 0) + 1
    return counts


@pytest.fixture(scope="module")
def slurm_dry_runs(tmp_path_factory):
    """Dry runs through `--profile slurm` (no cluster needed to plan): the default config
    and the IAC-LTH paper grid."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm_plan"))
    default = snakemake(workdir, "-n", "--profile", "slurm")
    paper = snakemake(workdir, "-n", "--profile", "slurm", "--configfile", "config/experiments/iac_lth.yaml")
    for result in (default, paper):
        assert result.returncode == 0, result.stderr[-3000:]
    return default, paper


def test_every_rule_is_sized_and_gets_its_runtime_from_one_place(tmp_path):
    workdir = copy_workflow(tmp_path)
    listed = snakemake(workdir, "--list-rules")
    assert listed.returncode == 0, listed.stderr
    rules = set(listed.stdout.split())
    declared = json.loads(subprocess.run([sys.executable, "-c", RULE_RESOURCES], cwd=workdir, check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
    sized = _profile("default")["set-resources"]
    assert rules == set(declared) and rules == set(sized), rules ^ set(sized)
    for rule in rules:
        own, profile = declared[rule]["resources"], sized[rule]
        assert {"mem_mb", "cpus_per_task"} <= set(profile), rule
        # a runtime in set-resources would override the rule's computed one without a word
        assert ("runtime" in own) != ("runtime" in profile), rule
        assert ("runtime" in own) == (rule in SCALED_RULES), rule
        # every rule that can use CUDA asks for a GPU, in the profile and in the rule itself
        # (a command-line --set-resources replaces the profile's list, not the rule's)
        uses_gpu = "--device" in declared[rule]["shell"]
        assert ("gpu" in own) == uses_gpu == (profile.get("gpu") == 1), rule


def test_runtime_follows_the_configured_schedule_and_data_size(slurm_dry_runs):
    default, paper = slurm_dry_runs
    # the default config's minutes-long CPU schedules: the floor, also through both profiles
    for rule in SCALED_RULES:
        assert _runtimes(default, rule) and max(_runtimes(default, rule)) <= 30, rule
    # the paper grid: a 200-epoch search over BraTS' train split asks for hours ...
    brats = _runtimes(paper, "search", dataset="brats2021", backbone="plain", method="iac_lth")
    assert brats and min(brats) >= 120
    # ... more than over ACDC's few thousand slices, and a random "search" only draws a genotype
    acdc = _runtimes(paper, "search", dataset="acdc", backbone="plain", method="iac_lth")
    assert max(acdc) < min(brats)
    assert set(_runtimes(paper, "search", method="random")) == {15}
    # nnunet's 1000 epochs against paper's 200 (a backbone and dataset far from the ceiling)
    short = _runtimes(paper, "train_backbone", dataset="acdc", backbone="plain", preset="paper")
    long = _runtimes(paper, "train_backbone", dataset="acdc", backbone="plain", preset="nnunet")
    assert 4 * max(short) <= min(long) <= 6 * max(short)
    assert max(r for rule in SCALED_RULES for r in _runtimes(paper, rule)) <= 2880


def test_slurm_profile_bundles_the_small_jobs(slurm_dry_runs, tmp_path):
    default, _ = slurm_dry_runs
    jobs = planned_jobs(default)
    per_job = _profile("slurm")["group-components"]
    groups = _groups(default)
    assert groups["evaluate"] == math.ceil(jobs["evaluate"] / per_job["evaluate"]) < jobs["evaluate"]
    assert groups["search_figures"] == math.ceil(jobs["search_figures"] / per_job["search_figures"])
    assert groups["summaries"] == 1          # sweep reports, tables and figures together
    assert groups["width_pick"] == jobs["score_widths"] == jobs["select_width"]
    # without the Slurm profile nothing is bundled: every evaluation is a group of its own
    local = snakemake(copy_workflow(tmp_path), "-n")
    assert _groups(local)["evaluate"] == jobs["evaluate"]


@pytest.mark.parametrize("xdg", [False, True], ids=["home", "xdg_config_home"])
def test_profile_name_slurm_works_as_typed_with_an_empty_home(tmp_path, xdg):
    """From a fresh copy of the checkout (the root link slurm -> profiles/slurm travels as a link,
    as in a clone), with nothing in the user's configuration folder: no setup step."""
    workdir = copy_workflow(tmp_path / "checkout")
    env = {"HOME": str(tmp_path / "home"),
           "XDG_CONFIG_HOME": str(tmp_path / ("xdg" if xdg else "home/.config"))}
    after = snakemake(workdir, "-n", "--profile", "slurm", env=env)
    assert after.returncode == 0, after.stderr[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in after.stderr
    # the Slurm profile's settings are in effect: its job groups
    assert _groups(after)["summaries"] == 1
    assert _groups(after)["evaluate"] < planned_jobs(after)["evaluate"]
