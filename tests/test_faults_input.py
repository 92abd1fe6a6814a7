"""Input faults from issue 17: 2-D NIfTI cases, channel counts that disagree with dataset.json,
label-free training data, and the slice store's content digest."""

from __future__ import annotations

import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from rawdata import (example_case, make_raw_dataset, slices_fails_cleanly, write_case, write_dataset_json,
                     write_nifti)

from unetscout.cli import main
from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import extract_slices
from unetscout.data.splits import patient_split

LABELS = {"background": 0, "lesion": 1}




# --- 1. 2-D NIfTI cases -------------------------------------------------------------------------

def _two_d_dataset(root, affine, image_2d: bool = True, label_2d: bool = True):
    """Three one-channel cases of 6 x 5 voxels; case000 is written as 2-D files."""
    write_dataset_json(root, channel_names={"0": "T2"}, labels=LABELS, file_ending=".nii.gz")
    cases = {}
    for i in range(3):
        image, label = example_case((6, 5, 1), 1, seed=i)
        write_case(root, f"case{i:03d}", image, label, affine)
        cases[f"case{i:03d}"] = (image[0, :, :, 0], label[:, :, 0])
    image, label = cases["case000"]
    if image_2d:
        write_nifti(root / "imagesTr" / "case000_0000.nii.gz", image, affine)
    if label_2d:
        write_nifti(root / "labelsTr" / "case000.nii.gz", label, affine)
    return root, cases


@pytest.mark.parametrize("image_2d, label_2d", [(True, True), (True, False), (False, True)])
def test_two_d_nifti_is_a_one_slice_case_reoriented_to_ras(tmp_path, image_2d, label_2d):
    # LPS with 0.8 x 0.7 mm pixels, 3 mm "slice": the flip is what used to crash (OrientationError).
    lps = np.diag([-0.8, -0.7, 3.0, 1.0])
    raw, cases = _two_d_dataset(tmp_path / "raw", lps, image_2d, label_2d)
    assert nib.load(raw / "imagesTr" / "case000_0000.nii.gz").ndim == (2 if image_2d else 3)
    extract_slices(raw, tmp_path / "out", size=6, seed=0)

    store = SliceStore(tmp_path / "out")
    image, label = cases["case000"]
    ras_image, ras_label = image[::-1, ::-1], label[::-1, ::-1]
    expected_label = np.zeros((6, 6), dtype=np.uint8)
    expected_label[:, :5] = ras_label          # y padded 5 -> 6 at the high end
    expected_image = np.zeros((6, 6))
    expected_image[:, :5] = (ras_image - ras_image.mean()) / ras_image.std()  # every voxel nonzero
    assert store.label("case000").shape == (1, 6, 6) and store.image("case000").shape == (1, 1, 6, 6)
    np.testing.assert_array_equal(store.label("case000")[0], expected_label)
    np.testing.assert_allclose(store.image("case000")[0, 0], expected_image, atol=1e-5)
    assert store.spacing("case000") == (0.8, 0.7, 3.0)


def test_two_d_image_must_still_match_its_label_geometry(tmp_path, capsys):
    raw, _ = _two_d_dataset(tmp_path / "raw", np.eye(4))
    shifted = np.eye(4)
    shifted[1, 3] = 4.0
    path = raw / "imagesTr" / "case000_0000.nii.gz"
    write_nifti(path, example_case((6, 5, 1), 1, seed=0)[0][0, :, :, 0], shifted)
    slices_fails_cleanly(raw, capsys, str(path), "affine differs from label case000.nii.gz", size=8)

    write_nifti(path, np.ones((6, 4), dtype=np.float32), np.eye(4))
    slices_fails_cleanly(raw, capsys, str(path), "shape (6, 4, 1) differs from label case000.nii.gz shape (6, 5, 1)", size=8)


# --- 2. channel counts --------------------------------------------------------------------------

def test_extra_channel_file_beyond_dataset_json_is_an_error(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))   # declares T2, ADC
    extra = raw / "imagesTr" / "case001_0002.nii.gz"
    write_nifti(extra, example_case((6, 6, 2), 1, seed=9)[0][0])
    slices_fails_cleanly(raw, capsys, str(extra), "channel 2 of case case001",
                         "dataset.json declares 2 channel(s) (T2, ADC)", size=8)


def test_extra_channel_file_of_a_one_channel_dataset_is_an_error(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2), channel_names={"0": "T2"})
    extra = raw / "imagesTr" / "case002_0001.nii.gz"
    write_nifti(extra, example_case((6, 6, 2), 1, seed=9)[0][0])
    slices_fails_cleanly(raw, capsys, str(extra), "dataset.json declares 1 channel(s) (T2)", size=8)


def _msd_dataset(root, file_channels: int):
    for i in range(3):
        image, label = example_case((6, 6, 2), channels=file_channels, seed=i)
        write_nifti(root / "imagesTr" / f"prostate_{i:02d}.nii.gz", np.moveaxis(image, 0, -1))
        write_nifti(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", label)
    write_dataset_json(root, name="Task05_Prostate", modality={"0": "T2", "1": "ADC"},
                       labels={"0": "background", "1": "PZ"})
    return root


@pytest.mark.parametrize("file_channels", [3, 1])
def test_msd_four_d_channel_count_must_match_dataset_json(tmp_path, capsys, file_channels):
    # More channels on the last axis than declared, and the reverse (fewer).
    raw = _msd_dataset(tmp_path / "raw", file_channels)
    path = raw / "imagesTr" / "prostate_00.nii.gz"
    slices_fails_cleanly(raw, capsys, str(path), f"holds {file_channels} channel(s) on its last axis",
                         "dataset.json declares 2 (T2, ADC)", size=8)


def test_fewer_channel_files_than_declared_is_an_error(tmp_path, capsys):
    # The reverse of the extra file: a declared channel without its file (already an error).
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))
    missing = raw / "imagesTr" / "case002_0001.nii.gz"
    missing.unlink()
    slices_fails_cleanly(raw, capsys, str(missing), "missing image file for case case002 channel 1 (ADC)", size=8)


