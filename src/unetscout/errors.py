"""The one exception type a user ever sees: a single line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class UnetscoutError(Exception):
    """A user-facing error. The CLI prints `unetscout: error: <message>` and exits 2.

    Messages are one line, start with the offending path where there is one, and say
    what is wrong in words a user can act on.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def file_error(path: str | Path, problem: str) -> UnetscoutError:
    """Build the standard `PATH: problem` error."""
    return UnetscoutError(f"{path}: {problem}")
