"""`unetscout slices`: raw 3-D cases -> normalised, size-fitted 2-D axial slices per case.

Cases are streamed one at a time (peak memory is one case, whatever the dataset size).
Output layout (written atomically, see SliceStore for the reader):

    out/cases/{case}_image.npy   float32 [S, C, size, size]
    out/cases/{case}_label.npy   uint8   [S, size, size]
    out/manifest.tsv             one row per case: patient, split, slices, spacing, voxel counts,
                                 sha256 of the case's image bytes then label bytes (as written)
    out/slices.json              channels, labels, size, split, normalisation statistics
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from unetscout.atomic import atomic_directory
from unetscout.data import images
from unetscout.data.raw import RawCase, RawDataset, read_case, read_dataset
from unetscout.data.splits import SPLITS, check_fractions, patient_split
from unetscout.errors import UnetscoutError, file_error
from unetscout.progress import Progress

FORMAT_VERSION = 1
# nnU-Net's CTNormalization: foreground intensities sampled per case with a fixed seed.
CT_SAMPLES_PER_CASE = 10_000
CT_SAMPLE_SEED = 1234
CT_PERCENTILES = (0.5, 99.5)
STD_FLOOR = 1e-8
CROP_PAD_RULE = "centred; for an odd difference the extra voxel is cropped from / padded at the high-index end"
# How a 2-D image larger than the slice size fits it: cropped like a volume's slice, or shrunk
# (aspect kept, area-averaged; labels nearest) and then padded. Volumes are always cropped.
IMAGE_FITS = ("crop", "resize")
# The shortest side a 2-D image case may have, in pixels (or the slice size, if smaller: an
# image that fills the slice is never too small). Below it an image is padded to the slice and
# trains without a word on almost nothing but padding (a 1 x 1 PNG: val Dice 0.002). 16 is one
# pixel of the deepest feature map of the default 64-pixel slice, which the U-Nets halve to a
# 4-pixel bottleneck (models.spec.stages_for_size): a smaller image is below the resolution of
# that level as a whole. It is far under every real 2-D set: the registry's smallest images are
# EchoNet-Dynamic's 112 x 112 frames (ISIC, BUS-BRA and FIVES are hundreds to 2048 pixels),
# and small sets in use start around 28 (MedMNIST) to 64 pixels (head MRI slices).
MIN_IMAGE_SIDE = 16


# nnU-Net's map from a channel name (any case) to its normalisation; every other name is z-scored.
NORMALISATION_SCHEMES = {"ct": "ct", "rgb_to_0_1": "rgb_to_0_1", "rescale_to_0_1": "rescale_to_0_1",
                         "nonorm": "none"}
DEFAULT_SCHEME = "zscore_nonzero"
RGB_MAX = 255.0


def normalisation_scheme(channel_name: str) -> str:
    """The scheme a channel's name selects: ct, rgb_to_0_1, rescale_to_0_1, none or zscore_nonzero."""
    return NORMALISATION_SCHEMES.get(channel_name.strip().casefold(), DEFAULT_SCHEME)


def is_ct(channel_name: str) -> bool:
    return normalisation_scheme(channel_name) == "ct"


def rgb_to_0_1(volume: np.ndarray, path: Path) -> np.ndarray:
    """8-bit colour values 0..255 -> 0..1 (nnU-Net's RGBTo01Normalization); other ranges are an error
    naming the file, since dividing them by 255 would not give 0..1."""
    low, high = float(volume.min()), float(volume.max())
    if low < 0 or high > RGB_MAX:
        raise file_error(path, f"intensities {low:g}..{high:g} outside 0..255, but channel name rgb_to_0_1 "
                               f"means 8-bit colour values (rename the channel to z-score it)")
    return (volume / RGB_MAX).astype(np.float32)


def rescale_to_0_1(volume: np.ndarray) -> np.ndarray:
    """Min-max to 0..1 over the case (nnU-Net's RescaleTo01Normalization); a constant case becomes 0."""
    low, high = float(volume.min()), float(volume.max())
    return ((volume - low) / max(high - low, STD_FLOOR)).astype(np.float32)


