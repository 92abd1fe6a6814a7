"""The install story holds together: one dependency list, one test command, one CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names the PyPI package `torch` as `pytorch`.
CONDA_NAMES = {"pytorch": "torch"}


def _split_requirement(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", text)
    assert match, text
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_conda_env_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_deps = dict(_split_requirement(dep) for dep in project["dependencies"])
    env = yaml.safe_load((ROOT / "envs" / "unetscout.yaml").read_text())
    conda_deps = {}
    for dep in env["dependencies"]:
        name, spec = _split_requirement(dep)
        if name in ("python", "pip"):
            continue
        conda_deps[CONDA_NAMES.get(name, name)] = spec
    assert conda_deps == pip_deps


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
