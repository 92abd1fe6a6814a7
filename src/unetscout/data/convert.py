"""Convert downloaded dataset layouts into nnU-Net v2 raw format.

Every converter writes into a folder the caller made (inside `atomic_directory`) and
handles one case at a time, so memory does not grow with the number of cases. Files
that need no change are copied byte for byte; only what must change (a 4-D MSD image
split into channels, BraTS label 4 renumbered to 3) is rewritten with nibabel, keeping
the affine and header. The 2-D image datasets (PNG/JPG) have their converters in
convert_images.py, which shares the helpers here.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import zlib
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from unetscout.atomic import write_json_atomic
from unetscout.errors import file_error
from unetscout.progress import Progress

FILE_ENDING = ".nii.gz"
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError)

ACDC_LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
ACDC_PHASES = ("ED", "ES")
KITS23_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
# AMOS22 numbers its CT scans 1..500 and its MRI scans above 500.
AMOS_LAST_CT_ID = 500
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")  # nnU-Net channel order 0000..0003
BRATS_CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
# BraTS labels 1 NCR (necrotic tumour core), 2 ED (peritumoral edema), 4 ET (enhancing
# tumour); 4 becomes 3 so the values are consecutive, as in nnU-Net's own conversion.
BRATS_LABELS = {"background": 0, "necrotic_core": 1, "edema": 2, "enhancing_tumour": 3}
BRATS_VALUE_MAP = {0: 0, 1: 1, 2: 2, 4: 3}


# ----------------------------------------------------------------------------- shared helpers

def is_hidden(path: Path, root: Path) -> bool:
    """Dot files and `__MACOSX` below `root` (resource forks and archive litter)."""
    parts = path.relative_to(root).parts
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def strip_nifti_ending(name: str) -> str | None:
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def find_dataset_root(src: Path, *required: str) -> Path:
    """The one folder at or below `src` that holds every name in `required`."""
    candidates = [src] if all((src / name).exists() for name in required) else [
        folder for folder in sorted(src.rglob("*"))
        if folder.is_dir() and not is_hidden(folder, src) and all((folder / name).exists() for name in required)]
    if len(candidates) != 1:
        found = ", ".join(str(c) for c in candidates[:3]) or "none"
        raise file_error(src, f"expected exactly one folder holding {', '.join(required)}, found {len(candidates)} "
                              f"({found})")
    return candidates[0]


def read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise file_error(path, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise file_error(path, f"cannot read as JSON ({err})") from None
    if not isinstance(meta, dict):
        raise file_error(path, "must hold a JSON object")
    return meta


def labels_name_to_int(path: Path, labels: object) -> dict[str, int]:
    """MSD/nnU-Net v1 `{"0": "background"}` or v2 `{"background": 0}` -> name -> int, by value."""
    if not isinstance(labels, dict) or not labels:
        raise file_error(path, "labels must be a non-empty object")
    try:
        if all(isinstance(v, str) for v in labels.values()):
            pairs = [(str(name), int(value)) for value, name in labels.items()]
        else:
            pairs = [(str(name), int(value)) for name, value in labels.items()]
    except (TypeError, ValueError):
        raise file_error(path, f"labels must map names to integers, got {labels}") from None
    return dict(sorted(pairs, key=lambda pair: pair[1]))


def channel_names_from(path: Path, names: object) -> dict[str, str]:
    if not isinstance(names, dict) or not names:
        raise file_error(path, "needs modality/channel_names such as {\"0\": \"CT\"}")
    try:
        return {str(i): str(names[key]) for i, key in enumerate(sorted(names, key=int))}
    except ValueError:
        raise file_error(path, f"channel keys must be numbers, got {sorted(names)}") from None


def write_dataset_json(dst: Path, *, name: str, channel_names: dict[str, str], labels: dict[str, int],
                       num_training: int, description: str = "", reference: str = "", licence: str = "",
                       file_ending: str = FILE_ENDING, **extra: object) -> None:
    """nnU-Net v2 dataset.json (plus any `unetscout_*` keys in `extra`); 2-D image sets pass ".png"."""
    meta = {"name": name, "description": description, "reference": reference, "licence": licence,
            "channel_names": channel_names, "labels": labels, "numTraining": num_training,
            "file_ending": file_ending, **extra}
    write_json_atomic(dst / "dataset.json", meta)


def make_case_folders(dst: Path) -> tuple[Path, Path]:
    """`dst/imagesTr` and `dst/labelsTr`, made if missing."""
    images, labels = dst / "imagesTr", dst / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    return images, labels


def _place(source: Path, target: Path) -> None:
    """Copy a NIfTI file to `target` (.nii.gz), recompressing only an uncompressed source."""
    if not source.is_file():
        raise file_error(source, "missing")
    if source.name.endswith(".nii.gz"):
        shutil.copyfile(source, target)
    else:
        image = _load(source, "image")
        nib.save(image, str(target))


def _load(path: Path, what: str) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except FileNotFoundError:
        raise file_error(path, f"{what} file missing") from None
    except _READ_ERRORS as err:
        raise file_error(path, f"cannot read {what} (truncated or corrupt NIfTI file: {err})") from None


def _array(path: Path, image: nib.Nifti1Image, what: str) -> np.ndarray:
    try:
        return np.asanyarray(image.dataobj)
    except _READ_ERRORS as err:
        raise file_error(path, f"cannot read {what} data (truncated or corrupt NIfTI file: {err})") from None


def check_nifti(path: Path, what: str) -> tuple[int, ...]:
    """Header parses and the whole (gzipped) data stream is intact; returns the shape.

    Streams the decompression instead of loading the array, so a 500 MB CT costs no memory.
    """
    image = _load(path, what)
    shape = tuple(int(n) for n in image.shape)
    needed = int(image.dataobj.offset) + int(np.prod(shape)) * image.get_data_dtype().itemsize
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        size = 0
        with opener(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                size += len(chunk)
    except _READ_ERRORS as err:
        raise file_error(path, f"cannot read {what} (truncated or corrupt file: {err}); delete it and "
                               "rerun to download it again") from None
    if size < needed:
        raise file_error(path, f"{what} holds {size} bytes, its header needs {needed}: truncated; delete it "
                               "and rerun to download it again")
    return shape


# ----------------------------------------------------------------------------- MSD

def convert_msd(src: Path, dst: Path) -> int:
    """Medical Segmentation Decathlon task -> nnU-Net v2 raw; returns the number of cases."""
    root = find_dataset_root(Path(src), "dataset.json", "imagesTr", "labelsTr")
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    channel_names = channel_names_from(meta_path, meta.get("modality", meta.get("channel_names")))
    labels = labels_name_to_int(meta_path, meta.get("labels"))
    pairs = _msd_pairs(root, meta_path, meta.get("training"))
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress(f"convert {root.name}", total=len(pairs), unit="case")
    for case, image_path, label_path in pairs:
        _split_channels(image_path, images_dir, case, len(channel_names))
        _place(label_path, labels_dir / f"{case}{FILE_ENDING}")
        progress.update()
    progress.close()
    write_dataset_json(dst, name=str(meta.get("name", root.name)), description=str(meta.get("description", "")),
                       reference=str(meta.get("reference", "")), licence=str(meta.get("licence", "")),
                       channel_names=channel_names, labels=labels, num_training=len(pairs))
    return len(pairs)


def _msd_pairs(root: Path, meta_path: Path, training: object) -> list[tuple[str, Path, Path]]:
    if training is None:
        labels = sorted(p for p in (root / "labelsTr").iterdir()
                        if not p.name.startswith(".") and strip_nifti_ending(p.name))
        training = [{"image": f"./imagesTr/{p.name}", "label": f"./labelsTr/{p.name}"} for p in labels]
    if not isinstance(training, list) or not all(
            isinstance(t, dict) and isinstance(t.get("image"), str) and isinstance(t.get("label"), str)
            for t in training):
        raise file_error(meta_path, "training must be a list of {\"image\": ..., \"label\": ...} entries")
    pairs = []
    for entry in training:
        label_path, image_path = root / entry["label"], root / entry["image"]
        case = strip_nifti_ending(label_path.name)
        if case is None:
            raise file_error(meta_path, f"training label {entry['label']!r} is not a NIfTI file name")
        for path in (image_path, label_path):
            if not path.is_file():
                raise file_error(path, f"listed in {meta_path.name} training but missing")
        pairs.append((case, image_path, label_path))
    if not pairs:
        raise file_error(meta_path, "no training cases")
    return pairs


def _split_channels(path: Path, images_dir: Path, case: str, channels: int) -> None:
    """One 3-D file per channel; a 4-D MSD image (X, Y, Z, C) keeps its affine and header."""
    image = _load(path, "image")
    if image.ndim == 3 and channels == 1:
        _place(path, images_dir / f"{case}_0000{FILE_ENDING}")
        return
    if image.ndim != 4 or image.shape[3] != channels:
        raise file_error(path, f"image shape {image.shape}: expected {channels} channel(s) "
                               f"({'3-D' if channels == 1 else f'4-D with {channels} on the last axis'})")
    data = _array(path, image, "image")
    for channel in range(channels):
        part = nib.Nifti1Image(data[..., channel], image.affine, image.header)
        nib.save(part, str(images_dir / f"{case}_{channel:04d}{FILE_ENDING}"))


# ----------------------------------------------------------------------------- ACDC

def _acdc_frames(info: Path) -> dict[str, int]:
    frames = {}
    try:
        lines = info.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise file_error(info, f"cannot read ({err})") from None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in ACDC_PHASES:
            try:
                frames[key.strip()] = int(value.strip())
            except ValueError:
                raise file_error(info, f"{key.strip()} must be a frame number, got {value.strip()!r}") from None
    missing = [phase for phase in ACDC_PHASES if phase not in frames]
    if missing:
        raise file_error(info, f"missing {' and '.join(missing)} frame number(s) (lines such as 'ED: 1')")
    return frames


def _acdc_cases(src: Path) -> tuple[list[tuple[str, str, Path, Path]], int]:
    """(case, patient, image, label) for every labelled ED/ES frame; and how many unlabelled patients."""
    infos = sorted(p for p in src.rglob("Info.cfg") if not is_hidden(p, src))
    if not infos:
        raise file_error(src, "no ACDC patient folders (patientNNN/Info.cfg) found")
    cases, unlabelled, seen = [], 0, {}
    for info in infos:
        folder = info.parent
        patient = folder.name
        if patient in seen:
            raise file_error(folder, f"patient {patient} appears twice (also {seen[patient]})")
        seen[patient] = folder
        frames = _acdc_frames(info)
        entries = []
        for phase in ACDC_PHASES:
            stem = f"{patient}_frame{frames[phase]:02d}"
            entries.append((f"{patient}_{phase}", patient, folder / f"{stem}.nii.gz", folder / f"{stem}_gt.nii.gz"))
        # The official test folder may ship without ground truth; those patients cannot be used.
        if folder.parent.name == "testing" and not any(label.is_file() for *_, label in entries):
            unlabelled += 1
            continue
        for phase, (*_, image, label) in zip(ACDC_PHASES, entries):
            for path in (image, label):
                if not path.is_file():
                    raise file_error(path, f"missing: {info} gives {phase} frame {frames[phase]}")
        cases.extend(entries)
    if not cases:
        raise file_error(src, "no ACDC patient has ground-truth (_gt) frames")
    return cases, unlabelled


def convert_acdc(src: Path, dst: Path) -> int:
    """ACDC `database/{training,testing}/patientNNN/` -> one case per patient and ED/ES frame."""
    cases, unlabelled = _acdc_cases(Path(src))
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress("convert acdc", total=len(cases), unit="case")
    for case, _, image, label in cases:
        _place(image, images_dir / f"{case}_0000{FILE_ENDING}")
        _place(label, labels_dir / f"{case}{FILE_ENDING}")
        progress.update()
    progress.close()
    note = f"; {unlabelled} test patient(s) without ground truth left out" if unlabelled else ""
    write_dataset_json(
        dst, name="ACDC", channel_names={"0": "cineMRI"}, labels=dict(ACDC_LABELS), num_training=len(cases),
        description=("Automated Cardiac Diagnosis Challenge cine MRI: one case per patient and end-diastolic "
                     f"(ED) / end-systolic (ES) frame{note}"),
        reference="Bernard et al., IEEE TMI 37(11) 2018, doi:10.1109/TMI.2018.2837502",
        licence="CC BY-NC-SA 4.0",
        unetscout_patients={case: patient for case, patient, _, _ in cases})
    return len(cases)


# ----------------------------------------------------------------------------- KiTS23

def convert_kits23(cases: Iterable[tuple[str, Path, Path]], dst: Path, total: int | None = None) -> int:
    """KiTS23 (case id, imaging, segmentation) triples -> nnU-Net raw; `cases` may download lazily."""
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress("convert kits23", total=total, unit="case")
    count = 0
    for case, image, label in cases:
        image_shape, label_shape = check_nifti(image, "image"), check_nifti(label, "segmentation")
        if image_shape != label_shape:
            raise file_error(label, f"segmentation shape {label_shape} differs from image {image.name} "
                                    f"shape {image_shape}")
        _place(image, images_dir / f"{case}_0000{FILE_ENDING}")
        _place(label, labels_dir / f"{case}{FILE_ENDING}")
        count += 1
        progress.update()
    progress.close()
    if not count:
        raise file_error(dst, "no KiTS23 cases to convert")
    write_dataset_json(
        dst, name="KiTS23", channel_names={"0": "CT"}, labels=dict(KITS23_LABELS), num_training=count,
        description="2023 Kidney and Kidney Tumor Segmentation challenge, public training cases",
        reference="https://kits-challenge.org/kits23/", licence="CC BY-NC-SA 4.0")
    return count


# ----------------------------------------------------------------------------- AMOS22

def _amos_id(path: Path) -> int | None:
    match = re.fullmatch(r"amos_(\d+)", strip_nifti_ending(path.name) or "")
    return int(match.group(1)) if match else None


def convert_amos22(src: Path, dst: Path) -> int:
    """AMOS22 -> nnU-Net raw, CT cases only (ids <= 500) from the labelled Tr and Va parts."""
    root = find_dataset_root(Path(src), "dataset.json", "imagesTr", "labelsTr")
    meta_path = root / "dataset.json"
    labels = labels_name_to_int(meta_path, read_json(meta_path).get("labels"))
    pairs = []
    for part in ("Tr", "Va"):
        labels_dir = root / f"labels{part}"
        if not labels_dir.is_dir():
            continue
        for label in sorted(labels_dir.iterdir()):
            number = _amos_id(label)
            if label.name.startswith(".") or number is None or number > AMOS_LAST_CT_ID:
                continue
            image = root / f"images{part}" / label.name
            if not image.is_file():
                raise file_error(image, f"missing: image for label {label}")
            pairs.append((strip_nifti_ending(label.name), image, label))
    if not pairs:
        raise file_error(root, f"no labelled CT cases (amos_NNNN with NNNN <= {AMOS_LAST_CT_ID}) found")
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress("convert amos22", total=len(pairs), unit="case")
    for case, image, label in pairs:
        _place(image, images_dir / f"{case}_0000{FILE_ENDING}")
        _place(label, labels_dir / f"{case}{FILE_ENDING}")
        progress.update()
    progress.close()
    write_dataset_json(
        dst, name="AMOS22_CT", channel_names={"0": "CT"}, labels=labels, num_training=len(pairs),
        description=f"AMOS22 abdominal multi-organ CT: labelled training and validation scans with ids "
                    f"<= {AMOS_LAST_CT_ID} (the MRI scans are left out)",
        reference="Ji et al., NeurIPS 2022 Datasets and Benchmarks; https://amos22.grand-challenge.org/",
        licence="CC BY 4.0")
    return len(pairs)


# ----------------------------------------------------------------------------- BraTS 2021

def brats_case_folders(src: Path) -> list[Path]:
    """Folders named like BraTS2021_00000 at or below `src`."""
    return sorted(folder for folder in Path(src).rglob("BraTS20*_*")
                  if folder.is_dir() and not is_hidden(folder, src)
                  and re.fullmatch(r"BraTS20\d\d_\d+", folder.name))


def _brats_files(folder: Path) -> tuple[list[Path], Path]:
    case = folder.name
    images = [folder / f"{case}_{modality}.nii.gz" for modality in BRATS_MODALITIES]
    label = folder / f"{case}_seg.nii.gz"
    for path in (*images, label):
        if not path.is_file():
            raise file_error(path, f"missing: every BraTS case needs {', '.join(BRATS_MODALITIES)} and seg "
                                   f"files named {case}_<kind>.nii.gz")
    return images, label


def convert_brats2021(folders: list[Path], dst: Path) -> int:
    """BraTS 2021 case folders -> nnU-Net raw (channels t1, t1ce, t2, flair; label 4 -> 3)."""
    if not folders:
        raise file_error(dst, "no BraTS case folders to convert")
    cases = [(folder.name, *_brats_files(folder)) for folder in folders]  # validate all before writing
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress("convert brats2021", total=len(cases), unit="case")
    lookup = np.zeros(max(BRATS_VALUE_MAP) + 1, dtype=np.uint8)
    lookup[list(BRATS_VALUE_MAP)] = list(BRATS_VALUE_MAP.values())
    for case, images, label in cases:
        for channel, image in enumerate(images):
            _place(image, images_dir / f"{case}_{channel:04d}{FILE_ENDING}")
        seg = _load(label, "label")
        values = _array(label, seg, "label")
        found = np.unique(values)
        bad = [v for v in found.tolist() if v not in BRATS_VALUE_MAP]
        if bad:
            raise file_error(label, f"label value(s) {bad} are not BraTS labels {sorted(BRATS_VALUE_MAP)}")
        header = seg.header.copy()
        header.set_data_dtype(np.uint8)
        remapped = nib.Nifti1Image(lookup[values.astype(np.intp)], seg.affine, header)
        nib.save(remapped, str(labels_dir / f"{case}{FILE_ENDING}"))
        progress.update()
    progress.close()
    write_dataset_json(
        dst, name="BraTS2021", channel_names=dict(BRATS_CHANNELS), labels=dict(BRATS_LABELS),
        num_training=len(cases),
        description="BraTS 2021 task 1 training cases; label 4 (enhancing tumour) stored as 3",
        reference="https://www.synapse.org/#!Synapse:syn25829067", licence="see the Synapse data use terms")
    return len(cases)
