"""Channels of every conv of a plain U-Net, as data: what a pruned or scaled U-Net is.

nnU-Net's plain U-Net gives every conv of a stage the stage's width. Channel pruning (the Lean
U-Net study, unetscout.prune) and linear scaling give each conv its own width, so a
`UNetWidths` lists them all: `encoder[s]` the widths of encoder stage s's convs (shallowest
first), `decoder[lv]` those of the decoder stage that outputs at level lv, `up[lv]` the
output channels of the transposed conv that brings level lv+1 up to level lv. A `ModelSpec`
carries it as JSON (`ModelSpec.widths`), like a genotype, so a pruned network is rebuilt from
its model.json alone.

The prunable layers are the 3x3 convs, named `enc{s}.{k}` and `dec{lv}.{k}` (k: the conv's
place in its stage). The transposed convs keep their widths while pruning, as in STAMP's code;
only their input channels follow the layer below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Sequence

from unetscout.errors import UnetscoutError

CONVS_PER_STAGE = 2   # nnU-Net 2-D plans: convs per encoder and decoder stage of the plain U-Net


@dataclass(frozen=True)
class UNetWidths:
    encoder: tuple[tuple[int, ...], ...]
    decoder: tuple[tuple[int, ...], ...]   # indexed by level, shallowest first
    up: tuple[int, ...]                    # indexed by level, shallowest first

    def __post_init__(self) -> None:
        n = len(self.encoder)
        if n < 2 or len(self.decoder) != n - 1 or len(self.up) != n - 1:
            raise UnetscoutError(f"U-Net widths need n >= 2 encoder stages, n - 1 decoder stages and n - 1 "
                                 f"upsamplers; got {n}, {len(self.decoder)} and {len(self.up)}")
        for name, width in [*self.layers(), *((f"up{lv}", w) for lv, w in enumerate(self.up))]:
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise UnetscoutError(f"U-Net width of {name} must be an integer >= 1, got {width!r}")
        if any(not stage for stage in (*self.encoder, *self.decoder)):
            raise UnetscoutError("every U-Net stage needs at least one conv")

    @classmethod
    def uniform(cls, features: Sequence[int], convs_per_stage: int) -> "UNetWidths":
        """nnU-Net's layout: every conv of a stage at the stage's width, upsamplers at the skip's."""
        return cls(encoder=tuple((f,) * convs_per_stage for f in features),
                   decoder=tuple((f,) * convs_per_stage for f in features[:-1]),
                   up=tuple(features[:-1]))

    @classmethod
    def doubling(cls, top_width: int, n_stages: int, convs_per_stage: int, scale: float = 1.0) -> "UNetWidths":
        """A U-Net whose stage widths double from `top_width` (the Lean U-Net study's baseline),
        every width then scaled by `scale` and rounded (at least one channel)."""
        if top_width < 1:
            raise UnetscoutError(f"top width must be >= 1, got {top_width}")
        if not 0 < scale <= 1:
            raise UnetscoutError(f"width scale must be in (0, 1], got {scale}")
        features = [max(1, round(top_width * 2 ** i * scale)) for i in range(n_stages)]
        return cls.uniform(features, convs_per_stage)

    @property
    def n_stages(self) -> int:
        return len(self.encoder)

    def stage_outputs(self) -> list[int]:
        """Channels each encoder stage outputs (its last conv's), shallowest first."""
        return [stage[-1] for stage in self.encoder]

    def layers(self) -> Iterator[tuple[str, int]]:
        """(name, width) of every prunable conv, in computation order (encoder, then decoder deepest first)."""
        for s, stage in enumerate(self.encoder):
            for k, width in enumerate(stage):
                yield f"enc{s}.{k}", width
        for lv in range(len(self.decoder) - 1, -1, -1):
            for k, width in enumerate(self.decoder[lv]):
                yield f"dec{lv}.{k}", width

    def layer_widths(self) -> dict[str, int]:
        return dict(self.layers())

    def total_channels(self) -> int:
        """Output channels of all prunable convs: what the study's "% channels remaining" counts."""
        return sum(width for _, width in self.layers())

    def with_layer(self, name: str, width: int) -> "UNetWidths":
        """The same widths with layer `name` at `width`."""
        part, s, k = parse_layer(name)
        stages = [list(stage) for stage in getattr(self, part)]
        if s >= len(stages) or k >= len(stages[s]):
            raise UnetscoutError(f"no layer {name} in a U-Net of {self.n_stages} stages")
        stages[s][k] = width
        return UNetWidths(**{**self.__dict__, part: tuple(tuple(stage) for stage in stages)})

    def to_dict(self) -> dict:
        return {"encoder": [list(s) for s in self.encoder], "decoder": [list(s) for s in self.decoder],
                "up": list(self.up)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> "UNetWidths":
        if not isinstance(data, dict) or set(data) != {"encoder", "decoder", "up"}:
            raise UnetscoutError("U-Net widths must be an object with keys encoder, decoder and up")
        try:
            return cls(encoder=tuple(tuple(stage) for stage in data["encoder"]),
                       decoder=tuple(tuple(stage) for stage in data["decoder"]), up=tuple(data["up"]))
        except TypeError:
            raise UnetscoutError("U-Net widths: encoder and decoder are lists of lists of integers, "
                                 "up a list of integers") from None

    @classmethod
    def from_json(cls, text: str) -> "UNetWidths":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UnetscoutError(f"U-Net widths are not valid JSON ({err.msg})") from None
        return cls.from_dict(data)


def parse_layer(name: str) -> tuple[str, int, int]:
    """`enc3.1` -> ("encoder", 3, 1); `dec0.0` -> ("decoder", 0, 0)."""
    parts = {"enc": "encoder", "dec": "decoder"}
    head, _, k = name.partition(".")
    if head[:3] in parts and head[3:].isdigit() and k.isdigit():
        return parts[head[:3]], int(head[3:]), int(k)
    raise UnetscoutError(f"not a U-Net layer name: {name!r} (enc<stage>.<conv> or dec<level>.<conv>)")


def layer_depth(name: str) -> int:
    """Resolution level of a layer: its encoder stage or decoder level (0 = full resolution)."""
    return parse_layer(name)[1]

