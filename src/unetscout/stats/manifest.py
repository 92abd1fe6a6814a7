"""The runs a configuration declares: what the tables and figures are computed from, and nothing else.

The workflow writes `results/manifest.json` (rule `manifest`) from the same functions that
build its jobs, so the manifest names exactly the runs of the config: a results folder that
also holds runs of another configuration (a seed dropped since, another experiment file)
gives the same tables as one that does not. Each declared run carries what the config says
about it (`expect`): per record file of the run, the values its recorded identity must hold,
so a run trained with other settings and not rerun is refused by name instead of entering a
table (`check_runs`).

Format (JSON object):

    {"format": 1, "results": "results", "config_sha256": "...",
     "datasets": {"synthetic": {"slices": "results/synthetic/slices",
                                "files": ["results/synthetic/width/selection.json", ...]}},
     "runs": [{"path": "results/synthetic/backbones/plain/paper/seed0", "dataset": "synthetic",
               "expect": {"done.json": {"config": {"preset": "paper", "seed": 0, "epochs": 4}}}}]}

Paths are as the workflow names them, relative to the folder it runs in (the manifest's
`base`, the folder holding `results`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from unetscout.atomic import write_json_atomic
from unetscout.errors import file_error
from unetscout.runs import IDENTITY_PARTS
from unetscout.stats.tables.results import read_json_object

MANIFEST_FORMAT = 1
DATA = "data"   # an expectation of this key is checked against the dataset's slice store digest


@dataclass(frozen=True)
class DeclaredRun:
    path: Path                                  # the run folder
    dataset: str
    expect: dict[str, dict[str, Any]] = field(default_factory=dict)   # record file -> identity subset


@dataclass(frozen=True)
class Manifest:
    path: Path
    results: Path
    config_sha256: str
    slices: dict[str, Path]                     # dataset -> its slice store
    files: tuple[Path, ...]                     # dataset-level results (width selection, sweep)
    runs: tuple[DeclaredRun, ...]

    @property
    def datasets(self) -> list[str]:
        return list(self.slices)

    def declared_paths(self) -> list[Path]:
        """Everything a table or figure may read: the runs, the dataset files, the slice stores."""
        return [run.path for run in self.runs] + list(self.files) + list(self.slices.values())


def config_digest(config: dict) -> str:
    """sha256 of a configuration as canonical JSON (key order does not count)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def write_manifest(path: str | Path, results: str, config: dict, datasets: dict[str, dict[str, Any]],
                   runs: Iterable[dict[str, Any]]) -> str:
    """Write the manifest the workflow declares (atomically; runs in a stable order); returns
    the line its log gets."""
    runs = sorted(runs, key=lambda run: run["path"])
    write_json_atomic(path, {"format": MANIFEST_FORMAT, "results": results, "config_sha256": config_digest(config),
                             "datasets": datasets, "runs": runs})
    return f"{path}: {len(runs)} declared runs of {len(datasets)} dataset(s)\n"


