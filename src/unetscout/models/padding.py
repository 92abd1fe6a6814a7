"""Even zero padding to a multiple of a network's total stride, and the crop back.

Designs with a fixed number of downsamplings (the encoder U-Nets, the lightweight peers) need
inputs whose sides divide by 2**depth; any slice size then works by padding evenly, running the
network and cropping the logits back to the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Padding = tuple[int, int, int, int]   # F.pad order: left, right, top, bottom


def pad_amounts(size: int, divisor: int) -> tuple[int, int]:
    """(before, after) zero padding that makes `size` a multiple of `divisor`, split evenly."""
    total = -size % divisor
    return total // 2, total - total // 2


def pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, Padding]:
    """`x` [N, C, H, W] zero-padded so H and W divide by `divisor`, and the padding used."""
    top, bottom = pad_amounts(x.shape[-2], divisor)
    left, right = pad_amounts(x.shape[-1], divisor)
    padding = (left, right, top, bottom)
    return (F.pad(x, padding) if any(padding) else x), padding


def crop_back(y: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Undo `pad_to_multiple` on an output of the padded input's size."""
    left, right, top, bottom = padding
    if not any(padding):
        return y
    return y[..., top:y.shape[-2] - bottom, left:y.shape[-1] - right]
