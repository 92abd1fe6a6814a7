"""The install story holds together: one dependency list, one test command, one CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from workflow_helpers import copy_workflow

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names the PyPI package `torch` as `pytorch`.
CONDA_NAMES = {"pytorch": "torch"}


def _split_requirement(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", text)
    assert match, text
    return match.group(1).lower(), match.group(2).replace(" ", "")


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def _conda_and_pip(env: dict) -> tuple[list[str], list[str]]:
    """An environment file's conda requirements and the lines of its `pip:` section."""
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            conda.append(dep)
    return conda, pip


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_conda_env_lists_the_same_dependencies_as_pyproject(env_file):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = dict(_split_requirement(dep) for dep in project["dependencies"])
    conda, _ = _conda_and_pip(yaml.safe_load(env_file.read_text()))
    conda_deps = {}
    for dep in conda:
        name, spec = _split_requirement(dep)
        if name == "python":
            assert spec == project["requires-python"], dep
        elif name != "pip":
            conda_deps[CONDA_NAMES.get(name, name)] = spec
    assert conda_deps == pip_deps


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda path: path.name)
def test_conda_env_installs_this_checkout_and_nothing_else_by_pip(env_file):
    """Snakemake hands conda a copy of the file in <prefix>/ (the default prefix is
    .snakemake/conda/ of the working directory) and conda runs pip there: the editable path is
    relative to that copy and must land on this checkout."""
    _, pip = _conda_and_pip(yaml.safe_load(env_file.read_text()))
    assert len(pip) == 1 and pip[0].startswith("-e "), pip
    target = (ROOT / ".snakemake" / "conda" / pip[0][3:].strip()).resolve()
    assert target == ROOT
    assert tomllib.loads((target / "pyproject.toml").read_text())["project"]["name"] == "unetscout"


# No conda here (and no channels to reach): this stand-in answers what Snakemake asks before it
# creates an environment and records the creation command it is then given, which it refuses.
STUB_CONDA = """#!/bin/sh
case "$*" in
  "info --json") echo '{"conda_prefix": "/nonexistent/conda", "platform": "linux-64"}' ;;
  "--version") echo "conda 24.7.1" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) printf '%s\\n' "$@" > "$STUB_CONDA_LOG"; echo "stub conda: no environments here" >&2; exit 1 ;;
esac
"""


def _with_stub_conda(tmp_path: Path) -> dict:
    stub = tmp_path / "bin" / "conda"
    stub.parent.mkdir()
    stub.write_text(STUB_CONDA)
    stub.chmod(0o755)
    env = dict(os.environ, STUB_CONDA_LOG=str(tmp_path / "conda_args.txt"))
    env["PATH"] = os.pathsep.join([str(stub.parent), str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def test_sdm_conda_dry_run_plans_the_environment_for_every_rule(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    result = _snakemake(workdir, _with_stub_conda(tmp_path), "-n", "--sdm", "conda")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert re.findall(r"^Conda environment (\S+) will be created\.$", output, re.MULTILINE) == ["envs/unetscout.yaml"]


def test_sdm_conda_creates_from_a_copy_whose_pip_path_is_the_working_directory(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    env = _with_stub_conda(tmp_path)
    result = _snakemake(workdir, env, "--sdm", "conda", "--conda-create-envs-only", "--cores", "1")
    assert result.returncode != 0  # the stand-in creates nothing
    args = (tmp_path / "conda_args.txt").read_text().split("\n")
    assert args[:2] == ["env", "create"], args
    copy = Path(args[args.index("--file") + 1])
    assert copy.parent == workdir / ".snakemake" / "conda"
    assert copy.read_text() == (workdir / "envs" / "unetscout.yaml").read_text()
    _, pip = _conda_and_pip(yaml.safe_load(copy.read_text()))
    assert (copy.parent / pip[0][3:].strip()).resolve() == workdir.resolve()


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert len(ci_lines) == 1, ci_lines
    readme = (ROOT / "README.md").read_text()
    assert ci_lines[0] in readme.splitlines(), "README must show the command .ci/run runs"


def test_cli_help_lists_the_stage_commands():
    result = subprocess.run([sys.executable, "-m", "unetscout.cli", "--help"],
                            capture_output=True, text=True, check=True)
    for command in ("synth", "fetch", "slices"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
