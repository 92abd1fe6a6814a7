"""Segmentation losses: cross-entropy + soft Dice, optionally over deep-supervision outputs.

Dice follows nnU-Net's SoftDiceLoss: softmax probabilities, foreground classes only,
`dice_k = (2 TP_k + smooth) / (2 TP_k + FP_k + FN_k + smooth)` with soft counts, averaged
over classes (and over samples unless batch Dice). The loss uses `1 - dice` rather than
nnU-Net's `-dice`: same gradient, but a loss that is >= 0 reads better in the log.
Everything is computed in float32 even when the network ran under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unetscout.train.presets import TrainConfig


def soft_dice(logits: Tensor, target: Tensor, smooth: float = 1e-5, batch_dice: bool = False) -> Tensor:
    """Mean soft Dice over foreground classes. logits [B, K, H, W], target [B, H, W] (int)."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    axes = (0, 2, 3) if batch_dice else (2, 3)
    tp = (probs * onehot).sum(axes)
    # 2TP + FP + FN == sum(prob) + sum(onehot), which avoids forming FP and FN separately.
    denominator = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * tp + smooth) / (denominator + smooth).clamp_min(1e-8)
    return dice.mean()


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights: 1/2^i from the highest resolution down, the lowest head 0, sum 1."""
    if n_outputs == 1:
        return [1.0]
    raw = [1.0 / 2 ** i for i in range(n_outputs)]
    raw[-1] = 0.0
    total = sum(raw)
    return [w / total for w in raw]


def downsample_target(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an integer label map [B, H, W] to `size` (nnU-Net's DS targets)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    resized = F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")
    return resized[:, 0].to(target.dtype)


class SegmentationLoss:
    """`ce_weight * CE + dice_weight * (1 - soft Dice)`, summed over deep-supervision outputs
    with `deep_supervision_weights` when the network returns a list (highest resolution first)."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5,
                 batch_dice: bool = False):
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.smooth, self.batch_dice = smooth, batch_dice

    @classmethod
    def from_config(cls, config: TrainConfig) -> "SegmentationLoss":
        return cls(config.ce_weight, config.dice_weight, config.dice_smooth, config.batch_dice)

    def single(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits.float(), target)
        if self.dice_weight:
            loss = loss + self.dice_weight * (1 - soft_dice(logits, target, self.smooth, self.batch_dice))
        return loss

    def __call__(self, outputs: Tensor | list[Tensor] | tuple[Tensor, ...], target: Tensor) -> Tensor:
        if isinstance(outputs, Tensor):
            return self.single(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, logits in zip(weights, outputs):
            if weight:  # the zero-weight head costs nothing
                total = total + weight * self.single(logits, downsample_target(target, logits.shape[-2:]))
        return total
