"""HD95 against MONAI's `compute_hausdorff_distance(percentile=95)`, the field's definition.

MONAI (1.6.1, monai/metrics/hausdorff_distance.py and monai/metrics/utils.py) takes the edges of
both masks as `binary_erosion(mask) ^ mask` (scipy's default, face-connected structure; outside
the array is background) after cropping to the union's bounding box plus one voxel, the
Euclidean distances in mm from each edge voxel to the other mask's nearest edge voxel, the 95th
percentile of each direction (`torch.quantile`, linear) and the larger of the two. Where exactly
one side is empty MONAI's directed distances are all inf (utils.py, get_surface_distance), and
`torch.quantile` of all-inf distances is NaN (its linear interpolation computes inf - inf): with
percentile=95 MONAI 1.6.1 returns NaN, as for both sides empty, so its NaN-skipping mean drops
an empty prediction (with percentile=None, the plain Hausdorff distance, it returns inf). Ours
returns the diagonal of the image extent (a finite penalty that every mean counts) for one side
empty, and NaN for both empty.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from unetscout.evaluate.metrics import BOTH_EMPTY, EMPTY_PREDICTION, EMPTY_REFERENCE, hd95, image_diagonal

monai_hd = pytest.importorskip("monai.metrics", reason="the test dependency monai is not installed")
torch = pytest.importorskip("torch")


def monai_hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """MONAI's symmetric HD95 of two 3-D binary masks, as one-hot [1, 2, X, Y, Z] (background
    channel dropped by include_background=False) with the spacing given per image of the batch.
    A stack of one slice goes to MONAI as the 2-D image it is ([1, 2, X, Y], in-plane spacing),
    as the field scores 2-D image datasets."""
    if np.asarray(pred).shape[2] == 1:
        pred, ref, spacing = np.asarray(pred)[:, :, 0], np.asarray(ref)[:, :, 0], tuple(spacing)[:2]

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        mask = np.asarray(mask, dtype=bool)
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "the prediction of class 1 is all 0, ..." and deprecations
        value = monai_hd.compute_hausdorff_distance(
            one_hot(pred), one_hot(ref), include_background=False, distance_metric="euclidean",
            percentile=95, directed=False, spacing=[[float(s) for s in spacing]])
    assert tuple(value.shape) == (1, 1)
    return float(value[0, 0])


def _assert_agree(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    ours, reason = hd95(pred, ref, spacing)
    assert reason == ""
    # MONAI returns its distances as float32: agreement to float32 precision.
    assert ours == pytest.approx(monai_hd95(pred, ref, spacing), rel=1e-5, abs=1e-5)
    return ours


# ---------------------------------------------------------------- random masks

def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _blobs(rng: np.random.Generator, shape) -> np.ndarray:
    """A union of 1-3 random ellipsoids (radii from under a voxel to most of the array) plus,
    sometimes, a few isolated voxels (outliers, which move a percentile)."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        centre = [rng.uniform(0, n - 1) for n in shape]
        radii = [rng.uniform(0.5, max(1.0, n / 2)) for n in shape]
        mask |= _ellipsoid(shape, centre, radii)
    if rng.random() < 0.4:
        for _ in range(rng.integers(1, 4)):
            mask[tuple(rng.integers(0, n) for n in shape)] = True
    return mask


def _random_pair(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(6, 25)), int(rng.integers(6, 25)), int(rng.integers(1, 13)))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 5.0, size=3))
    while True:
        ref = _blobs(rng, shape)
        if rng.random() < 0.5:
            pred = _blobs(rng, shape)                          # unrelated blobs
        else:                                                  # a shifted, perturbed copy of ref
            pred = np.roll(ref, tuple(int(s) for s in rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
            pred ^= rng.random(shape) < 0.03
        if pred.any() and ref.any():
            return pred, ref, spacing


@pytest.mark.parametrize("seed", range(60))
def test_hd95_agrees_with_monai_on_random_blobs(seed):
    pred, ref, spacing = _random_pair(seed)
    _assert_agree(pred, ref, spacing)


# ---------------------------------------------------------------- crafted cases

def _box(shape, *slices) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slices)] = True
    return mask


