"""Table 4: architecture search cost per dataset and preset, IAC vs IAC-LTH."""

from __future__ import annotations

from typing import Callable

import numpy as np

from unetscout.names import PRESETS, SEARCH_METHODS
from unetscout.stats.tables.floor import any_floor_bound, floor_marked, floor_note, with_floor_sentence
from unetscout.stats.tables.format import finite_or_none, fmt_fixed, row_field
from unetscout.stats.tables.render import Column, Table
from unetscout.stats.tables.results import SEARCH_SUMMARY, Results, SearchSummary, ordered
from unetscout.stats.tables.units import MERGED_SENTENCE, backbone_units, merged

# Only SEARCH_METHODS run a supernet search: `random` draws its genotype without searching,
# so it has no search cost.


def table_search_cost(results: Results) -> Table:
    rows = []
    merged_units: set[str] = set()
    for dataset in results.datasets():
        skips = results.root / dataset / "skips"
        presets = ordered({p for b in results.subdirs(skips) for p in results.subdirs(skips / b)
                           if any(results.is_dir(skips / b / p / m) for m in SEARCH_METHODS)}, PRESETS)
        if not presets:
            rows.append({"dataset": dataset, "preset": None, "notes": [
                f"missing: {skips / '*' / '*' / m / 'seed*' / SEARCH_SUMMARY}" for m in SEARCH_METHODS]})
            continue
        for preset in presets:
            # (unit, seed) -> the summaries of the unit's members: one unit counts once (units.py)
            runs: dict[str, dict[tuple[str, str], list[SearchSummary]]] = {m: {} for m in SEARCH_METHODS}
            notes: list[str] = []
            run_dirs = dict.fromkeys(SEARCH_METHODS, 0)
            units = backbone_units(results, dataset, preset, results.skip_backbones(dataset, preset, SEARCH_METHODS))
            merged_units.update(unit.name for unit in merged(units))
            first_member = {unit.name: unit.members[0] for unit in units}   # where a missing run is named
            for unit in units:
                for backbone in unit.members:
                    for method in runs:
                        for seed, run in results.seed_dirs(results.skip_dir(dataset, backbone, preset, method)).items():
                            run_dirs[method] += 1
                            summary = results.search_summary(run)
                            if summary is not None:
                                runs[method].setdefault((unit.name, seed), []).append(summary)
                            else:
                                notes.append(f"missing: {run / SEARCH_SUMMARY}")
            for method, other in (("iac", "iac_lth"), ("iac_lth", "iac")):
                if not run_dirs[method]:
                    notes.append(f"missing: {skips / '*' / preset / method / 'seed*' / SEARCH_SUMMARY}")
                else:
                    notes.extend(f"missing: {results.skip_dir(dataset, first_member[u], preset, method) / s / SEARCH_SUMMARY}"
                                 for u, s in runs[other] if (u, s) not in runs[method])
            rows.append(_search_cost_row(dataset, preset, runs, notes))
    per_epoch = lambda v: None if v is None else f"{v:,.0f}"
    speedup = lambda v: None if v is None else f"{v:.2f}x"
    return Table(
        name="table4",
        title="Table 4: architecture search cost per dataset (IAC vs IAC-LTH)",
        description=with_floor_sentence(
            "Means over backbones and seeds of the search_summary.json of each run; times in "
            "minutes of wall clock. Where some runs (same backbone, preset and seed) have both "
            "an IAC and an IAC-LTH search, every column uses only those paired runs and "
            "speed-up = IAC time / IAC-LTH time; otherwise each method's own runs are shown "
            "and there is no speed-up. Both methods' epochs are one pass over the search's training "
            "data at the search batch size, with equal sample forward/backward passes per epoch, so "
            "the speed-up is at equal epoch definitions; passes/epoch = samples that went forward and "
            "backward through the supernet per epoch (a note flags a row where the two methods' "
            "passes/epoch differ by more than 5 %), s/epoch = search seconds per epoch. "
            "Floor-bound = IAC-LTH runs whose search stopped at its floor, out of the runs shown. "
            "The IAC-LTH columns are the searches as run, under their stability rule (by default the "
            "relative one, whose constants were chosen on a synthetic tuning dataset by the genotype's "
            "agreement with IAC's and the cell's Dice, not by the stop epoch, but had first been picked to "
            "put the stop epoch in the paper's range: its stop epoch is weak evidence for the paper's). "
            "The Abs. rule columns are the paper's own "
            "absolute rule (tau from tau0_absolute, 1e-4 nats by default) on the same searches: each "
            "search replays it alongside on the drift it measures and records where it would have "
            "stopped it. Abs. rule stop epoch "
            "= its mean stop epoch (a run it would not have stopped before the epoch cap counts at the "
            "cap); Abs. rule speed-up = IAC time / (IAC-LTH s/epoch x absolute-rule stop epoch), paired "
            "runs only: an estimate at the run's own per-epoch cost (an absolute-rule search would prune "
            "on another schedule, so its epochs would cost somewhat differently); Abs. rule floor-bound "
            "= runs the absolute rule never judged an edge unstable in, out of the runs shown."
            + (f" {MERGED_SENTENCE} Their searches ({', '.join(sorted(merged_units))}) are averaged into one run."
               if merged_units else ""), rows),
        csv_columns=["dataset", "preset", "iac_minutes", "iac_epochs", "iac_lth_epochs",
                     "iac_lth_minutes", "speedup", "n_runs", "paired",
                     "iac_passes_per_epoch", "iac_lth_passes_per_epoch", "iac_seconds_per_epoch",
                     "iac_lth_seconds_per_epoch", "iac_lth_stop_epoch", "floor_bound_runs", "iac_lth_runs",
                     "floor_bound", "absolute_rule_stop_epoch", "absolute_rule_speedup_estimate",
                     "absolute_rule_floor_bound_runs", "backbones"],
        display=[Column("Dataset", floor_marked(row_field("dataset"))), Column("Preset", row_field("preset")),
                 Column("Backbones", row_field("backbones")),
                 Column("IAC time (min)", row_field("iac_minutes", fmt_fixed(1))),
                 Column("IAC epochs", row_field("iac_epochs", fmt_fixed(1))),
                 Column("IAC-LTH epochs", row_field("iac_lth_epochs", fmt_fixed(1))),
                 Column("IAC-LTH time (min)", row_field("iac_lth_minutes", fmt_fixed(1))),
                 Column("Speed-up", row_field("speedup", speedup)),
                 Column("IAC passes/epoch", row_field("iac_passes_per_epoch", per_epoch)),
                 Column("IAC-LTH passes/epoch", row_field("iac_lth_passes_per_epoch", per_epoch)),
                 Column("IAC s/epoch", row_field("iac_seconds_per_epoch", fmt_fixed(2))),
                 Column("IAC-LTH s/epoch", row_field("iac_lth_seconds_per_epoch", fmt_fixed(2))),
                 Column("IAC-LTH stop epoch", row_field("iac_lth_stop_epoch", fmt_fixed(1))),
                 Column("Floor-bound", lambda r: None if r.get("floor_bound_runs") is None
                        else f"{r['floor_bound_runs']}/{r['iac_lth_runs']}"),
                 Column("Abs. rule stop epoch", row_field("absolute_rule_stop_epoch", fmt_fixed(1))),
                 Column("Abs. rule speed-up (est.)", row_field("absolute_rule_speedup_estimate", speedup)),
                 Column("Abs. rule floor-bound", lambda r: None if r.get("absolute_rule_floor_bound_runs") is None
                        else f"{r['absolute_rule_floor_bound_runs']}/{r['iac_lth_runs']}")],
        rows=rows)


