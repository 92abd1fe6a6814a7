"""The lightweight U-Nets XTinyU-Net compares with (UNeXt, CMUNeXt-S, TinyU-Net), written from their papers.

Each module here is one network of its paper (class `NETWORK`, its total stride `DIVISOR`, the
published parameter count and the configuration it holds at). `PeerNet` makes any of them a
backbone of this package: inputs are zero-padded to a multiple of the stride and the logits
cropped back, so every slice size works, and it has one output (no deep-supervision heads)
and no skip hook (a peer's skips are part of its design).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from unetscout.models.padding import crop_back, pad_to_multiple
from unetscout.models.spec import ModelSpec
from unetscout.names import ARCHITECTURES


class PeerNet(nn.Module):
    """A peer network as a backbone: `network` is the paper's module, unchanged."""

    deep_supervision = False

    def __init__(self, spec: ModelSpec, network: nn.Module, divisor: int):
        super().__init__()
        self.spec = spec
        self.network = network
        self.size_divisor = divisor

    def stage_widths(self) -> list[int]:
        """Channels per encoder stage of the design, shallowest first."""
        return self.network.stage_widths()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = pad_to_multiple(x, self.size_divisor)
        return crop_back(self.network(x), padding)


def peer_module(backbone: str):
    """The models.peers module that holds a peer backbone's network."""
    return importlib.import_module(f"{__name__}.{ARCHITECTURES[backbone].peer}")


def build_peer(spec: ModelSpec) -> PeerNet:
    """The peer of `spec.backbone` for the spec's channels and classes, initialised as its paper's code."""
    module = peer_module(spec.backbone)
    return PeerNet(spec, module.NETWORK(spec.in_channels, spec.num_classes), module.DIVISOR)