# --- 3. label-free training data ----------------------------------------------------------------

def _label_free_dataset(root, channel: str = "T2", foreground_cases: tuple[str, ...] = ()):
    write_dataset_json(root, channel_names={"0": channel}, labels=LABELS, file_ending=".nii.gz")
    for i in range(5):
        image, label = example_case((6, 6, 2), 1, seed=i)
        case = f"case{i:03d}"
        write_case(root, case, image, label if case in foreground_cases else np.zeros_like(label))
    return root


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def test_label_free_train_split_warns_but_writes_the_store(tmp_path, capsys):
    raw = _label_free_dataset(tmp_path / "raw")
    out = tmp_path / "out"
    assert main(["slices", str(raw), "--out", str(out), "--size", "6"]) == 0
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"unetscout slices: warning: {raw / 'labelsTr'}: every label voxel of "
                                  f"the train split is background (0); ")
    store = SliceStore(out)
    assert sum(int(store.label(c).sum()) for c in store.cases("train")) == 0


def test_foreground_only_outside_the_train_split_still_warns(tmp_path, capsys):
    # One-case patients, so the split of the cases is the patient split itself.
    split_of = patient_split([f"case{i:03d}" for i in range(5)], 0)
    held_out = [case for case, split in split_of.items() if split != "train"]
    raw = _label_free_dataset(tmp_path / "raw", foreground_cases=tuple(held_out))
    extract_slices(raw, tmp_path / "out", size=6, seed=0)
    assert len(_warnings(capsys.readouterr().err)) == 1
    store = SliceStore(tmp_path / "out")
    assert sum(int(store.label(c).sum()) for c in store.cases("val") + store.cases("test")) > 0


def test_dataset_with_train_foreground_does_not_warn(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))
    extract_slices(raw, tmp_path / "out", size=6, seed=0)
    assert _warnings(capsys.readouterr().err) == []


def test_label_free_ct_still_fails(tmp_path, capsys):
    raw = _label_free_dataset(tmp_path / "raw", channel="CT")
    slices_fails_cleanly(raw, capsys, str(raw / "labelsTr"), "no foreground voxels", size=8)


# --- 4. content digest --------------------------------------------------------------------------

def test_manifest_sha256_is_the_digest_of_the_written_arrays(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))
    extract_slices(raw, tmp_path / "out", size=6, seed=0)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.tsv", sep="\t", dtype=str)
    for row in manifest.itertuples():
        image = np.load(tmp_path / "out" / "cases" / f"{row.case}_image.npy")
        label = np.load(tmp_path / "out" / "cases" / f"{row.case}_label.npy")
        assert row.sha256 == hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()
    assert manifest["sha256"].nunique() == 3


def _expected_digest(store_dir) -> str:
    meta = json.loads((store_dir / "slices.json").read_text())
    del meta["source"]
    return hashlib.sha256((store_dir / "manifest.tsv").read_bytes()
                          + json.dumps(meta, sort_keys=True).encode()).hexdigest()


def test_data_digest_changes_with_one_voxel_and_not_with_the_raw_folder(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))
    extract_slices(raw, tmp_path / "first", size=6, seed=0)
    first = SliceStore(tmp_path / "first").data_digest()
    assert first == _expected_digest(tmp_path / "first")

    # The same raw data, moved elsewhere and rebuilt into another folder: same digest.
    moved = shutil.move(str(raw), str(tmp_path / "elsewhere" / "raw"))
    extract_slices(moved, tmp_path / "second", size=6, seed=0)
    assert json.loads((tmp_path / "second" / "slices.json").read_text())["source"] != \
        json.loads((tmp_path / "first" / "slices.json").read_text())["source"]
    assert SliceStore(tmp_path / "second").data_digest() == first

    # One image voxel of one case changed: same names, counts and labels, other digest.
    path = tmp_path / "elsewhere" / "raw" / "imagesTr" / "case001_0000.nii.gz"
    volume = np.asarray(nib.load(path).dataobj).copy()
    volume[2, 3, 1] += 7.0
    write_nifti(path, volume)
    extract_slices(moved, tmp_path / "third", size=6, seed=0)
    third = SliceStore(tmp_path / "third")
    assert third.data_digest() != first
    assert third.data_digest() == _expected_digest(tmp_path / "third")
    before = pd.read_csv(tmp_path / "first" / "manifest.tsv", sep="\t", dtype=str)
    after = pd.read_csv(tmp_path / "third" / "manifest.tsv", sep="\t", dtype=str)
    assert (before.drop(columns="sha256") == after.drop(columns="sha256")).all().all()

    # Another split seed, or another size, is other data too.
    extract_slices(moved, tmp_path / "seed1", size=6, seed=1)
    extract_slices(moved, tmp_path / "size8", size=8, seed=0)
    digests = {SliceStore(tmp_path / name).data_digest() for name in ("third", "seed1", "size8")}
    assert len(digests) == 3


def test_store_without_sha256_column_still_loads(tmp_path):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))
    out = tmp_path / "out"
    extract_slices(raw, out, size=6, seed=0)
    manifest = pd.read_csv(out / "manifest.tsv", sep="\t", dtype=str)
    manifest.drop(columns="sha256").to_csv(out / "manifest.tsv", sep="\t", index=False)
    store = SliceStore(out)
    assert "sha256" not in store.manifest.columns
    assert store.image("case000").shape == (2, 2, 6, 6)
    assert store.data_digest() == _expected_digest(out)
