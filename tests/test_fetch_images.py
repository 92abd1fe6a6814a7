"""`unetscout fetch` for the 2-D image datasets: ISIC 2018, BUS-BRA, FIVES (downloaded) and
EchoNet-Dynamic (placed).

Each archive is fabricated here in the real layout (a few tiny images made with pillow and
numpy), served by the local HTTP server under the path of the registry entry's own URL,
fetched, and read back with the pipeline's own raw-dataset reader; expected values are
computed independently (masks 255 -> 1 pixel for pixel, JPG bytes unchanged, patients from
the CSV, the traced area by Pick's theorem). Nothing touches the internet.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import struct
import sys
import zipfile
from urllib.parse import urlparse

import numpy as np
import pytest
from local_http import LocalServer
from PIL import Image

from unetscout.cli import main
from unetscout.data.convert_images import rasterise_polygon
from unetscout.data.raw import read_case, read_dataset
from unetscout.data.registry import REGISTRY, DatasetSource, fetch, fetch_source
from unetscout.errors import UnetscoutError

IMAGE_SETS = ["isic2018", "busbra", "fives", "echonet_dynamic"]
ISIC_IMAGES, ISIC_MASKS = "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"
FIVES_ROOT = "FIVES A Fundus Image Dataset for AI-based Vessel Segmentation"


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes], prefix: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return prefix + buffer.getvalue()


def _mask(rows: int, cols: int, seed: int) -> np.ndarray:
    """A 0/255 mask with a rectangle of foreground, as the datasets ship them."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((rows, cols), np.uint8)
    top, left = rng.integers(0, rows // 2), rng.integers(0, cols // 2)
    mask[top:top + rows // 2, left:left + cols // 3 + 1] = 255
    return mask


def _rgb(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, cols, 3), dtype=np.uint8)


def _served(name: str, server: LocalServer, **changes) -> DatasetSource:
    """The registry entry `name` with its URLs pointed at the local server (same paths)."""
    source = REGISTRY[name]
    local = {"url": server.url(urlparse(source.url).path),
             "extra_urls": tuple(server.url(urlparse(url).path) for url in source.extra_urls)}
    return dataclasses.replace(source, **{**local, **changes})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line_error(call) -> str:
    with pytest.raises(UnetscoutError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_fetch_list_shows_the_image_datasets(capsys):
    assert main(["fetch", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in IMAGE_SETS:
        assert name in listing
    assert REGISTRY["echonet_dynamic"].requires_from and REGISTRY["busbra"].pinned
    assert not REGISTRY["isic2018"].pinned and len(REGISTRY["isic2018"].urls) == 2


# --- ISIC 2018 (two archives: images and masks) -------------------------------------------

ISIC_SHAPES = {"ISIC_0000000": (12, 10), "ISIC_0000001": (9, 14), "ISIC_0000003": (11, 11)}


def _isic_archives(bad_value: int | None = None, drop_mask: str | None = None):
    images, masks, truth = {}, {}, {}
    for seed, (case, (rows, cols)) in enumerate(ISIC_SHAPES.items()):
        jpg, mask = _jpeg(_rgb(rows, cols, seed)), _mask(rows, cols, seed)
        if bad_value is not None and case == "ISIC_0000001":
            mask[0, 0] = bad_value
        images[f"{ISIC_IMAGES}/{case}.jpg"] = jpg
        if case != drop_mask:
            masks[f"{ISIC_MASKS}/{case}_segmentation.png"] = _png(mask)
        truth[case] = (jpg, mask)
    for folder, entries in ((ISIC_IMAGES, images), (ISIC_MASKS, masks)):
        entries[f"{folder}/ATTRIBUTION.txt"] = b"ISIC Archive"
        entries[f"{folder}/LICENSE.txt"] = b"CC BY-NC"
    return {"/2018/ISIC2018_Task1-2_Training_Input.zip": _zip(images),
            "/2018/ISIC2018_Task1_Training_GroundTruth.zip": _zip(masks)}, truth


def test_fetch_isic2018_copies_jpgs_and_stores_masks_as_classes(tmp_path):
    files, truth = _isic_archives()
    out = tmp_path / "raw" / "isic2018"
    with LocalServer(files) as server:
        fetch_source(_served("isic2018", server), out)

    dataset = read_dataset(out)
    assert [c.case for c in dataset.cases] == sorted(truth)
    assert dataset.channel_names == ("rgb_to_0_1",) * 3 and dataset.file_ending == ".png"
    assert dataset.labels == {"background": 0, "lesion": 1}
    for case in dataset.cases:
        jpg, mask = truth[case.case]
        assert case.image_files == (out / "imagesTr" / f"{case.case}_0000.jpg",)
        assert case.image_files[0].read_bytes() == jpg  # byte for byte
        image, label, spacing = read_case(dataset, case)
        decoded = np.array(Image.open(io.BytesIO(jpg)))
        np.testing.assert_array_equal(image[..., 0], np.moveaxis(decoded, -1, 0).astype(np.float32))
        np.testing.assert_array_equal(label[..., 0], (mask == 255).astype(np.uint8))
        assert spacing == (1.0, 1.0, 1.0)

    record = json.loads((out / "download.json").read_text())
    assert record["pinned"] is False and len(record["urls"]) == 2
    assert record["files"] == [{"file": name.rsplit("/", 1)[1], "size": len(data), "sha256": _sha256(data)}
                               for name, data in files.items()]
    assert sorted(p.name for p in (tmp_path / "raw" / ".downloads").iterdir()) == sorted(
        name.rsplit("/", 1)[1] for name in files)


def test_isic2018_mask_value_neither_0_nor_255_is_an_error_naming_the_file(tmp_path):
    files, _ = _isic_archives(bad_value=128)
    out = tmp_path / "raw" / "isic2018"
    with LocalServer(files) as server:
        message = _one_line_error(lambda: fetch_source(_served("isic2018", server), out))
    assert "ISIC_0000001_segmentation.png: mask value(s) 128" in message
    assert not out.exists()


def test_isic2018_image_without_mask_names_the_missing_mask(tmp_path):
    files, _ = _isic_archives(drop_mask="ISIC_0000003")
    out = tmp_path / "raw" / "isic2018"
    with LocalServer(files) as server:
        message = _one_line_error(lambda: fetch_source(_served("isic2018", server), out))
    assert f"{ISIC_MASKS}/ISIC_0000003_segmentation.png: missing: no mask for image" in message
    assert not out.exists()


# --- BUS-BRA (grey images, several per patient) ---------------------------------------------

BUSBRA_ROWS = [  # ID, Case (the patient), how the image and the mask are stored
    ("bus_0001-l", "1", "L", "0/255"),
    ("bus_0001-r", "1", "RGB", "1-bit"),   # an RGB copy of a grey image: stored as one channel
    ("bus_0002-l", "2", "L", "0/1"),
    ("bus_0003-l", "3", "L", "0/255"),
    ("bus_0003-s", "3", "L", "0/255"),
]


def _busbra_zip(colour_image: bool = False, bad_mask: bool = False):
    entries, truth = {}, {}
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"])
    for seed, (image_id, patient, image_mode, mask_mode) in enumerate(BUSBRA_ROWS):
        rows, cols = 10 + seed, 13 - seed
        grey = np.random.default_rng(seed).integers(0, 256, size=(rows, cols), dtype=np.uint8)
        mask = _mask(rows, cols, seed)
        writer.writerow([image_id, patient, "Fibroadenoma", "benign", "4", "GE", cols, rows, "left",
                         "[1, 2, 3, 4]"])
        if image_mode == "RGB":
            rgb = np.repeat(grey[..., None], 3, axis=2)
            if colour_image:
                rgb[0, 0, 2] ^= 1
            image = _png(rgb)
        else:
            image = _png(grey)
        if mask_mode == "1-bit":
            stored = _png(mask, mode="1")
        elif mask_mode == "0/1":
            stored = _png(mask // 255)
        else:
            if bad_mask and image_id == "bus_0003-s":
                mask[1, 1] = 7
            stored = _png(mask)
        entries[f"BUSBRA/Images/{image_id}.png"] = image
        entries[f"BUSBRA/Masks/mask{image_id[3:]}.png"] = stored
        truth[image_id] = (patient, image_mode, image, grey, mask)
    entries["BUSBRA/bus_data.csv"] = table.getvalue().encode()
    entries["BUSBRA/5-fold-cv.csv"] = b"ID,kFold\n"
    return _zip(entries), truth


@contextlib.contextmanager
def _busbra_served(archive: bytes):
    """The busbra entry served locally, pinned to the fabricated archive's md5 and size."""
    with LocalServer({"/api/records/8231412/files/BUSBRA.zip/content": archive}) as server:
        yield _served("busbra", server, md5=hashlib.md5(archive).hexdigest(), size=len(archive))


def test_fetch_busbra_groups_a_patients_images_and_keeps_one_grey_channel(tmp_path):
    archive, truth = _busbra_zip()
    out = tmp_path / "raw" / "busbra"
    with _busbra_served(archive) as source:
        fetch_source(source, out)

    dataset = read_dataset(out)
    assert dataset.channel_names == ("ultrasound",)
    assert {c.case: c.patient for c in dataset.cases} == {image_id: p for image_id, (p, *_) in truth.items()}
    assert dataset.patients == ["1", "2", "3"]
    for case in dataset.cases:
        _, image_mode, stored, grey, mask = truth[case.case]
        image, label, _ = read_case(dataset, case)
        assert image.shape == (1, *grey.shape, 1)
        np.testing.assert_array_equal(image[0, ..., 0], grey.astype(np.float32))
        np.testing.assert_array_equal(label[..., 0], (mask == 255).astype(np.uint8))
        written = out / "imagesTr" / f"{case.case}_0000.png"
        assert Image.open(written).mode == "L"
        if image_mode == "L":
            assert written.read_bytes() == stored  # grey PNGs are copied as they are
    meta = json.loads((out / "dataset.json").read_text())
    assert "1 image(s) stored as RGB" in meta["description"]
    record = json.loads((out / "download.json").read_text())
    assert record["pinned"] and record["files"] == [
        {"file": "BUSBRA.zip", "size": len(archive), "md5": hashlib.md5(archive).hexdigest()}]


@pytest.mark.parametrize("fault, needle", [
    ("colour_image", "Images/bus_0001-r.png: a colour image"),
    ("bad_mask", "Masks/mask_0003-s.png: mask value(s) 7"),
])
def test_busbra_bad_image_or_mask_is_an_error_naming_the_file(tmp_path, fault, needle):
    archive, _ = _busbra_zip(**{fault: True})
    out = tmp_path / "raw" / "busbra"
    with _busbra_served(archive) as source:
        assert needle in _one_line_error(lambda: fetch_source(source, out))
    assert not out.exists()


# --- FIVES (one RAR archive) ----------------------------------------------------------------

FIVES_CASES = {("train", "1_A"): (14, 14), ("train", "2_D"): (12, 16), ("test", "601_N"): (16, 12)}


def _fives_rar() -> tuple[bytes, dict]:
    """A zip behind a RAR5 signature: the fake extractor below reads it, the registry sees RAR."""
    entries, truth = {}, {}
    for seed, ((split, stem), (rows, cols)) in enumerate(FIVES_CASES.items()):
        image, mask = _png(_rgb(rows, cols, seed)), _mask(rows, cols, seed)
        # FIVES ships some masks as 24-bit RGB (equal channels), others as 8-bit grey.
        stored = _png(np.repeat(mask[..., None], 3, axis=2)) if seed % 2 == 0 else _png(mask)
        entries[f"{FIVES_ROOT}/{split}/Original/{stem}.png"] = image
        entries[f"{FIVES_ROOT}/{split}/Ground truth/{stem}.png"] = stored
        truth[f"{split}_{stem}"] = (image, mask)
    entries[f"{FIVES_ROOT}/Quality Assessment.xlsx"] = b"not read"
    return _zip(entries, prefix=b"Rar!\x1a\x07\x01\x00"), truth


@pytest.fixture
def fake_bsdtar(tmp_path, monkeypatch):
    """A `bsdtar` on PATH that unpacks the zip inside our RAR-signed file, with bsdtar's arguments."""
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "bsdtar"
    script.write_text(f"#!{sys.executable}\n"
                      "import sys, zipfile\n"
                      "args = sys.argv[1:]\n"
                      "assert args[0] == '-xf' and args[2] == '-C', args\n"
                      "zipfile.ZipFile(args[1]).extractall(args[3])\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    return script


def test_fetch_fives_from_a_rar_archive(tmp_path, fake_bsdtar):
    archive, truth = _fives_rar()
    out = tmp_path / "raw" / "fives"
    with LocalServer({"/ndownloader/files/34969398": archive}) as server:
        fetch_source(_served("fives", server), out)

    dataset = read_dataset(out)
    assert [c.case for c in dataset.cases] == sorted(truth)
    assert dataset.channel_names == ("rgb_to_0_1",) * 3 and dataset.labels == {"background": 0, "vessel": 1}
    for case in dataset.cases:
        png, mask = truth[case.case]
        assert case.image_files[0].read_bytes() == png
        image, label, _ = read_case(dataset, case)
        assert image.shape[0] == 3
        np.testing.assert_array_equal(label[..., 0], (mask == 255).astype(np.uint8))
    record = json.loads((out / "download.json").read_text())
    assert record["files"] == [{"file": "FIVES.rar", "size": len(archive), "sha256": _sha256(archive)}]


def test_fives_without_a_rar_tool_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    archive, _ = _fives_rar()
    out = tmp_path / "raw" / "fives"
    with LocalServer({"/ndownloader/files/34969398": archive}) as server:
        message = _one_line_error(lambda: fetch_source(_served("fives", server), out))
    assert "FIVES.rar: a RAR archive" in message and "bsdtar" in message
    assert not out.exists()
    assert (tmp_path / "raw" / ".downloads" / "FIVES.rar").is_file()  # kept for the rerun


# --- EchoNet-Dynamic (placed: Motion-JPEG AVIs and the tracings) ------------------------------

FRAME_ROWS, FRAME_COLS = 40, 36


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _list(kind: bytes, *chunks: bytes) -> bytes:
    body = kind + b"".join(chunks)
    return b"LIST" + struct.pack("<I", len(body)) + body


def _stream(kind: bytes, handler: bytes, frames: int, compression: bytes) -> bytes:
    strh = kind + handler + struct.pack("<IHHIIIIIIIIhhhh", 0, 0, 0, 0, 1, 50, 0, frames, 0, 0, 0,
                                        0, 0, FRAME_COLS, FRAME_ROWS)
    strf = (struct.pack("<IiiHH4sIiiII", 40, FRAME_COLS, FRAME_ROWS, 1, 24, compression, 0, 0, 0, 0, 0)
            if kind == b"vids" else struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16))
    return _list(b"strl", _chunk(b"strh", strh), _chunk(b"strf", strf))


def _avi(jpegs: list[bytes], codec: bytes = b"MJPG", audio_first: bool = False) -> bytes:
    """An AVI as OpenCV writes one (hdrl, movi of '00dc' frames, idx1), written by hand."""
    avih = struct.pack("<14I", 20000, 0, 0, 0x10, len(jpegs), 0, 2 if audio_first else 1, 0,
                       FRAME_COLS, FRAME_ROWS, 0, 0, 0, 0)
    streams = [_stream(b"vids", codec, len(jpegs), codec)]
    video = b"00dc"
    if audio_first:
        streams.insert(0, _stream(b"auds", b"\0\0\0\0", len(jpegs), b""))
        video = b"01dc"
    movi = []
    for jpeg in jpegs:
        if audio_first:
            movi.append(_chunk(b"00wb", b"\x01\x02\x03"))
        movi.append(_chunk(video, jpeg))
    index = b"".join(struct.pack("<4sIII", video, 0x10, 0, len(j)) for j in jpegs)
    body = (b"AVI " + _list(b"hdrl", _chunk(b"avih", avih), *streams) + _chunk(b"JUNK", b"\0" * 7)
            + _list(b"movi", *movi) + _chunk(b"idx1", index))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _without_huffman_tables(jpeg: bytes) -> bytes:
    """Drop the DHT segments, as some Motion-JPEG writers do (the standard tables are implied)."""
    kept, pos = [jpeg[:2]], 2
    while jpeg[pos + 1] != 0xDA:
        end = pos + 2 + int.from_bytes(jpeg[pos + 2:pos + 4], "big")
        if jpeg[pos + 1] != 0xC4:
            kept.append(jpeg[pos:end])
        pos = end
    return b"".join(kept) + jpeg[pos:]


def _tracing(cx: float, cy: float, half_width: float, half_length: float, chords: int = 12) -> np.ndarray:
    """VolumeTracings rows of an elliptic ventricle: the long axis, then the chords across it."""
    rows = [(cx, cy - half_length, cx + 0.3, cy + half_length)]
    for k in range(1, chords + 1):
        y = cy - half_length + 2 * half_length * k / (chords + 1)
        w = half_width * math.sqrt(1 - ((y - cy) / half_length) ** 2)
        rows.append((cx - w, y, cx + w, y))
    return np.array(rows)


def _outline(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left ends down, right ends back up: the polygon EchoNet's Echo dataset draws."""
    left, right = rows[1:, :2], rows[1:, 2:][::-1]
    outline = np.concatenate([left, right])
    return outline[:, 0], outline[:, 1]


def _pick_count(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(lattice points inside or on the polygon by Pick's theorem, shoelace area), rounded vertices."""
    xr, yr = np.rint(x).astype(int), np.rint(y).astype(int)
    area = 0.5 * abs(int(np.dot(xr, np.roll(yr, -1)) - np.dot(yr, np.roll(xr, -1))))
    boundary = sum(math.gcd(abs(int(a - b)), abs(int(c - d)))
                   for a, b, c, d in zip(xr, np.roll(xr, -1), yr, np.roll(yr, -1)))
    return area + boundary / 2 + 1, area


# video: (frames, ED frame, ES frame, ED tracing listed first?, JPEG kind)
ECHO_VIDEOS = {
    "0X1A2B3C4D5E6F7081": (9, 6, 2, True, "grey"),
    "0X00FF00FF00FF00FF": (7, 1, 5, False, "grey"),
    "0X7777777777777777": (8, 0, 4, True, "rgb_no_dht_audio"),
}


def _place_echonet(root, fault: str | None = None) -> dict:
    videos = root / "Videos"
    videos.mkdir(parents=True)
    truth, tracings = {}, [("FileName", "X1", "Y1", "X2", "Y2", "Frame")]
    for v, (frames, ed, es, ed_first, kind) in enumerate(ECHO_VIDEOS.values()):
        greys = [np.random.default_rng(100 * v + f).integers(0, 256, (FRAME_ROWS, FRAME_COLS), dtype=np.uint8)
                 for f in range(frames)]
        if kind == "grey":
            jpegs = [_jpeg(g) for g in greys]
            decoded = [np.array(Image.open(io.BytesIO(j))) for j in jpegs]
        else:  # OpenCV writes the grey frame three times over, i.e. a colour JPEG
            with_tables = [_jpeg(np.repeat(g[..., None], 3, axis=2)) for g in greys]
            jpegs = [_without_huffman_tables(j) for j in with_tables]
            decoded = [np.array(Image.open(io.BytesIO(j)).convert("L")) for j in with_tables]
        if fault == "codec" and v == 0:
            avi = _avi([b"\x00\x00\x00\x01" + j[2:] for j in jpegs], codec=b"H264")
        else:
            avi = _avi(jpegs, audio_first=kind.endswith("audio"))
        (videos / f"{_video(v)}.avi").write_bytes(avi)
        shapes = {ed: _tracing(18 + v, 20, 10, 15), es: _tracing(17 + v, 21, 7, 11)}
        if fault == "frame" and v == 1:
            shapes = {ed: shapes[ed], frames + 3: shapes[es]}
        for frame in ([ed, *set(shapes) - {ed}] if ed_first else [*set(shapes) - {ed}, ed]):
            tracings += [(f"{_video(v)}.avi", *row, frame) for row in shapes[frame]]
        truth[_video(v)] = {"ED": (decoded[ed], shapes[ed]), "ES": (decoded[es], shapes.get(es))}
    # One video traced at a single frame and one not traced at all: both are left out.
    (videos / "0XSINGLE.avi").write_bytes(_avi([_jpeg(np.zeros((FRAME_ROWS, FRAME_COLS), np.uint8))] * 3))
    tracings += [("0XSINGLE.avi", *row, 1) for row in _tracing(18, 20, 9, 14)]
    with open(root / "VolumeTracings.csv", "w", newline="") as stream:
        csv.writer(stream).writerows(tracings)
    with open(root / "FileList.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames",
                         "Split"])
        for name in [*map(_video, range(len(ECHO_VIDEOS))), "0XSINGLE", "0XUNTRACED"]:
            writer.writerow([name, "55.0", "20.0", "45.0", FRAME_ROWS, FRAME_COLS, "50", "9", "TRAIN"])
    return truth


def _video(index: int) -> str:
    return list(ECHO_VIDEOS)[index]


@pytest.mark.parametrize("placed_as", ["folder", "zip"])
def test_echonet_placed_folder_gives_ed_and_es_cases_grouped_by_video(tmp_path, placed_as):
    placed = tmp_path / "placed"
    truth = _place_echonet(tmp_path / "staging" / "EchoNet-Dynamic")
    if placed_as == "zip":
        placed.mkdir()
        staged = sorted(p for p in (tmp_path / "staging").rglob("*") if p.is_file())
        (placed / "EchoNet-Dynamic.zip").write_bytes(_zip({
            p.relative_to(tmp_path / "staging").as_posix(): p.read_bytes() for p in staged}))
    else:
        (tmp_path / "staging").rename(placed)
    out = tmp_path / "raw" / "echonet_dynamic"
    assert fetch("echonet_dynamic", out, from_dir=placed, cache_dir=tmp_path / "cache") == out

    dataset = read_dataset(out)
    assert dataset.channel_names == ("ultrasound",)
    assert {c.case: c.patient for c in dataset.cases} == {
        f"{video}_{phase}": video for video in truth for phase in ("ED", "ES")}
    for case in dataset.cases:
        video, phase = case.case.rsplit("_", 1)
        frame, rows = truth[video][phase]
        image, label, _ = read_case(dataset, case)
        if ECHO_VIDEOS[video][4] == "grey":
            np.testing.assert_array_equal(image[0, ..., 0], frame.astype(np.float32))
        else:  # luma decoded straight from YCbCr vs pillow's RGB -> L: a level apart at most
            assert np.abs(image[0, ..., 0] - frame).max() <= 1
        x, y = _outline(rows)
        expected_count, rounded_area = _pick_count(x, y)
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        perimeter = float(np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0])).sum())
        assert label.sum() == expected_count  # pixel centres inside or on the outline
        assert abs(label.sum() - area) <= perimeter + 1  # within a pixel of the traced outline
        assert label[int(round(y.mean())), int(round(x.mean())), 0] == 1
    # ED is the fuller ventricle whatever order the rows come in
    sums = {c.case: read_case(dataset, c)[1].sum() for c in dataset.cases}
    for video in truth:
        assert sums[f"{video}_ED"] > sums[f"{video}_ES"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 6 and "2 video(s) with fewer than two traced frames left out" in meta["description"]
    if placed_as == "zip":
        assert not list((tmp_path / "cache").iterdir())  # the extraction was cleaned up


@pytest.mark.parametrize("fault, needle", [
    ("codec", "0X1A2B3C4D5E6F7081.avi: video codec 'H264' is not Motion JPEG"),
    ("frame", "0X00FF00FF00FF00FF.avi: VolumeTracings.csv traces frame 10, but the video has 7 frame(s)"),
])
def test_echonet_unreadable_video_or_frame_is_an_error_naming_the_avi(tmp_path, fault, needle):
    _place_echonet(tmp_path / "placed", fault=fault)
    out = tmp_path / "raw" / "echonet_dynamic"
    message = _one_line_error(lambda: fetch("echonet_dynamic", out, from_dir=tmp_path / "placed"))
    assert needle in message
    if fault == "codec":
        assert "ffmpeg" in message
    assert not out.exists()


def test_echonet_without_from_says_what_to_place(tmp_path):
    message = _one_line_error(lambda: fetch("echonet_dynamic", tmp_path / "raw" / "echonet_dynamic"))
    assert "FileList.csv, VolumeTracings.csv and Videos/*.avi" in message and "--from DIR" in message


# --- the pieces, against independent expectations --------------------------------------------

def test_motion_jpeg_frame_without_huffman_tables_decodes_like_the_full_jpeg():
    """Some MJPEG writers leave the standard Huffman tables out; pillow's decoder supplies them."""
    grey = np.random.default_rng(5).integers(0, 256, (16, 24), dtype=np.uint8)
    for array in (grey, np.stack([grey, 255 - grey, grey // 2], axis=-1)):
        full = _jpeg(array)
        bare = _without_huffman_tables(full)
        assert b"\xff\xc4" in full and len(bare) < len(full)
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(bare))), np.array(Image.open(io.BytesIO(full))))


@pytest.mark.parametrize("x, y, expected", [
    ([1, 5, 5, 1], [2, 2, 4, 4], 5 * 3),                 # a rectangle, boundary included
    ([0, 6, 0], [0, 0, 6], 28),                           # a right triangle: 1 + 2 + ... + 7
    ([-3, 2, 2, -3], [-2, -2, 1, 1], 3 * 2),              # clipped at the image's edge
])
def test_rasterise_polygon_counts_pixel_centres_inside_or_on_the_outline(x, y, expected):
    mask = rasterise_polygon(np.array(x, float), np.array(y, float), (10, 10))
    assert mask.sum() == expected
