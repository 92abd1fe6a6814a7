"""A prune run's settings beyond its training preset, and the names of the criteria.

Plain data (no torch): `unetscout prune --help` and the workflow read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from unetscout.errors import UnetscoutError
from unetscout.names import PRUNE_CRITERIA as CRITERIA  # docs/methods.md#channel-pruning

BASE_DROPOUT = 0.05                        # the Lean U-Net paper's base probability of targeted dropout
CHECKPOINT_FRACTIONS = (0.75, 0.5, 0.25)   # shares of channels remaining: the paper's snapshots, retrained


@dataclass(frozen=True)
class PruneSettings:
    """What a prune run does on top of its training preset (whose `epochs` it does not use:
    a run's length is its steps x `recovery_epochs`)."""

    criterion: str
    top_width: int = 4                 # the HarP runs' channels at the top level (doubling below)
    recovery_epochs: int = 5           # HarP: 5
    channels_per_step: int = 1         # the paper: one; more for a quick look
    base_dropout: float = BASE_DROPOUT
    collapse_fraction: float = 0.5     # our choice: "collapse" = val Dice below this share of the best

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise UnetscoutError(f"unknown pruning criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        for name in ("top_width", "recovery_epochs", "channels_per_step"):
            if getattr(self, name) < 1:
                raise UnetscoutError(f"prune setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("base_dropout", "collapse_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise UnetscoutError(f"prune setting {name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The study's baselines (workflow: results/DATASET/prune_study/NAME), by name: a U-Net scaled in
# every layer, LUnet, a pruned architecture rebuilt and re-initialised.
SCALED, LUNET, RETRAINED = "unet", "lunet", "retrained_"


def scaled_name(percent: int) -> str:
    return f"{SCALED}{percent}"


def lunet_name(width: int) -> str:
    return f"{LUNET}{width}"


def retrained_name(criterion: str, percent: int) -> str:
    return f"{RETRAINED}{criterion}_{percent}"


def parse_study_model(name: str) -> tuple[str, int, str | None]:
    """(kind, number, criterion) of a baseline name: ("scaled", percent, None), ("lunet", width,
    None) or ("retrained", percent, criterion)."""
    if name.startswith(RETRAINED):
        criterion, _, percent = name[len(RETRAINED):].rpartition("_")
        if criterion in CRITERIA and percent.isdigit():
            return "retrained", int(percent), criterion
    elif name.startswith(LUNET) and name[len(LUNET):].isdigit():
        return "lunet", int(name[len(LUNET):]), None
    elif name.startswith(SCALED) and name[len(SCALED):].isdigit():
        return "scaled", int(name[len(SCALED):]), None
    raise UnetscoutError(f"not a pruning-study baseline name: {name!r} (unet<percent>, lunet<width>, "
                         f"retrained_<criterion>_<percent>)")
