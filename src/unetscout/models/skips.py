"""Skip modules: what the decoder concatenates in place of the raw encoder feature.

A skip module is built as `constructor(skip_channels, up_channels)` and called as
`module(skip, up)`, where `skip` is the encoder feature of one level and `up` the decoder's
upsampled feature of the same size (the gating signal). It returns a tensor with skip's
channels and size, so a swap never changes the backbone (docs/methods.md#skip-modules).

A host keeps its modules in a `SkipModules` list, shallowest level first. Before the decoder
runs, the list may rewrite the encoder's skip features as a whole (`transform_skips`): that is
how UNet++'s nested pathway, whose nodes join several levels, fits the per-level hook.

These are the IAC paper's baseline skips, each the module its paper defines:
`attention` (MONAI's AttentionBlock, Oktay et al. 2018), `resattention` (Wang et al. 2017's
attention module) and `nested` (UNet++'s dense nested pathway, Zhou et al. 2018). Convs are
initialised like the backbone (kaiming normal, a = 0.01, zero bias).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from unetscout.errors import UnetscoutError

LEAKY_SLOPE = 1e-2
NORM_EPS = 1e-5
RESIDUAL_UNITS_PRE = 1     # Wang et al.'s p: units before the trunk / mask split, and after the module
RESIDUAL_UNITS_TRUNK = 2   # t: units of the trunk branch
RESIDUAL_UNITS_MASK = 1    # r: units between a pooling and the next resampling of the mask branch


def _init_convs(module: nn.Module) -> nn.Module:
    # Same rule as the backbone (unet.init_weights), kept here so skips do not import unet.
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class InstanceNorm(nn.InstanceNorm2d):
    """The backbone's norm (InstanceNorm2d, affine, eps 1e-5) that also takes a one-pixel map.

    torch refuses a single spatial element; there `x - mean` is 0, so the normalised map is 0
    and the output the affine bias. The case arises only in the residual attention mask's
    pooled map of a 2x2 skip (an encoder U-Net's deepest skip at a 32-pixel input)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=NORM_EPS, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] == 1:
            return (x - x) + self.bias.view(1, -1, 1, 1)  # `x - x` keeps the graph and the shape
        return super().forward(x)


class IdentitySkip(nn.Module):
    """The plain U-Net skip: the encoder feature as it is."""

    def __init__(self, skip_channels: int, up_channels: int):
        super().__init__()

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip


class SkipModules(nn.ModuleList):
    """A U-Net's skip modules, one per skip level, shallowest first (state-dict keys
    `skip_modules.{level}.…`).

    `transform_skips` maps the encoder's skip features (shallowest first) to the ones the
    decoder stages read, before any of them runs: the identity here, where every module works
    on its own level. A subclass whose modules join levels overrides it and is built whole,
    from every level's (skip channels, up channels), by `build_skip_modules`.
    """

    def transform_skips(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(skips)


# ---------------------------------------------------------------- attention gate (MONAI)

def _pointwise_norm(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv (with bias, as MONAI's Convolution) -> norm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=True), InstanceNorm(out_channels))


class AttentionGate(nn.Module):
    """MONAI's AttentionBlock (the gate of its AttentionUnet, after Oktay et al. 2018) with
    InstanceNorm in place of BatchNorm: one spatial mask in (0, 1) per pixel,
    `psi = sigmoid(N(conv(relu(N(W_g up) + N(W_x skip)))))`, output `skip * psi`.

    Inner channels are half the skip's (at least 1), MONAI's `f_int = channels // 2`. The gating
    signal is the decoder's upsampled feature at skip's resolution, as in MONAI's AttentionUnet
    (Oktay et al.'s code gates at the coarser level instead): that is what the hook hands over.
    Submodules in MONAI's order and roles: `gate_proj` = W_g, `skip_proj` = W_x, `psi`.
    """

    def __init__(self, skip_channels: int, up_channels: int):
        super().__init__()
        inner = max(1, skip_channels // 2)
        self.gate_proj = _pointwise_norm(up_channels, inner)
        self.skip_proj = _pointwise_norm(skip_channels, inner)
        self.psi = _pointwise_norm(inner, 1)
        _init_convs(self)

    def mask(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.psi(torch.relu(self.gate_proj(up) + self.skip_proj(skip))))

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip * self.mask(skip, up)


# ---------------------------------------------------------------- residual attention (Wang et al.)

def _norm_relu_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = False) -> list[nn.Module]:
    return [InstanceNorm(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)]


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck residual unit Wang et al. build with (He et al. 2016):
    `x + conv1x1(a(conv3x3(a(conv1x1(a(x))))))` with `a` = norm -> ReLU, inner width C/4 (at
    least 1). Bias-free convs, as the authors' released models."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 4)
        self.branch = nn.Sequential(*_norm_relu_conv(channels, inner, 1), *_norm_relu_conv(inner, inner, 3),
                                    *_norm_relu_conv(inner, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _units(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[PreActBottleneck(channels) for _ in range(n)])


class SoftMaskBranch(nn.Module):
    """Wang et al.'s bottom-up top-down soft mask with one down-up level (their smallest-resolution
    module): 3x3 max-pool stride 2, 2r residual units (r down, r up, both at the lowest
    resolution), bilinear upsampling to the input size, then norm-ReLU-conv1x1 twice and a
    sigmoid. Output: a mask in (0, 1) of the input's shape."""

    def __init__(self, channels: int):
        super().__init__()
        # padding 1: any size pools (odd sizes round up, a 1- or 2-pixel map to one pixel)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.units = _units(channels, 2 * RESIDUAL_UNITS_MASK)
        self.head = nn.Sequential(*_norm_relu_conv(channels, channels, 1), *_norm_relu_conv(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.units(self.pool(x))
        # align_corners as the authors' Caffe Interp layer
        up = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.sigmoid(self.head(up))


class ResidualAttentionSkip(nn.Module):
    """Wang et al. 2017's attention module on the skip: `p` units, then the trunk `T` (t units)
    and the soft mask `M` on the same input, attention residual learning `(1 + M) * T`, then
    `p` units; p = 1, t = 2, r = 1 as the paper. Self-attention: `up` is not used."""

    def __init__(self, skip_channels: int, up_channels: int):
        super().__init__()
        self.pre = _units(skip_channels, RESIDUAL_UNITS_PRE)
        self.trunk = _units(skip_channels, RESIDUAL_UNITS_TRUNK)
        self.mask = SoftMaskBranch(skip_channels)
        self.post = _units(skip_channels, RESIDUAL_UNITS_PRE)
        _init_convs(self)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        x = self.pre(skip)
        return self.post((1 + self.mask(x)) * self.trunk(x))


# ---------------------------------------------------------------- UNet++ nested pathway

class NestedNode(nn.Sequential):
    """H of one UNet++ node: (conv3x3 -> norm -> LeakyReLU) twice, bias-free convs (smp's
    UnetPlusPlusDecoder block, with the backbone's norm and activation)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), InstanceNorm(out_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), InstanceNorm(out_channels),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )


class NestedLevel(nn.Module):
    """Skip level i of the nested pathway: its intermediate nodes `nodes[j - 1]` = H_{i,j}
    (j = 1..n) and `fuse` = P_i, the 1x1 conv from the concatenated nodes back to skip's
    channels (absent when the level has no node). The pathway computes the fused feature
    before the decoder runs, so the per-level call hands `skip` on unchanged."""

    def __init__(self, skip_channels: int, deeper_channels: int, n_nodes: int):
        super().__init__()
        # X^{i,j} reads X^{i,0..j-1} (j x skip channels) and Up(X^{i+1,j-1}) (the deeper level's)
        self.nodes = nn.ModuleList(NestedNode(j * skip_channels + deeper_channels, skip_channels)
                                   for j in range(1, n_nodes + 1))
        self.fuse = nn.Conv2d(n_nodes * skip_channels, skip_channels, 1, bias=False) if n_nodes else None

    def fused(self, encoder_feature: torch.Tensor, nodes: Sequence[torch.Tensor]) -> torch.Tensor:
        """X^{i,0} + P_i(cat[X^{i,1..n}]), what the decoder stage of this level reads."""
        if self.fuse is None:
            return encoder_feature
        return encoder_feature + self.fuse(torch.cat(list(nodes), dim=1))

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return skip


class NestedPathway(SkipModules):
    """UNet++'s dense nested skip pathways (Zhou et al. 2018) over L skip levels.

    X^{i,0} is encoder level i's feature; the intermediate nodes are
    X^{i,j} = H_{i,j}(cat[X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})]) for j = 1..L-1-i, Up a
    parameter-free nearest upsampling to level i's size: the nodes smp's UnetPlusPlusDecoder
    calls `x_{L-i-j}_{L-1-i}`, the ones off its main path. The main-path nodes X^{i,L-i} are the
    backbone's decoder stages; level i hands them X^{i,0} + P_i(cat[X^{i,1..L-1-i}]), the dense
    concatenation folded to skip's width (docs/methods.md#skip-modules).
    """

    def __init__(self, channels: Sequence[tuple[int, int]]):
        skips = [s for s, _ in channels]
        n = len(skips)
        super().__init__(NestedLevel(skips[i], skips[i + 1] if i + 1 < n else 0, n - 1 - i) for i in range(n))
        _init_convs(self)

    def nodes(self, skips: Sequence[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
        """Every node X^{i,j} (j = 0 the encoder features), keyed (i, j)."""
        x = {(i, 0): feature for i, feature in enumerate(skips)}
        n = len(skips)
        for i in range(n - 2, -1, -1):  # deepest level first: X^{i,j} needs X^{i+1,j-1}
            for j in range(1, n - i):
                up = F.interpolate(x[i + 1, j - 1], size=skips[i].shape[-2:], mode="nearest")
                x[i, j] = self[i].nodes[j - 1](torch.cat([*(x[i, k] for k in range(j)), up], dim=1))
        return x

    def transform_skips(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = self.nodes(skips)
        n = len(skips)
        return [self[i].fused(skips[i], [x[i, j] for j in range(1, n - i)]) for i in range(n)]


# ---------------------------------------------------------------- registry

SkipConstructor = Callable[[int, int], nn.Module]
# What `replace_skips` takes besides a name: a per-level constructor, or a SkipModules subclass
# built whole from every level's (skip channels, up channels).
SkipFactory = Union[SkipConstructor, type[SkipModules]]

# A registry entry is a per-level constructor, except `nested`, a whole pathway (SkipModules).
SKIP_MODULES: dict[str, SkipConstructor] = {
    "identity": IdentitySkip,
    "attention": AttentionGate,
    "nested": NestedPathway,  # type: ignore[dict-item]
    "resattention": ResidualAttentionSkip,
}


def skip_constructor(name: str) -> SkipFactory:
    """The registered constructor for `name`, or a one-line error listing the choices."""
    try:
        return SKIP_MODULES[name]
    except KeyError:
        raise UnetscoutError(f"unknown skip module {name!r}; choose one of {', '.join(SKIP_MODULES)}") from None


def is_pathway(factory: SkipFactory) -> bool:
    """Whether `factory` builds every level at once (a SkipModules subclass)."""
    return isinstance(factory, type) and issubclass(factory, SkipModules)


def build_skip_modules(factory: SkipFactory, channels: Sequence[tuple[int, int]]) -> SkipModules:
    """The skip modules for levels with these (skip channels, up channels), shallowest first."""
    if is_pathway(factory):
        return factory(channels)
    return SkipModules(factory(s, u) for s, u in channels)


class SkipHost(nn.Module):
    """What the search and the cell training need of a U-Net with skip hooks (models.unet.UNet,
    models.encoder_unet.EncoderUNet): `skip_modules` (a SkipModules, shallowest first), a `spec`,
    an `encoder`, and `skip_channels()` giving (skip channels, up channels) per level. A host
    passes its skip features through `skip_modules.transform_skips` before its decoder runs."""

    def skip_channels(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The state without the skip modules: what a skip swap must leave untouched."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("skip_modules.")}

    def replace_skips(self, factory: SkipFactory | str) -> None:
        """Swap every skip module for `factory(skip_channels, up_channels)` (or a registry name;
        a whole pathway is built from every level's channels at once).

        Backbone weights are not touched; the new modules follow the backbone's device and
        dtype. A registry name is also written into `self.spec`, so a saved spec rebuilds it.
        """
        if isinstance(factory, str):
            build = skip_constructor(factory)
            self.spec = self.spec.replace(skip=factory)
        else:
            build = factory
        reference = next(self.encoder.parameters())
        self.skip_modules = build_skip_modules(build, self.skip_channels()).to(
            device=reference.device, dtype=reference.dtype)
