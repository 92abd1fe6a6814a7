"""A prune run's per-step log (`log.tsv`): its columns, and the reader the tables and figures use.

Plain data (no torch): one row per pruning step, written by unetscout.prune.loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from unetscout.errors import file_error
from unetscout.tsv import numeric_column, read_text_tsv

LOG_COLUMNS = ("step", "channels", "fraction", "params", "gflops", "loss", "val_dice", "test_dice",
               "seconds", "removed", "widths")
NUMERIC_COLUMNS = ("step", "channels", "fraction", "params", "gflops", "loss", "val_dice", "test_dice", "seconds")


def read_log(path: str | Path) -> pd.DataFrame:
    """log.tsv as a frame (numbers as numbers, `widths` as dicts); a damaged file is an error naming it."""
    path = Path(path)
    log = read_text_tsv(path, "pruning log")
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing or log.empty:
        raise file_error(path, f"not a pruning log (missing columns: {', '.join(missing)})" if missing
                         else "a pruning log with no steps")
    for column in NUMERIC_COLUMNS:
        log[column] = numeric_column(log, column, path)
    try:
        log["widths"] = [json.loads(text) for text in log["widths"]]
    except json.JSONDecodeError:
        raise file_error(path, "column 'widths' holds text that is not JSON") from None
    return log
