"""`snakemake --profile slurm` works as typed from the repository root, no cluster needed.

Snakemake 9 takes `--profile X` as a path when X exists in the current directory, else looks in
~/.config/snakemake and /etc/xdg/snakemake. The committed root link slurm -> profiles/slurm makes
the name resolve in a fresh clone with an empty home. tests/test_workflow.py dry-runs it with an
empty home, tests/test_slurm.py runs it on a cluster.
"""

from __future__ import annotations

import importlib.metadata
import os
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from workflow_helpers import ROOT

PLUGIN = "snakemake-executor-plugin-slurm"


def _empty_home(tmp_path: Path) -> dict[str, str]:
    """HOME and the user configuration folder of a user who never set anything up."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def test_the_root_link_is_the_slurm_profile(tmp_path, monkeypatch):
    link = ROOT / "slurm"
    # relative, so it points into whichever clone it is in
    assert link.is_symlink() and os.readlink(link) == "profiles/slurm"
    assert link.resolve() == (ROOT / "profiles" / "slurm").resolve()
    assert (link / "config.yaml").is_file()
    # Snakemake's own lookup, from the root, with nothing in the user's configuration folder
    for name, value in _empty_home(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    from snakemake.cli import get_profile_dir

    found = get_profile_dir("slurm")
    assert found is not None
    folder, config_file = found
    assert folder.resolve() == (ROOT / "profiles" / "slurm").resolve()
    assert config_file.resolve() == (ROOT / "profiles" / "slurm" / "config.yaml").resolve()


def test_every_profile_key_is_an_option_of_snakemake_and_the_installed_plugin():
    from snakemake.cli import get_argument_parser

    options = {option for action in get_argument_parser()._actions for option in action.option_strings}
    keys = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert {f"--{key}" for key in keys} <= options, {f"--{key}" for key in keys} - options


def test_the_slurm_plugin_pin_has_the_working_squeue_query():
    """`slurm-status-command: squeue` came in 2.0.1, but until 2.3.1 the query lost the quotes
    around --format=%i|%T and the shell read `|%T` as a pipe (plugin issue #395); 2.4.0 fixed it."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(dep) for dep in dependencies if Requirement(dep).name == PLUGIN]
    assert "2.4.0" in pin.specifier
    assert not any(version in pin.specifier for version in ("1.0", "2.0.1", "2.3.1"))
    installed = importlib.metadata.version(PLUGIN)
    assert installed in pin.specifier, f"{PLUGIN} {installed} does not satisfy {pin}"
