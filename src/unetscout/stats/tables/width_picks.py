"""The width picks (XTinyU-Net's selection, docs/methods.md#width-selection): per dataset the
pick, its agreement over the scoring seeds and the sweep's check of it (Spearman between the
init-time score and the trained Dice, the next larger cap's Dice); then the picks' stability
across datasets. Read from each dataset's width/selection.json and width/sweep.json."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from unetscout.errors import file_error
from unetscout.stats.tables.format import finite_or_none, fmt_fixed, fmt_int, fmt_p, row_field
from unetscout.stats.tables.render import Column, Table
from unetscout.stats.tables.results import Results, read_json_object

SWEEP_FIELDS = ("spearman_rho", "spearman_p", "next_larger_cap", "delta_next_larger", "pick_falsified")


def _dataset_row(results: Results, dataset: str) -> dict | None:
    width = results.root / dataset / "width"

    def _read(path: Path) -> dict | None:
        return read_json_object(path) if results.is_file(path) else None

    selection = _read(width / "selection.json")
    if selection is None:
        return None
    try:
        per_seed = [(int(p["seed"]), int(p["selected_cap"])) for p in selection["per_seed"]]
        row = {"dataset": dataset, "selected_cap": int(selection["selected_cap"]),
               "selected_params": int(selection["selected_params"]),
               "agreement": float(selection["agreement"]), "n_seeds": len(per_seed),
               "seed_picks": " ".join(f"{seed}:{cap}" for seed, cap in per_seed), "notes": []}
    except (KeyError, TypeError, ValueError):
        raise file_error(width / "selection.json", "not a width selection (selected_cap, per_seed, "
                                                   "agreement)") from None
    sweep = _read(width / "sweep.json")
    if sweep is None:
        row["notes"].append(f"missing: {width / 'sweep.json'} (no width sweep: the pick is unchecked)")
    else:
        row.update({key: sweep.get(key) for key in SWEEP_FIELDS})
        for key in ("spearman_rho", "spearman_p", "delta_next_larger"):
            row[key] = finite_or_none(row[key])
    return row


def _stability_row(rows: list[dict]) -> dict:
    """Across datasets: how often each cap is picked and the share of the most frequent one."""
    counts = Counter(r["selected_cap"] for r in rows)
    modal_cap, modal_count = max(counts.items(), key=lambda item: (item[1], item[0]))
    rhos = [r["spearman_rho"] for r in rows if r.get("spearman_rho") is not None]
    return {"dataset": "all", "selected_cap": modal_cap, "n_seeds": None,
            "agreement": sum(r["agreement"] for r in rows) / len(rows),
            "seed_picks": None, "dataset_picks": " ".join(f"{cap}:{n}" for cap, n in sorted(counts.items(),
                                                                                            reverse=True)),
            "stability": modal_count / len(rows), "n_datasets": len(rows),
            "spearman_rho": sum(rhos) / len(rhos) if rhos else None,
            "n_falsified": sum(bool(r.get("pick_falsified")) for r in rows), "notes": []}


def _falsified_text(row: dict) -> str | None:
    if row.get("n_falsified") is not None:
        return f"{row['n_falsified']} of {row['n_datasets']}"
    return None if row.get("pick_falsified") is None else ("yes" if row["pick_falsified"] else "no")


def table_width_picks(results: Results) -> Table:
    rows = [row for dataset in results.datasets() if (row := _dataset_row(results, dataset)) is not None]
    if len(rows) > 1:
        rows.append(_stability_row(rows))
    return Table(
        name="width_picks",
        title="Width picks: agreement over scoring seeds, the sweep's check, stability across datasets",
        description=(
            "Per dataset: the picked cap (most frequent over the scoring seeds, ties to the larger cap), its "
            "parameters, every seed's pick (seed:cap), the agreement (fraction of seeds that picked it), and "
            "from the width sweep the Spearman rank correlation between the normalised init-time score and "
            "the trained test Dice over the caps, and the next larger cap's Dice minus the pick's (the pick "
            "is falsified when that exceeds the margin). Row 'all': the most frequent pick over datasets, "
            "cap:datasets counts, stability = share of datasets with that pick, mean agreement, mean "
            "Spearman rho, and how many picks were falsified."),
        csv_columns=["dataset", "selected_cap", "selected_params", "n_seeds", "seed_picks", "agreement",
                     "spearman_rho", "spearman_p", "next_larger_cap", "delta_next_larger", "pick_falsified",
                     "n_datasets", "dataset_picks", "stability", "n_falsified"],
        display=[Column("Dataset", row_field("dataset")),
                 Column("Pick (cap)", row_field("selected_cap")),
                 Column("Params", row_field("selected_params", fmt_int)),
                 Column("Seed picks", lambda r: r.get("seed_picks") or r.get("dataset_picks")),
                 Column("Agreement", row_field("agreement", fmt_fixed(2))),
                 Column("Stability", row_field("stability", fmt_fixed(2))),
                 Column("Spearman ρ", row_field("spearman_rho", fmt_fixed(3))),
                 Column("p", row_field("spearman_p", fmt_p)),
                 Column("ΔDice next larger cap", lambda r: None if r.get("delta_next_larger") is None
                        else f"{r['next_larger_cap']}: {r['delta_next_larger']:+.4f}"),
                 Column("Falsified", _falsified_text)],
        rows=rows)
