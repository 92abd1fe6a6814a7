"""`unetscout train-cell`: implant the searched discrete cell at every skip level of a frozen
backbone and train only the cells (METHODS §4 "Final training of the discrete cell").

It reuses `unetscout train`'s loop through its `prepare_model` hook, so the output folder is
a training folder like any other (model.json with the genotype, best.pt, last.pt,
config.json, log.tsv, done.json; `unetscout evaluate` rebuilds it) and resumes the same way.
The training config is the backbone's (its config.json) with `--set` overrides and the seed.

Initialisation: IAC draws the cells fresh from the training seed; IAC-LTH resets them to the
lottery ticket: every cell tensor whose shape equals the supernet's stored initial tensor of
the same role (same op on the same edge, same input / output 1x1 convs, same level) is
copied from `init_state.pt`; the others keep their seeded draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unetscout.errors import UnetscoutError, file_error
from unetscout.models.cell import supernet_key
from unetscout.models.genotype import Genotype
from unetscout.models.spec import CELL_SKIP
from unetscout.search.config import METHODS, Backbone, load_backbone
from unetscout.search.iac import file_digest, load_frozen_backbone
from unetscout.train.checkpoint import load_checkpoint
from unetscout.train.presets import TrainConfig, resolve_config

INIT_STATE = "init_state.pt"


def cell_training_config(backbone_config: TrainConfig, overrides: dict[str, str] | None = None) -> TrainConfig:
    """The backbone's training config with `overrides` applied (same checks as `--set` of train)."""
    merged = {k: str(v) for k, v in backbone_config.to_dict().items() if k != "preset"}
    merged.update(overrides or {})
    return resolve_config(backbone_config.preset, merged)


def lottery_ticket_reset(model: torch.nn.Module, init_state: dict[str, torch.Tensor], genotype: Genotype) -> list[str]:
    """Copy into `model`'s cells every tensor whose same-role initial supernet tensor has the
    same shape; returns the names copied (`skip_modules.{level}.…`)."""
    copied = []
    with torch.no_grad():
        for level, cell in enumerate(model.skip_modules):
            for key, tensor in cell.state_dict(keep_vars=True).items():
                source = init_state.get(f"{level}.{supernet_key(key, genotype)}")
                if source is not None and tuple(source.shape) == tuple(tensor.shape):
                    tensor.copy_(source)
                    copied.append(f"skip_modules.{level}.{key}")
    return copied


def _read_init_state(path: Path) -> dict[str, torch.Tensor]:
    saved = load_checkpoint(path)
    if not isinstance(saved.get("skip_modules"), dict):
        raise file_error(path, "has no 'skip_modules' state: not a search's init_state.pt")
    return saved["skip_modules"]


def train_cell(backbone_dir: str | Path, slices: str | Path, genotype_path: str | Path, method: str,
               out: str | Path, overrides: dict[str, str] | None = None, device: str = "auto") -> Path:
    """Train the genotype's cells on the frozen backbone into OUT; returns OUT."""
    from unetscout.train.loop import train

    if method not in METHODS:
        raise UnetscoutError(f"unknown cell method {method!r}; choose one of {', '.join(METHODS)}")
    genotype_path = Path(genotype_path)
    backbone: Backbone = load_backbone(backbone_dir)
    genotype = Genotype.load(genotype_path)
    config = cell_training_config(backbone.config, overrides)
    spec = backbone.spec.replace(skip=CELL_SKIP, genotype=genotype.to_json())
    init_identity: dict[str, Any] = {"method": method,
                                     "backbone_weights_sha256": file_digest(backbone.path / "best.pt")}
    init_state = None
    if method == "iac_lth":
        init_path = genotype_path.parent / INIT_STATE
        if not init_path.is_file():
            raise file_error(init_path, "the search's initial state is missing; IAC-LTH resets the cell to it "
                                        "(it is written next to genotype.json by `unetscout search`)")
        init_state = _read_init_state(init_path)
        init_identity["init_state_sha256"] = file_digest(init_path)

    def prepare(model: torch.nn.Module) -> None:
        load_frozen_backbone(model, backbone)
        if init_state is not None:
            lottery_ticket_reset(model, init_state, genotype)

    return train(Path(slices), Path(out), spec, config, device=device, prepare_model=prepare,
                 init_identity=init_identity)
