"""Patient-level validation Dice used to pick the best epoch (docs/methods.md#patient-level-dice).

The slices are predicted and counted on the device; the formula and the aggregation over
classes and patients are `unetscout.dice`'s, the same evaluation uses.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unetscout.device import fast_layout
from unetscout.dice import class_dice, dataset_score, patient_score


def confusion_matrix(pred: Tensor, ref: Tensor, num_classes: int) -> Tensor:
    """[K, K] int64 counts on `pred`'s device, laid out as `unetscout.dice.confusion_matrix`
    (rows = reference class, columns = predicted class), so validation never leaves the GPU
    until a patient is done."""
    codes = ref.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@torch.no_grad()
def patient_dice(model: nn.Module, store: Any, split: str, device: torch.device, batch_size: int = 64,
                 autocast: bool = False, channels_last: bool = False) -> tuple[float, dict[str, float]]:
    """Predict every slice of the split (argmax) and return (dataset Dice, {patient: Dice})."""
    modes = {m: m.training for m in model.modules()}  # per module: a frozen part stays in eval
    model.eval()
    k = store.num_classes
    per_patient: dict[str, Tensor] = {}
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    try:
        for case in store.cases(split):
            image, label = store.image(case), store.label(case)
            counts = torch.zeros(k, k, dtype=torch.int64, device=device)
            for start in range(0, image.shape[0], batch_size):
                # np.array copies out of the read-only memory map (torch wants writable memory).
                x = fast_layout(torch.from_numpy(np.array(image[start:start + batch_size])).to(device), channels_last)
                with amp:
                    logits = model(x)
                if isinstance(logits, (list, tuple)):  # deep supervision: full resolution first
                    logits = logits[0]
                ref = torch.from_numpy(np.array(label[start:start + batch_size])).to(device)
                counts += confusion_matrix(logits.argmax(1), ref, k)
            patient = store.patient_of(case)
            per_patient[patient] = per_patient.get(patient, 0) + counts
    finally:
        for module, training in modes.items():
            module.training = training
    scores = {p: patient_score(class_dice([c.cpu().numpy()])) for p, c in sorted(per_patient.items())}
    return dataset_score(scores.values()), scores
