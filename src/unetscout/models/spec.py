"""A network described as data: what to build, hashable, saved as JSON and rebuilt.

Like nnU-Net's plans, a `ModelSpec` is all that is needed to rebuild a model, so every
checkpoint stores one next to its weights (`model.json`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from unetscout.errors import UnetscoutError, file_error
from unetscout.models.widths import UNetWidths
from unetscout.names import ARCHITECTURES, IMAGENET

BACKBONES = tuple(ARCHITECTURES)
MAX_FEATURES = 512
BASE_FEATURES = 32
MIN_BOTTLENECK_EDGE = 4
ENCODER_STAGES = 5               # an encoder U-Net's downsampling stages (smp depth 5)
CELL_SKIP = "cell"               # the searched IAC cell; built from `ModelSpec.genotype`


def stages_for_size(image_size: int) -> int:
    """nnU-Net's rule: keep halving while the bottleneck edge stays >= 4 (64 -> 5, 256 -> 7)."""
    if image_size < MIN_BOTTLENECK_EDGE:
        raise UnetscoutError(f"image size {image_size} is smaller than the minimum {MIN_BOTTLENECK_EDGE}")
    stages, edge = 1, image_size
    while edge % 2 == 0 and edge // 2 >= MIN_BOTTLENECK_EDGE:
        edge //= 2
        stages += 1
    return stages


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a 2-D U-Net of this package."""

    backbone: str                 # a name of unetscout.names.ARCHITECTURES
    in_channels: int
    num_classes: int              # including background
    image_size: int
    cap: int = MAX_FEATURES       # width cap for plain / resenc: min(cap, 32 * 2**i, 512)
    width: int = 8                # constant width for lean
    stages: int | None = None     # None: derived from image_size
    skip: str = "identity"        # skip module name (models.skips), or "cell" with a genotype
    deep_supervision: bool = False
    genotype: str | None = None   # searched cell's genotype JSON (models.genotype); skip must be "cell"
    encoder_weights: str | None = None  # encoder U-Nets: None = from scratch, "imagenet" = pretrained start
    widths: str | None = None     # plain only: every conv's channels, models.widths.UNetWidths JSON
                                  # (a pruned or scaled U-Net); replaces cap

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise UnetscoutError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        for name in ("in_channels", "num_classes", "image_size", "cap", "width"):
            if getattr(self, name) < 1:
                raise UnetscoutError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise UnetscoutError(f"num_classes counts background and must be >= 2, got {self.num_classes}")
        if (self.skip == CELL_SKIP) != (self.genotype is not None):
            raise UnetscoutError(f"skip {CELL_SKIP!r} and a genotype go together; got skip {self.skip!r} "
                                 f"and {'a' if self.genotype is not None else 'no'} genotype")
        if self.is_encoder_unet:
            if self.stages is not None:
                raise UnetscoutError(f"backbone {self.backbone} has its encoder's five stages; stages cannot be set")
        elif self.is_peer:
            if self.stages is not None:
                raise UnetscoutError(f"backbone {self.backbone} is its paper's fixed design; stages cannot be set")
            if self.skip != "identity":
                raise UnetscoutError(f"backbone {self.backbone} is its paper's fixed design, with its own skips; "
                                     f"skip {self.skip!r} cannot be implanted into it")
        if not self.is_encoder_unet and self.encoder_weights is not None:
            raise UnetscoutError(f"encoder_weights is for encoder U-Nets, not backbone {self.backbone}")
        if self.encoder_weights not in (None, IMAGENET):
            raise UnetscoutError(f"encoder_weights must be imagenet or absent (from scratch), got {self.encoder_weights!r}")
        if self.widths is not None:
            if self.backbone != "plain":
                raise UnetscoutError(f"explicit widths are for the plain U-Net, not backbone {self.backbone}")
            stages = UNetWidths.from_json(self.widths).n_stages
            if stages != self.n_stages:
                raise UnetscoutError(f"the widths describe {stages} stages but the model has {self.n_stages}")
        if self.genotype is not None:
            from unetscout.models.genotype import Genotype

            Genotype.from_json(self.genotype)  # a bad genotype fails here, named by ModelSpec.load

    @property
    def is_encoder_unet(self) -> bool:
        """A U-Net with an smp classification encoder (models/encoder_unet.py)."""
        return ARCHITECTURES[self.backbone].smp_encoder is not None

    @property
    def is_peer(self) -> bool:
        """One of XTinyU-Net's lightweight peers (models/peers/), built as its paper describes."""
        return ARCHITECTURES[self.backbone].peer is not None

    @property
    def n_stages(self) -> int:
        if self.is_encoder_unet:
            return ENCODER_STAGES
        return self.stages if self.stages is not None else stages_for_size(self.image_size)

    def features(self) -> list[int]:
        """Channels per encoder stage, shallowest first (nnU-Net-style designs; an encoder
        U-Net's widths are its encoder's, `EncoderUNet.stage_widths()`)."""
        if self.is_encoder_unet or self.is_peer:
            raise UnetscoutError(f"backbone {self.backbone}'s widths are its design's, not the spec's "
                                 f"(the model's stage_widths())")
        if self.widths is not None:
            return UNetWidths.from_json(self.widths).stage_outputs()
        if ARCHITECTURES[self.backbone].constant_width:
            return [self.width] * self.n_stages
        return [min(self.cap, BASE_FEATURES * 2 ** i, MAX_FEATURES) for i in range(self.n_stages)]

    def unet_widths(self, convs_per_stage: int) -> UNetWidths:
        """Every conv's channels: the explicit `widths`, or nnU-Net's layout of `features()`."""
        if self.widths is not None:
            return UNetWidths.from_json(self.widths)
        return UNetWidths.uniform(self.features(), convs_per_stage)

    def strides(self) -> list[int]:
        return [1] + [2] * (self.n_stages - 1)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for optional in ("genotype", "encoder_weights", "widths"):
            if data[optional] is None:
                # Specs without the field's feature serialise as before the field existed, so
                # finished runs' model.json / done.json still match their spec.
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UnetscoutError(f"model spec has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def save(self, path: str | Path, channel_names: Sequence[str] | None = None) -> None:
        """Write the spec as JSON (model.json); `channel_names`, the input channels of the slices
        the model is trained on, are kept beside it (`model_channel_names` reads them)."""
        from unetscout.atomic import write_json_atomic

        data = self.to_dict()
        if channel_names is not None:
            data[CHANNEL_NAMES] = [str(name) for name in channel_names]
        write_json_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        data = _read_model_json(path)
        data.pop(CHANNEL_NAMES, None)  # beside the spec, not part of it (see CHANNEL_NAMES)
        try:
            return cls.from_dict(data)
        except (TypeError, UnetscoutError) as err:
            raise file_error(path, str(err)) from None


# The key of model.json that records the training slices' channel names. Not a ModelSpec field:
# the spec's dict is part of every run's identity (train/loop.py's run_identity), and a new field
# there would make every existing run's checkpoint and done.json look like another run's.
CHANNEL_NAMES = "channel_names"


def _read_model_json(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise file_error(path, "model spec not found") from None
    except json.JSONDecodeError as err:
        raise file_error(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise file_error(path, f"not a model spec (a JSON {type(data).__name__}, expected an object)")
    return data


def model_channel_names(path: str | Path) -> list[str] | None:
    """The input channel names model.json records (what the model was trained on), or None for
    a model.json written before they were recorded."""
    names = _read_model_json(path).get(CHANNEL_NAMES)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise file_error(path, f"{CHANNEL_NAMES} must be a list of names, got {names!r}")
    return names