# Per method, the summary fields Table 4 shows beyond epochs_run and search_seconds
# (floor_bound is null for IAC by design, so only IAC-LTH's is reported missing).
_COST_FIELDS = {"iac": ("passes_per_epoch", "seconds_per_epoch"),
                "iac_lth": ("passes_per_epoch", "seconds_per_epoch", "stop_epoch", "floor_bound")}


def _absolute_rule_stop(summary: SearchSummary) -> float | None:
    """When the paper's absolute rule, replayed alongside the search (search/lth.py), would have
    stopped it: its stop epoch, the epoch cap if it would not have stopped before it, None unknown."""
    if summary.absolute_rule_stopped_because == "every edge has one op":
        return summary.absolute_rule_stop_epoch
    if summary.absolute_rule_stopped_because == "epoch cap":
        return summary.epoch_cap
    return None


def _absolute_rule_seconds(summary: SearchSummary) -> float | None:
    """The absolute rule's search time, estimated at the run's own seconds per epoch."""
    stop = _absolute_rule_stop(summary)
    return None if stop is None or summary.seconds_per_epoch is None else summary.seconds_per_epoch * stop


def _search_cost_row(dataset: str, preset: str, runs: dict[str, dict[tuple[str, str], list[SearchSummary]]],
                     notes: list[str]) -> dict:
    # With paired runs every column uses only them, so speed-up = IAC time / IAC-LTH time
    # as printed; without any pair each method's own runs are shown and no speed-up.
    paired = [k for k in runs["iac"] if k in runs["iac_lth"]]
    used = {method: [runs[method][k] for k in (paired or runs[method])] for method in SEARCH_METHODS}
    for method, fields in _COST_FIELDS.items():
        for summary in (s for members in used[method] for s in members):
            lacking = [name for name in fields if getattr(summary, name) is None]
            if lacking:
                notes.append(f"{summary.path} does not record {', '.join(lacking)} (older search): "
                             "unknown, left out of those means")

    def mean(method: str, name: str | Callable[[SearchSummary], float | None]) -> float | None:
        # A unit's value is the mean over its members; the column, the mean over units and seeds
        # that record the field (older summaries lack the newer ones).
        get = name if callable(name) else (lambda s: getattr(s, name))
        per_run = [np.mean(values) for members in used[method]
                   if (values := [v for s in members if (v := get(s)) is not None])]
        return finite_or_none(np.mean(per_run)) if per_run else None

    iac_seconds, lth_seconds = mean("iac", "search_seconds"), mean("iac_lth", "search_seconds")
    speedup = iac_seconds / lth_seconds if paired and lth_seconds else None
    iac_passes, lth_passes = mean("iac", "passes_per_epoch"), mean("iac_lth", "passes_per_epoch")
    # The speed-up compares epochs as equal units; say so where they are not (by 5 % of IAC's).
    if iac_passes is not None and lth_passes is not None and abs(lth_passes - iac_passes) > 0.05 * iac_passes:
        notes.append(f"passes per epoch differ by more than 5 %: IAC {iac_passes:,.1f}, "
                     f"IAC-LTH {lth_passes:,.1f}, so the epochs (and the speed-up) are not at equal "
                     "epoch definitions")
    flags = [any_floor_bound(s.floor_bound for s in members) for members in used["iac_lth"]]
    notes.extend(floor_note(s.path) for members in used["iac_lth"] for s in members if s.floor_bound)
    floor_bound = any_floor_bound(flags)
    absolute = _absolute_rule_columns(runs, paired, used["iac_lth"], notes)
    return {"dataset": dataset, "preset": preset,
            "iac_minutes": None if iac_seconds is None else iac_seconds / 60.0,
            "iac_epochs": mean("iac", "epochs_run"),
            "iac_lth_epochs": mean("iac_lth", "epochs_run"),
            "iac_lth_minutes": None if lth_seconds is None else lth_seconds / 60.0,
            "speedup": finite_or_none(speedup),
            "n_runs": len(paired) if paired else max(len(runs["iac"]), len(runs["iac_lth"])),
            "paired": bool(paired),
            "iac_passes_per_epoch": iac_passes, "iac_lth_passes_per_epoch": lth_passes,
            "iac_seconds_per_epoch": mean("iac", "seconds_per_epoch"),
            "iac_lth_seconds_per_epoch": mean("iac_lth", "seconds_per_epoch"),
            "iac_lth_stop_epoch": mean("iac_lth", "stop_epoch"),
            "floor_bound_runs": None if floor_bound is None else sum(flag is True for flag in flags),
            "iac_lth_runs": len(used["iac_lth"]), "floor_bound": floor_bound,
            "absolute_rule_stop_epoch": mean("iac_lth", _absolute_rule_stop), **absolute,
            "backbones": " ".join(dict.fromkeys(unit for unit, _ in (paired or [k for m in runs.values() for k in m])))
            or None, "notes": notes}


