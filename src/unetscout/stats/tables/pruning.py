"""Table 6: the Lean U-Net study (docs/methods.md#table-6), from each dataset's `prune/` and
`prune_study/` folders.

Per dataset and preset, one row per method: the U-Nets scaled in every layer, each criterion's
pruning twice (the best test Dice seen during pruning, the paper's biased figure, marked; and
the step chosen on validation, scored by `unetscout evaluate`: unbiased), its architectures at
75 / 50 / 25 % retrained from scratch, and LUnet. Each seed gives one Dice (the mean over test
patients) and one parameter count; a row shows their medians and the Dice's median absolute
deviation over seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetscout.errors import UnetscoutError, file_error
from unetscout.models.spec import ModelSpec
from unetscout.models.widths import UNetWidths
from unetscout.names import PRESETS, PRUNE_CRITERIA, PRUNE_CRITERION_LABELS
from unetscout.prune.log import read_log
from unetscout.prune.settings import parse_study_model
from unetscout.stats.tables.format import fmt_int, row_field
from unetscout.stats.tables.model_sizes import ModelCosts
from unetscout.stats.tables.render import Column, Table
from unetscout.stats.tables.results import Results, ordered, read_json_object

BIASED_MARK = "*"   # the paper's mark of a self-maximised test score


def median_mad(values: list[float]) -> tuple[float | None, float | None]:
    """Median and median absolute deviation (unscaled) of the finite values."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return None, None
    median = float(np.median(finite))
    return median, float(np.median(np.abs(finite - median)))


def _row(dataset: str, preset: str, method: str, label: str, per_seed: list[tuple[str, float | None, int | None,
                                                                                   float | None]],
         notes: list[str]) -> dict:
    """per_seed: (seed, Dice, params, share of channels) of every seed with a result."""
    dice, dice_mad = median_mad([d for _, d, _, _ in per_seed])
    params = [p for _, _, p, _ in per_seed if p is not None]
    shares = [s for _, _, _, s in per_seed if s is not None]
    return {"dataset": dataset, "preset": preset, "method": method, "label": label,
            "n_seeds": sum(d is not None for _, d, _, _ in per_seed),
            "seeds": " ".join(seed for seed, d, _, _ in per_seed if d is not None),
            "params_median": int(np.median(params)) if params else None,
            "channels_pct_median": 100 * float(np.median(shares)) if shares else None,
            "dice_median": dice, "dice_mad": dice_mad,
            "dice_per_seed": " ".join(f"{d:.4f}" for _, d, _, _ in per_seed if d is not None),
            "biased": label.endswith(BIASED_MARK), "notes": notes}


def _mean_dice(results: Results, path: Path) -> float | None:
    dice = results.patients(path)["dice"].to_numpy(dtype=float)
    return float(np.nanmean(dice)) if np.isfinite(dice).any() else None


def _prune_rows(results: Results, costs: ModelCosts, dataset: str, preset: str, criterion: str) -> list[dict]:
    runs = results.seed_dirs(results.root / dataset / "prune" / criterion / preset)
    biased, unbiased, notes = [], [], []
    for seed, run in runs.items():
        log_path = run / "log.tsv"
        if not log_path.is_file():
            notes.append(f"missing: {log_path}")
            continue
        log = read_log(log_path)
        scored = log[np.isfinite(log["test_dice"])]
        if scored.empty:
            notes.append(f"{log_path}: no step has a test Dice")
        else:
            top = scored.loc[scored["test_dice"].idxmax()]
            biased.append((seed, float(top["test_dice"]), int(top["params"]), float(top["fraction"])))
        done, patients = run / "done.json", run / "patients.tsv"
        if not done.is_file() or not patients.is_file():
            notes.append(f"missing: {done if not done.is_file() else patients} (the validation pick)")
            continue
        try:
            step = int(read_json_object(done)["best_val_step"])
            share = float(log.loc[log["step"] == step, "fraction"].iloc[0])
        except (KeyError, TypeError, ValueError, IndexError):
            raise file_error(done, f"best_val_step is not a step of {log_path}") from None
        params, _, _, cost_notes = costs(run)
        notes += cost_notes
        unbiased.append((seed, _mean_dice(results, patients), params, share))
    label = PRUNE_CRITERION_LABELS[criterion]
    return [_row(dataset, preset, f"{criterion}_max_test", f"{label}, max test {BIASED_MARK}", biased, notes),
            _row(dataset, preset, f"{criterion}_val_pick", f"{label}, validation pick", unbiased, notes)]


