"""Read and validate a raw dataset in nnU-Net v2 raw format or the MSD layout it came from.

`read_dataset` checks everything that can be checked from `dataset.json` and the file
names alone (cheap, before any volume is loaded); `read_case` loads one case, reoriented
to RAS, and checks what needs the voxels. Every problem is a one-line UnetscoutError
naming the offending file.
"""

from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, SpatialImage

from unetscout.data import images
from unetscout.errors import file_error

# MSD's dataset.json has no file_ending; everything it ships is gzipped NIfTI.
MSD_FILE_ENDING = ".nii.gz"
# Two geometries count as equal when their affines agree this closely (mm).
AFFINE_ATOL = 1e-3
# Endings a case file may carry; used to catch one case stored twice (A.nii and A.nii.gz).
NIFTI_ENDINGS = (".nii.gz", ".nii")
# A 2-D image case is one slice of unit spacing: its distances (HD95) are in pixels.
IMAGE_SPACING = (1.0, 1.0, 1.0)

# What nibabel, gzip and zlib raise on a truncated or damaged file, header or data.
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, ImageFileError, HeaderDataError)


@dataclass(frozen=True)
class RawCase:
    """One case: its label file and either one file per channel or one 4-D file (MSD)."""

    case: str
    patient: str
    label_file: Path
    image_files: tuple[Path, ...]
    channels_last: bool  # True: a single MSD file holding every channel on its last axis


@dataclass(frozen=True)
class RawDataset:
    root: Path
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]  # name -> value, values 0..n-1
    file_ending: str
    cases: tuple[RawCase, ...]

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"

    @property
    def patients(self) -> list[str]:
        return sorted({c.patient for c in self.cases})

    @property
    def is_image_set(self) -> bool:
        """2-D natural images (PNG, JPG, ...): one-slice cases of unit spacing, distances in pixels."""
        return images.is_image_ending(self.file_ending)


def read_dataset(root: str | Path) -> RawDataset:
    """Validate `root/dataset.json` and the file layout; list the cases (sorted by id)."""
    root = Path(root)
    if not root.is_dir():
        raise file_error(root, "raw dataset folder does not exist")
    meta_path = root / "dataset.json"
    meta = _load_json(meta_path)
    msd_style = "channel_names" not in meta and "modality" in meta

    missing = [key for key, present in (
        ("channel_names", "channel_names" in meta or "modality" in meta),
        ("labels", "labels" in meta),
        ("file_ending", "file_ending" in meta or msd_style),
    ) if not present]
    if missing:
        raise file_error(meta_path, f"missing required key(s) {', '.join(missing)}")

    channel_names = _channel_names(meta_path, meta["channel_names"] if "channel_names" in meta
                                   else meta["modality"])
    labels = _labels(meta_path, meta["labels"])
    file_ending = meta.get("file_ending", MSD_FILE_ENDING)
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise file_error(meta_path, f"file_ending must be a string such as '.nii.gz', got {file_ending!r}")
    image_set = images.is_image_ending(file_ending)
    if image_set and file_ending.lower() not in images.LOSSLESS_ENDINGS:
        raise file_error(meta_path, f"file_ending {file_ending} is the labels' ending and must be lossless "
                                    f"({', '.join(images.LOSSLESS_ENDINGS)}): JPG compression alters class numbers "
                                    f"(images may still be JPG files)")

    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    for folder in (labels_dir, images_dir):
        if not folder.is_dir():
            raise file_error(folder, "folder missing from the raw dataset")

    case_ids = _case_ids(labels_dir, file_ending)
    _check_training_list(meta_path, meta.get("training"), labels_dir, file_ending)
    patients = _patients(meta_path, meta.get("unetscout_patients"), case_ids)

    locate = _locate_image_case if image_set else _locate_case
    cases = tuple(locate(case, patients[case], labels_dir, images_dir, file_ending, channel_names)
                  for case in case_ids)
    _check_extra_channels(images_dir, images.IMAGE_ENDINGS if image_set else (file_ending,), case_ids,
                          channel_names)
    distinct = sorted(set(patients.values()))
    if len(distinct) < 3:
        raise file_error(meta_path, f"only {len(distinct)} patient(s) with labels in {labels_dir} "
                                    f"({', '.join(distinct) or 'none'}); a train/val/test split needs at least 3")
    name = meta.get("name") if isinstance(meta.get("name"), str) else root.name
    return RawDataset(root=root, name=name, channel_names=channel_names, labels=labels,
                      file_ending=file_ending, cases=cases)