def _absolute_rule_columns(runs: dict[str, dict[tuple[str, str], list[SearchSummary]]], paired: list[tuple[str, str]],
                           lth_runs: list[list[SearchSummary]], notes: list[str]) -> dict:
    """The absolute rule's speed-up estimate (paired runs whose IAC-LTH search records the shadow
    and seconds per epoch: mean IAC time / mean estimated absolute-rule time) and its floor-bound
    count; notes for runs without the shadow and runs it would not have stopped before the cap."""
    for summary in (s for members in lth_runs for s in members):
        if summary.absolute_rule_stopped_because is None:
            notes.append(f"{summary.path} does not record the absolute rule's shadow (older search): unknown, "
                         "left out of the Abs. rule columns")
        elif summary.absolute_rule_stopped_because == "epoch cap":
            notes.append(f"{summary.path}: the absolute rule would not have stopped this search before the epoch "
                         f"cap; counted at the cap ({'unknown' if summary.epoch_cap is None else summary.epoch_cap})")
    iac_times, absolute_times = [], []
    for key in paired:
        estimated = [v for s in runs["iac_lth"][key] if (v := _absolute_rule_seconds(s)) is not None]
        if estimated:
            iac_times.append(np.mean([s.search_seconds for s in runs["iac"][key]]))
            absolute_times.append(np.mean(estimated))
    if iac_times and len(iac_times) < len(paired):
        notes.append(f"Abs. rule speed-up over {len(iac_times)} of {len(paired)} paired runs (the others' IAC-LTH "
                     "summaries lack the shadow or seconds per epoch)")
    speedup = np.mean(iac_times) / np.mean(absolute_times) if absolute_times and np.mean(absolute_times) > 0 else None
    flags = [any_floor_bound(s.absolute_rule_floor_bound for s in members) for members in lth_runs]
    known = any_floor_bound(flags) is not None
    return {"absolute_rule_speedup_estimate": finite_or_none(speedup),
            "absolute_rule_floor_bound_runs": sum(flag is True for flag in flags) if known else None}
