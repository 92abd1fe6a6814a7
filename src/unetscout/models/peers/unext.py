"""UNeXt: a convolutional + tokenized-MLP U-Net for fast 2-D medical image segmentation.

Valanarasu & Patel, "UNeXt: MLP-based Rapid Medical Image Segmentation Network", MICCAI 2022
(arXiv:2203.04967). Written here from the paper; the details the paper leaves open were checked
against public code, never copied:

- the authors' repository github.com/jeya-maria-jose/UNeXt-pytorch, `archs.py` (class `UNext`,
  commit 6ad0855): widths, the order of conv / norm / pool / ReLU / upsample, the channel grouping
  of the shift, where the LayerNorms sit, the skips, the initialisation;
- the XTinyU-Net authors' copy github.com/alvinkimbowa/monounet, `src/archs.py` (identical but for
  `encoder1` taking `input_channels` instead of a hard-coded 3) and `src/analyze_model.py` +
  `scripts/run_train.sh`, which produced their parameter counts; their table comes from
  github.com/alvinkimbowa/nntinyunet `notebooks/reproduce_miccai26.ipynb`.

Layout (five halvings, so H and W must be multiples of DIVISOR = 32):

    conv stage   3 x [conv3x3 -> BatchNorm -> maxpool 2 -> ReLU]           16, 32, 128 channels
    token stage  2 x [conv3x3 stride 2 -> LayerNorm -> shifted-MLP block -> LayerNorm]  160, 256
    decoder      5 x [conv3x3 -> BatchNorm -> bilinear x2 -> ReLU] (+ skip by addition),
                 the first two followed by a shifted-MLP block + LayerNorm, the last without norm
    head         conv1x1 16 -> num_classes (logits)

A shifted-MLP block is x + fc2(shift_W(GELU(dwconv3x3(fc1(shift_H(LayerNorm(x))))))): the
channels are cut into `shift_size` groups and group g is moved by g - shift_size // 2 pixels
(zero fill), first along the height axis, then along the width axis.

Widths: the paper's text says C1..C5 = 32, 64, 128, 160, 256, but the authors' code uses
16, 32, 128, 160, 256, and only the code's widths give the paper's own 1.47 M parameters (the
text's widths give 1,580,994 at 3 -> 2). The defaults follow the code; `conv_widths=(32, 64, 128)`
builds the text's variant.

PARAMETER COUNT: at in_channels=3, num_classes=2 (PUBLISHED_CONFIG; the XTinyU-Net authors'
`analyze_model.py` is called with the UNeXt branch's `input_channels=3` and its default
`num_classes=2`) the network has 1,471,938 parameters, i.e. the published 1,471.94 k (XTinyU-Net,
Table 1). Their Table 2 figure, 1,471.67 k, is this network at in_channels=1, num_classes=3
(1,471,667). The UNeXt paper reports 1.47 M.

Cost: 2 * MACs of convs and linears (the house count, describe.py) is 1.126 GFLOPs at
[1, 3, 256, 256] (0.563 G MACs; the paper's "0.57 GFLOPs" fit thop's 0.574 G MACs at 256) and 4.504 GFLOPs at
512 x 512. thop (2 * its MACs, which add norms and upsampling) gives 4.59 at 3 -> 2, 512 x 512
and 1.11 at 1 -> 3, 256 x 256: XTinyU-Net's Table 1 and Table 2 FLOPs, matching the configs above.

Left out of the original: its unused `nn.Softmax` attribute, and its dropout / drop-path
arguments (all 0 in the authors' code, so they are identities). The original has no
deep-supervision outputs; the one output is the logits.

Initialisation as the authors' code does it: the token layers (patch-embedding conv, LayerNorms,
linears and depthwise convs of the shifted-MLP blocks) get the ViT-style init -- linear weights
truncated-normal(std 0.02), biases 0, convs normal(0, sqrt(2 / fan_out)), LayerNorms 1 / 0 --
while the conv-stage, decoder and head convs and the BatchNorms keep PyTorch's defaults (the
authors' `UNext` never calls an init of its own).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DIVISOR: int = 32  # 3 max-pools + 2 stride-2 token embeddings
PUBLISHED_PARAMETERS = 1471940  # XTinyU-Net, Table 1: 1,471.94 k
PUBLISHED_CONFIG = dict(in_channels=3, num_classes=2)

LINEAR_INIT_STD = 0.02


def _token_init(module: nn.Module) -> None:
    """The ViT-style init the authors give their token layers (see the module docstring)."""
    if isinstance(module, nn.Linear):
        # Bounds of +-2 absolute (100 std), as timm's trunc_normal_: in effect a plain normal.
        nn.init.trunc_normal_(module.weight, std=LINEAR_INIT_STD, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _to_tokens(image: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, H*W, C], row-major tokens (what the linears and LayerNorms act on)."""
    return image.flatten(2).transpose(1, 2)


def _to_image(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H*W, C] -> [N, C, H, W], the inverse of `_to_tokens`."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


def _zero_filled_shift(x: torch.Tensor, offset: int, dim: int) -> torch.Tensor:
    """Move x by `offset` positions along `dim` (out[i] = x[i - offset]); vacated places are 0."""
    length = x.shape[dim]
    if offset == 0:
        return x
    if abs(offset) >= length:
        return torch.zeros_like(x)
    kept = x.narrow(dim, 0, length - offset) if offset > 0 else x.narrow(dim, -offset, length + offset)
    zeros_shape = list(x.shape)
    zeros_shape[dim] = abs(offset)
    zeros = x.new_zeros(zeros_shape)
    return torch.cat([zeros, kept] if offset > 0 else [kept, zeros], dim=dim)


