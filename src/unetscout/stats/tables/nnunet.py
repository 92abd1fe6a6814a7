"""Tables 2 and 3: nnU-Net without / with augmentation, Ref vs random cell, IAC and IAC-LTH."""

from __future__ import annotations

import pandas as pd

from unetscout.names import SEARCH_METHODS
from unetscout.stats.tables.floor import any_floor_bound, floor_marked, read_floor_bound, with_floor_sentence
from unetscout.stats.tables.format import delta_text, fmt_p, row_field
from unetscout.stats.tables.paired import StatsSettings, over_backbones, over_patients, paired_over_members
from unetscout.stats.tables.render import Column, Table
from unetscout.stats.tables.results import Results
from unetscout.stats.tables.units import MERGED_SENTENCE, backbone_units, merged

# Only SEARCH_METHODS run a supernet search: `random` draws its genotype without searching,
# so it does not make a backbone "searched".

# New comparisons go last so the earlier columns keep their places in the CSV.
NNUNET_COMPARISONS = (("ref_iac", "Ref → IAC", None, "iac"),
                      ("ref_iac_lth", "Ref → IAC-LTH", None, "iac_lth"),
                      ("iac_iac_lth", "IAC → IAC-LTH", "iac", "iac_lth"),
                      ("ref_random", "Ref → Random", None, "random"),
                      ("random_iac_lth", "Random → IAC-LTH", "random", "iac_lth"))


def table_nnunet(results: Results, settings: StatsSettings, preset: str, number: int) -> Table:
    rows = []
    any_merged = False
    for dataset in results.datasets():
        # The nnU-Net reference is the plain backbone; other backbones appear when searched.
        backbones = results.skip_backbones(dataset, preset, methods=SEARCH_METHODS) or ["plain"]
        units = backbone_units(results, dataset, preset, backbones)
        any_merged = any_merged or bool(merged(units))
        per_comparison: dict[str, dict[str, pd.Series]] = {key: {} for key, *_ in NNUNET_COMPARISONS}
        for unit in units:
            row: dict = {"dataset": dataset, "backbone": unit.name, "unit": "patient", "notes": []}
            for key, _, a_method, b_method in NNUNET_COMPARISONS:
                pairs = [(results.backbone_dir(dataset, b, preset) if a_method is None
                          else results.skip_dir(dataset, b, preset, a_method),
                          results.skip_dir(dataset, b, preset, b_method)) for b in unit.members]
                paired = paired_over_members(results, pairs)
                row["notes"].extend(n for n in paired.notes if n not in row["notes"])
                if paired.delta is not None:
                    per_comparison[key][unit.name] = paired.delta
                _put_summary(row, key, over_patients(paired.delta, settings))
            row["floor_bound"], floor_notes = read_floor_bound(
                results, [results.skip_dir(dataset, b, preset, "iac_lth") for b in unit.members])
            row["notes"].extend(floor_notes)
            rows.append(row)
        if len(units) > 1:
            unit_rows = rows[-len(units):]
            floor_bound = any_floor_bound(r["floor_bound"] for r in unit_rows)
            bound = [r["backbone"] for r in unit_rows if r["floor_bound"]]
            row = {"dataset": dataset, "backbone": "all", "unit": "backbone", "floor_bound": floor_bound,
                   "notes": [f"IAC-LTH search floor-bound for backbone(s): {', '.join(bound)}"] if bound else []}
            for key, *_ in NNUNET_COMPARISONS:
                _put_summary(row, key, over_backbones(per_comparison[key], settings))
            rows.append(row)
    csv_columns = ["dataset", "backbone", "unit"]
    display = [Column("Dataset", row_field("dataset")), Column("Backbone", floor_marked(row_field("backbone")))]
    for key, label, *_ in NNUNET_COMPARISONS:
        csv_columns += [f"{key}_mean", f"{key}_ci_low", f"{key}_ci_high", f"{key}_p", f"{key}_n"]
        display += [Column(f"ΔDice {label} [95% CI]",
                           lambda r, k=key: delta_text(r[f"{k}_mean"], r[f"{k}_ci_low"], r[f"{k}_ci_high"])),
                    Column("p", row_field(f"{key}_p", fmt_p))]
    csv_columns.append("floor_bound")
    augmentation = "without" if preset == "nnunet_noaug" else "with"
    return Table(
        name=f"table{number}",
        title=f"Table {number}: nnU-Net {augmentation} augmentation ({preset}): Ref, random cell, IAC, IAC-LTH",
        description=with_floor_sentence(
            "Delta(A -> B) = Dice_B - Dice_A per patient (positive: B better). Backbone rows: "
            f"mean over patients, {settings.confidence:.0%} percentile bootstrap CI over patients, "
            "two-sided Wilcoxon p (unit = patient). Row 'all': mean over backbones, CI over "
            "backbones, Fisher-combined p (unit = backbone). Random = a cell genotype drawn uniformly "
            "from the search space (seeded), trained like IAC's cell; Random → IAC-LTH tells whether "
            "the searched cell beats chance." + (f" {MERGED_SENTENCE}" if any_merged else ""), rows),
        csv_columns=csv_columns, display=display, rows=rows)


def _put_summary(row: dict, key: str, summary: dict) -> None:
    for part in ("mean", "ci_low", "ci_high", "p", "n"):
        row[f"{key}_{part}"] = summary[part]
