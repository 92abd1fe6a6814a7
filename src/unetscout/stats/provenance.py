"""Where a set of tables or figures came from: `provenance.json` beside them, and how the
results they are computed from are opened (declared runs only, or a whole folder by hand).

The sidecar holds no time stamp: rebuilding the same tables from the same runs gives the same
bytes, sidecar included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import unetscout
from unetscout.atomic import write_json_atomic
from unetscout.stats.manifest import Manifest, check_runs, read_manifest
from unetscout.stats.tables.results import Results

PROVENANCE = "provenance.json"


def _git(*args: str) -> str | None:
    source = Path(unetscout.__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The package version and, for a package run from a git checkout, its commit and whether
    the checkout had uncommitted changes (then the commit alone does not reproduce the code)."""
    commit = _git("rev-parse", "HEAD")
    dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"unetscout": unetscout.__version__, "git_commit": commit, "git_dirty": dirty}


class Opened:
    """The results a tables or figures command reads, and what it records of them."""

    def __init__(self, results: Results, manifest: Manifest | None, digests: dict[Path, str],
                 left_out: list[Path]):
        self.results, self.manifest, self.digests, self.left_out = results, manifest, digests, left_out

    def provenance(self) -> dict[str, Any]:
        manifest = self.manifest
        base = Path.cwd()

        def shown(path: Path) -> str:
            return os.path.relpath(path, base)

        return {**code_version(),
                "manifest": None if manifest is None else shown(manifest.path),
                "config_sha256": None if manifest is None else manifest.config_sha256,
                "runs": [{"path": shown(path), "identity_sha256": digest} for path, digest in self.digests.items()],
                "left_out": [shown(path) for path in self.left_out],
                "note": None if manifest is not None else
                "read every run found under the results folder: no manifest says which runs belong together"}

    def write_provenance(self, out_dir: Path) -> Path:
        path = Path(out_dir) / PROVENANCE
        write_json_atomic(path, self.provenance())
        return path


def open_results(command: str, results_dir: Path | None, manifest_path: Path | None) -> Opened:
    """With a manifest: its runs, each checked against the config (stats.manifest.check_runs),
    and one line naming the runs on disk it leaves out. Without: every run under `results_dir`,
    and one line saying so."""
    if manifest_path is None:
        results = Results.of(results_dir)
        print(f"unetscout {command}: no --manifest: reading every run under {results_dir}, whichever "
              "configuration made it", file=sys.stderr, flush=True)
        return Opened(results, None, {}, [])
    manifest = read_manifest(manifest_path)
    digests = check_runs(manifest)
    results = Results(manifest.results, manifest.declared_paths())
    left_out = results.undeclared_runs()
    if left_out:
        print(f"unetscout {command}: left out {len(left_out)} run folder(s) on disk that {manifest.path} does not "
              f"declare: {', '.join(os.path.relpath(path) for path in left_out)}", file=sys.stderr, flush=True)
    return Opened(results, manifest, digests, left_out)
