"""The workflow on a real (single-node) Slurm cluster through `--profile slurm`, as users type it.

tests/slurm/start_cluster.sh installs and starts slurmctld, slurmd and munged on this machine
with one declared GPU, so GPU rules are scheduled with a real `--gpus` request. Needs root.
"""

from __future__ import annotations

import os
import signal
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from workflow_helpers import ROOT, copy_workflow, snakemake, tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm cluster needs root (tests/slurm/start_cluster.sh)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no slurmctld and no apt-get to install Debian's slurm-wlm")
    result = subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "start_cluster.sh")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"cluster did not start:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def _small_requests() -> list[str]:
    """Shrink the profile's per-rule requests to fit this 2-CPU node (the GPU request stays)."""
    import yaml

    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    args = []
    for rule, resources in profile["set-resources"].items():
        args.append(f"{rule}:mem_mb=1000")
        if "cpus_per_task" in resources:
            args.append(f"{rule}:cpus_per_task=1")
    return ["--set-resources", *args, "--default-resources", "mem_mb=1000", "runtime=30"]


def test_gpu_request_is_scheduled(slurm_cluster):
    result = subprocess.run(["srun", "--gpus=1", "--time=1", "bash", "-c",
                             "echo $SLURM_JOB_ID $CUDA_VISIBLE_DEVICES"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    job_id, visible = result.stdout.split()
    assert job_id.isdigit() and visible == "0"


# Every kind of job the profile submits: one alone (synth, slices, train), a group of several
# (score_widths + select_width), and the grouped evaluations. test_workflow_run runs the rest of
# the default workflow locally; on Slurm these jobs prove the executor, the groups and the logs.
SLURM_TARGETS = ["results/synthetic/backbones/lean/paper/seed0/patients.tsv", "results/synthetic/width/selection.json"]


def test_the_workflow_runs_inside_slurm(slurm_cluster, tmp_path):
    """From a copy of the repository (the root link slurm -> profiles/slurm included) with an
    empty home: `snakemake --profile slurm` needs no setup step."""
    workdir = copy_workflow(tmp_path / "clone", tiny_config())
    home = tmp_path / "home"
    home.mkdir()
    empty_home = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    # The targets first: --default-resources takes every word after it.
    result = snakemake(workdir, *SLURM_TARGETS, "--profile", "slurm", *_small_requests(), timeout=1500,
                       env=empty_home)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    logs = sorted((workdir / "logs").rglob("*.log"))
    assert logs, "no job logs written"
    for log in logs:
        text = log.read_text()
        match = re.search(r"SLURM_JOB_ID=(\S+)", text)
        assert match and match.group(1).isdigit(), f"{log} did not run inside a Slurm job:\n{text[:500]}"
    assert (workdir / "results" / "synthetic" / "slices" / "manifest.tsv").exists()
    assert all((workdir / target).exists() for target in SLURM_TARGETS)
    stages = {log.relative_to(workdir / "logs").parts[1] for log in logs}   # logs/DATASET/STAGE/...
    assert stages >= {"train_backbone", "evaluate"}, stages


def _tiny_slices(root: Path) -> Path:
    from unetscout.cli import main

    assert main(["synth", "--out", str(root / "raw"), "--cases", "5", "--seed", "0"]) == 0
    assert main(["slices", str(root / "raw"), "--out", str(root / "slices"), "--size", "32", "--seed", "0"]) == 0
    return root / "slices"


def test_scancel_sigterm_checkpoints_and_the_rerun_resumes(slurm_cluster, tmp_path):
    """Slurm's time-limit warning is SIGTERM: the job saves last.pt and exits 143; a rerun resumes."""
    import sys
    import time

    slices = _tiny_slices(tmp_path)
    out, log = tmp_path / "run", tmp_path / "job.log"
    unetscout = Path(sys.executable).parent / "unetscout"
    command = (f"{unetscout} train {slices} --out {out} --backbone plain --cap 4 --preset paper --device cpu "
               "--set epochs=500 --set iterations_per_epoch=4 --set batch_size=2 --set val_every=100 "
               "--set num_workers=0")
    submitted = subprocess.run(["sbatch", "--parsable", "--gpus=1", "--mem=1000", f"--output={log}",
                                f"--wrap=exec {command}"], capture_output=True, text=True, check=True)
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 180
    while not (out / "last.pt").exists():  # a first epoch is done: the job is really training
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "job never started"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job_id], check=True)
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "job did not end after SIGTERM"
        time.sleep(0.5)
    text = log.read_text()
    assert f"SLURM_JOB_ID={job_id}" in text and "SIGTERM: saved" in text, text[-2000:]
    assert not (out / "done.json").exists()

    # The rerun (as Snakemake's retry would start it) resumes from the checkpoint; stop it again
    # with SIGTERM once it has said so, and it exits 143 as the Slurm job did.
    rerun = subprocess.Popen(command.split(), stderr=subprocess.PIPE, text=True)
    try:
        resumed = False
        for line in rerun.stderr:
            resumed = resumed or f"resuming {out} at epoch" in line
            if resumed and line.startswith("train: epoch"):  # training again, signal handler in place
                break
        else:
            pytest.fail("the rerun did not resume")
        rerun.send_signal(signal.SIGTERM)
        assert rerun.wait(timeout=120) == 143
    finally:
        rerun.kill()
