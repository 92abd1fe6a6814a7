"""Progress lines on stderr, throttled so logs stay readable under Slurm and Snakemake."""

from __future__ import annotations

import sys
import time


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class Progress:
    """A counter that prints `label: done/total (pct) rate ETA` at most every `interval` s.

    On a terminal it redraws one line; in a log file it appends lines, so a Slurm log
    shows the history without control characters.
    """

    def __init__(self, label: str, total: float | None, unit: str = "it",
                 interval: float = 1.0, stream=None, start: float = 0.0):
        self.label, self.total, self.unit = label, total, unit
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = start
        self._start_done = start
        self._t0 = time.monotonic()
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def _describe(self, amount: float) -> str:
        return _fmt_bytes(amount) if self.unit == "B" else f"{amount:g}"

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        rate_txt = f"{_fmt_bytes(rate)}/s" if self.unit == "B" else f"{rate:.2f} {self.unit}/s"
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta_txt = fmt_seconds(eta) if eta == eta else "--:--"
            return (f"{self.label}: {self._describe(self.done)}/{self._describe(self.total)} "
                    f"({pct:5.1f}%) {rate_txt} ETA {eta_txt}")
        return f"{self.label}: {self._describe(self.done)} {rate_txt}"

    def update(self, amount: float = 1, force: bool = False) -> None:
        self.done += amount
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            end = "\r" if self._tty else "\n"
            print(self.line(), end=end, file=self.stream, flush=True)

    def close(self) -> None:
        end = "\n"
        prefix = "\r" if self._tty else ""
        print(prefix + self.line() + " done", end=end, file=self.stream, flush=True)
