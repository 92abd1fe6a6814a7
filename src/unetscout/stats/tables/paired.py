"""Paired Delta(A -> B) per patient over seeds, summarised over patients or over backbones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unetscout.stats.tables.format import finite_or_none
from unetscout.stats.tables.results import Results
from unetscout.stats.tests import (bootstrap_ci, fisher_combine, hierarchical_bootstrap_ci, paired_delta,
                                   wilcoxon_p)


@dataclass(frozen=True)
class StatsSettings:
    seed: int = 0
    n_resamples: int = 10_000
    confidence: float = 0.95


@dataclass
class Paired:
    delta: pd.Series | None      # per patient, averaged over the paired seeds
    notes: list[str]
    b_dice: pd.Series | None = None  # B's own Dice of the same patients and seeds


def paired_over_seeds(results: Results, a_parent: Path, b_parent: Path) -> Paired:
    """Delta(A -> B) per patient, from the seeds where both A and B have a patients.tsv."""
    a_files, b_files = results.patient_files(a_parent), results.patient_files(b_parent)
    notes: list[str] = []
    for files, parent, other in ((a_files, a_parent, b_files), (b_files, b_parent, a_files)):
        if not files:
            notes.append(f"missing: {parent / 'seed*' / 'patients.tsv'}")
        else:
            notes.extend(f"missing: {parent / seed / 'patients.tsv'}"
                         for seed in other if seed not in files)
    seeds = [s for s in a_files if s in b_files]
    if not seeds:
        return Paired(None, notes)
    deltas, b_dice = [], []
    for seed in seeds:
        b = results.patients(b_files[seed])
        delta = paired_delta(results.patients(a_files[seed]), b)
        deltas.append(delta)
        b_dice.append(b.set_index(b["patient"].astype(str))["dice"].astype(float).reindex(delta.index))
    dropped = sum(d.attrs["n_dropped"] for d in deltas)
    if dropped:
        notes.append(f"{dropped} patient rows with undefined Dice dropped ({b_parent.name} vs {a_parent.name})")
    delta = pd.concat(deltas).groupby(level=0).mean()
    if delta.empty:
        notes.append(f"no patient has a Dice in both {a_parent} and {b_parent}")
        return Paired(None, notes)
    return Paired(delta, notes, pd.concat(b_dice).groupby(level=0).mean())


def paired_over_members(results: Results, pairs: list[tuple[Path, Path]]) -> Paired:
    """Delta(A -> B) of one unit (units.py) whose members are several grid entries: each
    member's paired deltas, averaged per patient over the members (copies of one experiment),
    so the unit counts once."""
    found = [paired_over_seeds(results, a_parent, b_parent) for a_parent, b_parent in pairs]
    notes = [note for paired in found for note in paired.notes]
    present = [paired for paired in found if paired.delta is not None]
    if not present:
        return Paired(None, notes)
    if len(present) == 1:
        return Paired(present[0].delta, notes, present[0].b_dice)
    delta = pd.concat([p.delta for p in present]).groupby(level=0).mean()
    return Paired(delta, notes, pd.concat([p.b_dice for p in present]).groupby(level=0).mean())


def over_patients(delta: pd.Series | None, settings: StatsSettings) -> dict:
    """Mean Delta, CI over patients, Wilcoxon p: one backbone."""
    if delta is None:
        return {"mean": None, "ci_low": None, "ci_high": None, "p": None, "n": None}
    values = delta.to_numpy(dtype=float)
    low, high = bootstrap_ci(values, settings.n_resamples, settings.confidence, settings.seed)
    return {"mean": finite_or_none(values.mean()), "ci_low": finite_or_none(low),
            "ci_high": finite_or_none(high), "p": finite_or_none(wilcoxon_p(values)), "n": int(values.size)}


def over_backbones(deltas: dict[str, pd.Series], settings: StatsSettings) -> dict:
    """Mean over backbones of the per-backbone mean Delta, CI over backbones, Fisher p."""
    if not deltas:
        return {"mean": None, "ci_low": None, "ci_high": None, "p": None, "n": None}
    means = np.array([d.mean() for d in deltas.values()], dtype=float)
    pvalues = [wilcoxon_p(d.to_numpy(dtype=float)) for d in deltas.values()]
    low, high = bootstrap_ci(means, settings.n_resamples, settings.confidence, settings.seed)
    return {"mean": finite_or_none(means.mean()), "ci_low": finite_or_none(low),
            "ci_high": finite_or_none(high), "p": finite_or_none(fisher_combine(pvalues)), "n": len(deltas)}


def over_grid(deltas: dict, b_dice: dict, settings: StatsSettings) -> dict:
    """Table 1's summary over a grid of units (backbones, or dataset x backbone): over_backbones'
    mean, CI over units and Fisher p, plus B's mean Dice (mean of unit means), a two-stage
    bootstrap CI over units and the patients inside them, and the Wilcoxon p of every paired
    patient delta of the grid pooled."""
    summary = over_backbones(deltas, settings)
    empty = {"dice_mean": None, "ci_low_pb": None, "ci_high_pb": None, "p_wilcoxon": None, "n_pairs": None}
    if not deltas:
        return {**summary, **empty}
    groups = [d.to_numpy(dtype=float) for d in deltas.values()]
    low, high = hierarchical_bootstrap_ci(groups, settings.n_resamples, settings.confidence, settings.seed)
    pooled = np.concatenate(groups)
    dice = [b_dice[k].mean() for k in deltas if k in b_dice]
    return {**summary, "dice_mean": finite_or_none(np.mean(dice)) if dice else None,
            "ci_low_pb": finite_or_none(low), "ci_high_pb": finite_or_none(high),
            "p_wilcoxon": finite_or_none(wilcoxon_p(pooled)), "n_pairs": int(pooled.size)}