def _load_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise file_error(path, "missing: a raw dataset needs a dataset.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise file_error(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(meta, dict):
        raise file_error(path, "must hold a JSON object")
    return meta


def _channel_names(path: Path, raw: object) -> tuple[str, ...]:
    """`{"0": "T2", "1": "ADC"}` -> ("T2", "ADC"): keys must be 0..C-1."""
    if not isinstance(raw, dict) or not raw:
        raise file_error(path, "channel_names must be a non-empty object such as {\"0\": \"CT\"}")
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise file_error(path, f"channel_names keys must be channel numbers, got {sorted(raw)}") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise file_error(path, f"channel_names keys must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _labels(path: Path, raw: object) -> dict[str, int]:
    """Normalise nnU-Net v2 (name -> int) and MSD ("int" -> name) labels to name -> int."""
    if not isinstance(raw, dict) or not raw:
        raise file_error(path, "labels must be a non-empty object such as {\"background\": 0, \"tumour\": 1}")
    msd = all(isinstance(v, str) for v in raw.values())
    try:
        pairs = [(str(v), int(k)) for k, v in raw.items()] if msd else [(str(k), int(v)) for k, v in raw.items()]
    except (TypeError, ValueError):
        raise file_error(path, "labels must map names to integers (region-based labels are not "
                               f"supported), got {raw}") from None
    values = sorted(v for _, v in pairs)
    if len({n for n, _ in pairs}) != len(pairs):
        raise file_error(path, f"labels name the same class twice: {raw}")
    if values != list(range(len(values))):
        raise file_error(path, f"label values must be consecutive from background 0, got {values}")
    if len(values) > 256:
        raise file_error(path, f"{len(values)} labels; at most 256 fit the uint8 label maps")
    return dict(sorted(pairs, key=lambda p: p[1]))


def _strip_ending(name: str, endings: tuple[str, ...]) -> str | None:
    for ending in endings:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def _case_ids(labels_dir: Path, file_ending: str) -> list[str]:
    # Hidden files include the `._*` resource forks macOS leaves in every MSD archive.
    names = sorted(p.name for p in labels_dir.iterdir() if not p.name.startswith(".") and p.is_file())
    endings = tuple(sorted({file_ending, *NIFTI_ENDINGS}, key=len, reverse=True))
    stems: dict[str, list[str]] = {}
    for name in names:
        stem = _strip_ending(name, endings)
        if stem is not None:
            stems.setdefault(stem, []).append(name)
    twice = {stem: files for stem, files in stems.items() if len(files) > 1}
    if twice:
        listed = "; ".join(f"{stem} ({', '.join(files)})" for stem, files in sorted(twice.items()))
        raise file_error(labels_dir, f"duplicate case id(s), one case stored as several files: {listed}")
    case_ids = sorted(stem for stem, files in stems.items() if files[0].endswith(file_ending))
    if not case_ids:
        raise file_error(labels_dir, f"no label files ending in {file_ending}")
    return case_ids


def _check_training_list(meta_path: Path, training: object, labels_dir: Path, file_ending: str) -> None:
    """MSD's `training` list: each case once, each listed label file present."""
    if training is None:
        return
    if not isinstance(training, list) or not all(isinstance(t, dict) and "label" in t for t in training):
        raise file_error(meta_path, "training must be a list of {\"image\": ..., \"label\": ...} entries")
    names = [Path(str(t["label"])).name for t in training]
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if repeated:
        ids = [_strip_ending(n, (file_ending, *NIFTI_ENDINGS)) or n for n in repeated]
        raise file_error(meta_path, f"duplicate case id(s) in the training list: {', '.join(ids)}")
    absent = [name for name in names if not (labels_dir / name).is_file()]
    if absent:
        raise file_error(labels_dir / absent[0], f"listed in {meta_path.name} training but missing"
                                                 f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}")


def _patients(meta_path: Path, mapping: object, case_ids: list[str]) -> dict[str, str]:
    """Case -> patient; `unetscout_patients` groups cases, every other case is its own patient."""
    if mapping is None:
        return {case: case for case in case_ids}
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise file_error(meta_path, "unetscout_patients must map case ids to patient ids (strings)")
    unknown = sorted(set(mapping) - set(case_ids))
    if unknown:
        raise file_error(meta_path, f"unetscout_patients names case(s) without a label file: {', '.join(unknown)}")
    return {case: mapping.get(case, case) for case in case_ids}


def _locate_case(case: str, patient: str, labels_dir: Path, images_dir: Path, file_ending: str,
                 channel_names: tuple[str, ...]) -> RawCase:
    label_file = labels_dir / f"{case}{file_ending}"
    per_channel = tuple(images_dir / f"{case}_{i:04d}{file_ending}" for i in range(len(channel_names)))
    if all(p.is_file() for p in per_channel):
        return RawCase(case, patient, label_file, per_channel, channels_last=False)
    single = images_dir / f"{case}{file_ending}"
    if single.is_file():
        return RawCase(case, patient, label_file, (single,), channels_last=True)
    first = next(i for i, p in enumerate(per_channel) if not p.is_file())
    raise file_error(per_channel[first], f"missing image file for case {case} channel {first} "
                                         f"({channel_names[first]}); no 4-D {single.name} either")


def _image_channel_file(images_dir: Path, case: str, index: int, file_ending: str) -> Path | None:
    """`{case}_{index:04d}` with the dataset's ending or any other image ending (ISIC's JPGs)."""
    for ending in (file_ending, *images.IMAGE_ENDINGS):
        for spelled in (ending, ending.upper()):
            path = images_dir / f"{case}_{index:04d}{spelled}"
            if path.is_file():
                return path
    return None


def _locate_image_case(case: str, patient: str, labels_dir: Path, images_dir: Path, file_ending: str,
                       channel_names: tuple[str, ...]) -> RawCase:
    """A 2-D image case: files `_0000`, `_0001`, ... whose channels (RGB: 3, grey: 1, read from
    each file's header) add up to the declared channels, in order."""
    files: list[Path] = []
    found = 0
    while found < len(channel_names):
        path = _image_channel_file(images_dir, case, len(files), file_ending)
        if path is None:
            expected = images_dir / f"{case}_{len(files):04d}{file_ending}"
            raise file_error(expected, f"missing image file for case {case} channel {found} "
                                       f"({channel_names[found]}): the case's files hold {found} of the "
                                       f"{len(channel_names)} channel(s) dataset.json declares")
        channels = images.channel_count(path)
        if found + channels > len(channel_names):
            raise file_error(path, f"holds {channels} channel(s), but only {len(channel_names) - found} of the "
                                   f"{len(channel_names)} declared in dataset.json remain for it (an RGB file "
                                   f"is 3 channels: declare three channel_names)")
        files.append(path)
        found += channels
    beyond = _image_channel_file(images_dir, case, len(files), file_ending)
    if beyond is not None:
        raise file_error(beyond, f"a channel file beyond the {len(channel_names)} channel(s) dataset.json declares "
                                 f"for case {case} (already filled by {', '.join(p.name for p in files)})")
    return RawCase(case, patient, labels_dir / f"{case}{file_ending}", tuple(files), channels_last=False)


def _check_extra_channels(images_dir: Path, endings: tuple[str, ...], case_ids: list[str],
                          channel_names: tuple[str, ...]) -> None:
    """A `{case}_{k:04d}` image file with k beyond the declared channels is an error: reading
    only the declared ones would silently train on part of what the dataset provides."""
    alternatives = "|".join(re.escape(e) for e in endings)
    pattern = re.compile(rf"(.+)_(\d{{4}})({alternatives})", re.IGNORECASE)
    known = set(case_ids)
    for name in sorted(p.name for p in images_dir.iterdir() if not p.name.startswith(".")):
        match = pattern.fullmatch(name)
        # A stem that is itself a case id is that case's single (4-D) file, not a channel.
        if match is None or match[1] not in known or name[: -len(match[3])] in known:
            continue
        channel = int(match[2])
        if channel >= len(channel_names):
            raise file_error(images_dir / name,
                             f"channel {channel} of case {match[1]}, but dataset.json declares "
                             f"{len(channel_names)} channel(s) ({', '.join(channel_names)}): declare "
                             f"it in channel_names or remove the file")


def _as_three_d(image: SpatialImage) -> SpatialImage:
    """A 2-D (X, Y) image as an (X, Y, 1) one with the same 4x4 affine: one axial slice."""
    if image.ndim != 2:
        return image
    three_d = image.__class__(np.asanyarray(image.dataobj)[..., None], image.affine, image.header)
    # A 2-D header's third pixdim is not part of its geometry; the affine's third column is.
    zooms = three_d.header.get_zooms()
    three_d.header.set_zooms((*zooms[:2], float(voxel_sizes(image.affine)[2])))
    return three_d


def _load_canonical(path: Path, what: str) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """(RAS image, affine as stored, RAS data); the data is read here so damage shows here."""
    try:
        image = _as_three_d(nib.load(path))
        original_affine = image.affine
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj) if what == "label" else canonical.get_fdata(dtype=np.float32)
    except FileNotFoundError:
        raise file_error(path, f"{what} file missing") from None
    except _READ_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise file_error(path, f"cannot read {what} (truncated or corrupt NIfTI file): {detail}") from None
    return canonical, original_affine, data


def read_case(dataset: RawDataset, case: RawCase) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Load one case in RAS: (image float32 [C, X, Y, Z], label uint8 [X, Y, Z], spacing mm).
    A 2-D file counts as one slice (Z = 1), placed by its affine like any volume; a 2-D
    natural image (PNG, JPG, ...) is one slice of unit spacing, rows and columns as stored."""
    if dataset.is_image_set:
        return _read_image_case(dataset, case)
    label_img, label_affine, label_raw = _load_canonical(case.label_file, "label")
    if label_raw.ndim != 3:
        raise file_error(case.label_file, f"label must be 3-D, got shape {label_raw.shape}")
    label = _label_values(dataset, case.label_file, label_raw)
    del label_raw

    n_channels = len(dataset.channel_names)
    image = np.empty((n_channels, *label.shape), dtype=np.float32)
    if case.channels_last:
        path = case.image_files[0]
        _, affine, data = _load_canonical(path, "image")
        if data.ndim == 3 and n_channels == 1:
            data = data[..., None]
        if data.ndim != 4:
            raise file_error(path, f"image shape {data.shape}: expected a 4-D volume with the "
                                   f"{n_channels} channel(s) of dataset.json on its last axis")
        if data.shape[-1] != n_channels:
            raise file_error(path, f"image shape {data.shape} holds {data.shape[-1]} channel(s) on its "
                                   f"last axis, but dataset.json declares {n_channels} "
                                   f"({', '.join(dataset.channel_names)})")
        _check_geometry(path, data.shape[:3], affine, case.label_file, label.shape, label_affine)
        image[...] = np.moveaxis(data, -1, 0)
        _check_finite(path, image)
    else:
        for channel, path in enumerate(case.image_files):
            _, affine, data = _load_canonical(path, "image")
            if data.ndim != 3:
                raise file_error(path, f"image must be 3-D (one file per channel), got shape {data.shape}")
            _check_geometry(path, data.shape, affine, case.label_file, label.shape, label_affine)
            image[channel] = data
            _check_finite(path, image[channel])
    # Zooms are float32 in the header; its shortest repr (0.816, not 0.8159999847...) is the value meant.
    spacing = tuple(float(str(np.float32(z))) for z in label_img.header.get_zooms()[:3])
    return image, label, spacing


def _read_image_case(dataset: RawDataset, case: RawCase) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    label = _label_values(dataset, case.label_file, images.read_label_image(case.label_file))
    parts = []
    for path in case.image_files:
        channels = images.read_image_channels(path)
        if channels.shape[1:] != label.shape:
            raise file_error(path, f"image size {channels.shape[1]} x {channels.shape[2]} (rows x columns) differs "
                                   f"from label {case.label_file.name} size {label.shape[0]} x {label.shape[1]}")
        _check_finite(path, channels)
        parts.append(channels)
    image = np.concatenate(parts)
    if image.shape[0] != len(dataset.channel_names):  # headers promised otherwise: the file changed since
        raise file_error(case.image_files[-1], f"case {case.case} holds {image.shape[0]} channel(s), dataset.json "
                                               f"declares {len(dataset.channel_names)}")
    return image[..., None], label[..., None], IMAGE_SPACING


def _label_values(dataset: RawDataset, path: Path, label: np.ndarray) -> np.ndarray:
    """Check every value is a declared label; return the map as uint8."""
    values = np.unique(label)
    declared = set(dataset.labels.values())
    bad = [v for v in values.tolist() if v not in declared]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (f" (+{len(bad) - 10} more)" if len(bad) > 10 else "")
        hint = ""
        if set(values.tolist()) <= {0, 255} and 1 in declared:
            hint = ": a binary mask saved as 0/255; store class numbers (0/1: divide the mask by 255)"
        raise file_error(path, f"label value(s) {shown} not declared in dataset.json labels "
                               f"(declared: {sorted(declared)}){hint}")
    return label.astype(np.uint8, copy=False)


def _check_geometry(image_path: Path, image_shape: tuple[int, ...], image_affine: np.ndarray,
                    label_path: Path, label_shape: tuple[int, ...], label_affine: np.ndarray) -> None:
    # Affines are compared before reorientation: equal originals give equal RAS versions,
    # and the shapes are compared after it, where both went through the same flips.
    if not np.allclose(image_affine, label_affine, atol=AFFINE_ATOL):
        raise file_error(image_path, f"affine differs from label {label_path.name} by up to "
                                     f"{np.abs(image_affine - label_affine).max():.4g} "
                                     f"(allowed {AFFINE_ATOL}): image and label are not aligned")
    if tuple(image_shape) != tuple(label_shape):
        raise file_error(image_path, f"shape {tuple(image_shape)} differs from label "
                                     f"{label_path.name} shape {tuple(label_shape)}")


def _check_finite(path: Path, data: np.ndarray) -> None:
    if np.isfinite(data).all():
        return
    nans, infs = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    found = ", ".join(part for part in (f"{nans} NaN" if nans else "", f"{infs} Inf" if infs else "") if part)
    raise file_error(path, f"image contains non-finite intensities ({found} voxel(s))")

