"""Pick a width from the init-time scores of the ten caps: the authors' knee rule (docs/methods.md#knee-rule).

The scores of M_0 (widest) ... M_{n-1} (narrowest) are min-max normalised to T, and the
knee is the k where the mean step after it most exceeds the mean step before it:

    d_j = |T_{j+1} - T_j|,                j = 0..n-2
    pre(k)  = mean(d_0 .. d_{k-1}),       k = 2..n-3
    post(k) = mean(d_{k-1} .. d_{n-2})    (d_{k-1} is in both, as in the authors' code)
    k* = first argmax of post(k) - pre(k);  the selected config is M_{k*-1}.

With several seeds each seed picks a cap; the final cap is the most frequent pick, ties
going to the larger cap (the safer choice when the evidence is split).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from unetscout.atomic import write_json_atomic
from unetscout.errors import UnetscoutError, file_error

CAPS = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)   # the candidates M_0 (widest) ... M_9
FIRST_K = 2
# Knee scores closer than this to the maximum count as tied with it, so float rounding in
# the normalisation cannot move the pick along a curve whose exact knee scores are equal
# (a straight line: every score is exactly 0). Knee scores live in [-1, 1].
KNEE_TIE_TOLERANCE = 1e-12
REQUIRED_COLUMNS = ("seed", "cap", "params", "score")


@dataclass(frozen=True)
class KneeResult:
    """The knee rule's working: normalised curve T, steps d, {k: score(k)}, k* and M_{k*-1}."""

    normalised: tuple[float, ...]
    steps: tuple[float, ...]
    knee_scores: dict[int, float]
    k_star: int
    selected_index: int


def min_max_normalise(scores: Sequence[float]) -> np.ndarray:
    """(S - min S) / (max S - min S); a flat curve (max == min) becomes all zeros.

    Zeros for a flat curve: every step is then 0, every knee score is 0 and the rule falls
    back to its first k, which is what a curve without any knee should do. Non-finite
    entries stay NaN and are ignored for min and max.
    """
    values = np.asarray(scores, dtype=np.float64)
    finite = values[np.isfinite(values)]
    result = np.full(values.shape, np.nan)
    if finite.size == 0:
        return result
    low, high = finite.min(), finite.max()
    span = high - low
    mask = np.isfinite(values)
    result[mask] = (values[mask] - low) / span if span > 0 else 0.0
    return result


def knee_select(scores: Sequence[float], tie_tolerance: float = KNEE_TIE_TOLERANCE) -> KneeResult:
    """Apply the knee rule to scores ordered widest (M_0) to narrowest (M_{n-1})."""
    values = np.asarray(scores, dtype=np.float64)
    n = values.size
    if values.ndim != 1 or n < FIRST_K + 3:
        raise UnetscoutError(f"the knee rule needs at least {FIRST_K + 3} scores (k runs from "
                             f"{FIRST_K} to n-3), got {n}")
    if not np.isfinite(values).all():
        raise UnetscoutError(f"the knee rule needs finite scores, got {values.tolist()}")
    normalised = min_max_normalise(values)
    steps = np.abs(np.diff(normalised))
    ks = np.arange(FIRST_K, n - 2)
    knee = np.array([steps[k - 1:].mean() - steps[:k].mean() for k in ks])
    k_star = int(ks[np.flatnonzero(knee >= knee.max() - tie_tolerance)[0]])
    return KneeResult(normalised=tuple(normalised.tolist()), steps=tuple(steps.tolist()),
                      knee_scores={int(k): float(s) for k, s in zip(ks, knee)},
                      k_star=k_star, selected_index=k_star - 1)


