"""TinyU-Net: a 0.48M-parameter U-Net built from Cascaded Multi-Receptive Field (CMRF) modules.

Reference: J. Chen, R. Chen, W. Wang, J. Cheng, L. Zhang, L. Chen, "TinyU-Net: Lighter Yet
Better U-Net with Cascaded Multi-receptive Fields", MICCAI 2024, LNCS 15009, pp. 626-635,
doi:10.1007/978-3-031-72114-4_60. Written here from the paper (Sec. 2.1 CMRF, Sec. 2.2
TinyU-Net, Fig. 1, implementation details of Sec. 3).

The network: four CMRF -> max-pool encoder stages (widths 64, 128, 256, 512), four bicubic x2
upsampling -> concat(up, skip) -> CMRF decoder stages, and a 1x1 convolution as the head. There
is no separate bottleneck block: the deepest decoder stage takes the pooled output of the
fourth encoder stage. A CMRF with N = 8 squeezes its input to C_out/N channels (1x1 conv, BN,
GELU), splits them by channel parity, sums the two halves (the paper's "linear" branch), runs
N-1 depthwise 3x3 conv + BN blocks in cascade on the even half, concatenates the sum and the
N-1 cascade outputs (C_out/2 channels) and expands them to C_out (1x1 conv, BN, GELU).

Details checked against public code (read, not copied):
- the authors' repository github.com/ChenJunren-Lab/TinyU-Net, file `TinyU-Net.py` (HEAD
  7314772): bias-free convolutions before every BatchNorm; BatchNorm eps 1e-3, momentum 0.03;
  exact GELU; depthwise kernel 3 with no activation after its BN; channel split `0::2` / `1::2`
  (the paper's 1-based odd / even channels) with the cascade on the `1::2` half; concat order
  [sum, cascade outputs shallowest first]; decoder concat order [upsampled, skip]; bicubic
  upsampling with align_corners=False; a 1x1 head *with* bias; no explicit weight
  initialisation (PyTorch's defaults: kaiming-uniform(a=sqrt(5)) convolutions, BN weight 1 /
  bias 0), which is what this module uses too.
- the XTinyU-Net authors' training code github.com/alvinkimbowa/monounet (`src/TinyUNet.py`
  is the official file unchanged; `src/train.py` builds `TinyUNet(input_channels,
  num_classes)`; `scripts/run_train.sh` set `input_channels=3, num_classes=1` for TinyUNet
  until commit b6d698b changed it to 2). github.com/alvinkimbowa/nntinyunet only loads those
  results (`notebooks/reproduce_miccai26.ipynb`, `../monounet/models/TinyUNet/...`).

Left out: the official CMRF adds its input to its output when its input and output widths
are equal. No CMRF of TinyU-Net has equal widths (the encoder doubles, every decoder stage
halves after the concat), the only exception being a 64-channel input image, so the branch is
dead code for any real image and is not written here. There are no auxiliary outputs.

PARAMETER COUNT. At in_channels=3, num_classes=1 (the XTinyU-Net authors' setting: RGB-fed,
a single-logit binary head) and the paper's defaults, the network has 481,105 parameters,
which the XTinyU-Net paper prints as 481.11k. The original paper's 0.48M is the same network
at its own setting (3 channels, 2 classes for ISIC2018: 481,170, printed 481.17k in the
monounet notebooks). Only the first 1x1 convolution (widths[0] / N weights per input channel,
no bias) and the head (widths[0] + 1 per class) depend on the channels and classes, so
in_channels=4, num_classes=1 (481,113) would round to 481.11k as well; nothing in the authors'
code points to a 4-channel input.

Cost at [1, 3, 256, 256], the house's convention (Conv2d MACs only, GFLOPs = 2 * MACs / 1e9):
3.122 GFLOPs with 1 class, 3.130 with 2. thop, which the paper used, also counts BatchNorm
and gives 3.318 / 3.327, i.e. the paper's 3.33 (Table 1, ISIC2018).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unetscout.errors import UnetscoutError

WIDTHS = (64, 128, 256, 512)     # paper Sec. 2.2: C1..C4, as the standard U-Net's stages
RECEPTIVE_FIELDS = 8             # paper's N (ablation Table 4: N = 8 is best)
KERNEL_SIZE = 3                  # the depthwise cascade's kernel (paper Sec. 2.1)
UPSAMPLE_MODE = "bicubic"        # paper Sec. 2.2
# The official code takes its norm settings from YOLOv5/v8's Conv block, not PyTorch's defaults.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03

# Four max-pools of stride 2 at the default widths.
DIVISOR: int = 2 ** len(WIDTHS)

PUBLISHED_PARAMETERS = 481110    # XTinyU-Net paper: "481.11k"
PUBLISHED_CONFIG = dict(in_channels=3, num_classes=1)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class PointwiseBlock(nn.Sequential):
    """1x1 conv -> BN -> GELU (the paper's PWConv-BN-Act); the BN makes a conv bias redundant."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         _batch_norm(out_channels), nn.GELU())


class DepthwiseBlock(nn.Sequential):
    """Depthwise kxk conv -> BN, no activation: the cascade stays linear between squeeze and expand."""

    def __init__(self, channels: int, kernel_size: int = KERNEL_SIZE):
        super().__init__(nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                   groups=channels, bias=False),
                         _batch_norm(channels))