def axial_shift(image: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """Shift channel group g of `image` ([N, C, H, W]) by g - groups // 2 pixels along `dim`.

    The groups are the pieces torch.chunk(groups) would give (ceil(C / groups) channels each,
    the last one smaller, possibly fewer pieces), because that is how the authors' code cuts
    the channels and the grouping changes which channel moves where.
    """
    per_group = math.ceil(image.shape[1] / groups)
    pieces = image.split(per_group, dim=1)
    first_offset = -(groups // 2)
    return torch.cat([_zero_filled_shift(piece, first_offset + g, dim) for g, piece in enumerate(pieces)], dim=1)


class ConvDown(nn.Sequential):
    """conv3x3 -> BatchNorm -> maxpool 2 -> ReLU: one conv-stage encoder block.

    Pooling before the ReLU (as the authors' code) gives the same values as after: ReLU is
    monotone, so it commutes with max.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )


class ShiftedMLPBlock(nn.Module):
    """Pre-norm residual tokenized MLP: x + fc2(shift_W(GELU(dwconv(fc1(shift_H(LN(x))))))).

    The depthwise conv gives the tokens position information (the paper's "PE"); the shifts
    let each linear see a small axial neighbourhood.
    """

    def __init__(self, channels: int, mlp_ratio: float = 1.0, shift_size: int = 5):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.shift_size = shift_size
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.apply(_token_init)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        y = _to_image(self.norm(tokens), height, width)
        y = self.fc1(_to_tokens(axial_shift(y, self.shift_size, dim=2)))
        y = self.act(self.depthwise(_to_image(y, height, width)))
        y = self.fc2(_to_tokens(axial_shift(y, self.shift_size, dim=3)))
        return tokens + y


class TokenStage(nn.Module):
    """Shifted-MLP blocks + a closing LayerNorm, on an image in and an image out."""

    def __init__(self, channels: int, n_blocks: int, mlp_ratio: float, shift_size: int):
        super().__init__()
        self.blocks = nn.ModuleList([ShiftedMLPBlock(channels, mlp_ratio, shift_size) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        tokens = _to_tokens(image)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return _to_image(self.norm(tokens), height, width)


class TokenDown(nn.Module):
    """Overlapping patch embedding (conv3x3 stride 2 -> LayerNorm) followed by a TokenStage."""

    def __init__(self, in_channels: int, out_channels: int, n_blocks: int, mlp_ratio: float, shift_size: int):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.embed_norm = nn.LayerNorm(out_channels)
        self.embed.apply(_token_init)
        self.embed_norm.apply(_token_init)
        self.stage = TokenStage(out_channels, n_blocks, mlp_ratio, shift_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        height, width = x.shape[-2:]
        x = _to_image(self.embed_norm(_to_tokens(x)), height, width)
        return self.stage(x)


class UpBlock(nn.Module):
    """conv3x3 -> [BatchNorm] -> bilinear x2 -> ReLU, then + skip, then an optional TokenStage.

    Upsampling before the ReLU follows the authors' code; unlike pooling, bilinear
    interpolation does not commute with ReLU, so the order matters.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True, tokens: TokenStage | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.tokens = tokens if tokens is not None else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(F.interpolate(self.norm(self.conv(x)), scale_factor=2.0, mode="bilinear", align_corners=False))
        if skip is not None:
            x = x + skip
        return self.tokens(x)


class UNeXt(nn.Module):
    """UNeXt (Valanarasu & Patel, MICCAI 2022); defaults are the authors' released network.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits; no softmax / sigmoid).
        conv_widths: channels of the three conv-stage blocks (C1, C2, C3).
        token_widths: channels of the two tokenized-MLP stages (C4, C5).
        blocks_per_stage: shifted-MLP blocks in each token stage (encoder and decoder).
        mlp_ratio: hidden width of a shifted-MLP block over its width.
        shift_size: channel groups of the axial shift (offsets -shift_size // 2 ...).
    """

    def __init__(self, in_channels: int, num_classes: int, conv_widths: Sequence[int] = (16, 32, 128),
                 token_widths: Sequence[int] = (160, 256), blocks_per_stage: int = 1,
                 mlp_ratio: float = 1.0, shift_size: int = 5):
        super().__init__()
        c1, c2, c3 = conv_widths
        c4, c5 = token_widths

        def token_stage(channels: int) -> TokenStage:
            return TokenStage(channels, blocks_per_stage, mlp_ratio, shift_size)

        self.conv_encoder = nn.ModuleList([ConvDown(in_channels, c1), ConvDown(c1, c2), ConvDown(c2, c3)])
        self.token_encoder = nn.ModuleList([
            TokenDown(c3, c4, blocks_per_stage, mlp_ratio, shift_size),
            TokenDown(c4, c5, blocks_per_stage, mlp_ratio, shift_size),  # the bottleneck
        ])
        # Each decoder block returns to the width of the skip it is added to; the last one
        # (no skip, no norm, as the authors' code) brings the image back to full size.
        self.decoder = nn.ModuleList([
            UpBlock(c5, c4, tokens=token_stage(c4)),
            UpBlock(c4, c3, tokens=token_stage(c3)),
            UpBlock(c3, c2),
            UpBlock(c2, c1),
            UpBlock(c1, c1, norm=False),
        ])
        self.head = nn.Conv2d(c1, num_classes, 1)
        self.widths = (c1, c2, c3, c4, c5)

    def stage_widths(self) -> list[int]:
        """Channels of the five encoder stages (three conv, two tokenized-MLP), shallowest first."""
        return list(self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in [*self.conv_encoder, *self.token_encoder]:
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck's own output is no skip
        for block in self.decoder:
            x = block(x, skips.pop() if skips else None)
        return self.head(x)


NETWORK = UNeXt
