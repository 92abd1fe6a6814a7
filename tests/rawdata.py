"""Write tiny raw datasets (nnU-Net v2 or MSD layout) with nibabel for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

MRI_CHANNELS = {"0": "T2", "1": "ADC"}
TWO_LABELS = {"background": 0, "lesion": 1}


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def write_dataset_json(root: Path, **meta) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "dataset.json"
    path.write_text(json.dumps(meta, indent=2))
    return path


def example_case(shape: tuple[int, int, int], channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive intensities [C, X, Y, Z] float32 and a label with a foreground box."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(1.0, 100.0, size=(channels, *shape)).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    x, y, z = shape
    label[x // 4: x // 4 + max(x // 2, 1), y // 4: y // 4 + max(y // 2, 1), :] = 1
    return image, label


def write_case(root: Path, case: str, image: np.ndarray, label: np.ndarray,
               affine: np.ndarray | None = None, file_ending: str = ".nii.gz") -> None:
    """nnU-Net layout: one 3-D file per channel, `image` is [C, X, Y, Z]."""
    for channel, volume in enumerate(image):
        write_nifti(root / "imagesTr" / f"{case}_{channel:04d}{file_ending}", volume, affine)
    write_nifti(root / "labelsTr" / f"{case}{file_ending}", label, affine)


def make_raw_dataset(root: Path, cases: int = 5, shape: tuple[int, int, int] = (8, 8, 3),
                     channel_names: dict[str, str] | None = None, labels: dict[str, int] | None = None,
                     seed: int = 0, **extra) -> Path:
    """A valid nnU-Net v2 raw dataset with cases case000, case001, ..."""
    channel_names = dict(MRI_CHANNELS if channel_names is None else channel_names)
    write_dataset_json(root, name="Tiny", channel_names=channel_names,
                       labels=dict(TWO_LABELS if labels is None else labels), file_ending=".nii.gz",
                       numTraining=cases, **extra)
    for i in range(cases):
        image, label = example_case(shape, len(channel_names), seed + i)
        write_case(root, f"case{i:03d}", image, label)
    return root


def slices_fails_cleanly(raw: Path, capsys, *needles: str, size: int = 16) -> str:
    """Run `unetscout slices` on `raw`: exit 2, one `unetscout: error:` line containing every
    needle, and no output (nor a `.partial-*` temporary) left beside it."""
    from unetscout.cli import main

    out = raw.parent / "out"
    code = main(["slices", str(raw), "--out", str(out), "--size", str(size)])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("unetscout: error: "), err
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-")]
    return errors[0]


# ----------------------------------------------------------------------------- 2-D image datasets

RGB_CHANNELS = {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}


def anatomy_slices(count: int = 12) -> list[np.ndarray]:
    """`count` axial slices (uint8, 128 x 96) of a real head scan that ships with nibabel (its
    example4d EPI volume, first frame), spread over the middle of the brain: real anatomy for the
    2-D image tests, with no download."""
    from nibabel.testing import data_path

    volume = nib.load(str(Path(data_path) / "example4d.nii.gz")).get_fdata()[..., 0]
    picks = np.linspace(4, volume.shape[2] - 5, count).round().astype(int)
    scaled = np.clip(volume / volume.max() * 255.0, 0, 255).round().astype(np.uint8)
    return [np.ascontiguousarray(scaled[:, :, z]) for z in picks]


def tissue_label(grey: np.ndarray, threshold: int = 110) -> np.ndarray:
    """A two-class label of a grey anatomy slice: bright tissue (1) against the rest (0)."""
    return (grey > threshold).astype(np.uint8)


def colourise(grey: np.ndarray) -> np.ndarray:
    """uint8 [rows, columns, 3]: a grey slice through a matplotlib colour map (an RGB image)."""
    from matplotlib import colormaps

    return (colormaps["viridis"](grey / 255.0)[..., :3] * 255).round().astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_image_dataset(root: Path, images: list[np.ndarray], labels: list[np.ndarray],
                       channel_names: dict[str, str], image_ending: str = ".png",
                       label_names: dict[str, int] | None = None, **extra) -> Path:
    """An nnU-Net raw 2-D image dataset: case `img000`... with one file per image (grey or RGB)."""
    write_dataset_json(root, name="Images", channel_names=dict(channel_names),
                       labels=dict(TWO_LABELS if label_names is None else label_names),
                       file_ending=".png", numTraining=len(images), **extra)
    for i, (image, label) in enumerate(zip(images, labels)):
        write_png(root / "imagesTr" / f"img{i:03d}_0000{image_ending}", image)
        write_png(root / "labelsTr" / f"img{i:03d}.png", label)
    return root
