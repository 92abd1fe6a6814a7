"""Numbers and text of the tables' cells: None (missing) stays None, for the renderer to mark."""

from __future__ import annotations

from typing import Callable

import numpy as np


def finite_or_none(value) -> float | None:
    """A finite Python float, or None for anything missing."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def _fmt_signed(value: float | None) -> str | None:
    return None if value is None else f"{value:+.4f}"


def fmt_p(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


def fmt_fixed(digits: int) -> Callable[[float | None], str | None]:
    return lambda value: None if value is None else f"{value:.{digits}f}"


def fmt_int(value) -> str | None:
    return None if value is None else f"{int(value):,}"


def fmt_gflops(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"


def interval_text(low: float | None, high: float | None) -> str | None:
    return f"[{_fmt_signed(low)}, {_fmt_signed(high)}]" if low is not None and high is not None else None


def delta_text(mean: float | None, low: float | None, high: float | None) -> str | None:
    if mean is None:
        return None
    interval = interval_text(low, high)
    return _fmt_signed(mean) + (f" {interval}" if interval else "")


def row_field(key: str, fmt: Callable = lambda v: None if v is None else str(v)) -> Callable[[dict], str | None]:
    return lambda row: fmt(row.get(key))
