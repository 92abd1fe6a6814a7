"""CMUNeXt-S, the small variant of CMUNeXt, a lightweight fully convolutional U-Net.

Reference: F. Tang, J. Ding, L. Wang, C. Ning, S. K. Zhou, "CMUNeXt: An Efficient Medical Image
Segmentation Network based on Large Kernel and Skip Fusion", ISBI 2024 (arXiv:2308.01239).

The network is a five-level U-Net. A 3x3 stem sets the first width; each encoder level (after a
2x2 max pool, except the first) runs `depth` CMUNeXt blocks at its input width and then changes
the width with a 3x3 conv. A CMUNeXt block is a residual large-kernel depthwise conv (spatial
mixing over a wide window) followed by an inverted bottleneck of two 1x1 convs (x4 expansion,
channel mixing). Each decoder level upsamples (bilinear x2 + 3x3 conv), concatenates the skip
*before* the upsampled map and fuses both with the Skip-Fusion block: a 3x3 conv in two groups
(one per source) then a 1x1 x4 inverted bottleneck. A 1x1 conv gives the logits.

Written by us from the paper. Details the paper leaves open were checked against public code
(read, not copied):
- the official code, github.com/FengheTan9/CMUNeXt, network/CMUNeXt.py at commit affbf03
  (2024-12-02): S widths (8, 16, 32, 64, 128), depths (1, 1, 1, 1, 1), kernels (3, 3, 7, 7, 9);
  conv -> GELU -> BatchNorm order inside the CMUNeXt and Skip-Fusion blocks; the residual
  wraps only the depthwise conv; conv -> BatchNorm -> ReLU for the stem, the width changes and
  the up-convs; bias on every conv (also those before a BatchNorm); bilinear upsampling with
  PyTorch's default align_corners=False; skip first in the concatenation; no explicit
  initialisation anywhere (main.py neither), so PyTorch's default init is the paper's init;
  one output, no deep supervision (the original has none, nothing was left out).
- the XTinyU-Net authors' fork, github.com/alvinkimbowa/CMUNeXt (analyze_model.py,
  run_train.sh, network/CMUNeXt.py at 60b09b7), and their results notebook,
  github.com/alvinkimbowa/nntinyunet notebooks/reproduce_miccai26.ipynb (Table 1/2 cells).

Parameter count (PUBLISHED_PARAMETERS, XTinyU-Net Table 1: 417.50k). It holds at
in_channels=3, num_classes=1 with the S defaults: exactly 417,505 parameters. The authors' model
analysis (analyze_model.py before commit 925b3d8, 2026-03-16) built `cmunext_s()` with its
defaults, input_channel=3 and num_classes=1, for every dataset, and the notebook prints
f"{417505 / 1e3:.2f}", which is "417.50" because 417.505 is stored as 417.50499999... Strictly
decimal rounding would give 417.51k; 417,505 lies on the upper edge of [417,495, 417,505].
Corroboration: their Table 2 prints 417.60k, which this network gives with 4 input channels
(BraTS) and 3 or 4 outputs (417,595 / 417,604), after the fix made analysis honour the dataset's
channels. The count grows by 72 per input channel (3x3x8 stem weights) and by 9 per class (8
head weights + bias).

Cost at [1, 3, 256, 256], num_classes=1, counted as unetscout.models.describe does (Conv2d MACs
only): 1,012,383,744 MACs = 2.02 GFLOPs. The XTinyU-Net table's 2.18 G is 2 x thop's count
(1,090,109,440, thop 0.1.1 as in the authors' analyze_model.py), which also counts BatchNorm,
bilinear upsampling and activations; at 4 input channels thop gives their Table 2's 2.19 G.
The CMUNeXt paper's own plots (imgs/Params.png, imgs/GFLOPs.png in the official repository)
place CMUNeXt-S at about 0.4 M parameters and 1 GFLOPs, i.e. thop's MACs reported as FLOPs.

All BatchNorm layers use batch statistics in train() and running statistics in eval(); there is
no dropout, so that is the only train/eval difference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# Four 2x2 max pools between the five levels.
DIVISOR: int = 2 ** 4

# XTinyU-Net's Table 1 count (417.50k) and the channels at which our count reproduces it.
PUBLISHED_PARAMETERS: int = 417500
PUBLISHED_CONFIG: dict[str, int] = dict(in_channels=3, num_classes=1)

# The S variant's hyperparameters (official cmunext_s()).
S_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 128)
S_DEPTHS: tuple[int, ...] = (1, 1, 1, 1, 1)
S_KERNEL_SIZES: tuple[int, ...] = (3, 3, 7, 7, 9)
# Inverted-bottleneck width factor of both the CMUNeXt and the Skip-Fusion blocks.
S_EXPANSION: int = 4

N_LEVELS = 5


class ConvNormReLU(nn.Sequential):
    """3x3 conv -> BatchNorm -> ReLU: the plain conv of the stem, width changes and up path."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # The bias is redundant before a BatchNorm, but the official code keeps it and the
        # published parameter count includes it.
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


