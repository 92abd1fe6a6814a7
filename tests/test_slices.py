"""`unetscout slices`: normalisation, RAS reorientation, crop/pad, splits, MSD input, the store."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from rawdata import example_case, make_raw_dataset, write_case, write_dataset_json, write_nifti

from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import extract_slices, fit_in_plane, zscore_nonzero
from unetscout.data.splits import patient_split, split_sizes
from unetscout.errors import UnetscoutError

LABELS = {"background": 0, "lesion": 1}


def _one_channel_dataset(root, images, labels, channel="T2", affine=None):
    write_dataset_json(root, channel_names={"0": channel}, labels=LABELS, file_ending=".nii.gz")
    for i, (image, label) in enumerate(zip(images, labels)):
        write_case(root, f"case{i:03d}", image[None], label, affine)
    return root


# --- normalisation --------------------------------------------------------------------------

def test_zscore_nonzero_hand_computed():
    # Nonzero values 1, 2, 3: mean 2, population std sqrt(2/3), so 1 -> -sqrt(1.5), 3 -> +sqrt(1.5).
    volume = np.array([[[0, 1], [2, 3]], [[0, 0], [0, 0]]], dtype=np.float32)
    out = zscore_nonzero(volume)
    expected = np.array([[[0, -math.sqrt(1.5)], [0, math.sqrt(1.5)]], [[0, 0], [0, 0]]])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_zscore_constant_volume_uses_std_floor():
    out = zscore_nonzero(np.array([[[0.0, 5.0], [5.0, 5.0]]], dtype=np.float32))
    np.testing.assert_array_equal(out, np.zeros((1, 2, 2)))


def test_mri_normalisation_written_per_volume(tmp_path):
    # Case 0 has nonzero values 1, 2, 3 (as above) and 6 zeros; the others only scale it, so
    # every case has the same z-scored output.
    base = np.zeros((2, 2, 2), dtype=np.float32)
    base[0, 1, 0], base[1, 0, 0], base[1, 1, 0] = 1, 2, 3
    label = np.zeros((2, 2, 2), dtype=np.uint8)
    raw = _one_channel_dataset(tmp_path / "raw", [base, 10 * base, 0.5 * base], [label] * 3)
    extract_slices(raw, tmp_path / "out", size=2, seed=0)
    r = math.sqrt(1.5)
    expected_axial0 = np.array([[0, -r], [0, r]])  # out[z=0, c=0] = volume[:, :, 0]
    for case in ("case000", "case001", "case002"):
        image = np.load(tmp_path / "out" / "cases" / f"{case}_image.npy")
        assert image.shape == (2, 1, 2, 2) and image.dtype == np.float32
        np.testing.assert_allclose(image[0, 0], expected_axial0, atol=1e-5)
        np.testing.assert_array_equal(image[1, 0], np.zeros((2, 2)))
    meta = json.loads((tmp_path / "out" / "slices.json").read_text())
    assert meta["normalisation"] == [{"channel": "T2", "scheme": "zscore_nonzero"}]


def test_ct_statistics_come_from_the_train_patients_only(tmp_path):
    # Five one-case patients; foreground intensities 0..199 spread over them, background -1000.
    # The validation and test patients' foreground is then raised by 10,000: were their
    # intensities pooled, the 99.5th percentile would move by thousands.
    chunks = np.array_split(np.arange(200), 5)
    raw_images, labels = [], []
    for chunk in chunks:
        flat_image = np.full(100, -1000.0, dtype=np.float32)
        flat_label = np.zeros(100, dtype=np.uint8)
        flat_image[: chunk.size], flat_label[: chunk.size] = chunk, 1
        raw_images.append(flat_image)
        labels.append(flat_label.reshape(10, 10, 1))
    split_of = patient_split([f"case{i:03d}" for i in range(5)], 0)   # one-case patients: patient = case
    images = []
    for i, flat in enumerate(raw_images):
        if split_of[f"case{i:03d}"] != "train":
            flat = np.where(flat > -1000, flat + 10_000, flat)
        images.append(flat.reshape(10, 10, 1))
    raw = _one_channel_dataset(tmp_path / "raw", images, labels, channel="ct")
    extract_slices(raw, tmp_path / "out", size=10, seed=0)

    # The expected statistics, from the train patients' raw foreground by numpy alone.
    train = np.concatenate([chunks[i] for i in range(5) if split_of[f"case{i:03d}"] == "train"]).astype(np.float64)
    assert 0 < train.size < 200
    low, high = np.percentile(train, [0.5, 99.5])
    clipped = np.clip(train, low, high)
    (norm,) = json.loads((tmp_path / "out" / "slices.json").read_text())["normalisation"]
    assert norm["scheme"] == "ct"
    assert norm["p005"] == pytest.approx(low) and norm["p995"] == pytest.approx(high)
    assert norm["mean"] == pytest.approx(clipped.mean()) and norm["std"] == pytest.approx(clipped.std())
    # and every patient, test included, is normalised with them
    for i in range(5):
        image = np.load(tmp_path / "out" / "cases" / f"case{i:03d}_image.npy")[0, 0].ravel()
        expected = (np.clip(images[i].ravel().astype(np.float64), low, high) - clipped.mean()) / clipped.std()
        np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-5)


# --- geometry -------------------------------------------------------------------------------

def test_lps_volume_is_flipped_to_ras(tmp_path):
    label = (np.arange(32).reshape(4, 4, 2) % 3 == 0).astype(np.uint8)
    assert not np.array_equal(label, label[::-1, ::-1])  # the pattern shows a flip
    image = 1.0 + np.arange(32, dtype=np.float32).reshape(4, 4, 2)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    raw = _one_channel_dataset(tmp_path / "raw", [image] * 3, [label] * 3, affine=lps)
    extract_slices(raw, tmp_path / "out", size=4, seed=0)

    ras_label, ras_image = label[::-1, ::-1, :], image[::-1, ::-1, :]
    z = (ras_image - ras_image.mean()) / ras_image.std()  # every voxel nonzero
    store = SliceStore(tmp_path / "out")
    for k in range(2):
        np.testing.assert_array_equal(store.label("case001")[k], ras_label[:, :, k])
        np.testing.assert_allclose(store.image("case001")[k, 0], z[:, :, k], atol=1e-5)


def test_permuted_axes_give_axial_slices_and_ras_spacing(tmp_path):
    # Voxel axis i runs along z (3 mm), j along y (2 mm), k along x (1 mm): the RAS array is
    # the transpose, axial slices run along the original first axis, spacing becomes (1, 2, 3).
    affine = np.array([[0, 0, 1, 0], [0, 2, 0, 0], [3, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    label = (np.arange(24).reshape(2, 3, 4) % 5 == 0).astype(np.uint8)
    image = np.ones((2, 3, 4), dtype=np.float32)
    raw = _one_channel_dataset(tmp_path / "raw", [image] * 3, [label] * 3, affine=affine)
    extract_slices(raw, tmp_path / "out", size=4, seed=0)

    ras = label.transpose(2, 1, 0)  # [x=4, y=3, z=2]
    out = np.load(tmp_path / "out" / "cases" / "case000_label.npy")
    assert out.shape == (2, 4, 4)
    for k in range(2):
        expected = np.zeros((4, 4), dtype=np.uint8)
        expected[:, :3] = ras[:, :, k]  # y padded 3 -> 4 at the high end
        np.testing.assert_array_equal(out[k], expected)
    assert SliceStore(tmp_path / "out").spacing("case000") == (1.0, 2.0, 3.0)


def test_fit_in_plane_crops_and_pads_around_the_centre():
    array = np.arange(5 * 9).reshape(1, 5, 9) + 1
    out = fit_in_plane(array, 6)
    # Rows 5 -> 6: one row of zeros at the high end. Columns 9 -> 6: drop 1 at the low end, 2 at the high.
    expected = np.zeros((1, 6, 6), dtype=array.dtype)
    expected[0, :5, :] = array[0, :, 1:7]
    np.testing.assert_array_equal(out, expected)
    even = fit_in_plane(np.ones((2, 2, 2)), 6)
    np.testing.assert_array_equal(even[0, 2:4, 2:4], np.ones((2, 2)))
    assert even.sum() == 8


def test_crop_and_pad_to_size_with_matching_voxel_counts(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", cases=4, shape=(12, 5, 3))
    extract_slices(raw, tmp_path / "out", size=8, seed=0)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.tsv", sep="\t")
    for row in manifest.itertuples():
        image = np.load(tmp_path / "out" / "cases" / f"{row.case}_image.npy")
        label = np.load(tmp_path / "out" / "cases" / f"{row.case}_label.npy")
        assert image.shape == (3, 2, 8, 8) and label.shape == (3, 8, 8) and label.dtype == np.uint8
        # Columns 5 -> 8 are padded 1 low, 2 high; rows 12 -> 8 are cropped 2 each side.
        np.testing.assert_array_equal(image[:, :, :, 0], 0)
        np.testing.assert_array_equal(image[:, :, :, 6:], 0)
        assert (image[:, :, :, 1:6] != 0).all()
        assert row.voxels_background == int((label == 0).sum())
        assert row.voxels_lesion == int((label == 1).sum())
        assert row.slices == 3
    assert list(manifest.columns) == ["case", "patient", "split", "slices", "spacing_x", "spacing_y",
                                      "spacing_z", "voxels_background", "voxels_lesion", "sha256"]


def test_manifest_counts_equal_raw_label_counts_without_crop(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(8, 8, 3))
    extract_slices(raw, tmp_path / "out", size=8, seed=0)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.tsv", sep="\t", dtype={"case": str})
    for i, row in enumerate(manifest.itertuples()):
        _, label = example_case((8, 8, 3), 2, seed=i)
        assert (row.voxels_background, row.voxels_lesion) == (int((label == 0).sum()), int(label.sum()))


# --- splits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, sizes", [(10, (6, 2, 2)), (5, (3, 1, 1)), (3, (1, 1, 1)), (4, (2, 1, 1)),
                                      (20, (12, 4, 4)), (2, (2, 0, 0))])
def test_split_sizes(n, sizes):
    assert split_sizes(n, (0.6, 0.2, 0.2)) == sizes


def test_every_split_keeps_a_patient():
    assert split_sizes(4, (0.2, 0.4, 0.4)) == (1, 1, 2)


def test_patient_split_is_seeded_and_order_independent():
    patients = [f"p{i:02d}" for i in range(10)]
    split = patient_split(patients, seed=3)
    assert set(split) == set(patients)
    assert sorted(split.values()).count("train") == 6
    assert sorted(split.values()).count("val") == 2
    assert patient_split(list(reversed(patients)), seed=3) == split
    assert patient_split(patients, seed=3) == split
    assert any(patient_split(patients, seed=s) != split for s in range(4, 9))


def test_bad_fractions_are_one_line_errors():
    with pytest.raises(UnetscoutError, match="fractions"):
        patient_split(["a", "b", "c"], 0, (0.5, 0.5, 0.5))


def test_cases_of_one_patient_share_a_split(tmp_path):
    # Eight cases, five patients: p0 owns three cases, p1 two, the rest one each.
    groups = {"case000": "p0", "case001": "p0", "case002": "p0", "case003": "p1", "case004": "p1"}
    raw = make_raw_dataset(tmp_path / "raw", cases=8, shape=(4, 4, 2), unetscout_patients=groups)
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        extract_slices(raw, out, size=4, seed=seed)
        manifest = pd.read_csv(out / "manifest.tsv", sep="\t", dtype=str)
        assert manifest.groupby("patient")["split"].nunique().max() == 1
        assert manifest.set_index("case")["patient"].to_dict()["case001"] == "p0"
        counts = json.loads((out / "slices.json").read_text())["counts"]
        assert [counts[s]["patients"] for s in ("train", "val", "test")] == [3, 1, 1]
        assert sum(counts[s]["cases"] for s in counts) == 8
        assert sum(counts[s]["slices"] for s in counts) == 16


# --- MSD input ------------------------------------------------------------------------------

def test_msd_four_d_images_are_read(tmp_path):
    raw = tmp_path / "raw"
    training = []
    expected = {}
    for i in range(3):
        image, label = example_case((6, 6, 2), channels=2, seed=i)
        image[1] *= 50  # channels on different scales: normalised separately
        write_nifti(raw / "imagesTr" / f"prostate_{i:02d}.nii.gz", np.moveaxis(image, 0, -1))
        write_nifti(raw / "labelsTr" / f"prostate_{i:02d}.nii.gz", label)
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz",
                         "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
        expected[f"prostate_{i:02d}"] = image
    (raw / "labelsTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    write_dataset_json(raw, name="Task05_Prostate", modality={"0": "T2", "1": "ADC"},
                       labels={"0": "background", "1": "PZ"}, training=training, numTraining=3)
    extract_slices(raw, tmp_path / "out", size=6, seed=0)

    store = SliceStore(tmp_path / "out")
    assert store.channel_names == ["T2", "ADC"] and store.labels == {"background": 0, "PZ": 1}
    assert sorted(store.cases("train") + store.cases("val") + store.cases("test")) == sorted(expected)
    for case, image in expected.items():
        for c in range(2):
            z = (image[c] - image[c].mean()) / image[c].std()
            np.testing.assert_allclose(store.image(case)[:, c], np.moveaxis(z, -1, 0), atol=1e-4)
    assert json.loads((tmp_path / "out" / "slices.json").read_text())["dataset"] == "Task05_Prostate"


# --- the store ------------------------------------------------------------------------------

def test_slice_store_round_trip_with_memory_maps(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", cases=5, shape=(6, 6, 3))
    extract_slices(raw, tmp_path / "out", size=6, seed=1)
    store = SliceStore(tmp_path / "out")
    assert store.num_classes == 2 and store.size == 6 and store.channel_names == ["T2", "ADC"]
    splits = {s: store.cases(s) for s in ("train", "val", "test")}
    assert [len(c) for c in splits.values()] == [3, 1, 1]
    assert sorted(sum(splits.values(), [])) == [f"case{i:03d}" for i in range(5)]
    assert store.patient_of("case002") == "case002"
    image, label = store.image("case002"), store.label("case002")
    assert isinstance(image, np.memmap) and not image.flags.writeable
    assert image.shape == (3, 2, 6, 6) and label.shape == (3, 6, 6)
    np.testing.assert_array_equal(label[:, :, :], np.moveaxis(example_case((6, 6, 3), 2, 2)[1], -1, 0))

    index = store.slice_index("train")
    assert index.shape == (9, 2) and index.dtype == np.int64
    np.testing.assert_array_equal(index, [[c, s] for c in range(3) for s in range(3)])
    meta = json.loads((tmp_path / "out" / "slices.json").read_text())
    assert meta["format_version"] == 1 and meta["split"] == {"seed": 1, "fractions": [0.6, 0.2, 0.2]}
    assert meta["counts"]["train"] == {"patients": 3, "cases": 3, "slices": 9}


def test_slice_index_follows_unequal_slice_counts(tmp_path):
    raw = tmp_path / "raw"
    write_dataset_json(raw, channel_names={"0": "T2"}, labels=LABELS, file_ending=".nii.gz")
    for i, depth in enumerate((1, 3, 2)):
        image, label = example_case((4, 4, depth), 1, seed=i)
        write_case(raw, f"c{i}", image, label)
    extract_slices(raw, tmp_path / "out", size=4, seed=0, fractions=(0.34, 0.33, 0.33))
    store = SliceStore(tmp_path / "out")
    counts = {"c0": 1, "c1": 3, "c2": 2}
    for split in ("train", "val", "test"):
        cases = store.cases(split)
        expected = [[n, s] for n, case in enumerate(cases) for s in range(counts[case])]
        np.testing.assert_array_equal(store.slice_index(split).reshape(-1, 2), np.array(expected).reshape(-1, 2))


def test_slice_store_errors_name_the_file(tmp_path):
    with pytest.raises(UnetscoutError, match="slices.json: missing"):
        SliceStore(tmp_path)
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(4, 4, 2))
    out = tmp_path / "out"
    extract_slices(raw, out, size=4, seed=0)
    meta = json.loads((out / "slices.json").read_text())
    (out / "slices.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UnetscoutError, match="slices.json: format_version 99"):
        SliceStore(out)
    (out / "slices.json").write_text("{not json")
    with pytest.raises(UnetscoutError, match="slices.json: unreadable or corrupt"):
        SliceStore(out)
    (out / "slices.json").write_text(json.dumps(meta))
    (out / "cases" / "case000_image.npy").write_bytes(b"garbage")
    with pytest.raises(UnetscoutError, match="case000_image.npy: unreadable or corrupt"):
        SliceStore(out).image("case000")
    (out / "cases" / "case001_label.npy").unlink()
    with pytest.raises(UnetscoutError, match="case001_label.npy: missing"):
        SliceStore(out).label("case001")


# --- streaming --------------------------------------------------------------------------------

def _traced_peak(raw, out) -> int:
    tracemalloc.start()
    try:
        extract_slices(raw, out, size=48, seed=0)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_case_count(tmp_path):
    # One case is ~0.5 MB of float32 image; holding all nine would triple the peak of three.
    shape = (48, 48, 24)
    small = make_raw_dataset(tmp_path / "small", cases=3, shape=shape)
    large = make_raw_dataset(tmp_path / "large", cases=9, shape=shape)
    extract_slices(small, tmp_path / "warmup", size=48, seed=0)  # imports and caches first
    peak_small = _traced_peak(small, tmp_path / "out_small")
    peak_large = _traced_peak(large, tmp_path / "out_large")
    one_case_bytes = 2 * np.prod(shape) * 4
    assert peak_small > one_case_bytes  # the measurement sees the volumes at all
    assert peak_large < 1.3 * peak_small, (peak_small, peak_large)


def test_cli_writes_store_and_reports_each_case(tmp_path, capsys):
    from unetscout.cli import main

    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(4, 4, 2))
    assert main(["slices", str(raw), "--out", str(tmp_path / "out"), "--size", "4", "--seed", "2"]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slices: ")]
    assert [any(line.startswith(f"slices: {k}/3 ") for line in progress) for k in (1, 2, 3)] == [True] * 3
    assert SliceStore(tmp_path / "out").meta["split"]["seed"] == 2
