"""Data edges of issue 35: 2-D images too small to train on, image files of unusual kinds
(CMYK, 16-bit grey, palette labels, grey+alpha, a decompression-bomb header), and a disk that
fills up while a stage writes its output folder."""

from __future__ import annotations

import errno
import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from rawdata import (RGB_CHANNELS, anatomy_slices, colourise, make_image_dataset, make_raw_dataset,
                     slices_fails_cleanly, tissue_label, write_png)

from unetscout import cli
from unetscout.data import convert_images
from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import extract_slices
from unetscout.errors import UnetscoutError

SIZE = 128


@pytest.fixture(scope="module")
def anatomy():
    greys = anatomy_slices(6)
    return greys, [tissue_label(g) for g in greys]


def _grey_set(root: Path, anatomy, channel: str = "MRI") -> Path:
    greys, labels = anatomy
    return make_image_dataset(root, greys, labels, {"0": channel})


def _error_line(err: str) -> str:
    assert "Traceback" not in err and "Warning" not in err, err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("unetscout: error: "), err
    return lines[0]


def _zscore_nonzero(grey: np.ndarray) -> np.ndarray:
    expected = np.zeros(grey.shape, dtype=np.float64)
    nonzero = grey[grey > 0].astype(np.float64)
    expected[grey > 0] = (nonzero - nonzero.mean()) / nonzero.std()
    return expected


# ----------------------------------------------------------------------------- 1. minimum image size

@pytest.mark.parametrize("which", ["one_case", "every_case"])
def test_one_pixel_image_cases_are_refused_naming_the_file_and_size(tmp_path, anatomy, capsys, which):
    raw = _grey_set(tmp_path / "raw", anatomy)
    tiny = [2] if which == "one_case" else range(6)
    for i in tiny:
        write_png(raw / "imagesTr" / f"img{i:03d}_0000.png", np.full((1, 1), 200, np.uint8))
        write_png(raw / "labelsTr" / f"img{i:03d}.png", np.ones((1, 1), np.uint8))
    first = raw / "imagesTr" / f"img{min(tiny):03d}_0000.png"
    slices_fails_cleanly(raw, capsys, f"{first}: image 1 x 1 pixels (rows x columns)",
                         "smaller than the minimum of 16 pixels a side", size=64)


def test_minimum_side_is_16_pixels_or_the_slice_size(tmp_path, anatomy, capsys):
    raw = _grey_set(tmp_path / "raw", anatomy, channel="noNorm")
    greys, labels = anatomy
    # 15 rows: one pixel short of the minimum, refused whatever the other side.
    narrow = write_png(raw / "imagesTr" / "img001_0000.png", greys[1][40:55])
    write_png(raw / "labelsTr" / "img001.png", labels[1][40:55])
    slices_fails_cleanly(raw, capsys, f"{narrow}: image 15 x 96 pixels", "minimum of 16 pixels a side", size=64)

    # 16 rows: accepted, and stored as it is (centred in the 64 x 64 slice, 24 rows above it).
    write_png(raw / "imagesTr" / "img001_0000.png", greys[1][40:56])
    write_png(raw / "labelsTr" / "img001.png", labels[1][40:56])
    extract_slices(raw, tmp_path / "out", size=64, seed=0)
    store = SliceStore(tmp_path / "out")
    np.testing.assert_array_equal(store.image("img001")[0, 0, 24:40, :], greys[1][40:56, 16:80].astype(np.float32))
    np.testing.assert_array_equal(store.label("img001")[0, 24:40, :], labels[1][40:56, 16:80])

    # A slice smaller than 16 lowers the minimum to its own size: 8 x 8 images fill an 8 x 8 slice.
    small = make_image_dataset(tmp_path / "small", [g[60:68, 40:48] for g in greys],
                               [lab[60:68, 40:48] for lab in labels], {"0": "noNorm"})
    extract_slices(small, tmp_path / "small_out", size=8, seed=0)
    np.testing.assert_array_equal(SliceStore(tmp_path / "small_out").image("img003")[0, 0],
                                  greys[3][60:68, 40:48].astype(np.float32))


# ----------------------------------------------------------------------------- 2. a full disk