def _voxel(shape, index) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[index] = True
    return mask


S = slice
CRAFTED = [
    # name, prediction, reference, spacing, our value by hand (None: only compared with MONAI)
    ("single voxel vs single voxel", _voxel((5, 5, 5), (1, 1, 1)), _voxel((5, 5, 5), (3, 4, 1)),
     (0.5, 2.0, 3.0), math.hypot(2 * 0.5, 3 * 2.0)),
    # ref->pred: the 98 surface voxels of a 5^3 cube around the voxel, 95th percentile of their
    # distances to it; pred->ref: the voxel is inside the cube, at distance 2 from its surface.
    ("single voxel vs blob", _voxel((9, 9, 9), (4, 4, 4)), _box((9, 9, 9), S(2, 7), S(2, 7), S(2, 7)),
     (1.0, 1.0, 1.0), None),
    # a 4^3 cube shifted by 2 along x: the two 1-voxel faces differ; each direction has the
    # shifted face 2 mm from the other cube's surface.
    ("shifted cube", _box((10, 8, 8), S(3, 7), S(2, 6), S(2, 6)), _box((10, 8, 8), S(1, 5), S(2, 6), S(2, 6)),
     (1.0, 1.0, 1.0), None),
    ("shifted cube, anisotropic spacing", _box((10, 8, 8), S(3, 7), S(2, 6), S(2, 6)),
     _box((10, 8, 8), S(2, 6), S(3, 7), S(1, 5)), (0.7, 1.3, 4.0), None),
    ("sphere vs cube, anisotropic spacing", _ellipsoid((15, 15, 6), (7, 7, 2.5), (5, 5, 2)),
     _box((15, 15, 6), S(3, 12), S(4, 11), S(1, 5)), (0.8, 0.8, 3.0), None),
    # masks touching the array border: outside the array is background, so the border faces are
    # surface (MONAI pads the crop with background); the full array is all surface on its faces.
    ("masks touching the array border", _box((6, 7, 5), S(0, 4), S(0, 7), S(0, 5)),
     _box((6, 7, 5), S(2, 6), S(0, 5), S(0, 3)), (1.0, 0.9, 2.5), None),
    ("the whole array vs a cube inside it", np.ones((7, 7, 7), dtype=bool),
     _box((7, 7, 7), S(2, 5), S(2, 5), S(2, 5)), (1.0, 1.0, 1.0), None),
    ("thin plate vs thin plate", _box((8, 8, 6), S(1, 7), S(1, 7), S(2, 3)),
     _box((8, 8, 6), S(1, 7), S(2, 8), S(4, 5)), (1.0, 1.0, 2.0), None),
    ("thin line vs thin line", _box((12, 5, 5), S(0, 12), S(2, 3), S(2, 3)),
     _box((12, 5, 5), S(3, 9), S(1, 2), S(3, 4)), (0.5, 1.5, 1.5), None),
    # a one-slice stack (2-D image sets): z neighbours are outside the array, so every
    # foreground pixel is a surface voxel (as for MONAI on the same [X, Y, 1] array).
    ("2-D-like stack of one slice", _ellipsoid((20, 20, 1), (9, 9, 0), (6, 4, 1)),
     _ellipsoid((20, 20, 1), (11, 8, 0), (5, 6, 1)), (1.0, 1.0, 1.0), None),
    ("2-D-like stack, anisotropic pixels", _box((16, 12, 1), S(2, 10), S(3, 9), S(0, 1)),
     _box((16, 12, 1), S(5, 15), S(1, 6), S(0, 1)), (0.6, 1.4, 1.0), None),
    # 10 reference voxels on a line; the prediction adds one far outlier. pred->ref: 10 zeros and
    # 21 -> P95 10.5 (index 9.5); ref->pred: 0. Larger: 10.5 (pooled, as medpy: 0).
    ("one far outlier: max of directed percentiles, not pooled",
     _box((31, 1, 1), S(0, 10), S(0, 1), S(0, 1)) | _voxel((31, 1, 1), (30, 0, 0)),
     _box((31, 1, 1), S(0, 10), S(0, 1), S(0, 1)), (1.0, 1.0, 1.0), 10.5),
    ("prediction nested in the reference", _box((11, 11, 11), S(4, 7), S(4, 7), S(4, 7)),
     _box((11, 11, 11), S(1, 10), S(1, 10), S(1, 10)), (1.0, 2.0, 1.0), None),
    ("identical masks", _ellipsoid((9, 9, 9), (4, 4, 4), (3, 3, 3)), _ellipsoid((9, 9, 9), (4, 4, 4), (3, 3, 3)),
     (1.0, 1.0, 1.0), 0.0),
]


