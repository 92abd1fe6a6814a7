"""`unetscout fetch`: registry, download + extraction + conversion to nnU-Net raw, end to end.

Archives are built here with nibabel and served by a local HTTP server; nothing touches
the internet. Converted folders are re-read with nibabel and with the pipeline's own
raw-dataset reader, an independent check of the nnU-Net layout.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zipfile

import nibabel as nib
import numpy as np
import pytest
from local_http import LocalServer
from rawdata import make_raw_dataset, write_nifti

from unetscout.cli import main
from unetscout.data.convert import check_nifti, convert_amos22
from unetscout.data.raw import read_case, read_dataset
from unetscout.data.registry import REGISTRY, DatasetSource, fetch, fetch_source
from unetscout.errors import UnetscoutError

# The registry names the task brief asks for, written out by hand.
EXPECTED_NAMES = ["task01_braintumour", "task02_heart", "task04_hippocampus", "task05_prostate",
                  "task09_spleen", "acdc", "kits23", "amos22", "brats2021",
                  "isic2018", "busbra", "fives", "echonet_dynamic"]
# Copied from docs/datasets.md (MONAI's pins), not from the registry.
MSD_PINS = {
    "task01_braintumour": ("Task01_BrainTumour.tar", "240a19d752f0d9e9101544901065d872"),
    "task02_heart": ("Task02_Heart.tar", "06ee59366e1e5124267b774dbd654057"),
    "task04_hippocampus": ("Task04_Hippocampus.tar", "9d24dba78a72977dbd1d2e110310f31b"),
    "task05_prostate": ("Task05_Prostate.tar", "35138f08b1efaef89d7424d2bcc928db"),
    "task09_spleen": ("Task09_Spleen.tar", "410d4a301da4e5b2f6f86ec3ddba524e"),
}
AFFINE = np.array([[-0.8, 0.0, 0.0, 40.0],
                   [0.0, 0.9, 0.0, -12.5],
                   [0.0, 0.0, 2.5, 7.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (6, 5, 4)


def _image(seed: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(1, 100, size=(*SHAPE, channels)).astype(np.float32)


def _label(seed: int, top: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, top + 1, size=SHAPE).astype(np.uint8)


def _data(path):
    return np.asanyarray(nib.load(path).dataobj)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- registry ----------------------------------------------------------------------------

def test_registry_holds_the_briefed_datasets_with_datasets_md_pins():
    assert sorted(REGISTRY) == sorted(EXPECTED_NAMES)
    for name, (archive, md5) in MSD_PINS.items():
        assert REGISTRY[name].url == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{archive}"
        assert REGISTRY[name].md5 == md5
    assert REGISTRY["brats2021"].requires_from
    assert REGISTRY["acdc"].md5 is None and REGISTRY["acdc"].sha256 is None


def test_cli_fetch_list_prints_every_name(capsys):
    assert main(["fetch", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in EXPECTED_NAMES:
        assert name in listing
    assert "unknown here" in listing  # amos22's md5 is said to be missing


def test_unknown_name_lists_known_names(tmp_path, capsys):
    with pytest.raises(UnetscoutError) as err:
        fetch("task99_nothing", tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and message.startswith("task99_nothing: unknown dataset")
    for name in EXPECTED_NAMES:
        assert name in message
    assert main(["fetch", "task99_nothing", "--out", str(tmp_path / "out")]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_user_folder_is_returned_unchanged(tmp_path):
    mine = make_raw_dataset(tmp_path / "mine", cases=3)
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))
    assert fetch(str(mine), tmp_path / "out") == mine
    assert not (tmp_path / "out").exists()
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before


def test_user_folder_without_labels_is_an_error(tmp_path):
    mine = make_raw_dataset(tmp_path / "mine", cases=3)
    for label in (mine / "labelsTr").iterdir():
        label.unlink()
    (mine / "labelsTr").rmdir()
    with pytest.raises(UnetscoutError, match="labelsTr: missing: not an nnU-Net raw folder"):
        fetch(str(mine), tmp_path / "out")


# --- MSD end to end ------------------------------------------------------------------------

def _msd_tar(tmp_path, channels: int, cases: int = 3):
    """A Task99_Tiny.tar in MSD style (4-D images when multi-channel) with macOS litter."""
    root = tmp_path / "staging" / "Task99_Tiny"
    modality = {"0": "FLAIR", "1": "T1w"} if channels == 2 else {"0": "CT"}
    training, images = [], {}
    for i in range(cases):
        case = f"tiny_{i:03d}"
        image = _image(i, channels)
        images[case] = (image, _label(i, 2))
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", image if channels > 1 else image[..., 0], AFFINE)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", images[case][1], AFFINE)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "imagesTr" / "._tiny_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "._junk").write_bytes(b"junk")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "description": "tiny test task", "reference": "here", "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D" if channels > 1 else "3D", "modality": modality,
        "labels": {"0": "background", "1": "core", "2": "rim"},
        "numTraining": cases, "numTest": 0, "training": training, "test": []}))
    archive = tmp_path / "Task99_Tiny.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="Task99_Tiny")
        tar.add(root / "._junk", arcname="__MACOSX/Task99_Tiny/._dataset.json")
    return archive, images, modality


@pytest.mark.parametrize("channels", [2, 1])
def test_fetch_msd_end_to_end(tmp_path, channels):
    archive, images, modality = _msd_tar(tmp_path, channels)
    out = tmp_path / "raw" / "tiny"
    with LocalServer({"/Task99_Tiny.tar": archive.read_bytes()}) as server:
        source = DatasetSource(name="task99_tiny", title="tiny", layout="msd",
                               url=server.url("/Task99_Tiny.tar"), md5=_md5(archive))
        assert fetch_source(source, out) == out

    for case, (image, label) in images.items():
        for channel in range(channels):
            written = nib.load(out / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
            assert written.ndim == 3
            np.testing.assert_array_equal(np.asanyarray(written.dataobj), image[..., channel])
            np.testing.assert_allclose(written.affine, AFFINE)
        np.testing.assert_array_equal(_data(out / "labelsTr" / f"{case}.nii.gz"), label)
    assert not list(out.rglob("._*")) and not (out / "__MACOSX").exists()

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == modality
    assert meta["labels"] == {"background": 0, "core": 1, "rim": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    record = json.loads((out / "download.json").read_text())
    assert record["files"] == [{"file": "Task99_Tiny.tar", "size": archive.stat().st_size, "md5": _md5(archive)}]

    dataset = read_dataset(out)  # the pipeline's own reader agrees it is nnU-Net raw
    assert [c.case for c in dataset.cases] == sorted(images)
    assert not any(c.channels_last for c in dataset.cases)
    # the download stays cached, the extraction does not
    cache = tmp_path / "raw" / ".downloads"
    assert [p.name for p in cache.iterdir()] == ["Task99_Tiny.tar"]


def test_fetch_msd_checksum_mismatch_leaves_no_out(tmp_path):
    archive, _, _ = _msd_tar(tmp_path, 2)
    out = tmp_path / "raw" / "tiny"
    with LocalServer({"/Task99_Tiny.tar": archive.read_bytes()}) as server:
        source = DatasetSource(name="task99_tiny", title="tiny", layout="msd",
                               url=server.url("/Task99_Tiny.tar"), md5="0" * 32)
        with pytest.raises(UnetscoutError, match="checksum mismatch"):
            fetch_source(source, out)
    assert not out.exists()
    assert not list((tmp_path / "raw" / ".downloads").iterdir())


def test_fetch_rejects_archive_with_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar"
    payload = tmp_path / "payload.txt"
    payload.write_text("pwned")
    with tarfile.open(archive, "w") as tar:
        tar.add(payload, arcname="Task99_Tiny/../../evil.txt")
    out = tmp_path / "raw" / "tiny"
    with LocalServer({"/evil.tar": archive.read_bytes()}) as server:
        source = DatasetSource(name="evil", title="evil", layout="msd", url=server.url("/evil.tar"),
                               md5=_md5(archive))
        with pytest.raises(UnetscoutError, match="unsafe archive member"):
            fetch_source(source, out)
    assert not out.exists() and not (tmp_path / "raw" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


# --- ACDC --------------------------------------------------------------------------------

def _acdc_zip(tmp_path):
    root = tmp_path / "acdc_staging" / "database"
    frames = {"patient001": (1, 12), "patient002": (1, 9), "patient003": (2, 14)}
    truth = {}
    for p, (patient, (ed, es)) in enumerate(frames.items()):
        folder = root / "training" / patient
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        write_nifti(folder / f"{patient}_4d.nii.gz", np.zeros((*SHAPE, 2), np.float32), AFFINE)
        for phase, frame in (("ED", ed), ("ES", es)):
            image, label = _image(10 * p + frame, 1)[..., 0], _label(10 * p + frame, 3)
            write_nifti(folder / f"{patient}_frame{frame:02d}.nii.gz", image, AFFINE)
            write_nifti(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", label, AFFINE)
            truth[f"{patient}_{phase}"] = (patient, image, label)
    test_patient = root / "testing" / "patient101"  # a test patient without ground truth
    test_patient.mkdir(parents=True)
    (test_patient / "Info.cfg").write_text("ED: 1\nES: 7\n")
    write_nifti(test_patient / "patient101_frame01.nii.gz", _image(99, 1)[..., 0], AFFINE)
    archive = tmp_path / "acdc.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(root.parent.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(root.parent).as_posix())
    return archive, truth


def test_fetch_acdc_end_to_end_unpinned(tmp_path, capsys):
    archive, truth = _acdc_zip(tmp_path)
    out = tmp_path / "raw" / "acdc"
    with LocalServer({"/acdc/download": archive.read_bytes()}) as server:
        source = DatasetSource(name="acdc_test", title="tiny ACDC", layout="acdc",
                               url=server.url("/acdc/download"), archive_name="ACDC.zip")
        fetch_source(source, out, cache_dir=tmp_path / "cache")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "acdc_test" in warnings[0]

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
    assert meta["numTraining"] == 6
    assert meta["unetscout_patients"] == {case: patient for case, (patient, _, _) in truth.items()}
    for case, (_, image, label) in truth.items():
        np.testing.assert_array_equal(_data(out / "imagesTr" / f"{case}_0000.nii.gz"), image)
        np.testing.assert_array_equal(_data(out / "labelsTr" / f"{case}.nii.gz"), label)
    assert not any("patient101" in p.name for p in out.rglob("*"))

    record = json.loads((out / "download.json").read_text())
    assert record["pinned"] is False
    assert record["files"] == [{"file": "ACDC.zip", "size": archive.stat().st_size,
                                "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}]
    dataset = read_dataset(out)
    assert dataset.patients == ["patient001", "patient002", "patient003"]
    assert len(dataset.cases) == 6


def test_acdc_missing_frame_names_the_file(tmp_path):
    archive, _ = _acdc_zip(tmp_path)
    with zipfile.ZipFile(archive) as zipped:
        kept = {name: zipped.read(name) for name in zipped.namelist()
                if not name.endswith("patient002_frame09_gt.nii.gz")}
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in kept.items():
            zipped.writestr(name, data)
    out = tmp_path / "raw" / "acdc"
    with LocalServer({"/acdc.zip": archive.read_bytes()}) as server:
        source = DatasetSource(name="acdc_test", title="tiny ACDC", layout="acdc", url=server.url("/acdc.zip"))
        with pytest.raises(UnetscoutError, match=r"patient002_frame09_gt\.nii\.gz: missing: .*ES frame 9"):
            fetch_source(source, out)
    assert not out.exists()


# --- KiTS23 (per-case files, no checksums) ---------------------------------------------------

def _nifti_bytes(tmp_path, name, data) -> bytes:
    return write_nifti(tmp_path / "kits_staging" / name, data, AFFINE).read_bytes()


def test_fetch_kits23_per_case(tmp_path):
    files, truth = {}, {}
    for number in (0, 1, 400):
        image, label = _image(number, 1)[..., 0], _label(number, 3)
        files[f"/img/master_{number:05d}.nii.gz"] = _nifti_bytes(tmp_path, f"i{number}.nii.gz", image)
        files[f"/seg/case_{number:05d}/segmentation.nii.gz"] = _nifti_bytes(tmp_path, f"s{number}.nii.gz", label)
        truth[f"case_{number:05d}"] = (image, label)
    out = tmp_path / "raw" / "kits"
    with LocalServer(files) as server:
        source = DatasetSource(name="kits_test", title="tiny KiTS", layout="kits23",
                               url=server.url("/img/master_{case:05d}.nii.gz"),
                               label_url=server.url("/seg/case_{case:05d}/segmentation.nii.gz"),
                               cases=(0, 1, 400))
        fetch_source(source, out)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 3
    for case, (image, label) in truth.items():
        np.testing.assert_array_equal(_data(out / "imagesTr" / f"{case}_0000.nii.gz"), image)
        np.testing.assert_array_equal(_data(out / "labelsTr" / f"{case}.nii.gz"), label)
    image, label, _ = read_case(read_dataset(out), read_dataset(out).cases[0])
    assert image.shape == (1, *SHAPE) and label.shape == SHAPE


@pytest.mark.parametrize("fault", ["shape", "truncated"])
def test_fetch_kits23_bad_case_is_an_error_and_leaves_no_out(tmp_path, fault):
    image = _nifti_bytes(tmp_path, "i.nii.gz", _image(0, 1)[..., 0])
    if fault == "shape":
        label = _nifti_bytes(tmp_path, "s.nii.gz", np.zeros((6, 5, 3), np.uint8))
    else:  # a gzip stream cut short, served with a matching length so the download accepts it
        label = _nifti_bytes(tmp_path, "s.nii.gz", _label(0, 3))[:-40]
    out = tmp_path / "raw" / "kits"
    with LocalServer({"/i/00000": image, "/s/00000": label}) as server:
        source = DatasetSource(name="kits_test", title="tiny KiTS", layout="kits23",
                               url=server.url("/i/{case:05d}"), label_url=server.url("/s/{case:05d}"), cases=(0,))
        with pytest.raises(UnetscoutError) as err:
            fetch_source(source, out)
    message = str(err.value)
    assert "case_00000_segmentation.nii.gz" in message
    assert ("differs from image" if fault == "shape" else "truncated") in message
    assert not out.exists()


def test_check_nifti_finds_a_stream_cut_short_after_the_header(tmp_path):
    path = write_nifti(tmp_path / "big.nii.gz",
                       np.random.default_rng(0).integers(0, 255, size=(40, 40, 20), dtype=np.uint8))
    assert check_nifti(path, "image") == (40, 40, 20)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert nib.load(path).shape == (40, 40, 20)  # the header alone still parses
    with pytest.raises(UnetscoutError, match=r"big\.nii\.gz: cannot read image \(truncated"):
        check_nifti(path, "image")


# --- AMOS22 ------------------------------------------------------------------------------

def test_convert_amos22_keeps_labelled_ct_and_renames_channels(tmp_path):
    src = tmp_path / "amos22"
    labels = {"0": "background", "1": "spleen", "2": "liver"}
    (src).mkdir()
    (src / "dataset.json").write_text(json.dumps({"name": "AMOS", "modality": {"0": "CT"}, "labels": labels}))
    truth = {}
    for part, number in (("Tr", 1), ("Tr", 508), ("Va", 2)):
        image, label = _image(number, 1)[..., 0], _label(number, 2)
        write_nifti(src / f"images{part}" / f"amos_{number:04d}.nii.gz", image, AFFINE)
        write_nifti(src / f"labels{part}" / f"amos_{number:04d}.nii.gz", label, AFFINE)
        truth[f"amos_{number:04d}"] = (image, label)
    write_nifti(src / "imagesTs" / "amos_0003.nii.gz", _image(3, 1)[..., 0], AFFINE)  # unlabelled
    out = tmp_path / "out"
    assert convert_amos22(tmp_path, out) == 2
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["amos_0001_0000.nii.gz", "amos_0002_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["amos_0001.nii.gz", "amos_0002.nii.gz"]
    for case in ("amos_0001", "amos_0002"):
        np.testing.assert_array_equal(_data(out / "imagesTr" / f"{case}_0000.nii.gz"), truth[case][0])
        np.testing.assert_array_equal(_data(out / "labelsTr" / f"{case}.nii.gz"), truth[case][1])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "spleen": 1, "liver": 2}
    assert meta["channel_names"] == {"0": "CT"} and meta["numTraining"] == 2


# --- BraTS 2021 (registration only) -----------------------------------------------------------

MODALITY_OFFSET = {"t1": 100.0, "t1ce": 200.0, "t2": 300.0, "flair": 400.0}


def _brats_cases(root, cases=3):
    truth = {}
    for i in range(cases):
        case = f"BraTS2021_{i:05d}"
        folder = root / case
        for modality, offset in MODALITY_OFFSET.items():
            write_nifti(folder / f"{case}_{modality}.nii.gz", offset + _image(i, 1)[..., 0], AFFINE)
        seg = np.random.default_rng(i).choice(np.array([0, 1, 2, 4], np.uint8), size=SHAPE)
        seg.flat[:4] = [0, 1, 2, 4]  # every BraTS value present
        write_nifti(folder / f"{case}_seg.nii.gz", seg, AFFINE)
        truth[case] = (offset, seg)
    return truth


def _check_brats(out, root):
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert sorted(meta["labels"].values()) == [0, 1, 2, 3] and meta["numTraining"] == 3
    for i in range(3):
        case = f"BraTS2021_{i:05d}"
        for channel, modality in enumerate(("t1", "t1ce", "t2", "flair")):
            np.testing.assert_array_equal(_data(out / "imagesTr" / f"{case}_{channel:04d}.nii.gz"),
                                          _data(root / case / f"{case}_{modality}.nii.gz"))
        seg = _data(root / case / f"{case}_seg.nii.gz")
        expected = np.where(seg == 4, 3, seg)
        written = nib.load(out / "labelsTr" / f"{case}.nii.gz")
        np.testing.assert_array_equal(np.asanyarray(written.dataobj), expected)
        np.testing.assert_allclose(written.affine, AFFINE)
    assert len(read_dataset(out).cases) == 3


def test_brats_without_from_says_what_to_place(tmp_path):
    with pytest.raises(UnetscoutError) as err:
        fetch("brats2021", tmp_path / "raw" / "brats2021")
    message = str(err.value)
    assert "\n" not in message
    assert "place BraTS2021_Training_Data.tar (from Synapse syn25829067)" in message
    assert "--from DIR" in message
    assert not (tmp_path / "raw" / "brats2021").exists()


def test_brats_from_extracted_folders(tmp_path):
    placed = tmp_path / "placed"
    _brats_cases(placed / "BraTS2021_Training_Data")
    out = tmp_path / "raw" / "brats2021"
    assert fetch("brats2021", out, from_dir=placed) == out
    _check_brats(out, placed / "BraTS2021_Training_Data")


def test_brats_from_placed_archive(tmp_path):
    staging = tmp_path / "staging"
    _brats_cases(staging)
    placed = tmp_path / "placed"
    placed.mkdir()
    with tarfile.open(placed / "BraTS2021_Training_Data.tar", "w") as tar:
        for folder in sorted(staging.iterdir()):
            tar.add(folder, arcname=folder.name)
    out = tmp_path / "raw" / "brats2021"
    fetch("brats2021", out, from_dir=placed, cache_dir=tmp_path / "cache")
    _check_brats(out, staging)
    assert not list((tmp_path / "cache").iterdir())  # the extraction was cleaned up


def test_brats_missing_modality_names_the_file(tmp_path):
    placed = tmp_path / "placed"
    _brats_cases(placed)
    missing = placed / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz"
    missing.unlink()
    out = tmp_path / "raw" / "brats2021"
    with pytest.raises(UnetscoutError) as err:
        fetch("brats2021", out, from_dir=placed)
    assert str(err.value).startswith(f"{missing}: missing")
    assert not out.exists()


def test_brats_from_empty_folder_repeats_the_instructions(tmp_path):
    (tmp_path / "placed").mkdir()
    with pytest.raises(UnetscoutError, match="BraTS2021_Training_Data.tar"):
        fetch("brats2021", tmp_path / "out", from_dir=tmp_path / "placed")
