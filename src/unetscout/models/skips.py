"""Skip modules: what the decoder concatenates in place of the raw encoder feature.

Every module is built as `constructor(skip_channels, up_channels)` and called as
`module(skip, up)`, where `skip` is the encoder feature of one level and `up` the decoder's
upsampled feature of the same size (the gating signal). It returns a tensor with skip's
channels and size, so a swap never changes the backbone (docs/methods.md#skip-modules).

These are the IAC paper's baseline skips; the searched IAC cell joins the registry later.
Convs are initialised like the backbone (kaiming normal, a = 0.01, zero bias).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from unetscout.errors import UnetscoutError

LEAKY_SLOPE = 1e-2
NORM_EPS = 1e-5


def _init_convs(module: nn.Module) -> nn.Module:
    # Same rule as the backbone (unet.init_weights), kept here so skips do not import unet.
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class IdentitySkip(nn.Module):
    """The plain U-Net skip: the encoder feature as it is."""

    def __init__(self, skip_channels: int, up_channels: int):
        super().__init__()

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): one spatial mask in (0, 1) per pixel,
    `alpha = sigmoid(psi(relu(W_x skip + W_g up + b_g)) + b_psi)`, output `skip * alpha`.

    `up` is already at skip's resolution here, so W_x needs no stride. Inner channels are
    half the skip's (at least 1), as in the authors' grid attention block.
    """

    def __init__(self, skip_channels: int, up_channels: int):
        super().__init__()
        inner = max(1, skip_channels // 2)
        self.skip_proj = nn.Conv2d(skip_channels, inner, 1, bias=False)
        self.gate_proj = nn.Conv2d(up_channels, inner, 1, bias=True)
        self.psi = nn.Conv2d(inner, 1, 1, bias=True)
        _init_convs(self)

    def mask(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.psi(torch.relu(self.skip_proj(skip) + self.gate_proj(up))))

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip * self.mask(skip, up)


class ResidualAttentionGate(AttentionGate):
    """Residual attention: `skip + skip * alpha`, so a closed gate passes skip unchanged
    instead of erasing it."""

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip * (1 + self.mask(skip, up))


class NestedSkip(nn.Module):
    """One UNet++ nested node at one level, in channel-preserving form.

    UNet++ computes `X^{i,1} = H(cat[X^{i,0}, Up(X^{i+1})])` and its decoder reads the dense
    concatenation `[X^{i,0}, X^{i,1}]`. Here `H = conv3x3 -> InstanceNorm -> LeakyReLU ->
    conv3x3` (both convs to skip's channels) and the dense concat becomes a sum,
    `out = skip + H(cat[skip, up])`: the decoder's first conv applied to a concat is a sum
    of convs of the parts, so the sum keeps the information while keeping skip's width.
    """

    def __init__(self, skip_channels: int, up_channels: int):
        super().__init__()
        self.refine = nn.Sequential(
            nn.Conv2d(skip_channels + up_channels, skip_channels, 3, padding=1, bias=True),
            nn.InstanceNorm2d(skip_channels, eps=NORM_EPS, affine=True),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(skip_channels, skip_channels, 3, padding=1, bias=True),
        )
        _init_convs(self)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip + self.refine(torch.cat((skip, up), dim=1))


SkipConstructor = Callable[[int, int], nn.Module]

SKIP_MODULES: dict[str, SkipConstructor] = {
    "identity": IdentitySkip,
    "attention": AttentionGate,
    "nested": NestedSkip,
    "resattention": ResidualAttentionGate,
}


def skip_constructor(name: str) -> SkipConstructor:
    """The registered constructor for `name`, or a one-line error listing the choices."""
    try:
        return SKIP_MODULES[name]
    except KeyError:
        raise UnetscoutError(f"unknown skip module {name!r}; choose one of {', '.join(SKIP_MODULES)}") from None


class SkipHost(nn.Module):
    """What the search and the cell training need of a U-Net with skip hooks (models.unet.UNet,
    models.encoder_unet.EncoderUNet): `skip_modules` (shallowest first), a `spec`, an `encoder`,
    and `skip_channels()` giving (skip channels, up channels) per level."""

    def skip_channels(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The state without the skip modules: what a skip swap must leave untouched."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("skip_modules.")}

    def replace_skips(self, factory: SkipConstructor | str) -> None:
        """Swap every skip module for `factory(skip_channels, up_channels)` (or a registry name).

        Backbone weights are not touched; the new modules follow the backbone's device and
        dtype. A registry name is also written into `self.spec`, so a saved spec rebuilds it.
        """
        if isinstance(factory, str):
            build = skip_constructor(factory)
            self.spec = self.spec.replace(skip=factory)
        else:
            build = factory
        reference = next(self.encoder.parameters())
        self.skip_modules = nn.ModuleList(
            build(s, u).to(device=reference.device, dtype=reference.dtype) for s, u in self.skip_channels())
