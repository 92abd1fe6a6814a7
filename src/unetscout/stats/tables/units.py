"""One network is one unit: grid entries that train the same network are counted once.

Two backbone names of a grid can build the same network: the XTinyU-Net pick at cap 8 and
LUnet at width 8 are both a flat 8-channel U-Net, and with the same seed, settings and data
they start from the same weights and train identically. Counting them as two backbones
would shrink the CI over backbones to a point, let Fisher combine one p-value twice and
double the pooled Wilcoxon's n. A backbone's key is, per seed, what its done.json records
of the network (models/fingerprint.py: architecture and initial weights), the training
settings, the data and any start it loads; backbones with equal keys form one unit, named by
its members joined with '=' (e.g. `lean=xtiny`). A run without a fingerprint (older runs)
is its own unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from unetscout.stats.tables.results import Results

# What must agree besides the fingerprint: the run identity without the model spec, which
# names the backbone (the fingerprint says whether the networks are the same).
TRAINING_PARTS = ("config", "data", "init")
UNIT_JOIN = "="
MERGED_SENTENCE = (f"Backbones joined by '{UNIT_JOIN}' are one network (same architecture, initial weights, "
                   "training settings and data) and count as one unit.")


@dataclass(frozen=True)
class Unit:
    name: str
    members: tuple[str, ...]


def _key(results: Results, dataset: str, backbone: str, preset: str) -> tuple | None:
    keys = []
    for seed, run in results.seed_dirs(results.backbone_dir(dataset, backbone, preset)).items():
        done = run / "done.json"
        if not done.is_file():
            return None
        record = results.record(done)
        if not isinstance(record.get("network"), dict):
            return None
        same = {"network": record["network"], **{part: record.get(part) for part in TRAINING_PARTS}}
        keys.append((seed, json.dumps(same, sort_keys=True)))
    return tuple(keys) or None


def backbone_units(results: Results, dataset: str, preset: str, backbones: Iterable[str]) -> list[Unit]:
    """The backbones grouped into units, in the order of their first member."""
    groups: dict[object, list[str]] = {}
    for backbone in backbones:
        key = _key(results, dataset, backbone, preset)
        groups.setdefault(key if key is not None else ("alone", backbone), []).append(backbone)
    return [Unit(UNIT_JOIN.join(members), tuple(members)) for members in groups.values()]


def merged(units: Iterable[Unit]) -> list[Unit]:
    return [unit for unit in units if len(unit.members) > 1]
