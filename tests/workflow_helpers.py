"""Run the real Snakemake workflow in a throw-away copy of the repository's workflow files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# "slurm": the root link slurm -> profiles/slurm that lets users type `--profile slurm`.
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "envs", "slurm")


def copy_workflow(dest: Path, config: dict | None = None) -> Path:
    """Copy the workflow into `dest`; `config` replaces config/config.yaml when given. A link
    among the parts stays a link (as in a clone), so the copy's `slurm` is profiles/slurm."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        if source.is_symlink():
            os.symlink(os.readlink(source), dest / part)
        elif source.is_dir():
            shutil.copytree(source, dest / part)
        else:
            shutil.copy2(source, dest / part)
    if config is not None:
        (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake(workdir: Path, *args: str, timeout: float = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in `workdir` with this interpreter's environment on PATH; `env` entries
    (HOME, say) are set on top of this process's environment."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout, env=env)


def tiny_config(study: bool = False) -> dict:
    """The default config shrunk to seconds per job: 5 patients of 32 x 32, two-iteration training;
    the Lean U-Net study (in the default) only with `study`, as the whole-run test runs it."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["synthetic"]["cases"] = 5
    config["slices"]["size"] = 32
    config["train"] = {"paper": {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 4,
                                 "val_every": 1, "num_workers": 0}}
    config["width"]["k"] = 4
    config["search"] = {"all": {"epochs": 3, "warmup_epochs": 1, "iterations_per_epoch": 1,
                                "batch_size": 4, "num_workers": 0}, "iac": {}, "iac_lth": {}}
    config["prune"] = tiny_study() if study else {**config["prune"], "run": False}
    return config


def tiny_study() -> dict:
    """config/experiments/lunet.yaml's study shrunk to seconds: one seed, two scaled U-Nets, the
    STAMP architectures retrained, 12 channels a step after two batches."""
    study = yaml.safe_load((ROOT / "config" / "experiments" / "lunet.yaml").read_text())["prune"]
    study.update(seeds=[0], recovery_epochs=1, channels_per_step=12, scales=[100, 25], retrain=["stamp"],
                 train={"iterations_per_epoch": 2, "batch_size": 4, "num_workers": 0})
    return study


def planned_outputs(result: subprocess.CompletedProcess) -> list[str]:
    """Every output path of the jobs a dry run plans."""
    import re

    outputs = []
    for line in re.findall(r"^\s+output: (.*)$", result.stdout + result.stderr, re.MULTILINE):
        outputs += [part.strip() for part in line.split(",")]
    return outputs


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table."""
    import re

    counts: dict[str, int] = {}
    for rule, count in re.findall(r"^([a-z_]+)\s+(\d+)$", result.stdout + result.stderr, re.MULTILINE):
        if rule != "total":
            counts[rule] = int(count)
    return counts
