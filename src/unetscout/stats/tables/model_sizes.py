"""Table 5: compact U-Nets against nnU-Net: parameters, GFLOPs, Dice, HD95, paired Delta Dice
with its bootstrap CI and Wilcoxon p, and how many times fewer parameters each model has than
nnU-Net and than each lightweight peer (the XTinyU-Net paper's "400x-1600x" and "5x-72x")."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from unetscout.evaluate.metrics import EMPTY_PREDICTION, EMPTY_REFERENCE
from unetscout.names import ARCHITECTURES, PEERS, PRESETS, XTINY, backbone_label
from unetscout.stats.tables.format import delta_text, finite_or_none, fmt_fixed, fmt_gflops, fmt_int, fmt_p, row_field
from unetscout.stats.tables.paired import StatsSettings, over_patients, paired_over_seeds
from unetscout.stats.tables.render import MISSING, Column, Table
from unetscout.stats.tables.results import Results, ordered, read_json, read_json_object
from unetscout.stats.tables.units import backbone_units, merged

# Table 5 always shows these (marked missing when absent), then any other backbone. The
# reference every other row is compared with is nnU-Net's plain U-Net (cap 512 in the paper).
REFERENCE_MODEL = "plain"
TABLE5_MODELS = (REFERENCE_MODEL, XTINY, "lean", *PEERS)


class ModelCosts:
    """Parameters and GFLOPs of a trained run: recomputed from model.json with
    unetscout.models.describe when importable (once per distinct spec), else read from a
    `params` / `gflops` field of done.json or model_info.json."""

    def __init__(self):
        self._by_spec: dict[str, tuple[int, float]] = {}

    def __call__(self, run_dir: Path) -> tuple[int | None, float | None, dict, list[str]]:
        spec_path = run_dir / "model.json"
        spec_dict: dict = {}
        if spec_path.is_file():
            from unetscout.models.spec import ModelSpec

            spec = ModelSpec.load(spec_path)
            spec_dict = spec.to_dict()
            counted = self._count(spec)
            if counted is not None:
                return counted[0], counted[1], spec_dict, []
        params = gflops = None
        for name in ("done.json", "model_info.json"):
            path = run_dir / name
            if not path.is_file():
                continue
            data = read_json(path)
            if isinstance(data, dict):
                params = params if params is not None else finite_or_none(data.get("params"))
                gflops = gflops if gflops is not None else finite_or_none(data.get("gflops"))
        notes = []
        if params is None or gflops is None:
            if spec_dict:
                notes.append(f"{spec_path}: params/GFLOPs not computed (unetscout.models.describe not "
                             "importable) and not recorded in done.json or model_info.json")
            else:
                notes.append(f"missing: {spec_path} (params, GFLOPs)")
        return (None if params is None else int(params)), gflops, spec_dict, notes

    def _count(self, spec) -> tuple[int, float] | None:
        try:
            from unetscout.models.describe import describe_model
        except ImportError:
            return None
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._by_spec:
            # describe_model builds on the meta device: instant, and no RNG state is consumed.
            described = describe_model(spec)
            self._by_spec[key] = (int(described["params"]), float(described["gflops"]))
        return self._by_spec[key]


def _patient_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Per patient: Dice and the mean HD95 over foreground labels with a defined HD95 (NaN when
    all missing). A label with one side empty carries its penalty (the case's image diagonal,
    evaluate.metrics) and counts; its note (`hd95_<name>_note`) says "empty prediction" or
    "empty reference", and attrs count those values."""
    hd95_columns = [c for c in df.columns if c.startswith("hd95_") and not c.endswith("_note")]
    scores = pd.DataFrame({"dice": df["dice"].to_numpy(dtype=float)}, index=df["patient"].astype(str))
    counts = dict.fromkeys(("hd95_missing", "hd95_total", "hd95_penalised", "hd95_empty_prediction",
                            "hd95_empty_reference", "hd95_stale"), 0)
    if hd95_columns:
        hd95 = df[hd95_columns].to_numpy(dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN rows are expected: missing HD95
            scores["hd95"] = np.nanmean(hd95, axis=1)
        notes = pd.DataFrame({c: df[f"{c}_note"] if f"{c}_note" in df.columns else "" for c in hd95_columns},
                             index=df.index).fillna("").astype(str)
        # A patient's note names every case with one side empty ("A: empty prediction; B: ...").
        empty_prediction = notes.apply(lambda n: n.str.contains(EMPTY_PREDICTION, regex=False)).to_numpy()
        empty_reference = notes.apply(lambda n: n.str.contains(EMPTY_REFERENCE, regex=False)).to_numpy()
        one_side_empty = empty_prediction | empty_reference
        finite = ~np.isnan(hd95)
        counts.update(hd95_missing=int((~finite).sum()), hd95_total=int(hd95.size),
                      hd95_penalised=int((one_side_empty & finite).sum()),
                      hd95_empty_prediction=int((empty_prediction & finite).sum()),
                      hd95_empty_reference=int((empty_reference & finite).sum()),
                      # written before the penalty rule: one side empty but NaN, so left out
                      hd95_stale=int((one_side_empty & ~finite).sum()))
    else:
        scores["hd95"] = np.nan
    scores.attrs.update(counts)
    return scores


def _hd95_notes(per_seed: list[pd.DataFrame]) -> list[str]:
    """The row's notes on HD95: values penalised with the image diagonal, values missing (both
    sides empty), and values of files written before the penalty (NaN with one side empty)."""
    count = {key: sum(s.attrs[key] for s in per_seed) for key in per_seed[0].attrs}
    total = count["hd95_total"]
    notes = []
    if count["hd95_penalised"]:
        notes.append(f"HD95 penalised with the image diagonal for {count['hd95_penalised']} of {total} "
                     f"patient-label values ({count['hd95_empty_prediction']} empty prediction, "
                     f"{count['hd95_empty_reference']} empty reference; see hd95_*_note)")
    if count["hd95_missing"]:
        notes.append(f"HD95 missing for {count['hd95_missing']} of {total} patient-label values "
                     "(see hd95_*_note)")
    if count["hd95_stale"]:
        notes.append(f"HD95 of {count['hd95_stale']} patient-label values with one side empty is NaN, "
                     "not the diagonal penalty (patients.tsv written before the rule): left out of the "
                     "mean, re-run evaluate")
    return notes


def table_models(results: Results, settings: StatsSettings) -> Table:
    rows = []
    costs = ModelCosts()
    for dataset in results.datasets():
        backbones_root = results.root / dataset / "backbones"
        found = results.subdirs(backbones_root)
        presets = ordered({p for b in found for p in results.subdirs(backbones_root / b)}, PRESETS) or [None]
        unit = _distance_unit(results, dataset)
        for preset in presets:
            block = [_model_row(results, costs, dataset, backbone, preset)
                     for backbone in ordered(set(found) | set(TABLE5_MODELS), TABLE5_MODELS)]
            for row in block:
                row["hd95_unit"] = unit
                if preset is not None and row["backbone"] != REFERENCE_MODEL:
                    _compare_with_reference(results, settings, row, dataset, preset)
            _parameter_ratios(block)
            if preset is not None:
                _note_shared_networks(results, dataset, preset, block)
            rows.extend(block)
    ratio_columns = [f"fewer_params_than_{name}" for name in (REFERENCE_MODEL, *PEERS)]
    return Table(
        name="table5",
        title="Table 5: compact U-Nets against nnU-Net: size, cost, accuracy, paired differences",
        description=(f"Params and GFLOPs at the dataset's slice size (one forward pass, "
                     f"GFLOPs = 2 x multiply-adds / 1e9). Dice: patient-level (mean over foreground "
                     f"classes), averaged per patient over seeds first, then mean ± sd (ddof 1) over "
                     f"patients; HD95 (MONAI's: the larger of the two directed 95th percentiles of the "
                     f"surface distances): per patient the mean over foreground labels with a defined "
                     f"HD95, averaged over seeds, then the mean over patients, in mm (px for 2-D image "
                     f"datasets, which have unit spacing); a label empty on one side only (empty "
                     f"prediction or empty reference) scores the diagonal of the case's image extent "
                     f"and is counted (hd95_penalised: how many patient-label values, over seeds), "
                     f"both sides empty is skipped. ΔDice = Dice_model - Dice_nnU-Net per "
                     f"patient over the paired seeds: mean, {settings.confidence:.0%} percentile "
                     f"bootstrap CI over patients, two-sided Wilcoxon p. ×fewer = the reference's (or "
                     f"the peer's) parameters over the model's. " + _claims_sentence(rows)),
        csv_columns=["dataset", "preset", "model", "backbone", "cap", "width", "params", "gflops",
                     "dice_mean", "dice_sd", "hd95_mean", "hd95_unit", "hd95_penalised", "n_patients", "n_seeds",
                     "delta_dice_mean", "ci_low", "ci_high", "p_wilcoxon", "n_pairs", *ratio_columns],
        display=[Column("Dataset", row_field("dataset")), Column("Preset", row_field("preset")),
                 Column("Model", row_field("model")), Column("Width", _width_text),
                 Column("Params", row_field("params", fmt_int)),
                 Column("GFLOPs", row_field("gflops", fmt_gflops)),
                 Column("Dice", _dice_text),
                 Column("HD95", _hd95_text),
                 Column("ΔDice vs nnU-Net [95% CI]",
                        lambda r: delta_text(r.get("delta_dice_mean"), r.get("ci_low"), r.get("ci_high"))),
                 Column("p", row_field("p_wilcoxon", fmt_p)),
                 Column("×fewer params than nnU-Net", row_field(ratio_columns[0], _fmt_ratio)),
                 Column(f"×fewer than {' / '.join(backbone_label(p) for p in PEERS)}", _peer_ratios_text)],
        rows=rows)


def _distance_unit(results: Results, dataset: str) -> str:
    """mm, or px for a 2-D image dataset (unit spacing): what its slices.json records."""
    meta = results.root / dataset / "slices" / "slices.json"
    return str(read_json_object(meta).get("spacing_unit", "mm")) if results.is_file(meta) else "mm"


def _compare_with_reference(results: Results, settings: StatsSettings, row: dict, dataset: str,
                            preset: str) -> None:
    paired = paired_over_seeds(results, results.backbone_dir(dataset, REFERENCE_MODEL, preset),
                               results.backbone_dir(dataset, row["backbone"], preset))
    summary = over_patients(paired.delta, settings)
    row.update(delta_dice_mean=summary["mean"], ci_low=summary["ci_low"], ci_high=summary["ci_high"],
               p_wilcoxon=summary["p"], n_pairs=summary["n"])
    row["notes"].extend(n for n in paired.notes if n not in row["notes"])


def _note_shared_networks(results: Results, dataset: str, preset: str, block: list[dict]) -> None:
    """Rows that are one network (units.py; e.g. the cap-8 pick and LUnet 8) say so: the same
    numbers twice are one experiment, not a replication."""
    present = [row["backbone"] for row in block if row.get("n_seeds")]
    for unit in merged(backbone_units(results, dataset, preset, present)):
        for row in block:
            if row["backbone"] in unit.members:
                others = ", ".join(backbone_label(b) for b in unit.members if b != row["backbone"])
                row["notes"].append(f"the same network as {others} (architecture, initial weights, training "
                                    "settings and data): one experiment shown twice")


def _parameter_ratios(block: list[dict]) -> None:
    """Per row: how many times fewer parameters it has than the reference and than each peer."""
    params = {row["backbone"]: row.get("params") for row in block}
    for row in block:
        for name in (REFERENCE_MODEL, *PEERS):
            other = params.get(name)
            ratio = other / row["params"] if other and row.get("params") and name != row["backbone"] else None
            row[f"fewer_params_than_{name}"] = ratio


def _claims_sentence(rows: list[dict]) -> str:
    """The paper's claims for XTinyU-Net (400x-1600x fewer than nnU-Net, 5x-72x fewer than the
    peers) against the ranges these results give."""
    picks = [r for r in rows if r["backbone"] == XTINY]
    versus_reference = [r[f"fewer_params_than_{REFERENCE_MODEL}"] for r in picks]
    versus_peers = [r[f"fewer_params_than_{p}"] for r in picks for p in PEERS]

    def span(values: list) -> str:
        values = [v for v in values if v is not None]
        return f"{min(values):.3g}x-{max(values):.3g}x" if values else "n/a (missing)"

    return (f"XTinyU-Net has {span(versus_reference)} fewer parameters than nnU-Net here (paper: "
            f"400x-1600x) and {span(versus_peers)} fewer than the lightweight peers (paper: 5x-72x).")


def _fmt_ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g}×"


