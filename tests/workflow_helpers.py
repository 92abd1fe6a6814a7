"""Run the real Snakemake workflow in a throw-away copy of the repository's workflow files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "profiles", "envs")


def copy_workflow(dest: Path, config: dict | None = None) -> Path:
    """Copy the workflow into `dest`; `config` replaces config/config.yaml when given."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part)
        else:
            shutil.copy2(source, dest / part)
    if config is not None:
        (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in `workdir` with this interpreter's environment on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout, env=env)
