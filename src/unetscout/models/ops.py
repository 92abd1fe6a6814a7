"""The candidate operations of an IAC edge (DARTS's op set): name -> constructor.

One small table, as in DARTS / PC-DARTS, imported by the cells (models/cell.py) and by the
genotype's validation (models/genotype.py), so neither has to import the other for it.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


def _sep_conv(kernel: int) -> Callable[[int, bool], nn.Module]:
    def build(channels: int, affine: bool) -> nn.Module:
        def half() -> list[nn.Module]:
            return [nn.ReLU(inplace=False),
                    nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False),
                    nn.Conv2d(channels, channels, 1, bias=False),
                    nn.BatchNorm2d(channels, affine=affine)]
        return nn.Sequential(*half(), *half())
    return build


def _dil_conv(kernel: int, dilation: int = 2) -> Callable[[int, bool], nn.Module]:
    def build(channels: int, affine: bool) -> nn.Module:
        return nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                      groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels, affine=affine))
    return build


# The candidate operations: name -> constructor(channels, affine). All keep shape (stride 1).
# ReLUs are not in-place: every op of an edge reads the same input tensor.
OPS: dict[str, Callable[[int, bool], nn.Module]] = {
    "identity": lambda c, affine: nn.Identity(),
    "max_pool_3x3": lambda c, affine: nn.MaxPool2d(3, stride=1, padding=1),
    "avg_pool_3x3": lambda c, affine: nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    "sep_conv_3x3": _sep_conv(3),
    "sep_conv_5x5": _sep_conv(5),
    "dil_conv_3x3": _dil_conv(3),
    "dil_conv_5x5": _dil_conv(5),
}
OP_NAMES: tuple[str, ...] = tuple(OPS)
OP_INDEX: dict[str, int] = {name: o for o, name in enumerate(OP_NAMES)}
N_OPS = len(OP_NAMES)