@pytest.mark.parametrize("name, pred, ref, spacing, by_hand", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_hd95_agrees_with_monai_on_crafted_cases(name, pred, ref, spacing, by_hand):
    ours = _assert_agree(pred, ref, spacing)
    if by_hand is not None:
        assert ours == pytest.approx(by_hand)


def test_single_voxel_vs_blob_by_hand():
    """The 'single voxel vs blob' case worked out: ref->pred over the cube's surface dominates."""
    pred, ref = CRAFTED[1][1], CRAFTED[1][2]
    surface = [(x, y, z) for x in range(2, 7) for y in range(2, 7) for z in range(2, 7)
               if 2 in (x, y, z) or 6 in (x, y, z)]
    assert len(surface) == 98
    ref_to_pred = np.percentile([math.dist(v, (4, 4, 4)) for v in surface], 95)
    assert hd95(pred, ref, (1, 1, 1))[0] == pytest.approx(max(2.0, ref_to_pred))


# ---------------------------------------------------------------- empty sides

EMPTY_SHAPE, EMPTY_SPACING = (12, 10, 4), (0.8, 1.2, 5.0)
BLOB = _box(EMPTY_SHAPE, S(3, 7), S(2, 6), S(1, 3))
NONE = np.zeros(EMPTY_SHAPE, dtype=bool)


@pytest.mark.parametrize("pred, ref, reason", [
    (NONE, BLOB, EMPTY_PREDICTION),
    (BLOB, NONE, EMPTY_REFERENCE),
], ids=["empty prediction", "empty reference"])
def test_one_side_empty_scores_the_diagonal_where_monai_gives_no_number(pred, ref, reason):
    # sqrt((12 * 0.8)^2 + (10 * 1.2)^2 + (4 * 5)^2) = sqrt(92.16 + 144 + 400)
    diagonal = math.sqrt(92.16 + 144 + 400)
    assert image_diagonal(EMPTY_SHAPE, EMPTY_SPACING) == pytest.approx(diagonal)
    assert hd95(pred, ref, EMPTY_SPACING) == (pytest.approx(diagonal), reason)
    # MONAI: every distance to an empty surface is inf; the 95th percentile of all-inf distances
    # comes out NaN from torch.quantile (MONAI 1.6.1), the plain maximum inf. Either way no number
    # a mean could count: MONAI's reductions skip NaN.
    monai_value = monai_hd95(pred, ref, EMPTY_SPACING)
    assert math.isnan(monai_value) or math.isinf(monai_value)


def test_both_empty_is_undefined_as_in_monai():
    value, reason = hd95(NONE, NONE, EMPTY_SPACING)
    assert math.isnan(value) and reason == BOTH_EMPTY
    # MONAI: no edge voxels on either side, so no distances, and NaN.
    assert math.isnan(monai_hd95(NONE, NONE, EMPTY_SPACING))


def test_the_diagonal_bounds_every_distance_inside_the_image():
    """The penalty is never smaller than a real HD95: opposite corners of the image."""
    pred, ref = _voxel(EMPTY_SHAPE, (0, 0, 0)), _voxel(EMPTY_SHAPE, (11, 9, 3))
    corners = _assert_agree(pred, ref, EMPTY_SPACING)
    assert corners < image_diagonal(EMPTY_SHAPE, EMPTY_SPACING)
