"""Table 1: Delta Dice of each skip method vs the backbone's identity-skip reference."""

from __future__ import annotations

import pandas as pd

from unetscout.names import METHOD_LABELS, SKIP_METHODS
from unetscout.stats.tables.floor import floor_marked, read_floor_bound, with_floor_sentence
from unetscout.stats.tables.format import delta_text, fmt_p, row_field
from unetscout.stats.tables.paired import StatsSettings, over_backbones, paired_over_seeds
from unetscout.stats.tables.render import Column, Table
from unetscout.stats.tables.results import Results


def table_skip_methods(results: Results, settings: StatsSettings, preset: str = "paper") -> Table:
    rows = []
    for dataset in results.datasets():
        backbones = results.skip_backbones(dataset, preset)
        for method in SKIP_METHODS:
            notes: list[str] = []
            deltas: dict[str, pd.Series] = {}
            for backbone in backbones:
                paired = paired_over_seeds(results, results.backbone_dir(dataset, backbone, preset),
                                           results.skip_dir(dataset, backbone, preset, method))
                notes.extend(paired.notes)
                if paired.delta is not None:
                    deltas[backbone] = paired.delta
            if not backbones:
                pattern = results.root / dataset / "skips" / "*" / preset / method / "seed*" / "patients.tsv"
                notes.append(f"missing: {pattern}")
            # Like Tables 2/3's 'all' row: floor-bound when any backbone's IAC-LTH search is.
            floor_bound, floor_notes = (read_floor_bound(results, [results.skip_dir(dataset, b, preset, method)
                                                                   for b in backbones])
                                        if method == "iac_lth" else (None, []))
            summary = over_backbones(deltas, settings)
            rows.append({"dataset": dataset, "method": method, "preset": preset,
                         "delta_dice_mean": summary["mean"], "ci_low": summary["ci_low"],
                         "ci_high": summary["ci_high"], "p_fisher": summary["p"],
                         "n_backbones": summary["n"], "backbones": " ".join(deltas) or None,
                         "floor_bound": floor_bound, "notes": notes + floor_notes})
    return Table(
        name="table1",
        title=f"Table 1: Delta Dice of skip modules vs the identity-skip reference ({preset} preset)",
        description=with_floor_sentence(
            "Per backbone: mean over patients of Dice(method) - Dice(Ref), Ref = the "
            "backbone's own identity skip; cell = mean over backbones with a "
            f"{settings.confidence:.0%} percentile bootstrap CI over backbones "
            f"({settings.n_resamples} resamples, seed {settings.seed}); p = Fisher's "
            "combination of the per-backbone two-sided Wilcoxon p-values. Random cell = a cell "
            "genotype drawn uniformly from IAC's search space (seeded), trained like IAC's cell.", rows),
        csv_columns=["dataset", "method", "preset", "delta_dice_mean", "ci_low", "ci_high",
                     "p_fisher", "n_backbones", "backbones", "floor_bound"],
        display=[Column("Dataset", row_field("dataset")),
                 Column("Method", floor_marked(lambda r: METHOD_LABELS[r["method"]])),
                 Column("ΔDice [95% CI]", lambda r: delta_text(r["delta_dice_mean"], r["ci_low"], r["ci_high"])),
                 Column("Fisher p", row_field("p_fisher", fmt_p)),
                 Column("Backbones", row_field("n_backbones"))],
        rows=rows)
