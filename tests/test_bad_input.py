"""Bad raw datasets: `unetscout slices` exits 2 with one line naming the file, and leaves no output."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from rawdata import example_case, make_raw_dataset, slices_fails_cleanly, write_nifti



@pytest.fixture
def raw(tmp_path):
    # Random float intensities hardly compress, so a cut .nii.gz loses voxel data, not the header.
    return make_raw_dataset(tmp_path / "raw", cases=3, shape=(16, 16, 4), channel_names={"0": "T2"})




def test_truncated_nii_gz(raw, capsys):
    path = raw / "imagesTr" / "case001_0000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    nib.load(path).header  # the header still reads: the damage is in the voxel data
    slices_fails_cleanly(raw, capsys, str(path), "truncated or corrupt")


def test_corrupt_nii_gz(raw, capsys):
    path = raw / "labelsTr" / "case002.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    slices_fails_cleanly(raw, capsys, str(path), "corrupt")


def test_image_label_shape_mismatch(raw, capsys):
    path = raw / "imagesTr" / "case001_0000.nii.gz"
    write_nifti(path, np.ones((16, 15, 4), dtype=np.float32))
    slices_fails_cleanly(raw, capsys, str(path), "shape (16, 15, 4) differs from label case001.nii.gz")


def test_affine_mismatch(raw, capsys):
    path = raw / "imagesTr" / "case000_0000.nii.gz"
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    write_nifti(path, example_case((16, 16, 4), 1, 0)[0][0], shifted)
    slices_fails_cleanly(raw, capsys, str(path), "affine differs from label case000.nii.gz")


def test_undeclared_label_values(raw, capsys):
    path = raw / "labelsTr" / "case001.nii.gz"
    label = example_case((16, 16, 4), 1, 1)[1]
    label[0, 0, 0], label[1, 0, 0] = 3, 7
    write_nifti(path, label)
    message = slices_fails_cleanly(raw, capsys, str(path), "not declared")
    assert "value(s) 3, 7 " in message


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_intensities(raw, capsys, bad, word):
    path = raw / "imagesTr" / "case002_0000.nii.gz"
    image = example_case((16, 16, 4), 1, 2)[0][0]
    image[3, 4, 1] = bad
    write_nifti(path, image)
    slices_fails_cleanly(raw, capsys, str(path), f"1 {word} voxel(s)")


def test_missing_channel_file(tmp_path, capsys):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(6, 6, 2))
    missing = raw / "imagesTr" / "case001_0001.nii.gz"
    missing.unlink()
    slices_fails_cleanly(raw, capsys, str(missing), "missing image file for case case001 channel 1 (ADC)")


def test_dataset_json_missing_keys(raw, capsys):
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    slices_fails_cleanly(raw, capsys, f"{raw / 'dataset.json'}: missing required key(s) channel_names, labels")


@pytest.mark.parametrize("grouped", [False, True])
def test_fewer_than_three_patients(raw, capsys, grouped):
    meta_path = raw / "dataset.json"
    if grouped:  # three cases, but two of them are one patient
        meta = json.loads(meta_path.read_text())
        meta["unetscout_patients"] = {"case000": "alice", "case001": "alice"}
        meta_path.write_text(json.dumps(meta))
    else:
        (raw / "labelsTr" / "case002.nii.gz").unlink()
    slices_fails_cleanly(raw, capsys, str(meta_path), "only 2 patient(s)")


@pytest.mark.parametrize("how", ["nii_and_nii_gz", "training_list"])
def test_duplicate_case_ids(raw, capsys, how):
    if how == "nii_and_nii_gz":
        write_nifti(raw / "labelsTr" / "case001.nii", example_case((16, 16, 4), 1, 1)[1])
        slices_fails_cleanly(raw, capsys, str(raw / "labelsTr"), "duplicate case id(s)",
                       "case001 (case001.nii, case001.nii.gz)")
    else:
        meta = json.loads((raw / "dataset.json").read_text())
        entry = {"image": "./imagesTr/case001.nii.gz", "label": "./labelsTr/case001.nii.gz"}
        meta["training"] = [entry, entry, {"image": "./imagesTr/case000.nii.gz",
                                           "label": "./labelsTr/case000.nii.gz"}]
        (raw / "dataset.json").write_text(json.dumps(meta))
        slices_fails_cleanly(raw, capsys, str(raw / "dataset.json"), "duplicate case id(s) in the training list: case001")


def test_failure_after_some_cases_leaves_no_partial_output(raw, capsys):
    # The last case is the bad one, so earlier cases were already written into the temporary folder.
    path = raw / "labelsTr" / "case002.nii.gz"
    label = example_case((16, 16, 4), 1, 2)[1]
    label[0, 0, 0] = 9
    write_nifti(path, label)
    slices_fails_cleanly(raw, capsys, str(path))
    assert os.listdir(raw.parent) == ["raw"]
