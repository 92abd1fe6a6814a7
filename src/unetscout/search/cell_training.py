"""`unetscout train-cell`: implant the searched discrete cell at every skip level of a frozen
backbone and train only the cells (docs/methods.md#training-the-discrete-cell).

It reuses `unetscout train`'s loop through its `prepare_model` hook, so the output folder is
a training folder like any other (model.json with the genotype, best.pt, last.pt,
config.json, log.tsv, done.json; `unetscout evaluate` rebuilds it) and resumes the same way.
The training config is the backbone's (its config.json) with `--set` overrides and the seed.

Initialisation: IAC and the random baseline draw the cells fresh from the training seed;
IAC-LTH resets them to the lottery ticket, the supernet's initial state (`init_state.pt`, stored
before its first update): the 1x1 input and output convs are copied whole; each chosen op's
conv tensors, which have C/K channels in the supernet and C in the discrete cell, are copied to
the positions the supernet's partial-channel edge used (`ticket_slice`): the input channels it
read (the node's first C/K), its inner channels as the leading block, and its output channels
where the channel shuffle put them (every K-th channel of the node). The other entries keep
their seeded draw, from the same distribution (models.cell.DiscreteCell draws every op tensor
at its supernet counterpart's fan-in). Affine norms start at (1, 0) with fresh statistics (the
supernet's are not affine). `ticket.json` lists the tensors copied whole, copied in part (with
the slice), drawn and reset, and `cell_init.pt` holds every method's cells as training starts
from them, so the reset can be checked against `init_state.pt` independently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unetscout.atomic import write_json_atomic
from unetscout.errors import UnetscoutError, file_error
from unetscout.models.cell import supernet_key
from unetscout.models.genotype import Genotype
from unetscout.models.spec import CELL_SKIP
from unetscout.names import CELL_METHODS
from unetscout.search.config import Backbone, load_backbone
from unetscout.search.supernet import load_frozen_backbone
from unetscout.runs import file_digest, load_checkpoint, save_checkpoint
from unetscout.train.presets import TrainConfig, resolve_config

INIT_STATE = "init_state.pt"
TICKET = "ticket.json"
CELL_INIT = "cell_init.pt"


def cell_training_config(backbone_config: TrainConfig, overrides: dict[str, str] | None = None) -> TrainConfig:
    """The backbone's training config with `overrides` applied (same checks as `--set` of train)."""
    merged = {k: str(v) for k, v in backbone_config.to_dict().items() if k != "preset"}
    merged.update(overrides or {})
    return resolve_config(backbone_config.preset, merged)


def _norm_tensor_names(cell: torch.nn.Module) -> set[str]:
    names = set()
    for prefix, module in cell.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            names |= {f"{prefix}.{key}" for key in module.state_dict()}
    return names


def ticket_slice(source: torch.Tensor, target: torch.Tensor, groups: int,
                 writes_node: bool) -> tuple[slice, ...] | None:
    """Where the supernet's op tensor `source` (C/K channels) sits in the discrete cell's `target`
    (C channels), or None if it does not fit.

    A partial-channel edge runs its op on the node's first C/K channels and concatenates the
    op's output before the bypassed channels; the shuffle into K groups then moves output
    channel m to node channel m * K. So the op's last conv (`writes_node`) fills every K-th
    output row; every other dimension (input channels, depthwise rows, inner channels) is the
    leading block."""
    if source.dim() != target.dim():
        return None
    rows = slice(0, target.shape[0], groups) if writes_node else slice(0, source.shape[0])
    block = (rows, *(slice(0, s) for s in source.shape[1:]))
    if any(s > t for s, t in zip(source.shape, target.shape)) or len(range(*rows.indices(target.shape[0]))) \
            != source.shape[0]:
        return None
    return block


def _node_writing_convs(cell: torch.nn.Module) -> set[str]:
    """State-dict names of each edge op's last conv (the one whose output reaches the node)."""
    names = set()
    for edge_key, op in cell.edges.items():
        convs = [name for name, module in op.named_modules() if isinstance(module, torch.nn.Conv2d)]
        if convs:
            names.add(f"edges.{edge_key}.{convs[-1]}.weight")
    return names


def _slice_text(block: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f":{s.stop}" if s.step in (None, 1) else f"::{s.step}" for s in block) + "]"


def lottery_ticket_reset(model: torch.nn.Module, init_state: dict[str, torch.Tensor],
                         genotype: Genotype) -> dict[str, list]:
    """Reset `model`'s cells to the lottery ticket in `init_state` (the supernet's
    `skip_modules` state, keys `{level}.…`); returns the ticket: what was copied whole, in part
    (with the slice), drawn (no supernet counterpart) and reset (norms at (1, 0))."""
    ticket: dict[str, list] = {"copied_whole": [], "copied_in_part": [], "drawn": [], "norms_reset": []}
    with torch.no_grad():
        for level, cell in enumerate(model.skip_modules):
            norms = _norm_tensor_names(cell)
            writes_node = _node_writing_convs(cell)
            for key, tensor in cell.state_dict(keep_vars=True).items():
                name = f"skip_modules.{level}.{key}"
                if key in norms:
                    ticket["norms_reset"].append(name)
                    continue
                source_key = f"{level}.{supernet_key(key, genotype)}"
                source = init_state.get(source_key)
                if source is not None and tuple(source.shape) == tuple(tensor.shape):
                    tensor.copy_(source)
                    ticket["copied_whole"].append(name)
                    continue
                block = None if source is None else ticket_slice(source, tensor, genotype.partial_channels,
                                                                 key in writes_node)
                if block is None:
                    ticket["drawn"].append(name)
                else:
                    tensor[block] = source.to(tensor.dtype)
                    ticket["copied_in_part"].append({
                        "tensor": name, "from": f"skip_modules.{source_key}", "slice": _slice_text(block),
                        "shape": list(tensor.shape), "source_shape": list(source.shape)})
            # Affine norms start at (1, 0) with fresh statistics, whatever the draw left there.
            for module in cell.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.reset_parameters()
    return ticket


def _read_init_state(path: Path) -> dict[str, torch.Tensor]:
    saved = load_checkpoint(path)
    if not isinstance(saved.get("skip_modules"), dict):
        raise file_error(path, "has no 'skip_modules' state: not a search's init_state.pt")
    return saved["skip_modules"]


def train_cell(backbone_dir: str | Path, slices: str | Path, genotype_path: str | Path, method: str,
               out: str | Path, overrides: dict[str, str] | None = None, device: str = "auto") -> Path:
    """Train the genotype's cells on the frozen backbone into OUT; returns OUT."""
    from unetscout.train.loop import train

    if method not in CELL_METHODS:
        raise UnetscoutError(f"unknown cell method {method!r}; choose one of {', '.join(CELL_METHODS)}")
    genotype_path = Path(genotype_path)
    genotype = Genotype.load(genotype_path)  # the small file first: a bad genotype fails at once
    backbone: Backbone = load_backbone(backbone_dir)
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

    out = Path(out)

    def prepare(model: torch.nn.Module) -> None:
        load_frozen_backbone(model, backbone)
        if init_state is not None:
            write_json_atomic(out / TICKET, lottery_ticket_reset(model, init_state, genotype))
        save_checkpoint(out / CELL_INIT, {"skip_modules": {k: v.detach().cpu().clone()
                                                           for k, v in model.skip_modules.state_dict().items()}})

    return train(Path(slices), out, spec, config, device=device, prepare_model=prepare,
                 init_identity=init_identity)
