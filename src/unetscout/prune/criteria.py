"""Which channel goes next: STAMP's L2 criterion, its two simplifications, targeted dropout.

- `stamp` (Dinsdale et al.): per channel, the L2 norm of its activation over space, averaged
  over the batch and summed over a ranking pass, normalised per layer (`v <- |v| / ||v||_2`);
  the globally smallest channel goes.
- `stamp_random_in_block`: the block holding the layer STAMP picks, a random channel of it.
- `widest_block`: a random channel of the block with the most channels (data-independent);
  ties go to the deepest block, then to the later one in computation order (at one level, the
  decoder stage).
A *block* is the Lean U-Net paper's: the convs of one stage, an encoder stage or the decoder
stage of a level ([LUnet] Table I: "Convolutions per block", 2 for HarP; STAMP's code groups
its convs in the same per-stage blocks). "A random channel of a block" is drawn uniformly among
the channels of the block's convs that can lose one, so a conv is picked in proportion to its
width. A layer (conv) with one channel left is never a candidate
(docs/methods.md#channel-pruning). `PER_CONV_BLOCKS = True` restores the reading before issue 29,
one conv per block (its draws are then exactly the old ones).

Targeted dropout follows the STAMP authors' code: channels are ranked over all layers by the
normalised criterion (the smallest ranked first), a layer scores the mean rank position of its
channels from the top, and its channel-dropout probability is `base * score / max score`, so the
layer most likely to lose channels drops at the base probability and a layer of strong
channels hardly at all. The ranking pass and the dropout run for all three criteria, so they
differ only in which channel is removed.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from unetscout.errors import UnetscoutError
from unetscout.models.widths import UNetWidths, layer_depth, parse_layer
from unetscout.prune.settings import BASE_DROPOUT

Ranks = dict[str, np.ndarray]  # layer -> normalised criterion per channel

# A block is one stage's convs (the Lean U-Net paper's block); True: one conv per block, the
# reading before issue 29 (widest_block = the widest conv, stamp_random_in_block = STAMP's conv).
PER_CONV_BLOCKS = False


class ActivationNorms:
    """Sums, per prunable layer, the batch mean of each channel's spatial L2 activation norm
    over the batches run while it is installed (forward hooks on the conv blocks)."""

    def __init__(self, blocks: dict[str, nn.Module]):
        self.sums: dict[str, torch.Tensor] = {}
        self._handles = [block.register_forward_hook(self._hook(name)) for name, block in blocks.items()]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            norms = output.detach().float().flatten(2).norm(dim=2).mean(dim=0)
            self.sums[name] = self.sums[name] + norms if name in self.sums else norms
        return record

    def close(self) -> Ranks:
        for handle in self._handles:
            handle.remove()
        return normalise_per_layer({name: s.cpu().numpy().astype(np.float64) for name, s in self.sums.items()})


def normalise_per_layer(values: Ranks) -> Ranks:
    """STAMP's per-layer normalisation: `v <- |v| / ||v||_2` (a layer of zeros stays zero)."""
    out = {}
    for name, v in values.items():
        v = np.abs(v)
        norm = np.linalg.norm(v)
        out[name] = v / norm if norm > 0 else v
    return out


def _candidates(widths: UNetWidths) -> list[str]:
    names = [name for name, width in widths.layers() if width > 1]
    if not names:
        raise UnetscoutError("nothing left to prune: every layer is down to one channel")
    return names


def stamp_choice(ranks: Ranks, widths: UNetWidths) -> tuple[str, int]:
    """The globally smallest normalised channel among layers that can lose one."""
    best: tuple[float, str, int] | None = None  # set by the first candidate (there is one)
    for name in _candidates(widths):
        channel = int(np.argmin(ranks[name]))
        value = float(ranks[name][channel])
        if best is None or value < best[0]:
            best = (value, name, channel)
    return best[1], best[2]


def _per_conv(per_conv: bool | None) -> bool:
    return PER_CONV_BLOCKS if per_conv is None else per_conv


