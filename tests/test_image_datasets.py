"""2-D image datasets (PNG / JPG in nnU-Net's raw convention): one-slice cases, nnU-Net's
channel-name normalisation, and one-line errors naming the file for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from rawdata import (RGB_CHANNELS, anatomy_slices, colourise, make_image_dataset, slices_fails_cleanly,
                     tissue_label, write_dataset_json, write_png)

from unetscout.data.slice_store import SliceStore
from unetscout.data.slices import extract_slices

SIZE = 128


@pytest.fixture(scope="module")
def anatomy():
    greys = anatomy_slices(6)
    return greys, [tissue_label(g) for g in greys]


def _grey_set(root, anatomy, **kwargs):
    greys, labels = anatomy
    return make_image_dataset(root, greys, labels, {"0": "MRI"}, **kwargs)


def _rgb_set(root, anatomy, **kwargs):
    greys, labels = anatomy
    return make_image_dataset(root, [colourise(g) for g in greys], labels, RGB_CHANNELS, **kwargs)


def test_grey_png_cases_are_one_slice_z_scored(tmp_path, anatomy):
    raw = _grey_set(tmp_path / "raw", anatomy)
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    store = SliceStore(tmp_path / "out")
    assert store.channel_names == ["MRI"]
    greys, labels = anatomy
    for i, (grey, label) in enumerate(zip(greys, labels)):
        image, stored_label = store.image(f"img{i:03d}"), store.label(f"img{i:03d}")
        assert image.shape == (1, 1, SIZE, SIZE) and stored_label.shape == (1, SIZE, SIZE)
        # 128 x 96 pixels, rows as stored: no crop of the 128 rows, 16 columns of padding each side.
        expected = np.zeros_like(grey, dtype=np.float64)
        nonzero = grey[grey > 0].astype(np.float64)
        expected[grey > 0] = (nonzero - nonzero.mean()) / nonzero.std()
        np.testing.assert_allclose(image[0, 0, :, 16:112], expected, atol=1e-5)
        np.testing.assert_array_equal(stored_label[0, :, 16:112], label)
        assert not image[0, 0, :, :16].any() and store.spacing(f"img{i:03d}") == (1.0, 1.0, 1.0)
    meta = json.loads((tmp_path / "out" / "slices.json").read_text())
    assert meta["spacing_unit"] == "px"
    assert meta["normalisation"] == [{"channel": "MRI", "scheme": "zscore_nonzero"}]


def test_rgb_png_is_one_file_of_three_channels_scaled_to_0_1(tmp_path, anatomy):
    raw = _rgb_set(tmp_path / "raw", anatomy)
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    store = SliceStore(tmp_path / "out")
    rgb = np.array(Image.open(raw / "imagesTr" / "img002_0000.png"))
    image = store.image("img002")
    assert image.shape == (1, 3, SIZE, SIZE)
    for channel in range(3):
        np.testing.assert_allclose(image[0, channel, :, 16:112], rgb[..., channel] / 255.0, atol=1e-6)
    assert [n["scheme"] for n in json.loads((tmp_path / "out" / "slices.json").read_text())["normalisation"]] \
        == ["rgb_to_0_1"] * 3


def test_jpg_images_with_png_labels(tmp_path, anatomy):
    raw = _rgb_set(tmp_path / "raw", anatomy, image_ending=".jpg")
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    store = SliceStore(tmp_path / "out")
    decoded = np.array(Image.open(raw / "imagesTr" / "img000_0000.jpg"))
    np.testing.assert_allclose(store.image("img000")[0, 1, :, 16:112], decoded[..., 1] / 255.0, atol=1e-6)


def test_grey_channels_one_file_each(tmp_path, anatomy):
    greys, labels = anatomy
    raw = make_image_dataset(tmp_path / "raw", greys, labels, {"0": "MRI", "1": "noNorm"})
    for i, grey in enumerate(greys):
        write_png(raw / "imagesTr" / f"img{i:03d}_0001.png", 255 - grey)
    extract_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    image = SliceStore(tmp_path / "out").image("img001")
    assert image.shape == (1, 2, SIZE, SIZE)
    np.testing.assert_array_equal(image[0, 1, :, 16:112], 255.0 - greys[1])  # noNorm: as stored


# ----------------------------------------------------------------------------- bad input

def test_label_value_not_declared(tmp_path, anatomy, capsys):
    raw = _grey_set(tmp_path / "raw", anatomy)
    label = anatomy[1][2].copy()
    label[0, :3] = 2
    path = write_png(raw / "labelsTr" / "img002.png", label)
    slices_fails_cleanly(raw, capsys, str(path), "label value(s) 2 not declared")


def test_mask_saved_as_0_255(tmp_path, anatomy, capsys):
    raw = _grey_set(tmp_path / "raw", anatomy)
    path = write_png(raw / "labelsTr" / "img003.png", anatomy[1][3] * 255)
    slices_fails_cleanly(raw, capsys, str(path), "label value(s) 255 not declared", "saved as 0/255",
                         "divide the mask by 255")


def test_image_label_size_mismatch(tmp_path, anatomy, capsys):
    raw = _grey_set(tmp_path / "raw", anatomy)
    path = write_png(raw / "imagesTr" / "img001_0000.png", anatomy[0][1][:, :90])
    slices_fails_cleanly(raw, capsys, str(path), "image size 128 x 90 (rows x columns) differs from label "
                                                 "img001.png size 128 x 96")


def test_missing_channel_file(tmp_path, anatomy, capsys):
    greys, labels = anatomy
    raw = make_image_dataset(tmp_path / "raw", greys, labels, {"0": "MRI", "1": "MRI"})
    for i, grey in enumerate(greys):
        if i != 4:
            write_png(raw / "imagesTr" / f"img{i:03d}_0001.png", grey)
    slices_fails_cleanly(raw, capsys, str(raw / "imagesTr" / "img004_0001.png"),
                         "missing image file for case img004 channel 1 (MRI)")


def test_rgb_file_where_one_grey_channel_is_declared(tmp_path, anatomy, capsys):
    greys, labels = anatomy
    raw = make_image_dataset(tmp_path / "raw", [colourise(g) for g in greys], labels, {"0": "MRI"})
    slices_fails_cleanly(raw, capsys, str(raw / "imagesTr" / "img000_0000.png"),
                         "holds 3 channel(s), but only 1 of the 1 declared")


def test_rgb_to_0_1_outside_8_bits(tmp_path, anatomy, capsys):
    greys, labels = anatomy
    raw = make_image_dataset(tmp_path / "raw", greys, labels, {"0": "rgb_to_0_1"})
    path = raw / "imagesTr" / "img001_0000.png"
    Image.fromarray(greys[1].astype(np.uint16) * 20).save(path)  # 16-bit grey, up to 5100
    slices_fails_cleanly(raw, capsys, str(path), "outside 0..255")


def test_labels_as_jpg_are_refused(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_dataset_json(raw, channel_names={"0": "MRI"}, labels={"background": 0, "lesion": 1}, file_ending=".jpg")
    (raw / "imagesTr").mkdir()
    (raw / "labelsTr").mkdir()
    slices_fails_cleanly(raw, capsys, str(raw / "dataset.json"), "must be lossless")


def test_truncated_png(tmp_path, anatomy, capsys):
    raw = _grey_set(tmp_path / "raw", anatomy)
    path = raw / "imagesTr" / "img005_0000.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    slices_fails_cleanly(raw, capsys, str(path), "cannot read image")


# ----------------------------------------------------------------------------- images larger than the slice

def test_resize_shrinks_by_area_averaging_and_keeps_distances_in_original_pixels(tmp_path, anatomy):
    raw = _grey_set(tmp_path / "raw", anatomy)
    raw_json = json.loads((raw / "dataset.json").read_text())
    raw_json["channel_names"] = {"0": "noNorm"}           # compare raw intensities
    (raw / "dataset.json").write_text(json.dumps(raw_json))
    extract_slices(raw, tmp_path / "out", size=64, seed=0, image_fit="resize")
    store = SliceStore(tmp_path / "out")
    greys, labels = anatomy
    image = store.image("img002")[0, 0]
    # 128 x 96 -> 64 x 48 (factor 2 exactly): every pixel the mean of a 2 x 2 block; 8 columns of padding
    blocks = greys[2].astype(np.float64).reshape(64, 2, 48, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(image[:, 8:56], blocks, atol=1e-4)
    assert not image[:, :8].any() and not image[:, 56:].any()
    label = store.label("img002")[0]
    assert set(np.unique(label[:, 8:56])) <= {0, 1}
    # nearest neighbour: the shrunk label agrees with the original on most of its blocks
    agreement = (label[:, 8:56] == labels[2][::2, ::2]).mean()
    assert agreement > 0.9
    assert store.spacing("img002") == (2.0, 2.0, 1.0)     # one stored pixel = 2 original pixels
    assert json.loads((tmp_path / "out" / "slices.json").read_text())["image_fit"] == "resize"


def test_crop_is_the_default_fit(tmp_path, anatomy):
    raw = _grey_set(tmp_path / "raw", anatomy)
    extract_slices(raw, tmp_path / "out", size=64, seed=0)
    store = SliceStore(tmp_path / "out")
    np.testing.assert_array_equal(store.label("img001")[0], anatomy[1][1][32:96, 16:80])
    assert store.spacing("img001") == (1.0, 1.0, 1.0)
