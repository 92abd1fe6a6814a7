"""What the summary figures share: a headless pyplot, atomic PNG + PDF saving, the skip report."""

from __future__ import annotations

import sys
from pathlib import Path

from unetscout.atomic import atomic_file


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    written = []
    for suffix in ("png", "pdf"):
        target = out_dir / f"{stem}.{suffix}"
        with atomic_file(target) as tmp:
            fig.savefig(tmp, format=suffix, dpi=150)
        written.append(target)
    pyplot().close(fig)
    return written


def skip(what: str, why: str) -> None:
    print(f"unetscout figures: skipped {what}: {why}", file=sys.stderr)
