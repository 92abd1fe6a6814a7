"""Statistical tests of docs/methods.md#statistics: paired deltas, bootstrap CIs (over one unit,
or over backbones and the patients inside them), Wilcoxon, Fisher.

Every comparison is per patient and paired: `Delta(A -> B) = Dice_B - Dice_A`, so a
positive delta means B is better. The same functions serve a single `unetscout compare`
and the cells of the papers' tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from unetscout.atomic import write_json_atomic
from unetscout.errors import UnetscoutError, file_error
from unetscout.tsv import numeric_column, read_text_tsv

def _is_numeric_column(name: str) -> bool:
    """Score columns of a patients.tsv; `_note` columns hold reasons and stay text."""
    if name.endswith("_note"):
        return False
    return name == "dice" or name.startswith("dice_") or name.startswith("hd95_") or name == "n_slices"


def read_patients(path: str | Path) -> pd.DataFrame:
    """Read a `patients.tsv` (one row per patient) with the patient ids kept as text.

    Patient ids are read verbatim (an id such as `001` or `NA` must not become a number
    or a missing value); score columns become floats, with empty / `nan` cells as NaN.
    The path is kept in `df.attrs["path"]` so later errors can name the file.
    """
    path = Path(path)
    df = read_text_tsv(path, "patients table")
    if "patient" not in df.columns:
        raise file_error(path, f"no 'patient' column (columns: {', '.join(df.columns) or 'none'})")
    for column in [c for c in df.columns if _is_numeric_column(c)]:
        df[column] = numeric_column(df, column, path)
    duplicated = df["patient"][df["patient"].duplicated()].unique()
    if len(duplicated):
        raise file_error(path, f"patients listed more than once: {_list_ids(duplicated)}")
    df.attrs["path"] = str(path)
    return df


def _list_ids(ids: Sequence[str], limit: int = 10) -> str:
    ids = sorted(str(i) for i in ids)
    shown = ", ".join(ids[:limit])
    return shown + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


def paired_delta(a: pd.DataFrame, b: pd.DataFrame, column: str = "dice",
                 a_name: str | None = None, b_name: str | None = None) -> pd.Series:
    """Per-patient `b[column] - a[column]`, matched by the `patient` column.

    Both tables must list the same patients (otherwise the comparison would silently use
    a different test set on each side): a mismatch raises UnetscoutError naming the
    missing patients and the file they are missing from. Patients with NaN on either side
    (e.g. Dice undefined because reference and prediction are both empty) are dropped;
    how many is recorded in `result.attrs["n_dropped"]`.
    """
    a_name = a_name or a.attrs.get("path") or "A"
    b_name = b_name or b.attrs.get("path") or "B"
    for name, df in ((a_name, a), (b_name, b)):
        for needed in ("patient", column):
            if needed not in df.columns:
                raise file_error(name, f"no {needed!r} column (columns: {', '.join(map(str, df.columns))})")
        repeated = df["patient"][df["patient"].duplicated()].unique()
        if len(repeated):
            raise file_error(name, f"patients listed more than once: {_list_ids(repeated)}")
    a_values = a.set_index(a["patient"].astype(str))[column].astype(float)
    b_values = b.set_index(b["patient"].astype(str))[column].astype(float)
    missing_in_b = a_values.index.difference(b_values.index)
    missing_in_a = b_values.index.difference(a_values.index)
    if len(missing_in_a) or len(missing_in_b):
        problems = []
        if len(missing_in_b):
            problems.append(f"{b_name}: missing patients {_list_ids(missing_in_b)} (present in {a_name})")
        if len(missing_in_a):
            problems.append(f"{a_name}: missing patients {_list_ids(missing_in_a)} (present in {b_name})")
        raise UnetscoutError("; ".join(problems))
    b_values = b_values.reindex(a_values.index)
    delta = (b_values - a_values).rename(f"delta_{column}")
    delta.index.name = "patient"
    defined = delta.notna()
    result = delta[defined]
    result.attrs["n_dropped"] = int((~defined).sum())
    return result


def _finite_values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} needs finite values; drop NaN/inf first (got {array.tolist()[:10]})")
    return array


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int = 10_000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    All resamples are drawn at once as one [n_resamples, n] index matrix from
    `numpy.random.default_rng(seed)`, so the interval is a pure function of (values, seed).
    The quantiles use numpy's default (linear) interpolation, as scipy.stats.bootstrap's
    percentile method does. Empty input -> (nan, nan).
    """
    array = _finite_values(values, "bootstrap_ci")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if array.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, array.size, size=(n_resamples, array.size))
    means = array[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    # Rounding in the mean of identical values must not put the interval beside the data.
    low, high = max(float(low), float(array.min())), min(float(high), float(array.max()))
    return low, high


def hierarchical_bootstrap_ci(groups: Sequence[Sequence[float] | np.ndarray], n_resamples: int = 10_000,
                              confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Two-stage percentile bootstrap CI of the mean over groups of the group means.

    Each resample draws as many groups as there are, with replacement (e.g. backbones), then
    within every drawn group as many of its values as it has, with replacement (its patients),
    and takes the mean of the drawn groups' resampled means. So the interval carries both the
    spread between groups and the patient sampling inside each; with one value per group it is
    `bootstrap_ci` of the groups (a different random stream). A group drawn twice in one
    resample gets two independent patient draws. Empty input -> (nan, nan).
    """
    arrays = [_finite_values(g, "hierarchical_bootstrap_ci") for g in groups]
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not arrays or any(a.size == 0 for a in arrays):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    n_groups = len(arrays)
    chosen = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    slot_means = np.empty((n_resamples, n_groups))
    for slot in range(n_groups):
        for g, values in enumerate(arrays):
            rows = np.flatnonzero(chosen[:, slot] == g)
            draws = rng.integers(0, values.size, size=(rows.size, values.size))
            slot_means[rows, slot] = values[draws].mean(axis=1)
    means = slot_means.mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    everything = np.concatenate(arrays)
    return max(float(low), float(everything.min())), min(float(high), float(everything.max()))


def wilcoxon_p(deltas: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy defaults).

    scipy.stats.wilcoxon with zero_method="wilcox" (zero differences are dropped) and
    method="auto" (exact when n <= 50 without ties or zeros, an exact permutation
    distribution for n <= 13 with ties, otherwise the normal approximation with tie
    correction). When every delta is zero there is no evidence of any difference and the
    test statistic is undefined: we return p = 1.0. No deltas at all -> NaN.
    """
    array = _finite_values(deltas, "wilcoxon_p")
    if array.size < 1:
        return float("nan")
    if not np.any(array != 0):
        return 1.0
    return float(scipy.stats.wilcoxon(array, alternative="two-sided").pvalue)


def fisher_combine(pvalues: Sequence[float] | np.ndarray) -> float:
    """Fisher's method: X = -2 sum ln p_i ~ chi-square with 2m degrees of freedom.

    Equals scipy.stats.combine_pvalues(method="fisher"). A p of 0 gives X = inf and a
    combined p of 0. Empty input -> NaN.
    """
    array = _finite_values(pvalues, "fisher_combine")
    if array.size == 0:
        return float("nan")
    if np.any((array < 0) | (array > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {array.tolist()}")
    with np.errstate(divide="ignore"):
        statistic = -2.0 * np.sum(np.log(array))
    return float(scipy.stats.chi2.sf(statistic, 2 * array.size))


def _json_number(value: float) -> float | None:
    # JSON has no NaN: a missing number is null.
    return None if value is None or not np.isfinite(value) else float(value)


def compare(a_tsv: str | Path, b_tsv: str | Path, out_json: str | Path, seed: int = 0,
            n_resamples: int = 10_000, column: str = "dice", confidence: float = 0.95) -> dict:
    """Compare two patients.tsv files patient by patient and write the result as JSON.

    `mean_delta` is the mean of Dice_B - Dice_A over patients, `ci_low`/`ci_high` its
    percentile bootstrap CI over patients, `p_wilcoxon` the two-sided signed-rank p.
    """
    a, b = read_patients(a_tsv), read_patients(b_tsv)
    delta = paired_delta(a, b, column=column)
    if delta.empty:
        raise file_error(b_tsv, f"no patient has a {column!r} value in both {a_tsv} and {b_tsv}")
    low, high = bootstrap_ci(delta.to_numpy(), n_resamples=n_resamples, confidence=confidence, seed=seed)
    result = {
        "a": str(a_tsv),
        "b": str(b_tsv),
        "column": column,
        "mean_delta": _json_number(float(delta.mean())),
        "ci_low": _json_number(low),
        "ci_high": _json_number(high),
        "confidence": confidence,
        "p_wilcoxon": _json_number(wilcoxon_p(delta.to_numpy())),
        "n_patients": int(delta.size),
        "n_dropped": int(delta.attrs["n_dropped"]),
        "seed": seed,
        "n_resamples": n_resamples,
    }
    write_json_atomic(out_json, result)
    return result
