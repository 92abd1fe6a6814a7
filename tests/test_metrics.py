"""Patient-level Dice and HD95 against hand-computed values (MONAI-style parametrised cases);
tests/test_hd95_monai.py checks HD95 against MONAI itself."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from unetscout.dice import (
    class_dice, confusion_matrix, dataset_score, dice_from_counts, foreground_counts, patient_score,
)
from unetscout.evaluate.metrics import (
    BOTH_EMPTY, EMPTY_PREDICTION, EMPTY_REFERENCE, combine_case_hd95, hd95, patient_scores,
    score_patient_cases,
)

LABELS = {"background": 0, "lesion": 1, "texture": 2}
NAN = float("nan")


def _same(actual: float, expected: float) -> bool:
    return (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected)


# ---------------------------------------------------------------- confusion and Dice

def test_confusion_counts_by_hand():
    pred = np.array([0, 1, 1, 1, 2, 2, 0])
    ref = np.array([0, 1, 1, 2, 2, 0, 1])
    matrix = confusion_matrix(pred, ref, 3)
    # rows = reference, columns = prediction
    assert matrix.tolist() == [[1, 0, 1], [1, 2, 0], [0, 1, 1]]
    tp, fp, fn = foreground_counts(matrix)
    # lesion: TP at 1,2; FP at 3 (ref texture); FN at 6.  texture: TP at 4; FP at 5; FN at 3.
    assert tp.tolist() == [2, 1]
    assert fp.tolist() == [1, 1]
    assert fn.tolist() == [1, 1]


def test_confusion_rejects_labels_outside_range():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


@pytest.mark.parametrize("tp, fp, fn, expected", [
    (1, 0, 0, 1.0),
    (0, 0, 0, NAN),          # both empty: skipped, not 0 or 1
    (0, 0, 5, 0.0),          # empty prediction, non-empty reference
    (0, 4, 0, 0.0),          # empty reference, non-empty prediction
    (3, 1, 2, 6 / 9),
])
def test_dice_from_counts(tp, fp, fn, expected):
    assert _same(float(dice_from_counts(tp, fp, fn)), expected)


def test_class_dice_sums_the_matrices_before_the_formula():
    # lesion: TP 1 in the first matrix, FN 3 in the second -> 2 / (2 + 3), not mean(1, 0) = 0.5.
    # texture: absent from both matrices -> NaN.
    first = np.array([[5, 0, 0], [0, 1, 0], [0, 0, 0]])
    second = np.array([[3, 0, 0], [3, 0, 0], [0, 0, 0]])
    dice = class_dice([first, second])
    assert dice[0] == pytest.approx(0.4) and math.isnan(dice[1])
    with pytest.raises(ValueError, match="at least one"):
        class_dice([])


@pytest.mark.parametrize("values, patient, dataset", [
    ([0.5, 1.0], 0.75, 0.75),
    ([0.5, NAN], 0.5, 0.5),       # an undefined class / patient is skipped, not counted as 0
    ([NAN, NAN], NAN, NAN),       # nothing defined: NaN, without a RuntimeWarning
    ([], NAN, NAN),
])
def test_patient_and_dataset_means_skip_nan(values, patient, dataset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same(patient_score(np.array(values, dtype=float)), patient)
        assert _same(dataset_score(values), dataset)


def _stack(slices: list[list[list[int]]]) -> np.ndarray:
    """Slices given as [S][X][Y] lists -> a [X, Y, S] stack like the evaluator builds."""
    return np.asarray(slices, dtype=np.uint8).transpose(1, 2, 0)


DICE_CASES = [
    # name, prediction slices, reference slices, dice_lesion, dice_texture, patient dice
    ("perfect both classes",
     [[[1, 0], [0, 2]]], [[[1, 0], [0, 2]]], 1.0, 1.0, 1.0),
    ("texture absent in both: NaN, skipped by the mean",
     [[[1, 1], [0, 0]]], [[[1, 0], [0, 0]]], 2 / 3, NAN, 2 / 3),
    ("empty lesion prediction against non-empty reference: 0",
     [[[0, 0], [0, 2]]], [[[1, 1], [0, 2]]], 0.0, 1.0, 0.5),
    # slice 0: lesion TP=1 (per-slice Dice 1); slice 1: TP=1, FN=2 (per-slice Dice 0.5).
    # Mean of per-slice Dice would be 0.75; the patient's summed counts give 4 / 6.
    ("multi-slice summation",
     [[[1, 0], [0, 0]], [[1, 0], [0, 0]]], [[[1, 0], [0, 0]], [[1, 1], [1, 0]]], 2 / 3, NAN, 2 / 3),
]


@pytest.mark.parametrize("name, pred, ref, lesion, texture, mean", DICE_CASES, ids=[c[0] for c in DICE_CASES])
def test_patient_dice(name, pred, ref, lesion, texture, mean):
    scores = patient_scores(_stack(pred), _stack(ref), LABELS, (1.0, 1.0, 1.0))
    assert _same(scores["dice_lesion"], lesion)
    assert _same(scores["dice_texture"], texture)
    assert _same(scores["dice"], mean)


def test_multi_slice_dice_is_not_the_mean_of_slice_dice():
    pred, ref = _stack(DICE_CASES[3][1]), _stack(DICE_CASES[3][2])
    per_slice = [float(class_dice([confusion_matrix(pred[..., s], ref[..., s], 3)])[0]) for s in range(2)]
    assert per_slice == [1.0, 0.5]
    assert patient_scores(pred, ref, LABELS, (1, 1, 1))["dice_lesion"] == pytest.approx(2 / 3)


def test_patient_with_two_cases_sums_counts_over_both():
    # case A: lesion TP=1; case B: lesion FN=3 -> Dice 2 / (2 + 3) = 0.4 (mean of cases: 0.5).
    a_pred = _stack([[[1, 0], [0, 0]]])
    b_pred = _stack([[[0, 0], [0, 0]]])
    b_ref = _stack([[[1, 1], [1, 0]]])
    scores = score_patient_cases([("A", a_pred, a_pred, (1, 1, 1)), ("B", b_pred, b_ref, (1, 1, 1))], LABELS)
    assert scores["dice_lesion"] == pytest.approx(0.4)
    # HD95 of the lesion: case A is perfect (0); case B has an empty prediction and scores the
    # diagonal of its [2, 2, 1] stack at 1 mm, sqrt(4 + 4 + 1) = 3, counted: (0 + 3) / 2.
    assert scores["hd95_lesion"] == pytest.approx(1.5)
    assert scores["hd95_lesion_note"] == "B: empty prediction"
    assert math.isnan(scores["hd95_texture"])
    assert scores["hd95_texture_note"] == BOTH_EMPTY


# ---------------------------------------------------------------- HD95

def _points(shape, *coords) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for c in coords:
        mask[c] = True
    return mask


def _line(length: int, xs) -> np.ndarray:
    """Voxels along x in a [length, 1, 1] array: every voxel is a surface voxel."""
    mask = np.zeros((length, 1, 1), dtype=bool)
    mask[list(xs), 0, 0] = True
    return mask


HD95_CASES = [
    ("one slice apart along z, 3 mm slices",
     _points((1, 1, 2), (0, 0, 0)), _points((1, 1, 2), (0, 0, 1)), (1.0, 1.0, 3.0), 3.0),
    ("two voxels apart along x, 0.5 mm pixels",
     _points((3, 1, 1), (0, 0, 0)), _points((3, 1, 1), (2, 0, 0)), (0.5, 1.0, 3.0), 1.0),
    ("diagonal with anisotropic spacing: sqrt(1 + 4 + 4)",
     _points((2, 2, 2), (0, 0, 0)), _points((2, 2, 2), (1, 1, 1)), (1.0, 2.0, 2.0), 3.0),
    # pred->ref: 0, 1, ..., 19 (20 values): the 95th percentile sits at index 0.95 * 19 = 18.05
    # -> 18.05; ref->pred: 0. The larger: 18.05. (Pooled, as medpy: [0, 0, 1, ..., 19], index
    # 0.95 * 20 = 19 -> 18.)
    ("directed percentile of a long prediction", _line(20, range(20)), _line(20, [0]), (1, 1, 1), 18.05),
    # ref x=0..9; pred the same plus x=30 (21 from x=9). pred->ref: 10 zeros and 21 (11 values),
    # index 0.95 * 10 = 9.5 -> 0 + 0.5 * 21 = 10.5; ref->pred: 10 zeros -> 0. Max: 10.5. (Pooled,
    # as medpy: 20 zeros and one 21, index 0.95 * 20 = 19 -> 0: the outlier vanishes.)
    ("max of directed percentiles, not pooled",
     _line(31, [*range(10), 30]), _line(31, range(10)), (1, 1, 1), 10.5),
    # The same with the sides swapped: now the reference->prediction direction is the larger.
    ("max of directed percentiles, the reference's outlier",
     _line(31, range(10)), _line(31, [*range(10), 30]), (1, 1, 1), 10.5),
    # pred x=0..3, ref x=0 with 2 mm voxels: pred->ref 0, 2, 4, 6, index 0.95 * 3 = 2.85 -> 5.7 mm.
    ("spacing scales the directed distances", _line(4, range(4)), _line(4, [0]), (2.0, 1.0, 1.0), 5.7),
]


@pytest.mark.parametrize("name, pred, ref, spacing, expected", HD95_CASES, ids=[c[0] for c in HD95_CASES])
def test_hd95_hand_computed(name, pred, ref, spacing, expected):
    value, reason = hd95(pred, ref, spacing)
    assert reason == ""
    assert value == pytest.approx(expected)


def test_hd95_ignores_the_interior_of_a_solid_mask():
    solid = np.zeros((7, 7, 7), dtype=bool)
    solid[1:6, 1:6, 1:6] = True
    shell = solid.copy()
    shell[2:5, 2:5, 2:5] = False
    # Same surface (the 98-voxel shell) -> 0. Were the 27 interior voxels counted, solid->shell
    # would be 98 zeros, 26 ones and one 2 (125 values): index 0.95 * 124 = 117.8 -> 1.
    assert hd95(solid, shell, (1, 1, 1)) == (0.0, "")


# The diagonal of a [3, 4, 5] image at (1, 2, 3) mm: sqrt(3^2 + 8^2 + 15^2) = sqrt(298).
@pytest.mark.parametrize("pred_any, ref_any, reason, expected", [
    (False, False, BOTH_EMPTY, NAN),
    (False, True, EMPTY_PREDICTION, math.sqrt(298)),
    (True, False, EMPTY_REFERENCE, math.sqrt(298)),
])
def test_hd95_one_side_empty_scores_the_image_diagonal_never_zero(pred_any, ref_any, reason, expected):
    pred = _points((3, 4, 5), *([(1, 1, 1)] if pred_any else []))
    ref = _points((3, 4, 5), *([(1, 1, 2)] if ref_any else []))
    value, why = hd95(pred, ref, (1.0, 2.0, 3.0))
    assert _same(value, expected)
    assert why == reason


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def _brute_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """All pairwise distances between the surfaces; the larger of the two directed P95."""
    a = np.argwhere(_brute_surface(pred)) * np.asarray(spacing)
    b = np.argwhere(_brute_surface(ref)) * np.asarray(spacing)
    distances = cdist(a, b)
    return float(max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95)))


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_brute_force_pairwise_distances(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 8, 6)
    pred = rng.random(shape) < 0.35
    ref = rng.random(shape) < 0.35
    pred[2:6, 2:6, 1:5] = True   # a solid block so erosion has interiors to remove
    spacing = tuple(rng.uniform(0.5, 3.0, size=3))
    value, reason = hd95(pred, ref, spacing)
    assert reason == ""
    assert value == pytest.approx(_brute_hd95(pred, ref, spacing))


def test_hd95_crop_keeps_masks_far_from_the_array_border_exact():
    big = np.zeros((40, 40, 12), dtype=bool)
    pred, ref = big.copy(), big.copy()
    pred[10:15, 10:15, 3:8] = True
    ref[12:18, 11:16, 4:9] = True
    assert hd95(pred, ref, (0.7, 0.7, 2.5))[0] == pytest.approx(_brute_hd95(pred, ref, (0.7, 0.7, 2.5)))


# ---------------------------------------------------------------- combining cases of one patient

# A case with one side empty carries its penalty (the image diagonal, here 10 / 20) and counts.
@pytest.mark.parametrize("per_case, expected, note", [
    ([("ED", (3.0, "")), ("ES", (5.0, ""))], 4.0, ""),
    ([("ED", (3.0, "")), ("ES", (NAN, BOTH_EMPTY))], 3.0, ""),
    ([("ED", (NAN, BOTH_EMPTY)), ("ES", (NAN, BOTH_EMPTY))], NAN, BOTH_EMPTY),
    ([("ED", (3.0, "")), ("ES", (10.0, EMPTY_REFERENCE))], 6.5, "ES: empty reference"),
    ([("ED", (NAN, BOTH_EMPTY)), ("ES", (10.0, EMPTY_PREDICTION))], 10.0, "ES: empty prediction"),
    ([("ED", (10.0, EMPTY_PREDICTION)), ("ES", (20.0, EMPTY_REFERENCE))], 15.0,
     "ED: empty prediction; ES: empty reference"),
    ([("only", (10.0, EMPTY_PREDICTION))], 10.0, EMPTY_PREDICTION),
])
def test_combine_case_hd95(per_case, expected, note):
    value, reason = combine_case_hd95(per_case)
    assert _same(value, expected)
    assert reason == note


def test_patient_scores_keys_and_hd95_notes():
    pred = _stack([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    ref = _stack([[[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    scores = patient_scores(pred, ref, LABELS, (1.0, 1.0, 3.0))
    assert set(scores) == {"dice", "dice_lesion", "dice_texture", "hd95_lesion", "hd95_lesion_note",
                           "hd95_texture", "hd95_texture_note"}
    assert scores["hd95_lesion"] == pytest.approx(3.0) and scores["hd95_lesion_note"] == ""
    assert scores["dice_lesion"] == 0.0
    assert math.isnan(scores["hd95_texture"]) and scores["hd95_texture_note"] == BOTH_EMPTY
