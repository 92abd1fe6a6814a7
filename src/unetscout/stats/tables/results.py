"""Discovery in the fixed results layout: datasets, backbones, `seed<N>` folders, result files.

With a manifest (stats/manifest.py) the discovery sees only what the configuration declares:
every listing goes through `Results.visible`, so a run on disk that the config does not
declare is never read, and `undeclared_runs` names what was left out."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from unetscout.errors import file_error
from unetscout.names import SKIP_METHODS
from unetscout.stats.tests import read_patients

NOT_DATASETS = ("tables", "figures")
_SEED_DIR = re.compile(r"^seed(\d+)$")
SEARCH_SUMMARY = Path("search") / "search_summary.json"   # inside a skip method's seed folder


def _seed_dirs(directory: Path) -> dict[str, Path]:
    """`seed<N>` sub-directories of `directory` on disk, keyed by their name, in numeric order."""
    if not directory.is_dir():
        return {}
    found = [(int(m.group(1)), p.name, p) for p in directory.iterdir()
             if p.is_dir() and (m := _SEED_DIR.match(p.name))]
    return {name: path for _, name, path in sorted(found)}


def ordered(names: Iterable[str], first: Iterable[str]) -> list[str]:
    names = set(names)
    head = [n for n in first if n in names]
    return head + sorted(names - set(head))


def _non_negative(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and bool(np.isfinite(value)) and value >= 0)


@dataclass(frozen=True)
class SearchSummary:
    """What the tables use of one search/search_summary.json. The fields after
    search_seconds came with the IAC-LTH fidelity rework, the absolute_rule_* ones (IAC-LTH's
    shadow of the paper's absolute stability rule) later still: older files lack them, read as
    None (unknown), and the rows' notes say so. `absolute_rule_stop_epoch` is None also when
    the shadow did not stop before the cap; `absolute_rule_stopped_because` ("every edge has one
    op" / "epoch cap") tells that from unknown."""
    path: Path
    epochs_run: float
    search_seconds: float
    stop_epoch: float | None
    passes_per_epoch: float | None
    seconds_per_epoch: float | None
    floor_bound: bool | None
    epoch_cap: float | None = None
    absolute_rule_stop_epoch: float | None = None
    absolute_rule_stopped_because: str | None = None
    absolute_rule_floor_bound: bool | None = None


def read_json(path: Path):
    """A result file's JSON; a damaged file is an error naming it and the line."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise file_error(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None


def read_json_object(path: Path, expected: str = "must hold a JSON object") -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise file_error(path, expected)
    return data


def _read_search_summary(path: Path, method: str) -> SearchSummary:
    data = read_json_object(path, "expected a JSON object with epochs_run and search_seconds")
    if data.get("method", method) != method:
        raise file_error(path, f"method is {data.get('method')!r} but the folder says {method!r}")
    for key in ("epochs_run", "search_seconds"):
        if not _non_negative(data.get(key)):
            raise file_error(path, f"{key} must be a non-negative number, got {data.get(key)!r}")
    for key in ("stop_epoch", "passes_per_epoch", "seconds_per_epoch", "epoch_cap", "absolute_rule_stop_epoch"):
        if data.get(key) is not None and not _non_negative(data[key]):
            raise file_error(path, f"{key} must be a non-negative number or null, got {data[key]!r}")
    for key in ("floor_bound", "absolute_rule_floor_bound"):
        if data.get(key) is not None and not isinstance(data[key], bool):
            raise file_error(path, f"{key} must be true, false or null, got {data[key]!r}")
    # search/lth.py: the shadow stopped (at absolute_rule_stop_epoch) or did not before the cap (null)
    stopped, stop = data.get("absolute_rule_stopped_because"), data.get("absolute_rule_stop_epoch")
    if stopped not in (None, "every edge has one op", "epoch cap"):
        raise file_error(path, "absolute_rule_stopped_because must be 'every edge has one op', 'epoch cap' "
                               f"or null, got {stopped!r}")
    if (stopped == "every edge has one op" and stop is None) or (stopped == "epoch cap" and stop is not None):
        raise file_error(path, f"absolute_rule_stop_epoch is {stop!r} but absolute_rule_stopped_because "
                               f"is {stopped!r}")
    return SearchSummary(path=path, epochs_run=data["epochs_run"], search_seconds=data["search_seconds"],
                         stop_epoch=data.get("stop_epoch"), passes_per_epoch=data.get("passes_per_epoch"),
                         seconds_per_epoch=data.get("seconds_per_epoch"), floor_bound=data.get("floor_bound"),
                         epoch_cap=data.get("epoch_cap"), absolute_rule_stop_epoch=stop,
                         absolute_rule_stopped_because=stopped,
                         absolute_rule_floor_bound=data.get("absolute_rule_floor_bound"))


class Results:
    """One results folder; every file is read at most once. `declared` (the manifest's paths)
    limits what is seen to those paths, their folders and what lies inside them; None sees
    every folder on disk (`unetscout tables RESULTS` by hand)."""

    def __init__(self, root: Path, declared: Iterable[Path] | None = None):
        self.root = Path(root)                    # as given: notes name paths the way the user does
        self._root = os.path.abspath(root)
        self._patients: dict[Path, pd.DataFrame] = {}
        self._summaries: dict[Path, SearchSummary | None] = {}
        self._records: dict[Path, dict] = {}
        self._declared: set[tuple[str, ...]] | None = None
        self._above: set[tuple[str, ...]] = set()   # the declared paths' folders, up to the root
        if declared is not None:
            self._declared = {parts for path in declared if (parts := self._parts(path)) is not None}
            self._above = {parts[:i] for parts in self._declared for i in range(len(parts))}

    @classmethod
    def of(cls, results: "Results | str | Path") -> "Results":
        """A Results view as it is, or every run of a folder (a by-hand call)."""
        if isinstance(results, Results):
            return results
        if not Path(results).is_dir():
            raise file_error(results, "results folder not found")
        return cls(Path(results))

    def _parts(self, path: Path) -> tuple[str, ...] | None:
        relative = os.path.relpath(os.path.abspath(path), self._root)
        return None if relative.startswith("..") else tuple(Path(relative).parts) if relative != "." else ()

    def visible(self, path: Path) -> bool:
        """Whether a table may read `path`: with a manifest, a declared path, a folder above one
        or anything inside one."""
        if self._declared is None:
            return True
        parts = self._parts(path)
        if parts is None:
            return False
        return parts in self._above or any(parts[:i] in self._declared for i in range(1, len(parts) + 1))

    def is_dir(self, path: Path) -> bool:
        return self.visible(path) and path.is_dir()

    def is_file(self, path: Path) -> bool:
        return self.visible(path) and path.is_file()

    def datasets(self) -> list[str]:
        stages = ("backbones", "skips", "width", "slices", "prune", "prune_study")
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_DATASETS
                      and self.visible(p) and any(self.is_dir(p / stage) for stage in stages))

    def seed_dirs(self, directory: Path) -> dict[str, Path]:
        """The visible `seed<N>` folders of `directory`, keyed by name, in numeric order."""
        return {name: path for name, path in _seed_dirs(directory).items() if self.visible(path)}

    def undeclared_runs(self) -> list[Path]:
        """Run folders (and whole dataset folders) on disk that the manifest does not declare."""
        if self._declared is None:
            return []
        left_out = []
        for dataset in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name not in NOT_DATASETS
                              and not p.name.startswith(".")):
            if not self.visible(dataset):
                left_out.append(dataset)
                continue
            left_out += sorted(run for run in dataset.rglob("seed*")
                               if run.is_dir() and _SEED_DIR.match(run.name) and not self.visible(run))
        return left_out

    def patients(self, path: Path) -> pd.DataFrame:
        if path not in self._patients:
            self._patients[path] = read_patients(path)
        return self._patients[path]

    def record(self, path: Path) -> dict:
        """A run's JSON record (done.json, ...) as an object; a damaged one is an error naming it."""
        if path not in self._records:
            self._records[path] = read_json_object(path)
        return self._records[path]

    def search_summary(self, run: Path) -> SearchSummary | None:
        """`run/search/search_summary.json` of a skip method's seed folder, None when absent."""
        if run not in self._summaries:
            path = run / SEARCH_SUMMARY
            self._summaries[run] = _read_search_summary(path, run.parent.name) if self.is_file(path) else None
        return self._summaries[run]

    def patient_files(self, run_parent: Path) -> dict[str, Path]:
        """`{seed: run_parent/seed<N>/patients.tsv}` for the seeds that have one."""
        return {seed: d / "patients.tsv" for seed, d in self.seed_dirs(run_parent).items()
                if (d / "patients.tsv").is_file()}

    def backbone_dir(self, dataset: str, backbone: str, preset: str) -> Path:
        return self.root / dataset / "backbones" / backbone / preset

    def skip_dir(self, dataset: str, backbone: str, preset: str, method: str) -> Path:
        return self.root / dataset / "skips" / backbone / preset / method

    def subdirs(self, directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and self.visible(p)) \
            if directory.is_dir() else []

    def skip_backbones(self, dataset: str, preset: str, methods: Iterable[str] = SKIP_METHODS) -> list[str]:
        """Backbones with at least one skip-method result folder under `preset`."""
        skips = self.root / dataset / "skips"
        return [b for b in self.subdirs(skips)
                if any(self.is_dir(skips / b / preset / m) for m in methods)]
