"""One optimisation step of a network on one batch: what training and the pruning loop's
recovery training both do per iteration."""

from __future__ import annotations

from typing import Callable

import torch


def optimisation_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      loss_fn: Callable[..., torch.Tensor], image: torch.Tensor, label: torch.Tensor, *,
                      grad_clip: float, mixed_precision: bool) -> torch.Tensor:
    """Forward (under bf16 autocast on the image's device when `mixed_precision`), the loss
    (float32: `SegmentationLoss` casts the logits), fresh gradients, backward, the gradient
    norm clipped to `grad_clip` when it is > 0, and the optimiser's step. Returns the detached
    loss, still on the device: reading it is the caller's choice of when to synchronise."""
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=mixed_precision):
        outputs = model(image)
    loss = loss_fn(outputs, label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()