def _peer_ratios_text(row: dict) -> str | None:
    texts = [_fmt_ratio(row.get(f"fewer_params_than_{p}")) or MISSING for p in PEERS]
    return None if all(t == MISSING for t in texts) else " / ".join(texts)


def _hd95_text(row: dict) -> str | None:
    value = fmt_fixed(2)(row.get("hd95_mean"))
    return None if value is None else f"{value} {row.get('hd95_unit', 'mm')}"


def _width_text(row: dict) -> str | None:
    if row.get("design") is not None:
        return row["design"]
    if row.get("width") is not None:
        return f"width {row['width']}"
    return None if row.get("cap") is None else f"cap {row['cap']}"


def _dice_text(row: dict) -> str | None:
    if row.get("dice_mean") is None:
        return None
    sd = row.get("dice_sd")
    return f"{row['dice_mean']:.4f} ± {sd:.4f}" if sd is not None else f"{row['dice_mean']:.4f} ± {MISSING}"


def _model_row(results: Results, costs: ModelCosts, dataset: str, backbone: str, preset: str | None) -> dict:
    row: dict = {"dataset": dataset, "preset": preset, "backbone": backbone,
                 "model": backbone_label(backbone), "notes": []}
    parent = results.backbone_dir(dataset, backbone, preset if preset is not None else "*")
    runs = results.seed_dirs(parent) if preset is not None else {}
    files = {seed: run / "patients.tsv" for seed, run in runs.items() if (run / "patients.tsv").is_file()}
    if not runs:
        row["notes"].append(f"missing: {parent / 'seed*'}")
    else:
        params, gflops, spec, notes = costs(next(iter(runs.values())))
        row.update(params=params, gflops=gflops)
        row["notes"].extend(notes)
        if spec:
            architecture = ARCHITECTURES.get(spec.get("backbone"))
            flat = architecture is not None and architecture.constant_width
            row["width"] = spec.get("width") if flat else None
            # An encoder U-Net's widths are its encoder's, a peer's its paper's: no cap applies.
            fixed = architecture is not None and (architecture.smp_encoder or architecture.peer) is not None
            row["cap"] = None if flat or fixed else spec.get("cap")
            if architecture is not None and architecture.peer is not None:
                row["design"] = "paper's"
        row["notes"].extend(f"missing: {run / 'patients.tsv'}" for seed, run in runs.items() if seed not in files)
    if files:
        per_seed = [_patient_scores(results.patients(path)) for path in files.values()]
        # Average each patient over seeds first, so every patient weighs the same.
        pooled = pd.concat(per_seed).groupby(level=0).mean()
        dice = pooled["dice"].dropna().to_numpy()
        hd95 = pooled["hd95"].dropna().to_numpy()
        row["notes"].extend(_hd95_notes(per_seed))
        row["hd95_penalised"] = sum(s.attrs["hd95_penalised"] for s in per_seed)
        row.update(dice_mean=finite_or_none(dice.mean()) if dice.size else None,
                   dice_sd=finite_or_none(dice.std(ddof=1)) if dice.size > 1 else None,
                   hd95_mean=finite_or_none(hd95.mean()) if hd95.size else None,
                   n_patients=int(dice.size), n_seeds=len(files))
        if dice.size == 1:
            row["notes"].append("Dice sd undefined for a single patient")
    return row
