"""Patient-level segmentation metrics: Dice from summed counts and HD95 on 3-D stacks.

Conventions (docs/methods.md#evaluation):
- Dice is `unetscout.dice`'s, the one training's validation uses: per foreground class
  `2TP / (2TP + FP + FN)` with TP/FP/FN summed over every voxel of the patient (all
  slices, all of its cases), not the mean of per-slice Dice; both sides empty -> NaN
  (skipped); the patient's Dice is the mean over classes with a defined value.
- HD95 is computed as MONAI's `compute_hausdorff_distance(..., percentile=95)` computes it
  (the field's definition, used by the XTinyU-Net authors): the LARGER of the two directed
  95th percentiles, max(P95(prediction surface -> reference surface), P95(reference surface
  -> prediction surface)), each with linear interpolation (`numpy.percentile`, as
  `torch.quantile`). Not medpy's `hd95`, which takes the 95th percentile of the two
  directions pooled in one set. Surface voxels are MONAI's `get_mask_edges` edges: the mask
  minus its `scipy.ndimage.binary_erosion` with scipy's default (face-connected,
  6-neighbour) structure, voxels outside the array counting as background. Distances are
  Euclidean in mm (`distance_transform_edt(..., sampling=spacing)`; px for 2-D image sets,
  which have unit spacing). tests/test_hd95_monai.py checks the values against MONAI.
- Empty sides (where MONAI's directed distances are all inf and its 95th percentile comes out
  NaN, which its means skip): an empty prediction of a class present in the
  reference, or a predicted class absent from the reference, scores the diagonal of the
  case's image extent, sqrt(sum((shape_i * spacing_i)^2)) in mm (no distance inside the image
  is larger), and is counted in every mean, with the reason ("empty prediction" / "empty
  reference") in the note. Both sides empty -> NaN ("both empty"), skipped as for Dice.
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

# scipy's default erosion structure for 3-D, the one MONAI's get_mask_edges uses
# (`binary_erosion(seg) ^ seg`, no structure given, border_value 0).
_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


# A stack of one slice is an image (a 2-D image dataset's case): its edge is the in-plane outline,
# as MONAI computes it on the 2-D array. Eroding it in 3-D would make every pixel an edge (both
# z-neighbours lie outside the array).
_IN_PLANE_NEIGHBOURS = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_NEIGHBOURS[:, :, 1] = ndimage.generate_binary_structure(2, 1)


def _surface(mask: np.ndarray, image: bool) -> np.ndarray:
    """The mask's edge voxels: those with a face neighbour in the background (or outside);
    in-plane neighbours only for an `image` (a stack of one slice)."""
    structure = _IN_PLANE_NEIGHBOURS if image else _FACE_NEIGHBOURS
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus one voxel.

    Exact, not an approximation: every surface voxel stays inside, and the one-voxel margin
    keeps the erosion from seeing an artificial border where the full array has none.
    """
    coords = np.nonzero(pred | ref)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    return pred[box], ref[box]


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of an image's extent, sqrt(sum((shape_i * spacing_i)^2)), in mm: the
    penalty HD95 of a case with one side empty."""
    return float(np.sqrt(sum((int(n) * float(s)) ** 2 for n, s in zip(shape, spacing, strict=True))))


def directed_hd95(from_surface: np.ndarray, to_surface: np.ndarray, sampling: tuple[float, ...]) -> float:
    """95th percentile (linear interpolation) of the distances from every voxel of
    `from_surface` to the nearest voxel of `to_surface`, in the units of `sampling`."""
    # EDT of the complement gives, at every voxel, the distance to the nearest surface voxel.
    distances = ndimage.distance_transform_edt(~to_surface, sampling=sampling)
    return float(np.percentile(distances[from_surface], HD95_PERCENTILE))


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray,
         spacing: Sequence[float]) -> tuple[float, str]:
    """95th percentile Hausdorff distance in mm between two 3-D binary masks, as MONAI's
    `compute_hausdorff_distance(percentile=95)`: the larger of the two directed 95th percentiles.

    Returns `(value, reason)`: reason is "" when both sides have foreground. With one side
    empty the value is the diagonal of the image extent (`image_diagonal`) and reason is
    "empty prediction" or "empty reference"; with both empty it is NaN, "both empty".
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
        return image_diagonal(pred.shape, spacing), EMPTY_PREDICTION
    if not has_ref:
        return image_diagonal(pred.shape, spacing), EMPTY_REFERENCE
    image = pred.shape[2] == 1
    pred, ref = _crop_to_union(pred, ref)
    pred_surface, ref_surface = _surface(pred, image), _surface(ref, image)
    sampling = tuple(float(s) for s in spacing)
    return max(directed_hd95(pred_surface, ref_surface, sampling),
               directed_hd95(ref_surface, pred_surface, sampling)), ""


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

    Cases where the class is absent from both sides are skipped (like NaN Dice). Cases with
    one side empty count with their penalty value (the image diagonal) and are named in the
    note ("empty prediction" for a single case, "<case>: empty prediction; ..." for several),
    so the tables can count them. All cases both empty -> NaN, "both empty".
    """
    counted = [(case, value, reason) for case, (value, reason) in per_case if reason != BOTH_EMPTY]
    if not counted:
        return float("nan"), BOTH_EMPTY
    notes = [f"{case}: {reason}" if len(per_case) > 1 else reason for case, _, reason in counted if reason]
    return float(np.mean([value for _, value, _ in counted])), "; ".join(notes)


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
