"""Patient-level validation Dice used to pick the best epoch (METHODS §5).

Per foreground class, TP / FP / FN are summed over all slices of a patient (all of its
cases), `Dice = 2TP / (2TP + FP + FN)`, NaN when reference and prediction are both empty.
A patient's score is the nanmean over foreground classes; the dataset's score is the mean
over patients, skipping patients whose every class is NaN (as nnU-Net skips NaN).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def confusion_matrix(pred: Tensor, ref: Tensor, num_classes: int) -> Tensor:
    """[K, K] int64 counts, rows = reference class, columns = predicted class."""
    codes = ref.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def dice_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Dice per foreground class (classes 1..K-1) from a [K, K] confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denominator > 0, 2 * tp / denominator, np.nan)
    return dice[1:]


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN is the intended result
        return float(np.nanmean(values)) if len(values) else float("nan")


@torch.no_grad()
def patient_dice(model: nn.Module, store: Any, split: str, device: torch.device, batch_size: int = 64,
                 autocast: bool = False, channels_last: bool = False) -> tuple[float, dict[str, float]]:
    """Predict every slice of the split (argmax) and return (dataset Dice, {patient: Dice})."""
    was_training = model.training
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
                x = torch.from_numpy(np.array(image[start:start + batch_size])).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp:
                    logits = model(x)
                if isinstance(logits, (list, tuple)):  # deep supervision: full resolution first
                    logits = logits[0]
                ref = torch.from_numpy(np.array(label[start:start + batch_size])).to(device)
                counts += confusion_matrix(logits.argmax(1), ref, k)
            patient = store.patient_of(case)
            per_patient[patient] = per_patient.get(patient, 0) + counts
    finally:
        model.train(was_training)
    scores = {p: _nanmean(dice_from_confusion(c.cpu().numpy())) for p, c in sorted(per_patient.items())}
    return _nanmean(np.array(list(scores.values()), dtype=np.float64)), scores