class CascadedMultiReceptiveField(nn.Module):
    """The CMRF module (paper Sec. 2.1, Fig. 1 left).

    Each depthwise block in the cascade widens the receptive field by kernel_size - 1, so the
    concatenation holds N views of the same squeezed features at N different receptive fields
    for the price of a few depthwise filters.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 receptive_fields: int = RECEPTIVE_FIELDS, kernel_size: int = KERNEL_SIZE):
        super().__init__()
        if receptive_fields < 1 or out_channels % (2 * receptive_fields):
            # The parity split needs an even squeezed width, and the N branches must fill C_out/2.
            raise UnetscoutError(f"a CMRF of width {out_channels} cannot hold {receptive_fields} "
                                 f"receptive fields: the width must be a multiple of {2 * receptive_fields}")
        branch_channels = out_channels // (2 * receptive_fields)
        self.squeeze = PointwiseBlock(in_channels, 2 * branch_channels)
        self.cascade = nn.ModuleList(DepthwiseBlock(branch_channels, kernel_size)
                                     for _ in range(receptive_fields - 1))
        self.expand = PointwiseBlock(receptive_fields * branch_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.squeeze(x)
        # The paper numbers channels from 1, so its "odd" channels are the 0-based even ones.
        odd, even = squeezed[:, 0::2], squeezed[:, 1::2]
        branches = [odd + even]    # mixes the redundant halves, mixup-style (paper Sec. 2.1)
        deeper = even
        for block in self.cascade:
            deeper = block(deeper)
            branches.append(deeper)
        return self.expand(torch.cat(branches, dim=1))


class TinyUNet(nn.Module):
    """TinyU-Net (Chen et al., MICCAI 2024); returns logits, no softmax, no auxiliary outputs.

    in_channels / num_classes: the image's channels and the head's outputs (the background
    counts as a class for a softmax head; 1 for a single sigmoid logit).
    widths: the CMRF output channels per encoder level, shallowest first (paper: 64..512);
    each must be a multiple of 2 * receptive_fields.
    receptive_fields: the paper's N, branches concatenated inside each CMRF (N-1 depthwise).
    kernel_size: the depthwise cascade's kernel.
    upsample_mode: the decoder's x2 interpolation (paper: bicubic).

    Initialisation: PyTorch's defaults, as the official code leaves them. H and W must be
    multiples of `size_divisor` (DIVISOR = 16 at the default four levels).
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = WIDTHS,
                 receptive_fields: int = RECEPTIVE_FIELDS, kernel_size: int = KERNEL_SIZE,
                 upsample_mode: str = UPSAMPLE_MODE):
        super().__init__()
        widths = tuple(widths)
        self.widths = widths
        self.upsample_mode = upsample_mode
        self.size_divisor = 2 ** len(widths)
        encoder_inputs = (in_channels,) + widths[:-1]
        self.encoder = nn.ModuleList(CascadedMultiReceptiveField(c_in, c_out, receptive_fields, kernel_size)
                                     for c_in, c_out in zip(encoder_inputs, widths))
        # Decoder level i upsamples the level below (the pooled last encoder output at the
        # bottom, hence widths[-1] twice) and fuses it with skip i back down to widths[i].
        below = widths[1:] + widths[-1:]
        self.decoder = nn.ModuleList(
            CascadedMultiReceptiveField(up + skip, skip, receptive_fields, kernel_size)
            for up, skip in zip(below, widths))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def stage_widths(self) -> list[int]:
        """Channels per encoder stage, shallowest first."""
        return list(self.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise UnetscoutError(f"input size {h}x{w} is not divisible by {self.size_divisor} "
                                 f"(TinyU-Net pools {len(self.widths)} times)")
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for stage, skip in zip(reversed(self.decoder), reversed(skips)):
            up = F.interpolate(x, scale_factor=2, mode=self.upsample_mode, align_corners=False)
            x = stage(torch.cat([up, skip], dim=1))
        return self.head(x)


NETWORK = TinyUNet
