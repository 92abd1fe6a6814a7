"""Table 1: Delta Dice of each skip method vs the backbone's identity-skip reference, over the
backbone grid of each dataset and, in the `all` rows, over every dataset's grid."""

from __future__ import annotations

import pandas as pd

from unetscout.names import METHOD_LABELS, SKIP_METHODS
from unetscout.stats.tables.floor import any_floor_bound, floor_marked, read_floor_bound, with_floor_sentence
from unetscout.stats.tables.format import delta_text, fmt_fixed, fmt_p, interval_text, row_field
from unetscout.stats.tables.paired import StatsSettings, over_grid, paired_over_members
from unetscout.stats.tables.render import Column, Table
from unetscout.stats.tables.results import Results
from unetscout.stats.tables.units import MERGED_SENTENCE, backbone_units, merged

ALL_DATASETS = "all"


def table_skip_methods(results: Results, settings: StatsSettings, preset: str = "paper") -> Table:
    rows = []
    # (dataset, backbone) -> paired deltas and the method's Dice, per method: the `all` rows' units
    grid: dict[str, tuple[dict, dict]] = {method: ({}, {}) for method in SKIP_METHODS}
    datasets = results.datasets()
    any_merged = False
    for dataset in datasets:
        units = backbone_units(results, dataset, preset, results.skip_backbones(dataset, preset))
        any_merged = any_merged or bool(merged(units))
        for method in SKIP_METHODS:
            notes: list[str] = []
            deltas: dict[str, pd.Series] = {}
            dice: dict[str, pd.Series] = {}
            for unit in units:
                paired = paired_over_members(results, [(results.backbone_dir(dataset, b, preset),
                                                        results.skip_dir(dataset, b, preset, method))
                                                       for b in unit.members])
                notes.extend(paired.notes)
                if paired.delta is not None:
                    deltas[unit.name], dice[unit.name] = paired.delta, paired.b_dice
                    grid[method][0][(dataset, unit.name)] = paired.delta
                    grid[method][1][(dataset, unit.name)] = paired.b_dice
            if not units:
                pattern = results.root / dataset / "skips" / "*" / preset / method / "seed*" / "patients.tsv"
                notes.append(f"missing: {pattern}")
            # Like Tables 2/3's 'all' row: floor-bound when any backbone's IAC-LTH search is.
            floor_bound, floor_notes = (read_floor_bound(results, [results.skip_dir(dataset, b, preset, method)
                                                                   for unit in units for b in unit.members])
                                        if method == "iac_lth" else (None, []))
            rows.append(_row(dataset, method, preset, over_grid(deltas, dice, settings), " ".join(deltas),
                             floor_bound, notes + floor_notes))
    if len(datasets) > 1:
        for method in SKIP_METHODS:
            deltas, dice = grid[method]
            floor_bound = any_floor_bound(r["floor_bound"] for r in rows if r["method"] == method)
            names = " ".join(f"{d}/{b}" for d, b in deltas)
            rows.append(_row(ALL_DATASETS, method, preset, over_grid(deltas, dice, settings), names, floor_bound, []))
    return Table(
        name="table1",
        title=f"Table 1: Delta Dice of skip modules vs the identity-skip reference ({preset} preset)",
        description=with_floor_sentence(
            "Per backbone: mean over patients of Dice(method) - Dice(Ref), Ref = the backbone's own "
            "identity skip (seeds averaged per patient). Dataset rows: the unit is the backbone; "
            "Dice = the method's mean patient Dice, mean over backbones; ΔDice = mean over backbones "
            f"with a {settings.confidence:.0%} percentile bootstrap CI over backbones "
            f"({settings.n_resamples} resamples, seed {settings.seed}); CI (patients × backbones) = a "
            "two-stage bootstrap that resamples backbones, then the patients of each drawn backbone; "
            "Wilcoxon p = two-sided signed-rank test of every paired (patient, backbone) delta "
            "pooled; Fisher p = Fisher's combination of the per-backbone Wilcoxon p-values. Rows "
            f"'{ALL_DATASETS}': the same with the unit (dataset, backbone), so Fisher's p combines "
            "across datasets. Backbones share a dataset's patients, so pooled and combined p-values "
            "treat dependent tests as independent, as the paper's do. Random cell = a cell genotype "
            "drawn uniformly from IAC's search space (seeded), trained like IAC's cell."
            + (f" {MERGED_SENTENCE}" if any_merged else ""), rows),
        csv_columns=["dataset", "method", "preset", "dice_mean", "delta_dice_mean", "ci_low", "ci_high",
                     "p_fisher", "n_backbones", "backbones", "floor_bound", "ci_low_pb", "ci_high_pb",
                     "p_wilcoxon", "n_pairs"],
        display=[Column("Dataset", row_field("dataset")),
                 Column("Method", floor_marked(lambda r: METHOD_LABELS[r["method"]])),
                 Column("Dice", row_field("dice_mean", fmt_fixed(4))),
                 Column("ΔDice [95% CI, backbones]",
                        lambda r: delta_text(r["delta_dice_mean"], r["ci_low"], r["ci_high"])),
                 Column("95% CI, patients × backbones",
                        lambda r: interval_text(r["ci_low_pb"], r["ci_high_pb"])),
                 Column("Wilcoxon p", row_field("p_wilcoxon", fmt_p)),
                 Column("Fisher p", row_field("p_fisher", fmt_p)),
                 Column("Backbones", row_field("n_backbones"))],
        rows=rows)


def _row(dataset: str, method: str, preset: str, summary: dict, units: str, floor_bound, notes: list) -> dict:
    return {"dataset": dataset, "method": method, "preset": preset, "dice_mean": summary["dice_mean"],
            "delta_dice_mean": summary["mean"], "ci_low": summary["ci_low"], "ci_high": summary["ci_high"],
            "p_fisher": summary["p"], "n_backbones": summary["n"], "backbones": units or None,
            "floor_bound": floor_bound, "ci_low_pb": summary["ci_low_pb"], "ci_high_pb": summary["ci_high_pb"],
            "p_wilcoxon": summary["p_wilcoxon"], "n_pairs": summary["n_pairs"], "notes": notes}
