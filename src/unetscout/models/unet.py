"""The 2-D U-Net backbones: nnU-Net's plain U-Net, its width-capped and lean variants, ResEnc.

`build_model(spec)` reproduces nnU-Net v2's 2-D `PlainConvUNet` (dynamic-network-architectures
0.4.4) layer for layer: same layers, same parameter shapes in the same order, so parameter
counts match to the unit and the peer's weights load by position. `resenc` reproduces its
`ResidualEncoderUNet` (BasicBlockD stages behind a one-conv stem) with the plain decoder.

The one addition is the skip hook (docs/methods.md#skip-modules): the skip modules may first
rewrite the encoder's skip features as a whole (`SkipModules.transform_skips`, UNet++'s nested
pathway), then each decoder stage concatenates `[up, skip_module(skip, up)]`; with the identity
module the network is nnU-Net's exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from unetscout.errors import UnetscoutError
from unetscout.models.cell import discrete_cell_factory
from unetscout.models.genotype import Genotype
from unetscout.models.skips import SkipFactory, SkipHost, SkipModules, skip_constructor
from unetscout.models.spec import ModelSpec
from unetscout.models.widths import CONVS_PER_STAGE, UNetWidths

KERNEL_SIZE = 3
NORM_EPS = 1e-5
LEAKY_SLOPE = 1e-2               # LeakyReLU slope and kaiming's `a`, as nnU-Net's InitWeights_He
# nnU-Net ResEnc M blocks per encoder stage (its planner uses the same tuple in 2-D and 3-D);
# stages beyond the tuple repeat its last entry, as the planner's longer tuple does.
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6)
# docs/methods.md#residual-encoder-u-net: the plain decoder's two convs per stage. (nnU-Net's ResEnc
# presets use one; the peer takes either, the tests build it with this value.)
RESENC_DECODER_CONVS = CONVS_PER_STAGE


class ConvNormAct(nn.Sequential):
    """conv (bias) -> InstanceNorm2d(affine) -> LeakyReLU; `act=False` stops after the norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = KERNEL_SIZE,
                 stride: int = 1, bias: bool = True, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=bias),
            nn.InstanceNorm2d(out_channels, eps=NORM_EPS, affine=True),
        ]
        if act:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        super().__init__(*layers)


def conv_stack(in_channels: int, widths: Sequence[int], stride: int = 1) -> nn.Sequential:
    """One conv block per entry of `widths` (its output channels); only the first one strides
    (nnU-Net's StackedConvBlocks, whose convs share one width; a pruned stack's need not)."""
    ins = [in_channels, *widths[:-1]]
    return nn.Sequential(*[ConvNormAct(i, w, stride=stride if k == 0 else 1)
                           for k, (i, w) in enumerate(zip(ins, widths))])


class BasicResidualBlock(nn.Module):
    """ResNet-D basic block as nnU-Net's BasicBlockD: the shortcut average-pools to stride and
    projects with a bias-free 1x1 conv + norm only when it has to."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, stride=stride)
        self.conv2 = ConvNormAct(out_channels, out_channels, act=False)
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(stride, stride))
        if in_channels != out_channels:
            shortcut.append(ConvNormAct(in_channels, out_channels, kernel_size=1, bias=False, act=False))
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out += self.shortcut(x)
        return self.act(out)


class Encoder(nn.Module):
    """A stem (identity for the plain U-Net) then one module per resolution stage; a stage
    downsamples with its first conv's stride. Returns every stage's output, shallowest first."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module]):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


def plain_encoder(in_channels: int, stages: Sequence[Sequence[int]], strides: Sequence[int]) -> Encoder:
    """`stages[s]`: the output channels of stage s's convs (models.widths.UNetWidths.encoder)."""
    ins = [in_channels, *(stage[-1] for stage in stages[:-1])]
    return Encoder(nn.Identity(), [conv_stack(i, widths, s) for i, widths, s in zip(ins, stages, strides)])


def residual_encoder(in_channels: int, stages: Sequence[Sequence[int]], strides: Sequence[int]) -> Encoder:
    """ResEnc: a one-conv stem at full resolution, then stacks of residual blocks (one width a stage)."""
    features = [stage[-1] for stage in stages]
    ins = [features[0], *features[:-1]]
    stages = [nn.Sequential(*[BasicResidualBlock(i if b == 0 else f, f, s if b == 0 else 1) for b in range(n)])
              for i, f, s, n in zip(ins, features, strides, resenc_blocks(len(features)))]
    return Encoder(ConvNormAct(in_channels, features[0]), stages)


@dataclass(frozen=True)
class EncoderDesign:
    """How an architecture of unetscout.names.ARCHITECTURES is built: its encoder (input
    channels, conv widths per stage, strides -> Encoder) and the convs per decoder stage."""

    build: Callable[[int, Sequence[Sequence[int]], Sequence[int]], Encoder]
    decoder_convs: int = CONVS_PER_STAGE


# One entry per nnU-Net-style architecture of the registry (tests/test_names.py checks they
# agree; the encoder U-Nets are models/encoder_unet.py's). The lean U-Net is the plain design
# at a flat width (its width rule is in the registry).
ENCODERS: dict[str, EncoderDesign] = {
    "plain": EncoderDesign(plain_encoder),
    "lean": EncoderDesign(plain_encoder),
    "resenc": EncoderDesign(residual_encoder, RESENC_DECODER_CONVS),
}