def _fill_disk_after(monkeypatch, owner, name: str, calls: int) -> None:
    """Make `owner.name` (a writer) raise ENOSPC, as a full disk does, after `calls` calls."""
    real = getattr(owner, name)
    made = []

    def writer(*args, **kwargs):
        made.append(args[:1])
        if len(made) > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, writer)


@pytest.mark.parametrize("via", ["cli", "function"])
def test_full_disk_during_slices_leaves_no_output_folder(tmp_path, monkeypatch, capsys, via):
    raw = make_raw_dataset(tmp_path / "raw", cases=3, shape=(8, 8, 2))
    # `results/` exists before and is empty (made by someone else, e.g. Snakemake): not ours to
    # remove. `results/dataset/` does not exist yet: the writer makes it, and must take it away.
    results = tmp_path / "results"
    results.mkdir()
    out = results / "dataset" / "slices"
    _fill_disk_after(monkeypatch, np, "save", calls=2)
    if via == "cli":
        assert cli.main(["slices", str(raw), "--out", str(out), "--size", "8"]) == 2
        line = _error_line(capsys.readouterr().err)
        assert line.startswith(f"unetscout: error: {out}: no space left on the device"), line
    else:
        with pytest.raises(UnetscoutError, match="no space left on the device"):
            extract_slices(raw, out, size=8, seed=0)
    assert not (results / "dataset").exists()
    assert results.is_dir() and os.listdir(results) == []
    assert sorted(os.listdir(tmp_path)) == ["raw", "results"]


