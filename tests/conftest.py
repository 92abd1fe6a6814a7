"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from workflow_helpers import copy_workflow, snakemake, tiny_config


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """The whole default workflow (the Lean U-Net study included) run once at tiny settings: the
    workflow, rerun and report tests read it; a test that changes it works on a copy."""
    workdir = copy_workflow(tmp_path_factory.mktemp("run"), tiny_config(study=True))
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir
