"""Patient-level segmentation metrics: Dice from summed counts and HD95 on 3-D stacks.

Conventions (docs/methods.md#evaluation):
- Dice is `unetscout.dice`'s, the one training's validation uses: per foreground class
  `2TP / (2TP + FP + FN)` with TP/FP/FN summed over every voxel of the patient (all
  slices, all of its cases), not the mean of per-slice Dice; both sides empty -> NaN
  (skipped); the patient's Dice is the mean over classes with a defined value.
- HD95 is the 95th percentile of the POOLED surface distances: the distances from every
  prediction surface voxel to the reference surface and from every reference surface voxel
  to the prediction surface are put in one set and `numpy.percentile(..., 95)` (linear
  interpolation) is taken, as medpy's `hd95` does. (MONAI's `compute_hausdorff_distance`
  instead takes the max of the two directed 95th percentiles; the two differ when one
  side has a few far outliers.) Surface voxels are the mask minus its erosion with the
  face-connected (6-neighbour) structure, voxels outside the array counting as background,
  and distances are Euclidean in mm (`distance_transform_edt(..., sampling=spacing)`).
  One side empty -> missing (NaN) with a reason, never 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from unetscout.dice import class_dice, confusion_matrix, patient_score

HD95_PERCENTILE = 95.0
BOTH_EMPTY = "both empty"
EMPTY_PREDICTION = "empty prediction"
EMPTY_REFERENCE = "empty reference"

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus one voxel.

    Exact, not an approximation: every surface voxel stays inside, and the one-voxel margin
    keeps the erosion from seeing an artificial border where the full array has none.
    """
    coords = np.nonzero(pred | ref)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    return pred[box], ref[box]


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray,
         spacing: Sequence[float]) -> tuple[float, str]:
    """95th percentile symmetric Hausdorff distance in mm between two 3-D binary masks.

    Returns `(value, reason)`: reason is "" when the value is valid, otherwise the value is
    NaN and reason says why ("both empty", "empty prediction", "empty reference").
    """
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"hd95 needs 3-D masks and 3 spacings, got {pred.ndim}-D and {len(spacing)}")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return float("nan"), BOTH_EMPTY
    if not has_pred:
        return float("nan"), EMPTY_PREDICTION
    if not has_ref:
        return float("nan"), EMPTY_REFERENCE
    pred, ref = _crop_to_union(pred, ref)
    pred_surface, ref_surface = _surface(pred), _surface(ref)
    sampling = tuple(float(s) for s in spacing)
    # EDT of the complement gives, at every voxel, the distance to the nearest surface voxel.
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    pooled = np.concatenate([to_ref[pred_surface], to_pred[ref_surface]])
    return float(np.percentile(pooled, HD95_PERCENTILE)), ""


def foreground_labels(labels: Mapping[str, int]) -> dict[str, int]:
    """Foreground label names -> values in value order (background 0 dropped)."""
    return dict(sorted(((n, int(v)) for n, v in labels.items() if int(v) != 0), key=lambda kv: kv[1]))


def case_hd95(pred_stack: np.ndarray, ref_stack: np.ndarray, labels: Mapping[str, int],
              spacing: Sequence[float]) -> dict[str, tuple[float, str]]:
    """HD95 and its reason per foreground label name for one case's 3-D stack."""
    return {name: hd95(pred_stack == value, ref_stack == value, spacing)
            for name, value in foreground_labels(labels).items()}


def combine_case_hd95(per_case: Sequence[tuple[str, tuple[float, str]]]) -> tuple[float, str]:
    """A patient's HD95 for one class from its cases' values: the mean over its cases.

    Cases where the class is absent from both sides are skipped (like NaN Dice). If any case
    has only one side empty the patient's value is missing, with that case named in the
    reason (when it has several): averaging the other cases would hide the failure.
    """
    failures = [f"{case}: {reason}" if len(per_case) > 1 else reason
                for case, (_, reason) in per_case if reason and reason != BOTH_EMPTY]
    if failures:
        return float("nan"), "; ".join(failures)
    values = [value for _, (value, reason) in per_case if not reason]
    if not values:
        return float("nan"), BOTH_EMPTY
    return float(np.mean(values)), ""


def num_classes_of(labels: Mapping[str, int]) -> int:
    return max(int(v) for v in labels.values()) + 1


def score_patient_cases(cases: Sequence[tuple[str, np.ndarray, np.ndarray, Sequence[float]]],
                        labels: Mapping[str, int]) -> dict:
    """Scores of one patient from its cases `(case, pred_stack, ref_stack, spacing)`.

    Dice sums TP/FP/FN over all cases; HD95 is computed per case and combined by
    `combine_case_hd95`. Keys: `dice`, `dice_<name>`, `hd95_<name>`, `hd95_<name>_note`.
    """
    foreground = foreground_labels(labels)
    num_classes = num_classes_of(labels)
    confusions = []
    hd_per_case: dict[str, list] = {name: [] for name in foreground}
    for case, pred, ref, spacing in cases:
        confusions.append(confusion_matrix(pred, ref, num_classes))
        for name, result in case_hd95(pred, ref, labels, spacing).items():
            hd_per_case[name].append((case, result))
    # class_dice covers classes 1..K-1; pick the ones `labels` names (all, as labels are 0..K-1).
    per_class_dice = class_dice(confusions)[[v - 1 for v in foreground.values()]]
    scores: dict = {"dice": patient_score(per_class_dice)}
    for name, dice in zip(foreground, per_class_dice):
        scores[f"dice_{name}"] = float(dice)
    for name in foreground:
        value, reason = combine_case_hd95(hd_per_case[name])
        scores[f"hd95_{name}"] = value
        scores[f"hd95_{name}_note"] = reason
    return scores


def patient_scores(pred_stack: np.ndarray, ref_stack: np.ndarray, labels: Mapping[str, int],
                   spacing: Sequence[float]) -> dict:
    """Scores of a patient with one 3-D stack [X, Y, S]; see `score_patient_cases`."""
    return score_patient_cases([("case", pred_stack, ref_stack, spacing)], labels)