def read_scores(scores_tsv: Path, caps: Sequence[int] | None = CAPS) -> pd.DataFrame:
    """The scores table, checked: required columns, numbers, one finite score per (seed, cap),
    every seed scored at exactly `caps` (None: at the same caps as each other). Rows come
    back seed by seed, in the order written, widest cap first."""
    path = Path(scores_tsv)
    try:
        table = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise file_error(path, "scores table not found (write it with `unetscout score-widths`)") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise file_error(path, f"unreadable scores table: {' '.join(str(exc).split())}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise file_error(path, f"missing column(s) {', '.join(missing)}; "
                               f"expected at least {', '.join(REQUIRED_COLUMNS)}")
    if table.empty:
        raise file_error(path, "no rows: the scores table is empty")
    for column in REQUIRED_COLUMNS:
        numbers = pd.to_numeric(table[column], errors="coerce")
        if column == "score":
            # An empty or NaN score is a number that scoring could not produce: reported below.
            bad, kind = numbers.isna() & table[column].notna(), "numbers"
        else:
            bad, kind = numbers.isna() | (numbers != numbers.round()), "integers"
        if bad.any():
            raise file_error(path, f"column {column} must hold {kind}, found {table.loc[bad, column].iloc[0]!r}")
        table[column] = numbers.astype(np.float64) if column == "score" else numbers.astype(np.int64)
    duplicated = table.duplicated(["seed", "cap"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise file_error(path, f"seed {int(row['seed'])} cap {int(row['cap'])} appears more than once")
    bad = table[~np.isfinite(table["score"])]
    if not bad.empty:
        row = bad.iloc[0]
        raise file_error(path, f"score of seed {int(row['seed'])} cap {int(row['cap'])} is {row['score']}: every "
                               "slice gave a non-finite gradient norm; a knee cannot be placed")
    first_seed = table["seed"].iloc[0]
    expected = sorted(set(caps) if caps is not None else set(table.loc[table["seed"] == first_seed, "cap"]),
                      reverse=True)
    for seed, group in table.groupby("seed", sort=False):
        have = set(group["cap"])
        if have != set(expected):
            lacking = sorted(set(expected) - have, reverse=True)
            extra = sorted(have - set(expected), reverse=True)
            problems = ([f"lacks cap(s) {', '.join(map(str, lacking))}"] if lacking else []) + \
                       ([f"has unexpected cap(s) {', '.join(map(str, extra))}"] if extra else [])
            raise file_error(path, f"seed {seed} has {len(have)} caps, expected {len(expected)} "
                                   f"({', '.join(map(str, expected))}): {'; '.join(problems)}")
    if len(expected) < FIRST_K + 3:
        raise file_error(path, f"{len(expected)} caps per seed; the knee rule needs at least {FIRST_K + 3}")
    # Stable sort keeps the seeds in the order they were written (the first seed is reported first).
    order = {seed: i for i, seed in enumerate(pd.unique(table["seed"]))}
    table = table.assign(_seed_order=table["seed"].map(order))
    table = table.sort_values(["_seed_order", "cap"], ascending=[True, False], kind="stable")
    return table.drop(columns="_seed_order").reset_index(drop=True)


def majority_cap(picks: Sequence[int]) -> int:
    """The most frequent cap; a tie goes to the larger cap."""
    counts = Counter(picks)
    return max(counts, key=lambda cap: (counts[cap], cap))


def select_width(scores_tsv: Path, out: Path, caps: Sequence[int] | None = CAPS) -> dict:
    """Apply the knee rule per seed, combine the seeds, write `selection.json` atomically."""
    table = read_scores(scores_tsv, caps)
    per_seed = []
    for seed, group in table.groupby("seed", sort=False):
        result = knee_select(group["score"].to_numpy())
        row = group.iloc[result.selected_index]
        per_seed.append({
            "seed": int(seed), "selected_cap": int(row["cap"]), "selected_params": int(row["params"]),
            "selected_index": result.selected_index, "k_star": result.k_star,
            "knee_scores": {str(k): v for k, v in result.knee_scores.items()},
            "normalised_scores": {str(int(c)): (t if math.isfinite(t) else None)
                                  for c, t in zip(group["cap"], result.normalised)},
        })
    final = majority_cap([p["selected_cap"] for p in per_seed])
    agreeing = sum(p["selected_cap"] == final for p in per_seed)
    params = int(table.loc[table["cap"] == final, "params"].iloc[0])
    selection = {
        "selected_cap": final,
        "selected_params": params,
        "knee_scores": per_seed[0]["knee_scores"],
        "per_seed": per_seed,
        "agreement": agreeing / len(per_seed),
        "seeds": [p["seed"] for p in per_seed],
        "caps": [int(c) for c in table.loc[table["seed"] == per_seed[0]["seed"], "cap"]],
    }
    write_json_atomic(out, selection)
    return selection


def describe_selection(selection: dict) -> str:
    """One line for the terminal: the pick, its size and how many seeds agree."""
    n = len(selection["per_seed"])
    agreeing = round(selection["agreement"] * n)
    picks = ", ".join(f"seed {p['seed']}: {p['selected_cap']}" for p in selection["per_seed"])
    return (f"selected cap {selection['selected_cap']} ({selection['selected_params']:,} parameters); "
            f"{agreeing}/{n} seed(s) agree ({picks})")