def block_of(layer: str, per_conv: bool | None = None) -> str:
    """The block a layer belongs to: its stage (`enc3.1` -> `enc3`, `dec0.0` -> `dec0`), or the
    layer itself when blocks are single convs."""
    parse_layer(layer)  # a layer name, or UnetscoutError
    return layer if _per_conv(per_conv) else layer.partition(".")[0]


def blocks(widths: UNetWidths, per_conv: bool | None = None) -> dict[str, list[str]]:
    """Every block with its layers, both in computation order (encoder, then decoder deepest first)."""
    out: dict[str, list[str]] = {}
    for name, _ in widths.layers():
        out.setdefault(block_of(name, per_conv), []).append(name)
    return out


def widest_block(widths: UNetWidths, per_conv: bool | None = None) -> list[str]:
    """The layers of the block with the most channels in total (all its convs' widths summed)
    among the blocks with a layer that can lose one; ties to the deepest block, then to the later
    in computation order (the decoder stage of a level before its encoder stage)."""
    candidates = set(_candidates(widths))
    width = widths.layer_widths()
    found = [(sum(width[n] for n in layers), layer_depth(layers[0]), order, layers)
             for order, layers in enumerate(blocks(widths, per_conv).values())
             if candidates.intersection(layers)]
    return max(found, key=lambda item: item[:3])[3]


def block_layers(widths: UNetWidths, layer: str, per_conv: bool | None = None) -> list[str]:
    """The layers of the block holding `layer`, in computation order."""
    return blocks(widths, per_conv)[block_of(layer, per_conv)]


def random_channel_in(layers: list[str], widths: UNetWidths, rng: np.random.Generator) -> tuple[str, int]:
    """(layer, channel) drawn uniformly among the channels of `layers` that can lose one (layers
    with one channel left are left out): one draw of `rng.integers(total)`, so a single layer
    gets exactly the draw `rng.integers(its width)`."""
    width = widths.layer_widths()
    eligible = [name for name in layers if width[name] > 1]
    if not eligible:
        raise UnetscoutError(f"nothing left to prune in block {', '.join(layers)}: every layer is at one channel")
    index = int(rng.integers(sum(width[name] for name in eligible)))
    for name in eligible:
        if index < width[name]:
            return name, index
        index -= width[name]
    raise AssertionError("unreachable: the index lies below the block's total")


def choose(criterion: str, ranks: Ranks | None, widths: UNetWidths, rng: np.random.Generator) -> tuple[str, int]:
    """(layer, channel) the criterion removes next."""
    if criterion == "widest_block":
        return random_channel_in(widest_block(widths), widths, rng)
    assert ranks is not None, f"{criterion} needs the ranking pass"
    layer, channel = stamp_choice(ranks, widths)
    if criterion == "stamp_random_in_block":
        return random_channel_in(block_layers(widths, layer), widths, rng)
    return layer, channel


def without_channel(ranks: Ranks, layer: str, channel: int) -> Ranks:
    """The ranks after `channel` of `layer` is removed (the others keep their values)."""
    return {**ranks, layer: np.delete(ranks[layer], channel)}


def dropout_probabilities(ranks: Ranks, base: float = BASE_DROPOUT) -> dict[str, float]:
    """Per layer: `base * score / max score`, score = mean over the layer's channels of their
    rank position from the top among all channels (the smallest value has the highest)."""
    names = [name for name, v in ranks.items() for _ in range(len(v))]
    values = np.concatenate([ranks[name] for name in ranks])
    order = np.argsort(values, kind="stable")            # ascending: the first goes first
    position = np.empty(len(values))
    position[order] = np.arange(len(values))[::-1]       # the smallest gets len - 1
    scores = {name: float(np.mean([p for n, p in zip(names, position) if n == name])) for name in ranks}
    top = max(scores.values())
    return {name: base * score / top if top > 0 else base for name, score in scores.items()}


def uniform_dropout(layers: Iterable[str], base: float = BASE_DROPOUT) -> dict[str, float]:
    """Before the first ranking every layer drops at the base probability."""
    return {name: base for name in layers}
