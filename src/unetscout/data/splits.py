"""Patient-wise, seeded train / validation / test split."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from unetscout.errors import UnetscoutError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three positive fractions that sum to 1 (within float rounding)."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or not all(f > 0 for f in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise UnetscoutError(f"--fractions: need three positive numbers (train val test) summing to 1, "
                             f"got {' '.join(f'{f:g}' for f in values)}")
    return values  # type: ignore[return-value]


def split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) counts: val and test are round(n * f), train takes the rest.

    Rounding is half-up (not Python's half-to-even) so the sizes are easy to predict; with
    n >= 3 every split keeps at least one patient, taken from the largest other split.
    """
    _, f_val, f_test = check_fractions(fractions)
    val, test = (int(math.floor(n * f + 0.5)) for f in (f_val, f_test))
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    while val + test > n - (1 if n >= 3 else 0):
        if val >= test:
            val -= 1
        else:
            test -= 1
    return n - val - test, val, test


def patient_split(patients: Sequence[str], seed: int,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, str]:
    """Patient -> "train" | "val" | "test"; depends only on the set of ids and the seed."""
    ordered = sorted(set(patients))
    sizes = split_sizes(len(ordered), fractions)
    permuted = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    bounds = np.cumsum((0, *sizes))
    return {patient: name
            for name, start, stop in zip(SPLITS, bounds[:-1], bounds[1:])
            for patient in permuted[start:stop]}
