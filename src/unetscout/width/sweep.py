"""The width sweep: does the training-free pick survive training every cap?

Joins the init-time scores (`scores.tsv`) with the trained test Dice of every cap
(`sweep/cap{C}/{preset}/seed{S}/patients.tsv`), reports the Spearman rank correlation between
the two (the check the XTinyU-Net referee asked for) and whether the next larger cap trains
clearly better than the pick, which would falsify it (docs/methods.md#width-sweep).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from unetscout.atomic import atomic_file, write_json_atomic
from unetscout.errors import file_error


def _read_tsv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise file_error(path, "not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise file_error(path, f"not a readable TSV ({type(err).__name__})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise file_error(path, f"missing column(s) {', '.join(missing)}")
    return table


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _cap_of_run(patients_tsv: Path) -> int:
    """The cap a run trained at, from the model.json beside its patients.tsv."""
    from unetscout.models.spec import ModelSpec

    spec = ModelSpec.load(patients_tsv.parent / "model.json")
    if spec.backbone != "plain":
        raise file_error(patients_tsv.parent / "model.json", f"width sweep runs are plain U-Nets, not {spec.backbone}")
    return spec.cap


def sweep_table(patients_tsvs: list[Path], scores_tsv: Path) -> pd.DataFrame:
    """One row per cap: params, mean normalised score over scoring seeds, test Dice mean and sd.

    The cap of each run comes from its model.json, so the nnU-Net backbone (cap 512) trained
    by the backbone stage serves as the sweep's cap-512 run without training it twice.
    """
    scores = _read_tsv(Path(scores_tsv), ("seed", "cap", "params", "score_norm"))
    per_cap = scores.groupby("cap").agg(params=("params", "first"), score_norm=("score_norm", "mean"))
    runs = {_cap_of_run(Path(path)): Path(path) for path in patients_tsvs}
    missing = sorted(set(per_cap.index) - set(runs), reverse=True)
    if missing:
        raise file_error(scores_tsv, f"no trained sweep run for cap(s) {', '.join(map(str, missing))}")
    rows = []
    for cap, row in per_cap.sort_index(ascending=False).iterrows():
        dice = _read_tsv(runs[cap], ("patient", "dice"))["dice"].astype(float)
        rows.append({"cap": int(cap), "params": int(row["params"]), "score_norm": float(row["score_norm"]),
                     "dice_mean": float(dice.mean()), "dice_sd": float(dice.std(ddof=1)),
                     "n_patients": int(dice.notna().sum())})
    return pd.DataFrame(rows)


def sweep_summary(table: pd.DataFrame, selected_cap: int, margin: float) -> dict:
    """Spearman(score, Dice) and the falsification check of the pick against the next larger cap."""
    rho, p_value = stats.spearmanr(table["score_norm"], table["dice_mean"])
    by_cap = table.set_index("cap")
    larger = sorted(c for c in by_cap.index if c > selected_cap)
    pick_dice = float(by_cap.loc[selected_cap, "dice_mean"]) if selected_cap in by_cap.index else float("nan")
    summary = {
        "selected_cap": int(selected_cap),
        "selected_dice": _finite_or_none(pick_dice),
        "spearman_rho": _finite_or_none(rho),
        "spearman_p": _finite_or_none(p_value),
        "falsify_margin": margin,
        "next_larger_cap": None, "next_larger_dice": None, "delta_next_larger": None,
        "pick_falsified": None,
    }
    if larger:
        next_cap = larger[0]
        next_dice = float(by_cap.loc[next_cap, "dice_mean"])
        summary.update(next_larger_cap=int(next_cap), next_larger_dice=_finite_or_none(next_dice),
                       delta_next_larger=_finite_or_none(next_dice - pick_dice),
                       pick_falsified=bool(next_dice - pick_dice > margin))
    return summary


def plot_sweep(table: pd.DataFrame, selected_cap: int, figure: Path) -> None:
    """Normalised score and trained Dice against cap; parameters on a second (log) axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table.sort_values("cap")
    fig, score_ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    caps = table["cap"].to_numpy()
    score_ax.plot(caps, table["score_norm"], "o-", color="tab:blue", label="normalised sensitivity score")
    score_ax.set_xscale("log", base=2)
    score_ax.set_xticks(caps, [str(c) for c in caps])
    score_ax.set_xlabel("width cap")
    score_ax.set_ylabel("normalised score (at init)", color="tab:blue")
    dice_ax = score_ax.twinx()
    dice_ax.errorbar(caps, table["dice_mean"], yerr=table["dice_sd"], fmt="s--", color="tab:orange",
                     capsize=3, label="trained test Dice (mean ± sd)")
    dice_ax.set_ylabel("test Dice", color="tab:orange")
    score_ax.axvline(selected_cap, color="tab:green", linestyle=":", linewidth=2)
    score_ax.annotate(f"pick: cap {selected_cap}", (selected_cap, 0.0), xytext=(4, 4),
                      textcoords="offset points", color="tab:green")
    params_ax = score_ax.secondary_xaxis("top")
    params_ax.set_xticks(caps, [f"{p / 1e3:.3g}k" if p < 1e6 else f"{p / 1e6:.3g}M"
                                for p in table["params"]], fontsize=7)
    params_ax.set_xlabel("parameters (log scale, same axis)")
    handles = score_ax.get_legend_handles_labels()[0] + dice_ax.get_legend_handles_labels()[0]
    score_ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    for suffix in (".png", ".pdf"):
        target = Path(figure).with_suffix(suffix)
        with atomic_file(target) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150)
    plt.close(fig)


def sweep_report(patients_tsvs: list[Path], scores_tsv: Path, selection_json: Path,
                 out_tsv: Path, summary_json: Path, figure: Path, margin: float = 0.02) -> dict:
    try:
        selected_cap = int(json.loads(Path(selection_json).read_text())["selected_cap"])
    except FileNotFoundError:
        raise file_error(selection_json, "not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise file_error(selection_json, "not a width selection (no selected_cap)") from None
    table = sweep_table([Path(p) for p in patients_tsvs], Path(scores_tsv))
    summary = sweep_summary(table, selected_cap, margin)
    plot_sweep(table, selected_cap, Path(figure))
    with atomic_file(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_json_atomic(summary_json, summary)
    return summary


def describe_summary(summary: dict) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    text = (f"pick cap {summary['selected_cap']}: Dice {fmt(summary['selected_dice'])}; "
            f"Spearman(score, Dice) {fmt(summary['spearman_rho'])} (p {fmt(summary['spearman_p'])})")
    if summary["next_larger_cap"] is not None:
        verdict = "FALSIFIED" if summary["pick_falsified"] else "holds"
        text += (f"; next larger cap {summary['next_larger_cap']}: Dice {fmt(summary['next_larger_dice'])} "
                 f"(delta {fmt(summary['delta_next_larger'])}, margin {summary['falsify_margin']}): pick {verdict}")
    return text


