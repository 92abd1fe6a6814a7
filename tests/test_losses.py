"""Losses against hand-computed values (MONAI style: tiny tensors, numbers worked out by hand)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unetscout.train.losses import (SegmentationLoss, deep_supervision_weights, downsample_target,
                                    soft_dice)

SMOOTH = 1e-5
LN3 = math.log(3.0)


def two_pixel_case() -> tuple[torch.Tensor, torch.Tensor]:
    """One sample, two pixels, two classes. Pixel A: p(fg) = 0.75, target fg; pixel B:
    p(fg) = 0.25, target bg (softmax of (0, ln 3) is (1/4, 3/4))."""
    logits = torch.tensor([[[[0.0, LN3]], [[LN3, 0.0]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[1, 0]]])
    return logits, target


def test_soft_dice_two_pixels():
    logits, target = two_pixel_case()
    # TP = 0.75, sum(p_fg) = 0.75 + 0.25 = 1, sum(target) = 1.
    expected = (2 * 0.75 + SMOOTH) / (1.0 + 1.0 + SMOOTH)
    assert soft_dice(logits, target, SMOOTH).item() == pytest.approx(expected, rel=1e-6)


def test_batch_dice_differs_from_per_sample_mean():
    logits_a, target_a = two_pixel_case()
    # Second sample: both pixels p(fg) = 0.25, no foreground in the target.
    logits_b = torch.tensor([[[[LN3, LN3]], [[0.0, 0.0]]]])
    target_b = torch.tensor([[[0, 0]]])
    logits, target = torch.cat([logits_a, logits_b]), torch.cat([target_a, target_b])
    dice_a = (1.5 + SMOOTH) / (2.0 + SMOOTH)
    dice_b = SMOOTH / (0.5 + SMOOTH)
    assert soft_dice(logits, target, SMOOTH, batch_dice=False).item() == pytest.approx((dice_a + dice_b) / 2, rel=1e-5)
    # Batch Dice pools the counts: TP 0.75, sum(p) 1.5, sum(target) 1.
    assert soft_dice(logits, target, SMOOTH, batch_dice=True).item() == pytest.approx((1.5 + SMOOTH) / (2.5 + SMOOTH),
                                                                                     rel=1e-6)


def test_dice_macro_over_foreground_classes_only():
    # Three classes, one pixel each of class 1 and 2, predicted perfectly (large logits);
    # background is wrong everywhere it could be but must not count.
    logits = torch.full((1, 3, 1, 2), -30.0)
    logits[0, 1, 0, 0] = 30.0
    logits[0, 2, 0, 1] = 30.0
    target = torch.tensor([[[1, 2]]])
    assert soft_dice(logits, target, SMOOTH).item() == pytest.approx(1.0, abs=1e-6)
    # Swap the target: both foreground classes get Dice ~ 0.
    assert soft_dice(logits, torch.tensor([[[2, 1]]]), SMOOTH).item() == pytest.approx(0.0, abs=1e-5)


def test_cross_entropy_plus_dice_by_hand():
    logits, target = two_pixel_case()
    # Both pixels give their true class probability 0.75: CE = -ln 0.75 = ln(4/3).
    dice = (1.5 + SMOOTH) / (2.0 + SMOOTH)
    loss = SegmentationLoss(ce_weight=1.0, dice_weight=1.0, smooth=SMOOTH)(logits, target)
    assert loss.item() == pytest.approx(math.log(4 / 3) + 1 - dice, rel=1e-6)
    ce_only = SegmentationLoss(ce_weight=2.0, dice_weight=0.0)(logits, target)
    assert ce_only.item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)


@pytest.mark.parametrize("n, expected", [
    (1, [1.0]),
    (2, [1.0, 0.0]),
    (3, [2 / 3, 1 / 3, 0.0]),
    (5, [1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875, 0.0]),
])
def test_deep_supervision_weights(n, expected):
    assert deep_supervision_weights(n) == pytest.approx(expected)


def test_downsample_target_keeps_block_labels():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
    assert downsample_target(target, (2, 2)).tolist() == [[[0, 1], [2, 0]]]
    assert downsample_target(target, (4, 4)) is target


def test_deep_supervision_loss_weights_each_resolution():
    torch.manual_seed(0)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
    full, half, quarter = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2), torch.randn(1, 3, 1, 1)
    loss = SegmentationLoss(ce_weight=1.0, dice_weight=0.0)([full, half, quarter], target)
    half_target = torch.tensor([[[0, 1], [2, 0]]])
    expected = 2 / 3 * F.cross_entropy(full, target) + 1 / 3 * F.cross_entropy(half, half_target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_is_float32_for_bf16_logits():
    logits, target = two_pixel_case()
    loss = SegmentationLoss()(logits.to(torch.bfloat16), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
