"""Reading the result TSVs (patients.tsv, a prune run's log.tsv): every cell as text first, then
the number columns converted, so ids such as `001` or `NA` survive and a bad cell names its file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from unetscout.errors import file_error

# Strings that the writers (or a hand-edited TSV) may use for a missing number.
MISSING_TEXT = ("", "nan", "NaN", "NAN", "NA", "N/A", "None", "null")


def read_text_tsv(path: Path, what: str) -> pd.DataFrame:
    """The TSV with every cell as text; a missing or unreadable file is an error naming it."""
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise file_error(path, f"{what} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise file_error(path, f"not a readable TSV ({reason})") from None


def numeric_column(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """`column` as floats (missing text -> NaN); any other text is an error naming the file."""
    text = table[column].str.strip()
    text = text.where(~text.isin(MISSING_TEXT), None)
    try:
        return pd.to_numeric(text).astype(float)
    except (ValueError, TypeError):
        bad = text[pd.to_numeric(text, errors="coerce").isna() & text.notna()].iloc[0]
        raise file_error(path, f"column {column!r} holds a non-number: {bad!r}") from None
