"""Floor-bound IAC-LTH searches: read from search_summary.json, marked with a dagger, explained once."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from unetscout.stats.tables.results import SEARCH_SUMMARY, Results

FLOOR_MARK = "†"
FLOOR_SENTENCE = (f"{FLOOR_MARK} IAC-LTH search floor-bound: the stability test never judged an edge unstable, so its "
                  "stop epoch is the floor (warm-up + one prune per op), not a measurement of the method.")


def any_floor_bound(flags: Iterable[bool | None]) -> bool | None:
    """True when any run is floor-bound, False when the known ones are not, None when none is known."""
    known = [flag for flag in flags if flag is not None]
    return any(known) if known else None


def floor_note(path: Path) -> str:
    return f"IAC-LTH search floor-bound (the stability test never judged an edge unstable): {path}"


def read_floor_bound(results: Results, method_dirs: Iterable[Path]) -> tuple[bool | None, list[str]]:
    """Whether the IAC-LTH searches under these skip folders (every seed) stopped at their floor."""
    flags, notes = [], []
    for method_dir in method_dirs:
        for run in results.seed_dirs(method_dir).values():
            summary = results.search_summary(run)
            if summary is None:
                notes.append(f"floor-bound unknown: missing {run / SEARCH_SUMMARY}")
            elif summary.floor_bound is None:
                notes.append(f"floor-bound unknown: {summary.path} does not record floor_bound")
            else:
                flags.append(summary.floor_bound)
                if summary.floor_bound:
                    notes.append(floor_note(summary.path))
    return any_floor_bound(flags), notes


def floor_marked(render: Callable[[dict], str | None]) -> Callable[[dict], str | None]:
    """A display cell with the floor-bound dagger appended on a floor-bound row."""
    def cell(row: dict) -> str | None:
        text = render(row)
        return text + FLOOR_MARK if text is not None and row.get("floor_bound") else text
    return cell


def with_floor_sentence(description: str, rows: list[dict]) -> str:
    """The dagger is explained only in a table that shows one."""
    return f"{description} {FLOOR_SENTENCE}" if any(row.get("floor_bound") for row in rows) else description
