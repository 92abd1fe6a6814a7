"""Checkpoints written atomically and read back with one-line errors.

`last.pt` holds everything a resumed run needs to continue bit for bit (model, optimiser,
position in the schedule, sampler and RNG states, best score, the log so far); `best.pt`
only the weights of the best validation epoch, in the `{"model": state_dict}` form the
evaluation stage reads. Files are written to a temporary sibling and renamed, so a
SIGKILL during `torch.save` leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from unetscout.atomic import atomic_file
from unetscout.errors import file_error

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint of this package; only tensors and plain Python values are unpickled."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise file_error(path, "checkpoint not found") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise file_error(path, f"unreadable checkpoint ({first_line}); delete it to start over") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise file_error(path, f"not a unetscout checkpoint of format version {FORMAT_VERSION}")
    return payload


def rng_states(device: torch.device) -> dict[str, Any]:
    """The global torch generators (the model's initialisation drew from them)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)