def zscore_nonzero(volume: np.ndarray) -> np.ndarray:
    """Z-score over the nonzero voxels; voxels that are zero stay zero."""
    mask = volume != 0
    out = np.zeros_like(volume, dtype=np.float32)
    if not mask.any():
        return out
    values = volume[mask]
    mean = values.mean(dtype=np.float64)
    std = values.std(dtype=np.float64)
    out[mask] = (values - mean) / max(std, STD_FLOOR)
    return out


def ct_normalise(volume: np.ndarray, stats: dict[str, float]) -> np.ndarray:
    """Clip to the dataset-wide foreground percentiles, then z-score with its mean and std."""
    clipped = np.clip(volume, stats["p005"], stats["p995"])
    return ((clipped - stats["mean"]) / max(stats["std"], STD_FLOOR)).astype(np.float32)


def ct_statistics(samples: np.ndarray) -> dict[str, float]:
    """p005 / p995 of the foreground sample, and mean / std of the sample clipped to them."""
    low, high = np.percentile(samples, CT_PERCENTILES)
    clipped = np.clip(samples.astype(np.float64), low, high)
    return {"p005": float(low), "p995": float(high), "mean": float(clipped.mean()), "std": float(clipped.std())}


def fit_in_plane(array: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop / zero-pad the last two axes to size x size (see CROP_PAD_RULE)."""
    out = np.zeros((*array.shape[:-2], size, size), dtype=array.dtype)
    source, target = [Ellipsis], [Ellipsis]
    for n in array.shape[-2:]:
        kept = min(n, size)
        start_src, start_dst = max(n - size, 0) // 2, max(size - n, 0) // 2
        source.append(slice(start_src, start_src + kept))
        target.append(slice(start_dst, start_dst + kept))
    out[tuple(target)] = array[tuple(source)]
    return out


def _foreground_sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size <= CT_SAMPLES_PER_CASE:
        return values.copy()
    return values[rng.choice(values.size, CT_SAMPLES_PER_CASE, replace=False)]


def _ct_statistics_pass(dataset: RawDataset, ct_channels: list[int],
                        train_patients: set[str]) -> dict[int, dict[str, float]]:
    """First pass: a seeded foreground sample of every CT channel over the train patients' cases
    only (the validation and test patients' intensities must not shape the normalisation), one
    case in memory at a time."""
    samples: dict[int, list[np.ndarray]] = {c: [] for c in ct_channels}
    cases = [(index, case) for index, case in enumerate(dataset.cases) if case.patient in train_patients]
    progress = Progress("slices: CT statistics", total=len(cases), unit="cases")
    for index, case in cases:
        image, label, _ = read_case(dataset, case)
        foreground = label > 0
        rng = np.random.default_rng([CT_SAMPLE_SEED, index])
        for channel in ct_channels:
            samples[channel].append(_foreground_sample(image[channel][foreground], rng))
        del image, label, foreground
        progress.update(force=True)
    progress.close()
    stats = {}
    for channel, parts in samples.items():
        pooled = np.concatenate(parts)
        if pooled.size == 0:
            raise file_error(dataset.root / "labelsTr", "no foreground voxels in any train patient's label: "
                                                         "CT normalisation needs foreground intensities")
        stats[channel] = ct_statistics(pooled)
    return stats


def shrink_to_fit(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A one-slice case [C, X, Y, 1] / [X, Y, 1] whose longer side exceeds `size`, shrunk so it
    fits (aspect kept): image channels area-averaged (pillow's box filter), the label by nearest
    neighbour. Returns them and the new pixel's size in original pixels per axis, the spacing
    that keeps distances (HD95) in pixels of the original image. Smaller images are left as they are."""
    from PIL import Image

    rows, columns = label.shape[:2]
    scale = size / max(rows, columns)
    if scale >= 1:
        return image, label, (1.0, 1.0)
    shape = (max(1, round(rows * scale)), max(1, round(columns * scale)))
    target = (shape[1], shape[0])   # pillow sizes are (width, height)
    shrunk = np.stack([np.asarray(Image.fromarray(channel[..., 0]).resize(target, Image.Resampling.BOX))
                       for channel in image])[..., None].astype(np.float32)
    small_label = np.asarray(Image.fromarray(label[..., 0]).resize(target, Image.Resampling.NEAREST))[..., None]
    return shrunk, small_label, (rows / shape[0], columns / shape[1])


def extract_slices(raw: Path, out: Path, size: int, seed: int,
                   fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), image_fit: str = "crop") -> None:
    """Write the slice store for the raw dataset `raw` into `out` (all or nothing). `image_fit`
    says how a 2-D image larger than `size` fits it (IMAGE_FITS); volumes are cropped. A 2-D
    image case with a side under MIN_IMAGE_SIDE pixels (or `size`, if smaller) is refused
    before anything is written: padded to the slice it would be nearly all padding."""
    raw, out = Path(raw), Path(out)
    if size < 1:
        raise UnetscoutError(f"--size must be a positive number of pixels, got {size}")
    if image_fit not in IMAGE_FITS:
        raise UnetscoutError(f"--image-fit must be one of {', '.join(IMAGE_FITS)}, got {image_fit!r}")
    fractions = check_fractions(fractions)
    dataset = read_dataset(raw)
    if dataset.is_image_set:
        _check_image_sizes(dataset, size)
    split_of = patient_split(dataset.patients, seed, fractions)

    ct_channels = [i for i, name in enumerate(dataset.channel_names) if is_ct(name)]
    train_patients = {patient for patient, split in split_of.items() if split == "train"}
    ct_stats = _ct_statistics_pass(dataset, ct_channels, train_patients) if ct_channels else {}

    rows = []
    with atomic_directory(out) as tmp:
        (tmp / "cases").mkdir()
        progress = Progress("slices", total=len(dataset.cases), unit="cases")
        for case in dataset.cases:
            rows.append(_write_case(dataset, case, split_of[case.patient], ct_stats, size, tmp / "cases", image_fit))
            progress.update(force=True)
        progress.close()
        manifest = pd.DataFrame(rows)
        manifest.to_csv(tmp / "manifest.tsv", sep="\t", index=False)
        summary = _summary(dataset, raw, size, seed, fractions, ct_stats, manifest, image_fit)
        (tmp / "slices.json").write_text(json.dumps(summary, indent=2) + "\n")
    _warn_if_label_free(dataset, manifest)


def _check_image_sizes(dataset: RawDataset, size: int) -> None:
    """Refuse a 2-D image case whose shorter side is under MIN_IMAGE_SIDE pixels (`size`, when
    the slice is smaller), naming its file and size; headers only, so a dataset of them fails
    at once. Label sizes are checked against their images when the cases are read."""
    minimum = min(MIN_IMAGE_SIDE, size)
    for case in dataset.cases:
        for path in case.image_files:
            rows, columns = images.image_size(path)
            if min(rows, columns) < minimum:
                raise file_error(path, f"image {rows} x {columns} pixels (rows x columns) is smaller than the minimum "
                                       f"of {minimum} pixels a side for a 2-D image case: padded to the {size} x "
                                       f"{size} slice it would be nearly all padding (a thumbnail or a broken export?)")


def _warn_if_label_free(dataset: RawDataset, manifest: pd.DataFrame) -> None:
    """Label-free training data is legal (e.g. a store meant only for inference tests) but
    almost always a mistake, so say so once instead of failing. The counts are of the written
    slices: foreground the crop to --size removed is foreground training never sees either."""
    train = manifest[manifest["split"] == "train"]
    foreground = [f"voxels_{name}" for name, value in dataset.labels.items() if value != 0]
    if len(train) == 0 or int(train[foreground].to_numpy().sum()) > 0:
        return
    print(f"unetscout slices: warning: {dataset.root / 'labelsTr'}: every label voxel of the train split is "
          f"background (0); a model trained on it never sees a foreground class and cannot learn to "
          f"segment one (check the label files, or ignore this for label-free data)", file=sys.stderr)


def _write_case(dataset: RawDataset, case: RawCase, split: str, ct_stats: dict[int, dict[str, float]],
                size: int, folder: Path, image_fit: str = "crop") -> dict:
    image, label, spacing = read_case(dataset, case)
    for channel, name in enumerate(dataset.channel_names):
        image[channel] = _normalise(image[channel], normalisation_scheme(name), ct_stats.get(channel),
                                    _channel_file(case, channel))
    if dataset.is_image_set and image_fit == "resize":
        image, label, (pixel_x, pixel_y) = shrink_to_fit(image, label, size)
        spacing = (pixel_x, pixel_y, spacing[2])
    # [C, X, Y, Z] -> [Z, C, X, Y]: one axial slice per index of the last (S-I) axis.
    slices_image = fit_in_plane(np.moveaxis(image, -1, 0), size)
    del image
    slices_label = fit_in_plane(np.moveaxis(label, -1, 0), size)
    slices_image = np.ascontiguousarray(slices_image, dtype=np.float32)
    slices_label = np.ascontiguousarray(slices_label, dtype=np.uint8)
    np.save(folder / f"{case.case}_image.npy", slices_image)
    np.save(folder / f"{case.case}_label.npy", slices_label)
    counts = np.bincount(slices_label.ravel(), minlength=len(dataset.labels))
    row = {"case": case.case, "patient": case.patient, "split": split, "slices": int(slices_label.shape[0]),
           "spacing_x": spacing[0], "spacing_y": spacing[1], "spacing_z": spacing[2]}
    row.update({f"voxels_{name}": int(counts[value]) for name, value in dataset.labels.items()})
    row["sha256"] = _content_sha256(slices_image, slices_label)
    return row


def _channel_file(case: RawCase, channel: int) -> Path:
    """The file a channel came from, for error messages (RGB cases hold three channels in one file)."""
    return case.image_files[min(channel, len(case.image_files) - 1)]


def _normalise(volume: np.ndarray, scheme: str, ct_stats: dict[str, float] | None, path: Path) -> np.ndarray:
    if scheme == "ct":
        return ct_normalise(volume, ct_stats)
    if scheme == "rgb_to_0_1":
        return rgb_to_0_1(volume, path)
    if scheme == "rescale_to_0_1":
        return rescale_to_0_1(volume)
    if scheme == "none":
        return volume
    return zscore_nonzero(volume)


def _content_sha256(image: np.ndarray, label: np.ndarray) -> str:
    """sha256 of the image bytes then the label bytes (C order, as saved): names and counts
    stay the same when data is regenerated (another synthetic seed), the digest does not."""
    digest = hashlib.sha256(image.data)
    digest.update(label.data)
    return digest.hexdigest()


def _summary(dataset: RawDataset, raw: Path, size: int, seed: int, fractions: Sequence[float],
             ct_stats: dict[int, dict[str, float]], manifest: pd.DataFrame, image_fit: str) -> dict:
    normalisation = [{"channel": name, "scheme": normalisation_scheme(name), **ct_stats.get(i, {})}
                     for i, name in enumerate(dataset.channel_names)]
    counts = {}
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        counts[split] = {"patients": int(rows["patient"].nunique()), "cases": int(len(rows)),
                         "slices": int(rows["slices"].sum())}
    return {
        "format_version": FORMAT_VERSION,
        "dataset": dataset.name,
        "source": str(raw.resolve()),
        "channel_names": list(dataset.channel_names),
        "labels": dict(dataset.labels),
        "size": size,
        # 2-D image sets have unit spacing: their HD95 is in pixels, not millimetres.
        "spacing_unit": "px" if dataset.is_image_set else "mm",
        "crop_pad": CROP_PAD_RULE,
        **({"image_fit": image_fit} if dataset.is_image_set else {}),
        "split": {"seed": seed, "fractions": list(fractions)},
        "normalisation": normalisation,
        "counts": counts,
    }