class UNetDecoder(nn.Module):
    """Decoder stages in computation order, deepest first (nnU-Net's order): stage i
    upsamples from encoder level n-1-i to level n-2-i and has its own 1x1 head."""

    def __init__(self, widths: UNetWidths, strides: Sequence[int], num_classes: int):
        super().__init__()
        skips = widths.stage_outputs()
        below = [*(stage[-1] for stage in widths.decoder[1:]), skips[-1]]  # what reaches level lv from below
        levels = range(widths.n_stages - 2, -1, -1)
        # Registration order (stages, upsamplers, heads) is the peer's parameter order.
        self.stages = nn.ModuleList(conv_stack(widths.up[lv] + skips[lv], widths.decoder[lv]) for lv in levels)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(below[lv], widths.up[lv], strides[lv + 1], strides[lv + 1], bias=True)
            for lv in levels)
        # Every head exists even without deep supervision, so checkpoints load either way.
        self.heads = nn.ModuleList(nn.Conv2d(widths.decoder[lv][-1], num_classes, 1, bias=True) for lv in levels)

    def forward(self, features: Sequence[torch.Tensor], skip_modules: SkipModules,
                deep_supervision: bool) -> torch.Tensor | list[torch.Tensor]:
        """`features`: every encoder stage's output, shallowest first; all but the last
        (the bottleneck) are skips, which the skip modules see as a whole first."""
        n = len(self.stages)
        skips = skip_modules.transform_skips(features[:-1])
        x = features[-1]
        logits = []
        for i, (stage, upsample) in enumerate(zip(self.stages, self.upsamplers)):
            level = n - 1 - i
            up = upsample(x)
            skip = skips[level]
            x = stage(torch.cat((up, skip_modules[level](skip, up)), dim=1))
            if deep_supervision:
                logits.append(self.heads[i](x))
        if not deep_supervision:
            return self.heads[-1](x)
        return logits[::-1]


class UNet(SkipHost):
    """A 2-D U-Net built from a ModelSpec.

    `skip_modules[i]` refines encoder level i's output (shallowest first, i = 0..n_stages-2)
    before the decoder concatenates it. `forward` returns logits [B, K, H, W], or with
    `deep_supervision` a list of logits from the highest resolution down. The attribute can
    be switched off after training, as nnU-Net does for inference.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        strides = spec.strides()
        self.spec = spec
        self.widths = spec.unet_widths(ENCODERS[spec.backbone].decoder_convs)
        self.deep_supervision = spec.deep_supervision
        self.size_divisor = math.prod(strides)
        self.encoder = ENCODERS[spec.backbone].build(spec.in_channels, self.widths.encoder, strides)
        self.decoder = UNetDecoder(self.widths, strides, spec.num_classes)
        self.skip_modules = SkipModules()

    def skip_channels(self) -> list[tuple[int, int]]:
        """(skip channels, up channels) per skip level, shallowest first."""
        return list(zip(self.widths.stage_outputs()[:-1], self.widths.up))

    def stage_widths(self) -> list[int]:
        """Channels each encoder stage outputs, shallowest first."""
        return self.widths.stage_outputs()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise UnetscoutError(f"input size {h}x{w} is not divisible by {self.size_divisor} "
                                 f"(the total stride of {len(self.decoder.stages) + 1} stages)")
        return self.decoder(self.encoder(x), self.skip_modules, self.deep_supervision)


def resenc_blocks(n_stages: int) -> list[int]:
    """Residual blocks per encoder stage for n stages (ResEnc M's tuple, truncated or extended)."""
    blocks = list(RESENC_BLOCKS_PER_STAGE[:n_stages])
    return blocks + [RESENC_BLOCKS_PER_STAGE[-1]] * (n_stages - len(blocks))


def init_weights(model: nn.Module) -> None:
    """nnU-Net's init: kaiming normal (a = 0.01) on conv and transposed-conv weights, zero
    biases; ResEnc also zeroes the last norm of each residual block so it starts as identity."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, BasicResidualBlock):
            norm = module.conv2[1]
            nn.init.zeros_(norm.weight)
            nn.init.zeros_(norm.bias)


def check_spec(spec: ModelSpec) -> None:
    """Stage count and image size must give a bottleneck of at least 1 pixel and a decoder."""
    n = spec.n_stages
    if n < 2:
        raise UnetscoutError(f"a U-Net needs at least 2 stages, got {n}")
    if spec.image_size % 2 ** (n - 1):
        raise UnetscoutError(f"image size {spec.image_size} cannot be halved {n - 1} times "
                             f"for {n} stages; use fewer stages or a size divisible by {2 ** (n - 1)}")


def build_model(spec: ModelSpec) -> nn.Module:
    """Build and initialise the U-Net a spec describes, with the spec's skip module.

    The backbone is built and initialised before the skip modules, so the same seed gives
    the same backbone weights whatever the skip. A spec with a genotype gets the searched
    discrete cell (models.cell) at every skip level. Encoder U-Nets come from
    models.encoder_unet, initialised as smp does; the lightweight peers from models.peers,
    initialised as their papers' code does (no skip hook: the spec's skip is the identity).
    """
    if spec.genotype is not None:
        skip: SkipFactory | str = discrete_cell_factory(Genotype.from_json(spec.genotype))
    else:
        skip = spec.skip
        skip_constructor(skip)  # an unknown name fails here, before any work
    if spec.is_encoder_unet:
        from unetscout.models.encoder_unet import build_encoder_unet  # imports smp only when needed

        return build_encoder_unet(spec, skip)
    if spec.is_peer:
        from unetscout.models.peers import build_peer

        return build_peer(spec)
    check_spec(spec)
    model = UNet(spec)
    init_weights(model)
    model.replace_skips(skip)
    return model