class ConvGeluNorm(nn.Sequential):
    """conv -> GELU -> BatchNorm, the order the paper uses inside its own blocks."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=True)
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(out_channels)


class CMUNeXtBlock(nn.Module):
    """Residual large-kernel depthwise conv, then a 1x1 inverted bottleneck (same width)."""

    def __init__(self, channels: int, kernel_size: int, expansion: int = S_EXPANSION) -> None:
        super().__init__()
        # One filter per channel with a wide window: long-range spatial mixing at little cost.
        self.spatial_mix = ConvGeluNorm(channels, channels, kernel_size, groups=channels)
        # Channel mixing in a widened space, as in ConvNeXt / MobileNetV2.
        self.channel_mix = nn.Sequential(
            ConvGeluNorm(channels, channels * expansion),
            ConvGeluNorm(channels * expansion, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Only the spatial part is residual (the paper's Eq. 1); the bottleneck is not.
        return self.channel_mix(x + self.spatial_mix(x))


class EncoderLevel(nn.Sequential):
    """`depth` CMUNeXt blocks at the input width, then a 3x3 conv to the level's width."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, kernel_size: int,
                 expansion: int = S_EXPANSION) -> None:
        super().__init__(
            *[CMUNeXtBlock(in_channels, kernel_size, expansion) for _ in range(depth)],
            ConvNormReLU(in_channels, out_channels),
        )


class UpConv(nn.Sequential):
    """Bilinear x2 upsampling then a 3x3 conv to the skip's width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            # align_corners=False is what the official nn.Upsample(mode='bilinear') defaults to.
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ConvNormReLU(in_channels, out_channels),
        )


class SkipFusion(nn.Sequential):
    """Fuses [skip, upsampled] (2c channels) into c channels.

    The 3x3 conv has two groups, so at first each source is filtered on its own (skip in one
    group, decoder in the other, hence the concatenation order matters); the 1x1 inverted
    bottleneck that follows mixes the two.
    """

    def __init__(self, channels: int, expansion: int = S_EXPANSION) -> None:
        super().__init__(
            ConvGeluNorm(2 * channels, 2 * channels, 3, groups=2),
            ConvGeluNorm(2 * channels, channels * expansion),
            ConvGeluNorm(channels * expansion, channels),
        )


class CMUNeXtS(nn.Module):
    """CMUNeXt with the S variant's hyperparameters as defaults (see the module docstring).

    Input [N, in_channels, H, W] with H and W multiples of DIVISOR; output logits
    [N, num_classes, H, W] (no softmax or sigmoid; num_classes=1 is the official binary head).
    Initialisation: PyTorch's defaults, as the official code (which sets none).
    """

    def __init__(self, in_channels: int, num_classes: int,
                 widths: Sequence[int] = S_WIDTHS,
                 depths: Sequence[int] = S_DEPTHS,
                 kernel_sizes: Sequence[int] = S_KERNEL_SIZES,
                 expansion: int = S_EXPANSION) -> None:
        super().__init__()
        if not len(widths) == len(depths) == len(kernel_sizes) == N_LEVELS:
            # DIVISOR and the published variants all assume the paper's five levels.
            raise ValueError(f"CMUNeXt has {N_LEVELS} levels: got widths {tuple(widths)}, "
                             f"depths {tuple(depths)}, kernel sizes {tuple(kernel_sizes)}")
        widths, depths, kernel_sizes = tuple(widths), tuple(depths), tuple(kernel_sizes)
        self.stem = ConvNormReLU(in_channels, widths[0])
        # Level l works at widths[l-1] and ends at widths[l]; the first keeps the stem's width.
        level_inputs = (widths[0],) + widths[:-1]
        self.encoder = nn.ModuleList(
            EncoderLevel(c_in, c_out, depth, kernel, expansion)
            for c_in, c_out, depth, kernel in zip(level_inputs, widths, depths, kernel_sizes))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # Decoder, deepest first: up from widths[l+1] to widths[l], fuse at widths[l].
        self.up = nn.ModuleList(UpConv(widths[l + 1], widths[l]) for l in reversed(range(N_LEVELS - 1)))
        self.fuse = nn.ModuleList(SkipFusion(widths[l], expansion) for l in reversed(range(N_LEVELS - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.widths = widths

    def stage_widths(self) -> list[int]:
        """Channels of the five encoder levels, shallowest first."""
        return list(self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        x = self.stem(x)
        for level, encode in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = encode(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck is no skip
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat((skips.pop(), up(x)), dim=1))
        return self.head(x)


NETWORK = CMUNeXtS
