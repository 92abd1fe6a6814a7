"""Patient-level Dice: the one formula and the one aggregation (docs/methods.md#patient-level-dice).

Training's validation (`train.validate`, which picks the best epoch) and evaluation
(`evaluate.metrics`, which writes patients.tsv) both score through this module, so the two
cannot drift apart. It is top level because `train` may not import `evaluate`; it is numpy
only, and the training loop counts on the device and hands its summed matrices over.

- Counts are a K x K confusion matrix, rows = reference class, columns = predicted class.
- Per foreground class (1..K-1), TP / FP / FN are summed over every slice of every case of
  the patient (the confusion matrices are added up), then `Dice = 2TP / (2TP + FP + FN)`;
  it is not a mean of per-slice or per-case Dice. Both sides empty -> NaN (skipped, as in
  nnU-Net); an empty prediction against a non-empty reference is 0.
- A patient's Dice is the mean over foreground classes, skipping NaN; NaN if all are NaN.
- A dataset's Dice is the mean over patients, skipping patients whose Dice is NaN.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def confusion_matrix(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] int64 counts over all voxels, rows = reference class, columns = predicted class."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    for name, arr in (("prediction", pred), ("reference", ref)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    codes = ref.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def foreground_counts(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN per foreground class 1..K-1 (int64 arrays of length K-1) of a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp   # predicted k, reference something else
    fn = matrix.sum(axis=1) - tp   # reference k, predicted something else
    return tp[1:], fp[1:], fn[1:]


def dice_from_counts(tp, fp, fn) -> np.ndarray:
    """2TP / (2TP + FP + FN) elementwise; NaN where the denominator is 0 (both empty)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def class_dice(confusions: Iterable[np.ndarray]) -> np.ndarray:
    """A patient's Dice per foreground class from the confusion matrices of its slices or cases
    (summed first, so the counts are pooled over the whole patient)."""
    total = None
    for matrix in confusions:
        matrix = np.asarray(matrix, dtype=np.int64)
        total = matrix.copy() if total is None else total + matrix
    if total is None:
        raise ValueError("a patient needs at least one confusion matrix")
    return dice_from_counts(*foreground_counts(total))


def patient_score(per_class: np.ndarray) -> float:
    """A patient's Dice: the mean of its per-class Dice over the classes where it is defined."""
    return _mean_skipping_nan(per_class)


def dataset_score(per_patient: Iterable[float]) -> float:
    """A dataset's Dice: the mean of its patients' Dice, skipping patients whose Dice is NaN."""
    return _mean_skipping_nan(list(per_patient))


def _mean_skipping_nan(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        return float("nan")
    return float(np.nanmean(values))