def _require(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise file_error(path, problem)


def _base(path: Path, results: str) -> Path:
    """The folder the manifest's paths are relative to: the one holding `results`, when the
    manifest lies in it (the workflow's results/manifest.json), else the working directory."""
    folder, inside = path.absolute().parent.parts, Path(results).parts
    if inside and folder[-len(inside):] == inside:
        base = Path(*folder[:-len(inside)])
        # Relative to the working directory where it can be, so messages name paths as typed.
        return Path(os.path.relpath(base)) if base == Path.cwd() or Path.cwd() in base.parents else base
    return Path(".")


def read_manifest(path: str | Path) -> Manifest:
    """A manifest, checked: every declared run's folder exists (a missing run is an error
    naming it, never an empty table cell)."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "manifest not found")
    data = read_json_object(path)
    _require(data.get("format") == MANIFEST_FORMAT, path, f"not a unetscout manifest of format {MANIFEST_FORMAT}")
    datasets, runs = data.get("datasets"), data.get("runs")
    _require(isinstance(datasets, dict) and isinstance(runs, list) and isinstance(data.get("results"), str),
             path, "needs 'results' (a folder), 'datasets' (an object) and 'runs' (a list)")
    base = _base(path, data["results"])
    slices, files = {}, []
    for name, entry in datasets.items():
        _require(isinstance(entry, dict) and isinstance(entry.get("slices"), str)
                 and isinstance(entry.get("files", []), list), path,
                 f"dataset {name!r} needs 'slices' (a folder) and 'files' (a list)")
        slices[name] = base / entry["slices"]
        files += [base / item for item in entry.get("files", [])]
    declared = []
    for entry in runs:
        _require(isinstance(entry, dict) and isinstance(entry.get("path"), str)
                 and entry.get("dataset") in slices and isinstance(entry.get("expect", {}), dict), path,
                 f"run entry {entry!r} needs 'path', a declared 'dataset' and an 'expect' object")
        run = DeclaredRun(base / entry["path"], entry["dataset"], entry.get("expect", {}))
        _require(run.path.is_dir(), run.path, f"declared in {path} but not found (run the workflow first)")
        declared.append(run)
    return Manifest(path=path, results=base / data["results"], config_sha256=str(data.get("config_sha256")),
                    slices=slices, files=tuple(files), runs=tuple(declared))


# ---------------------------------------------------------------- declared identity vs recorded

def _agrees(declared: Any, recorded: Any) -> bool:
    """A config value (from YAML) against the value a run recorded (typed by its dataclass)."""
    if isinstance(declared, dict):
        return isinstance(recorded, dict) and all(k in recorded and _agrees(v, recorded[k])
                                                  for k, v in declared.items())
    if isinstance(declared, (list, tuple)):
        return (isinstance(recorded, (list, tuple)) and len(declared) == len(recorded)
                and all(_agrees(a, b) for a, b in zip(declared, recorded)))
    if isinstance(declared, bool) or isinstance(recorded, bool):
        return str(declared).lower() == str(recorded).lower()
    try:
        return math.isclose(float(declared), float(recorded), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(declared) == str(recorded)


def _contradiction(expected: dict[str, Any], recorded: dict[str, Any], data_digest: str, where: str = "") -> str | None:
    """The first declared value the record contradicts or lacks, in words; None if it agrees.
    `"data": true` declares the dataset's slice store as it is now (its `data_digest`)."""
    for key, value in expected.items():
        name = f"{where}.{key}" if where else key
        if key not in recorded:
            return f"does not record {name} (declared {value!r})"
        if key == DATA and value is True:
            if recorded[key] != data_digest:
                return "was computed from other data than the slice store now holds"
        elif isinstance(value, dict) and isinstance(recorded[key], dict):
            found = _contradiction(value, recorded[key], data_digest, name)
            if found:
                return found
        elif not _agrees(value, recorded[key]):
            return f"records {name} = {recorded[key]!r} but the config declares {value!r}"
    return None


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    """A record's run identity: a search summary's `identity`, or the identity parts a
    training or pruning run's done.json holds beside its results."""
    if isinstance(record.get("identity"), dict):
        return record["identity"]
    return {key: record[key] for key in IDENTITY_PARTS if key in record}


def check_runs(manifest: Manifest) -> dict[Path, str]:
    """Every declared run against what the config declares; raises at the first contradiction
    (one line naming the run's record file). Returns each run's identity digest (sha256 of the
    canonical JSON of its records' identities) for the provenance sidecar."""
    from unetscout.data.slice_store import SliceStore

    data_digests = {name: SliceStore(path).data_digest() for name, path in manifest.slices.items()}
    digests = {}
    for run in manifest.runs:
        identities = {}
        for record_name, expected in sorted(run.expect.items()):
            record_path = run.path / record_name
            if not record_path.is_file():
                raise file_error(record_path, "missing: the declared run is not finished (rerun the workflow)")
            record = read_json_object(record_path)
            problem = _contradiction(expected, record, data_digests[run.dataset])
            if problem is not None:
                raise file_error(record_path, f"{problem}: the run contradicts the config (rerun its job, "
                                              "e.g. snakemake --forcerun RULE, or restore the config)")
            identities[record_name] = _identity(record)
        digests[run.path] = hashlib.sha256(json.dumps(identities, sort_keys=True, default=str).encode()).hexdigest()
    return digests
