"""The workflow on a real (single-node) Slurm cluster through `--profile profiles/slurm`.

tests/slurm/start_cluster.sh installs and starts slurmctld, slurmd and munged on this machine
with one declared GPU, so GPU rules are scheduled with a real `--gpus` request. Needs root.
"""

from __future__ import annotations

import os
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


def test_default_workflow_runs_inside_slurm(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path, tiny_config())
    result = snakemake(workdir, "--profile", "profiles/slurm", *_small_requests(), timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    logs = sorted((workdir / "logs").rglob("*.log"))
    assert logs, "no job logs written"
    for log in logs:
        text = log.read_text()
        match = re.search(r"SLURM_JOB_ID=(\S+)", text)
        assert match and match.group(1).isdigit(), f"{log} did not run inside a Slurm job:\n{text[:500]}"
    assert (workdir / "results" / "synthetic" / "slices" / "manifest.tsv").exists()