def test_full_disk_during_synth_leaves_no_output_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data" / "synthetic" / "raw"
    _fill_disk_after(monkeypatch, Path, "write_bytes", calls=2)
    assert cli.main(["synth", "--out", str(out), "--cases", "3"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"unetscout: error: {out}: no space left on the device"), line
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 3. image files of unusual kinds

def _rgb_set(root: Path, anatomy) -> Path:
    greys, labels = anatomy
    return make_image_dataset(root, [colourise(g) for g in greys], labels, RGB_CHANNELS)


def _save_cmyk_jpeg(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    return path


def test_cmyk_jpeg_among_rgb_images_is_refused_naming_its_colour_space(tmp_path, anatomy, capsys):
    raw = _rgb_set(tmp_path / "raw", anatomy)
    (raw / "imagesTr" / "img001_0000.png").unlink()
    path = _save_cmyk_jpeg(raw / "imagesTr" / "img001_0000.jpg", colourise(anatomy[0][1]))
    slices_fails_cleanly(raw, capsys, f"{path}: colour space CMYK", "must be grey or RGB", size=SIZE)


def test_cmyk_jpegs_are_refused_even_with_four_channels_declared(tmp_path, anatomy, capsys):
    # Four declared channels fit CMYK's four bands, which used to be taken as four intensities.
    greys, labels = anatomy
    raw = make_image_dataset(tmp_path / "raw", [colourise(g) for g in greys], labels,
                             {"0": "noNorm", "1": "noNorm", "2": "noNorm", "3": "noNorm"})
    for i, grey in enumerate(greys):
        (raw / "imagesTr" / f"img{i:03d}_0000.png").unlink()
        _save_cmyk_jpeg(raw / "imagesTr" / f"img{i:03d}_0000.jpg", colourise(grey))
    slices_fails_cleanly(raw, capsys, f"{raw / 'imagesTr' / 'img000_0000.jpg'}: colour space CMYK", size=SIZE)


def test_16_bit_grey_png_keeps_every_value(tmp_path, anatomy):
    greys, labels = anatomy
    # Values up to 65535 (grey * 257), beyond what 8 bits hold, plus one odd value per image.
    deep = [g.astype(np.uint16) * 257 + (g > 0) for g in greys]
    raw = make_image_dataset(tmp_path / "raw", deep, labels, {"0": "noNorm"})
    with Image.open(raw / "imagesTr" / "img002_0000.png") as written:
        assert written.mode == "I;16"
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    image = SliceStore(tmp_path / "out").image("img002")[0, 0]
    np.testing.assert_array_equal(image[:, 16:112], deep[2].astype(np.float32))
    assert image.max() > 255


def test_palette_label_indices_are_the_class_numbers(tmp_path, anatomy):
    raw = _grey_set(tmp_path / "raw", anatomy)
    labels = anatomy[1]
    # Index 0 is black, index 1 red: the class is the index, not the colour it shows.
    palette = Image.fromarray(labels[4])
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)   # an "L" image given a palette is "P"
    palette.save(raw / "labelsTr" / "img004.png")
    with Image.open(raw / "labelsTr" / "img004.png") as written:
        assert written.mode == "P" and set(np.unique(np.array(written.convert("RGB"))[..., 0])) == {0, 255}
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    np.testing.assert_array_equal(SliceStore(tmp_path / "out").label("img004")[0, :, 16:112], labels[4])


def _with_alpha(pixels: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """Grey [rows, columns] or RGB [rows, columns, 3] pixels with an alpha channel: LA or RGBA."""
    return Image.fromarray(np.concatenate([pixels.reshape(*alpha.shape, -1), alpha[..., None]], axis=-1))


@pytest.mark.parametrize("kind", ["LA", "RGBA"])
def test_opaque_alpha_is_dropped(tmp_path, anatomy, kind):
    greys = anatomy[0]
    raw = _grey_set(tmp_path / "raw", anatomy) if kind == "LA" else _rgb_set(tmp_path / "raw", anatomy)
    pixels = greys[3] if kind == "LA" else colourise(greys[3])
    _with_alpha(pixels, np.full(greys[3].shape, 255, np.uint8)).save(raw / "imagesTr" / "img003_0000.png")
    with Image.open(raw / "imagesTr" / "img003_0000.png") as written:
        assert written.mode == kind
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    image = SliceStore(tmp_path / "out").image("img003")
    if kind == "LA":
        assert image.shape == (1, 1, SIZE, SIZE)
        np.testing.assert_allclose(image[0, 0, :, 16:112], _zscore_nonzero(greys[3]), atol=1e-5)
    else:
        assert image.shape == (1, 3, SIZE, SIZE)
        np.testing.assert_allclose(np.moveaxis(image[0, :, :, 16:112], 0, -1), pixels / 255.0, atol=1e-6)


def test_grey_alpha_image_with_transparent_pixels_is_refused(tmp_path, anatomy, capsys):
    raw = _grey_set(tmp_path / "raw", anatomy)
    alpha = np.full(anatomy[0][1].shape, 255, np.uint8)
    alpha[:2, :5] = 0                       # 10 transparent pixels
    path = raw / "imagesTr" / "img001_0000.png"
    _with_alpha(anatomy[0][1], alpha).save(path)
    slices_fails_cleanly(raw, capsys, f"{path}: 10 of 12288 pixel(s) (partly) transparent", size=SIZE)


def _png_claiming(rows: int, columns: int) -> bytes:
    """A small grey PNG written by pillow whose header (IHDR) then claims `rows` x `columns`."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", columns, rows)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def decoded(monkeypatch):
    """The files whose pixels pillow decodes (ImageFile.load) while the test runs."""
    files: list[str] = []
    real = ImageFile.ImageFile.load

    def load(self):
        files.append(getattr(self, "filename", ""))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return files


@pytest.mark.parametrize("file, rows", [("imagesTr/img002_0000.png", 20000),   # over twice pillow's limit
                                        ("labelsTr/img004.png", 10000)])       # over it, under twice
def test_decompression_bomb_header_is_refused_without_decoding(tmp_path, anatomy, capsys, decoded, file, rows):
    raw = _grey_set(tmp_path / "raw", anatomy)
    path = raw / file
    path.write_bytes(_png_claiming(rows, rows))
    assert rows * rows > Image.MAX_IMAGE_PIXELS
    slices_fails_cleanly(raw, capsys, f"{path}: ", "header claims more pixels than pillow's decompression-bomb "
                         f"limit of {Image.MAX_IMAGE_PIXELS:,}", f"({rows * rows} pixels)", "refused without decoding",
                         size=SIZE)
    assert str(path) not in decoded


def test_decompression_bomb_mask_is_refused_by_the_converters(tmp_path, decoded):
    mask = tmp_path / "ISIC_0000000_segmentation.png"
    mask.write_bytes(_png_claiming(10000, 10000))
    named = re.escape(str(mask))
    with pytest.raises(UnetscoutError, match=f"^{named}: mask header claims more pixels than pillow's decompression-bomb"):
        convert_images.read_binary_mask(mask)
    with pytest.raises(UnetscoutError, match=f"^{named}: image header claims more pixels"):
        convert_images.image_header(mask)
    assert str(mask) not in decoded
