"""The whole default workflow really runs (tiny settings), and single-rule reruns are precise."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from workflow_helpers import planned_jobs, planned_outputs, snakemake

pytestmark = pytest.mark.slow


# finished_run: the tiny default run of conftest.py


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
                    "evaluate": 7, "manifest": 1, "tables": 1, "figures": 1}, result.stdout[-2000:]
    summaries = ("results/manifest.json", "results/tables/", "results/figures")
    for output in planned_outputs(result):
        assert "/lean/" in output or any(part in output for part in summaries), output


# ---------------------------------------------------------------- partial reruns follow the config
# Each case changes one thing of the finished run and checks with `snakemake -n` that exactly the
# jobs depending on it would rerun (Snakemake's rerun triggers: params, input, code, mtime).
SUMMARIES = ("results/manifest.json", "results/tables/", "results/figures")


def _dry_run_with(finished_run, tmp_path, change, *extra):
    config = yaml.safe_load((finished_run / "config" / "config.yaml").read_text())
    change(config)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(finished_run, "-n", "--configfile", str(changed), *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result)
    jobs.pop("all", None)
    return jobs, planned_outputs(result)


def test_rerun_table_search_tau0_reruns_the_iac_lth_searches_only(finished_run, tmp_path):
    jobs, outputs = _dry_run_with(finished_run, tmp_path, lambda c: c["search"]["iac_lth"].update(tau0=0.3))
    # two search backbones (lean, xtiny): their IAC-LTH search, cell, evaluation, figures; then the summaries
    assert jobs == {"search": 2, "train_cell": 2, "evaluate": 2, "search_figures": 2, "manifest": 1, "tables": 1,
                    "figures": 1}, jobs
    for output in outputs:
        assert "/iac_lth/" in output or output.startswith(SUMMARIES), output


def test_rerun_table_training_epochs_rerun_every_training_downstream(finished_run, tmp_path):
    jobs, outputs = _dry_run_with(finished_run, tmp_path, lambda c: c["train"]["paper"].update(epochs=2))
    # the three backbones, the sweep (it trains with the preset's settings), every skip and cell;
    # not the data, not the init-time width scores
    assert jobs["train_backbone"] == 3 and jobs["width_sweep"] == 9
    assert jobs["train_skip"] == 6 and jobs["search"] == 6 and jobs["train_cell"] == 6
    assert not {"synth", "slices", "score_widths", "select_width"} & set(jobs), jobs


def test_rerun_table_a_new_seed_runs_only_that_seed(finished_run, tmp_path):
    jobs, outputs = _dry_run_with(finished_run, tmp_path, lambda c: c.update(seeds=[0, 1]))
    assert jobs["train_backbone"] == 3 and jobs["train_skip"] == 6 and jobs["search"] == 6
    assert not {"width_sweep", "prune", "train_study_baseline", "slices"} & set(jobs), jobs
    for output in outputs:
        assert "/seed1" in output or output.startswith(SUMMARIES), output


def test_rerun_table_forcerun_one_search_reruns_it_and_its_dependants(finished_run):
    search = "results/synthetic/skips/lean/paper/iac/seed0/search/genotype.json"
    result = snakemake(finished_run, "-n", "--forcerun", search)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    jobs.pop("all", None)
    assert jobs == {"search": 1, "train_cell": 1, "evaluate": 1, "search_figures": 1, "tables": 1, "figures": 1}, jobs
    for output in planned_outputs(result):
        assert "/lean/paper/iac/seed0" in output or output.startswith(SUMMARIES), output


def _tables(workdir):
    return {path.name: path.read_bytes() for path in sorted((workdir / "results" / "tables").iterdir())}


def test_rerun_table_deleted_tables_come_back_byte_identical(finished_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    before = _tables(workdir)
    shutil.rmtree(workdir / "results" / "tables")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result).get("tables") == 1 and "train_backbone" not in planned_jobs(result)
    assert _tables(workdir) == before


def test_runs_the_config_does_not_declare_leave_the_tables_unchanged(finished_run, tmp_path):
    """The acceptance case: after the run, a seed folder and a foreign dataset copied in by hand
    (real runs, other numbers), then `--forcerun tables figures`: every table byte-identical, the
    log names what it left out."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run, workdir, symlinks=True)
    before = _tables(workdir)
    results = workdir / "results" / "synthetic"
    shutil.copytree(results / "skips" / "lean" / "paper" / "iac" / "seed0",
                    results / "skips" / "lean" / "paper" / "iac" / "seed7")
    shutil.copytree(results / "backbones" / "lean" / "paper" / "seed0", results / "backbones" / "lean" / "paper" / "seed7")
    shutil.copytree(results, workdir / "results" / "foreign")
    result = snakemake(workdir, "--cores", "2", "--forcerun", "tables", "figures")
    assert result.returncode == 0, result.stderr[-3000:]
    after = _tables(workdir)
    # every table byte-identical; the provenance sidecar records what was left out
    provenance = json.loads(after.pop("provenance.json"))
    assert after == {name: text for name, text in before.items() if name != "provenance.json"}
    assert sorted(provenance["left_out"]) == ["results/foreign", "results/synthetic/backbones/lean/paper/seed7",
                                              "results/synthetic/skips/lean/paper/iac/seed7"]
    for log in ("tables.log", "figures.log"):
        text = (workdir / "logs" / log).read_text()
        left_out = [line for line in text.splitlines() if "left out" in line]
        assert len(left_out) == 1, text
        for path in ("results/foreign", "results/synthetic/skips/lean/paper/iac/seed7",
                     "results/synthetic/backbones/lean/paper/seed7"):
            assert path in left_out[0], left_out[0]


def test_the_readme_numbers_are_written_from_the_run(finished_run, tmp_path):
    """experiments/default_run_summary.py: the README block holds the run's own tables and job count."""
    import importlib.util

    from workflow_helpers import ROOT

    spec = importlib.util.spec_from_file_location("summary", ROOT / "experiments" / "default_run_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{summary.BEGIN}\nold numbers\n{summary.END}\nrest\n")
    assert summary.main([str(finished_run), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{summary.END}\nrest\n") and "old numbers" not in text
    table5 = (finished_run / "results" / "tables" / "table5.md").read_text()
    xtiny_row = next(line for line in table5.splitlines() if line.startswith("| synthetic | paper | XTinyU-Net"))
    assert "|".join(xtiny_row.split("|")[:11]) + "|" in text
    jobs = sum(1 for _ in (finished_run / "logs").rglob("*.log"))   # one log per job that has one
    seconds, finished = summary.wall_time(finished_run)
    assert finished >= jobs - 1 and seconds > 0 and f"**{finished} jobs in" in text
