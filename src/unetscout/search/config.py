"""Search settings as one frozen dataclass with `--set key=value` overrides, and the reader
of the trained backbone folder every search and cell training starts from.

Every constant of the search (docs/methods.md#search-optimisers-and-schedule) is a field with
its documented value as default; fields marked "our choice" are not given by the papers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetscout.errors import UnetscoutError, file_error
from unetscout.train.presets import SettingError

TAU_RULES = ("relative", "absolute")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines one cell search.

    An epoch is one pass over the search's training data at the search batch size
    (docs/methods.md#search-epoch): N = ceil(|train| / B) batches, rounded up to even; IAC-LTH
    takes N steps of one batch, IAC N / 2 alternations of two (a val_search batch for the
    architecture, a train_search batch for the weights). `iterations_per_epoch` > 0 overrides N
    (rounded up to even the same way), so both methods always do the same work per epoch.
    """

    epochs: int = 200                   # epoch cap (IAC runs all of them)
    warmup_epochs: int = 15             # cell weights only; alpha and beta frozen
    cell_lr: float = 0.01               # SGD, no momentum, no weight decay
    cell_lr_min: float = 1e-4           # our choice: floor of the cosine power annealing
    cosine_power_base: float = 10.0     # Hundt et al.: p_t = b^(c_t + 1)
    arch_lr: float = 1e-3               # Adam on (alpha, beta)
    batch_size: int = 128
    iterations_per_epoch: int = 0       # 0 = one pass over the data; > 0: batches per epoch
    partial_channels: int = 4           # PC-DARTS K: ops see C/K channels
    edge_cap: float = 0.5               # cap on a node's largest edge weight
    # IAC-LTH stability test (docs/search_calibration.md has the experiment behind the defaults).
    # relative (our rule): tau_e starts at tau0 x the edge's own JS in the first search epoch,
    # so the test does not depend on how many steps an epoch has; absolute (the paper's):
    # tau_e starts at tau0_absolute nats.
    tau_rule: str = "relative"
    tau0: float = 0.5                   # relative rule: fraction of the edge's reference JS
    tau0_absolute: float = 1e-4         # absolute rule: initial threshold in nats
    gamma: float = 1.2                  # tau growth when an edge is not yet stable
    prune_std_factor: float = 2.0       # IAC-LTH: prune ops with I < mean - factor * std
    js_smoothing: float = 1e-10         # added to each distribution before JS
    residual: bool = False              # cell.residual: skip + cell(...) (our addition; off = paper)
    seed: int = 0                       # supernet init, samplers, augmentation, random genotype
    num_workers: int = 2                # background threads assembling batches; 0 = inline

    def __post_init__(self) -> None:
        positive = ("epochs", "cell_lr", "arch_lr", "batch_size", "partial_channels", "tau0", "tau0_absolute",
                    "js_smoothing")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingError(f"search setting {name} must be > 0, got {getattr(self, name)}", name)
        for name in ("warmup_epochs", "cell_lr_min", "prune_std_factor", "seed", "num_workers",
                     "iterations_per_epoch"):
            if getattr(self, name) < 0:
                raise SettingError(f"search setting {name} must be >= 0, got {getattr(self, name)}", name)
        if self.warmup_epochs >= self.epochs:
            raise SettingError(f"search setting warmup_epochs={self.warmup_epochs} leaves no search epoch "
                               f"within epochs={self.epochs}", "warmup_epochs", "epochs")
        if self.cell_lr_min > self.cell_lr:
            raise SettingError(f"search setting cell_lr_min={self.cell_lr_min} is larger than cell_lr={self.cell_lr}",
                               "cell_lr_min", "cell_lr")
        if self.cosine_power_base <= 1:
            raise SettingError(f"search setting cosine_power_base must be > 1, got {self.cosine_power_base}",
                               "cosine_power_base")
        if not 0 < self.edge_cap <= 1:
            raise SettingError(f"search setting edge_cap must be in (0, 1], got {self.edge_cap}", "edge_cap")
        if self.tau_rule not in TAU_RULES:
            raise SettingError(f"search setting tau_rule={self.tau_rule!r}: choose one of {', '.join(TAU_RULES)}",
                               "tau_rule")
        if self.gamma < 1:
            raise SettingError(f"search setting gamma must be >= 1 (tau never shrinks), got {self.gamma}", "gamma")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)


# Settings only IAC-LTH's stability test reads: they are not part of an IAC or random run's
# identity, so recalibrating the test never discards a finished IAC search.
LTH_ONLY_SETTINGS = ("tau_rule", "tau0", "tau0_absolute", "gamma", "prune_std_factor")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, text: str, kind: type) -> Any:
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise SettingError(f"search setting {name}={text!r}: expected true or false", name)
    try:
        value = kind(text)
    except ValueError:
        raise SettingError(f"search setting {name}={text!r}: expected "
                           f"{'an integer' if kind is int else 'a finite number'}", name) from None
    if kind is float and (value != value or value in (float("inf"), float("-inf"))):
        raise SettingError(f"search setting {name}={text!r}: expected a finite number", name)
    return value


def resolve_search_config(overrides: dict[str, str] | None = None) -> SearchConfig:
    """The defaults with `overrides` (strings, as given on the command line) applied and checked."""
    base = SearchConfig()
    kinds = {f.name: type(getattr(base, f.name)) for f in dataclasses.fields(SearchConfig)}
    changes: dict[str, Any] = {}
    for name, text in (overrides or {}).items():
        if name not in kinds:
            raise SettingError(f"unknown search setting {name!r}; known settings: {', '.join(kinds)}", name)
        changes[name] = _convert(name, str(text), kinds[name])
    return base.replace(**changes)


@dataclass(frozen=True)
class Backbone:
    """A trained backbone folder (`unetscout train`): its spec, best weights and training config."""

    path: Path
    spec: Any            # ModelSpec
    state: dict          # best.pt's model state_dict
    config: Any          # TrainConfig it was trained with


def load_backbone(backbone_dir: str | Path) -> Backbone:
    """Read BACKBONE_DIR's model.json, best.pt ({"model": state_dict}) and config.json."""
    from unetscout.models.spec import ModelSpec
    from unetscout.runs import load_checkpoint
    from unetscout.train.presets import TrainConfig

    path = Path(backbone_dir)
    spec = ModelSpec.load(path / "model.json")
    if spec.skip != "identity":
        raise file_error(path / "model.json", f"the backbone has skip {spec.skip!r}; searching and implanting "
                                              "cells starts from a backbone trained with the identity skip")
    saved = load_checkpoint(path / "best.pt")
    if not isinstance(saved.get("model"), dict):
        raise file_error(path / "best.pt", "has no 'model' state_dict")
    config_path = path / "config.json"
    try:
        config = TrainConfig.from_dict(json.loads(config_path.read_text()))
    except FileNotFoundError:
        raise file_error(config_path, "training config not found; is this a `unetscout train` folder?") from None
    except (json.JSONDecodeError, TypeError, UnetscoutError) as err:
        raise file_error(config_path, f"not a training config ({err})") from None
    return Backbone(path, spec, saved["model"], config)