def _retrained_share(prune_log: Path, run: Path) -> float | None:
    """A retrained architecture's channels over the pruned U-Net's at its start (the snapshot is
    the first step at or below its share, so a little under it)."""
    spec = run / "model.json"
    if not prune_log.is_file() or not spec.is_file():
        return None
    widths = ModelSpec.load(spec).widths
    if widths is None:
        raise file_error(spec, "a retrained architecture without per-conv widths")
    return UNetWidths.from_json(widths).total_channels() / float(read_log(prune_log)["channels"].iloc[0])


def _baseline_row(results: Results, costs: ModelCosts, dataset: str, preset: str, model: str) -> dict:
    kind, number, criterion = parse_study_model(model)
    per_seed, notes = [], []
    for seed, run in results.seed_dirs(results.root / dataset / "prune_study" / model / preset).items():
        patients = run / "patients.tsv"
        if not patients.is_file():
            notes.append(f"missing: {patients}")
            continue
        params, _, _, cost_notes = costs(run)
        notes += cost_notes
        share = {"scaled": number / 100, "lunet": None}.get(kind)
        if kind == "retrained":
            prune_log = results.root / dataset / "prune" / criterion / preset / seed / "log.tsv"
            share = _retrained_share(prune_log, run) if results.visible(prune_log) else None
        per_seed.append((seed, _mean_dice(results, patients), params, share))
    label = {"scaled": f"U-Net {number}%", "lunet": f"LUnet {number}",
             "retrained": f"{PRUNE_CRITERION_LABELS.get(criterion, criterion)} {number}%, retrained"}[kind]
    return _row(dataset, preset, model, label, per_seed, notes)


def _baseline_order(name: str) -> tuple:
    """Scaled U-Nets widest first, then retrained by criterion and share, then LUnet widest first."""
    kind, number, criterion = parse_study_model(name)
    rank = {"scaled": 0, "retrained": 1, "lunet": 2}[kind]
    return rank, PRUNE_CRITERIA.index(criterion) if criterion else 0, -number


def table_pruning(results: Results) -> Table:
    costs = ModelCosts()
    rows = []
    for dataset in results.datasets():
        prune_root, study_root = results.root / dataset / "prune", results.root / dataset / "prune_study"
        criteria = ordered(results.subdirs(prune_root), PRUNE_CRITERIA)
        baselines = results.subdirs(study_root)
        for name in baselines:
            try:
                parse_study_model(name)
            except UnetscoutError as err:
                raise file_error(study_root / name, str(err)) from None
        presets = {p for c in criteria for p in results.subdirs(prune_root / c)}
        presets |= {p for b in baselines for p in results.subdirs(study_root / b)}
        for preset in ordered(presets, PRESETS):
            here = sorted((b for b in baselines if results.is_dir(study_root / b / preset)), key=_baseline_order)
            rows += [_baseline_row(results, costs, dataset, preset, b) for b in here
                     if parse_study_model(b)[0] == "scaled"]
            for criterion in criteria:
                if results.is_dir(prune_root / criterion / preset):
                    rows += _prune_rows(results, costs, dataset, preset, criterion)
            rows += [_baseline_row(results, costs, dataset, preset, b) for b in here
                     if parse_study_model(b)[0] != "scaled"]
    return Table(
        name="table6",
        title="Table 6: the Lean U-Net study: pruning, its retrained architectures, scaled U-Nets and LUnet",
        description=(
            "Per method: parameters and test Dice, each the median over seeds, with the Dice's median absolute "
            "deviation (MAD) in brackets; a seed's Dice is the mean over test patients. Pruning rows: "
            f"'max test {BIASED_MARK}' is the best test Dice seen over the pruning steps (the paper's figure: "
            "biased, since the test set chooses the step), with the parameters at that step; 'validation pick' "
            "is the step with the best validation Dice, evaluated on the test patients (unbiased). Retrained: "
            "the pruned architecture at that share of channels rebuilt from its widths and trained from "
            "scratch. U-Net s%: every layer scaled to s% of the starting widths. Channels: median share of "
            "the starting U-Net's channels."),
        csv_columns=["dataset", "preset", "method", "label", "n_seeds", "seeds", "params_median",
                     "channels_pct_median", "dice_median", "dice_mad", "dice_per_seed", "biased"],
        display=[Column("Dataset", row_field("dataset")),
                 Column("Preset", row_field("preset")),
                 Column("Method", row_field("label")),
                 Column("Seeds", row_field("n_seeds")),
                 Column("Params", row_field("params_median", fmt_int)),
                 Column("Channels", row_field("channels_pct_median", lambda v: None if v is None else f"{v:.0f}%")),
                 Column("Dice median (MAD)", lambda r: None if r.get("dice_median") is None
                        else f"{r['dice_median']:.4f} ({r['dice_mad']:.4f})"),
                 Column("Dice per seed", row_field("dice_per_seed"))],
        rows=rows)

