"""Convert the 2-D image datasets (ISIC 2018, BUS-BRA, FIVES, EchoNet-Dynamic) into nnU-Net raw format.

The same contract as convert.py: each converter writes into a folder the caller made
(inside `atomic_directory`), one case at a time, and checks what it reads with one-line
errors naming the file. Images that need no change are copied byte for byte (ISIC's JPGs,
FIVES's and BUS-BRA's PNGs); masks are rewritten as PNG label maps of class numbers 0/1,
because the raw format stores classes, not the 0/255 of a picture. Labels end in ".png"
(`file_ending`), images keep their own ending; an RGB image is one file of three channels.

EchoNet-Dynamic ships videos, not images: its AVI files hold one Motion-JPEG frame per
'00dc' chunk, so a small RIFF reader hands the traced frames to pillow (no video library),
and the left-ventricle outline in VolumeTracings.csv is rasterised into the label.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unetscout.data.convert import find_dataset_root, is_hidden, make_case_folders, write_dataset_json
from unetscout.data.images import open_image
from unetscout.errors import file_error
from unetscout.progress import Progress

LABEL_ENDING = ".png"
RGB_CHANNELS = {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}
# Grey ultrasound gets nnU-Net's default for a named modality: a z-score over the nonzero pixels.
ULTRASOUND_CHANNEL = {"0": "ultrasound"}
GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L")
_READ_ERRORS = (OSError, ValueError, SyntaxError, zlib.error, UnidentifiedImageError, Image.DecompressionBombError)

ISIC_IMAGES = "ISIC2018_Task1-2_Training_Input"
ISIC_MASKS = "ISIC2018_Task1_Training_GroundTruth"
ISIC_LABELS = {"background": 0, "lesion": 1}
BUSBRA_LABELS = {"background": 0, "lesion": 1}
FIVES_SPLITS = ("train", "test")
FIVES_IMAGES, FIVES_MASKS = "Original", "Ground truth"
FIVES_LABELS = {"background": 0, "vessel": 1}
ECHONET_LABELS = {"background": 0, "left_ventricle": 1}
ECHONET_TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
REENCODE_HINT = "ffmpeg -i IN.avi -an -c:v mjpeg -q:v 1 OUT.avi"


# ----------------------------------------------------------------------------- shared helpers

def _detail(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_binary_mask(path: Path, *, zero_one: bool = False) -> np.ndarray:
    """A binary mask as uint8 0/1 [rows, columns].

    Accepted: a grey mask of 0 (background) and 255 (foreground), a 1-bit PNG, and colour
    or grey+alpha copies of such a mask whose colour channels are equal (alpha ignored);
    with `zero_one`, also a grey mask already holding 0/1 (unambiguous: only 0 is in both).
    Anything else is an error naming the file and the values found.
    """
    with open_image(path, "mask") as image:
        try:
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            pixels = np.array(image)
        except _READ_ERRORS as exc:
            raise file_error(path, f"cannot read mask (truncated or not an image file): {_detail(exc)}") from None
    if pixels.dtype == bool:
        return pixels.astype(np.uint8)
    if pixels.ndim == 3:
        colour = pixels[..., :3] if pixels.shape[-1] >= 3 else pixels[..., :1]
        if not np.array_equal(colour, np.broadcast_to(colour[..., :1], colour.shape)):
            raise file_error(path, "mask has colour channels that differ: a binary mask is one grey channel "
                                   "(or colour channels that are all equal)")
        pixels = colour[..., 0]
    found = set(np.unique(pixels).tolist())
    if found <= {0, 255}:
        return (pixels == 255).astype(np.uint8)
    if zero_one and found <= {0, 1}:
        return pixels.astype(np.uint8)
    accepted = {0, 1, 255} if zero_one else {0, 255}
    odd = sorted(found - accepted) or sorted(found)
    shown = ", ".join(f"{v:g}" for v in odd[:10]) + (f" (+{len(odd) - 10} more)" if len(odd) > 10 else "")
    wanted = "0/255 (or 0/1)" if zero_one else "0 (background) and 255 (foreground)"
    raise file_error(path, f"mask value(s) {shown} found: a binary mask holds only {wanted}")


def save_label(mask: np.ndarray, target: Path) -> None:
    """A 0/1 class map as an 8-bit grey PNG."""
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(target, format="PNG")


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(pillow mode, (rows, columns)) from an image file's header, without decoding it (a header
    over pillow's decompression-bomb limit is refused here: see images.open_image)."""
    with open_image(path, "image") as image:
        return image.mode, (image.height, image.width)


def _check_size(image: Path, shape: tuple[int, int], mask: Path, mask_shape: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(mask_shape):
        raise file_error(image, f"image size {shape[0]} x {shape[1]} (rows x columns) differs from mask "
                                f"{mask.name} size {mask_shape[0]} x {mask_shape[1]}")


def _check_rgb(path: Path) -> tuple[int, int]:
    """An RGB image's (rows, columns); one of another kind is an error (its channel count would not match)."""
    mode, shape = image_header(path)
    if mode != "RGB":
        raise file_error(path, f"expected an RGB image (3 channels), found pillow mode {mode}")
    return shape


def named_folder(src: Path, name: str, what: str) -> Path:
    """The one folder called `name` at or below `src` (`what` says whose layout it is)."""
    found = [src] if src.name == name and src.is_dir() else [
        folder for folder in sorted(src.rglob(name)) if folder.is_dir() and not is_hidden(folder, src)]
    if len(found) != 1:
        listed = ", ".join(str(f) for f in found[:3])
        raise file_error(src, f"expected one {name}/ folder ({what}), found {len(found)}"
                              f"{f' ({listed})' if listed else ''}")
    return found[0]


def files_by_id(folder: Path, pattern: str) -> dict[str, Path]:
    """Files in `folder` whose whole name matches `pattern` (case-insensitive), by the pattern's group 1."""
    regex = re.compile(pattern, re.IGNORECASE)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = regex.fullmatch(path.name)
        if match is None or path.name.startswith(".") or not path.is_file():
            continue
        if match[1] in found:
            raise file_error(path, f"the same case as {found[match[1]].name} (names differ only in case)")
        found[match[1]] = path
    return found


def paired(image_dir: Path, images: dict[str, Path], mask_dir: Path, masks: dict[str, Path],
           image_name, mask_name) -> list[tuple[str, Path, Path]]:
    """(case, image, mask) for every case; an image without its mask, or the reverse, is an error
    naming the file that is missing (`image_name`/`mask_name`: case -> its file name)."""
    if not images:
        raise file_error(image_dir, "holds no images")
    for case in sorted(images):
        if case not in masks:
            raise file_error(mask_dir / mask_name(case), f"missing: no mask for image {images[case]}")
    for case in sorted(masks):
        if case not in images:
            raise file_error(image_dir / image_name(case), f"missing: no image for mask {masks[case]}")
    return [(case, images[case], masks[case]) for case in sorted(images)]


def _convert_pairs(label: str, cases: list[tuple[str, Path, Path]], dst: Path, image_ending: str) -> None:
    """Copy each RGB image byte for byte, write its 0/255 mask as a 0/1 label."""
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress(f"convert {label}", total=len(cases), unit="case")
    for case, image, mask_path in cases:
        mask = read_binary_mask(mask_path)
        _check_size(image, _check_rgb(image), mask_path, mask.shape)
        shutil.copyfile(image, images_dir / f"{case}_0000{image_ending}")
        save_label(mask, labels_dir / f"{case}{LABEL_ENDING}")
        progress.update()
    progress.close()


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file with a header holding every column in `required`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise file_error(path, "missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise file_error(path, f"cannot read ({err})") from None
    reader = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise file_error(path, f"missing column(s) {', '.join(missing)} (its header: {', '.join(header) or 'none'})")
    index = {name: header.index(name) for name in required}
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        if len(values) < len(header):
            raise file_error(path, f"line {reader.line_num}: {len(values)} value(s), the header has {len(header)}")
        rows.append((reader.line_num, {name: values[i].strip() for name, i in index.items()}))
    return rows


# ----------------------------------------------------------------------------- ISIC 2018

def convert_isic2018(src: Path, dst: Path) -> int:
    """ISIC 2018 task 1 training set (input and ground-truth archives extracted into `src`)."""
    src = Path(src)
    image_dir = named_folder(src, ISIC_IMAGES, "the ISIC 2018 task 1-2 training input archive")
    mask_dir = named_folder(src, ISIC_MASKS, "the ISIC 2018 task 1 training ground-truth archive")
    cases = paired(image_dir, files_by_id(image_dir, r"(ISIC_\d{7})\.jpg"),
                   mask_dir, files_by_id(mask_dir, r"(ISIC_\d{7})_segmentation\.png"),
                   image_name=lambda case: f"{case}.jpg", mask_name=lambda case: f"{case}_segmentation.png")
    _convert_pairs("isic2018", cases, dst, ".jpg")
    write_dataset_json(
        dst, name="ISIC2018_Task1", channel_names=dict(RGB_CHANNELS), labels=dict(ISIC_LABELS),
        num_training=len(cases), file_ending=LABEL_ENDING,
        description=("ISIC 2018 task 1 (lesion boundary segmentation), the training images: RGB dermoscopy "
                     "JPGs as published, masks 0/255 stored as classes 0/1"),
        reference="Codella et al., arXiv:1902.03368 (2019); Tschandl et al., Sci. Data 5, 180161 (2018)",
        licence="CC BY-NC 4.0")
    return len(cases)


# ----------------------------------------------------------------------------- BUS-BRA

def _busbra_mask(masks: Path, image_id: str) -> Path:
    # The authors' code names the mask of bus_0001-l.png mask_0001-l.png; accept mask_<ID>.png too.
    names = ([f"mask{image_id[3:]}.png"] if image_id.lower().startswith("bus_") else []) + [f"mask_{image_id}.png"]
    for name in names:
        if (masks / name).is_file():
            return masks / name
    return masks / names[0]


def _place_grey(image: Path, target: Path) -> bool:
    """Copy a grey PNG byte for byte; store an RGB one with equal channels as grey. True if converted."""
    mode, _ = image_header(image)
    if mode in GREY_MODES:
        shutil.copyfile(image, target)
        return False
    with open_image(image, "image") as opened:
        try:
            rgb = np.array(opened.convert("RGB"))
        except _READ_ERRORS as exc:
            raise file_error(image, f"cannot read image (truncated or not an image file): {_detail(exc)}") from None
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise file_error(image, f"a colour image (pillow mode {mode}, channels differ): BUS-BRA images are grey "
                                "ultrasound, stored as one channel")
    Image.fromarray(rgb[..., 0]).save(target, format="PNG")
    return True


def convert_busbra(src: Path, dst: Path) -> int:
    """BUS-BRA `BUSBRA/{bus_data.csv, Images/, Masks/}`: grey images, several per patient (column Case)."""
    root = find_dataset_root(Path(src), "bus_data.csv", "Images", "Masks")
    table = root / "bus_data.csv"
    cases: list[tuple[str, str, Path, Path]] = []
    seen: dict[str, int] = {}
    for line, row in read_csv_rows(table, ("ID", "Case")):
        image_id, patient = row["ID"], row["Case"]
        if not image_id or not patient:
            raise file_error(table, f"line {line}: empty ID or Case")
        if image_id in seen:
            raise file_error(table, f"line {line}: image {image_id} listed twice (also line {seen[image_id]})")
        seen[image_id] = line
        image = root / "Images" / f"{image_id}.png"
        if not image.is_file():
            raise file_error(image, f"missing: listed in {table.name} line {line}")
        mask = _busbra_mask(root / "Masks", image_id)
        if not mask.is_file():
            raise file_error(mask, f"missing: no mask for image {image}")
        cases.append((image_id, patient, image, mask))
    if not cases:
        raise file_error(table, "lists no images")
    images_dir, labels_dir = make_case_folders(dst)
    progress = Progress("convert busbra", total=len(cases), unit="case")
    converted = 0
    for case, _, image, mask_path in cases:
        mask = read_binary_mask(mask_path, zero_one=True)
        _check_size(image, image_header(image)[1], mask_path, mask.shape)
        converted += _place_grey(image, images_dir / f"{case}_0000.png")
        save_label(mask, labels_dir / f"{case}{LABEL_ENDING}")
        progress.update()
    progress.close()
    patients = {case: patient for case, patient, _, _ in cases}
    note = f"; {converted} image(s) stored as RGB with equal channels kept as one grey channel" if converted else ""
    write_dataset_json(
        dst, name="BUS-BRA", channel_names=dict(ULTRASOUND_CHANNEL), labels=dict(BUSBRA_LABELS),
        num_training=len(cases), file_ending=LABEL_ENDING,
        description=(f"BUS-BRA breast ultrasound: {len(cases)} grey images of {len(set(patients.values()))} "
                     f"patients (bus_data.csv column Case), lesion masks as classes 0/1{note}"),
        reference="Gomez-Flores et al., Med. Phys. 51(4):3110-3123 (2024), doi:10.1002/mp.16812; "
                  "doi:10.5281/zenodo.8231412",
        licence="CC BY 4.0", unetscout_patients=patients)
    return len(cases)


# ----------------------------------------------------------------------------- FIVES

def convert_fives(src: Path, dst: Path) -> int:
    """FIVES `{train,test}/{Original,Ground truth}/N_X.png`: RGB fundus photographs, vessel masks."""
    required = tuple(f"{split}/{part}" for split in FIVES_SPLITS for part in (FIVES_IMAGES, FIVES_MASKS))
    root = find_dataset_root(Path(src), *required)
    cases = []
    for split in FIVES_SPLITS:
        image_dir, mask_dir = root / split / FIVES_IMAGES, root / split / FIVES_MASKS
        pattern = r"(.+)\.png"  # the same name in both folders, e.g. 1_A.png
        for stem, image, mask in paired(image_dir, files_by_id(image_dir, pattern),
                                        mask_dir, files_by_id(mask_dir, pattern),
                                        image_name=lambda stem: f"{stem}.png", mask_name=lambda stem: f"{stem}.png"):
            cases.append((f"{split}_{stem}", image, mask))
    _convert_pairs("fives", cases, dst, ".png")
    write_dataset_json(
        dst, name="FIVES", channel_names=dict(RGB_CHANNELS), labels=dict(FIVES_LABELS),
        num_training=len(cases), file_ending=LABEL_ENDING,
        description=("FIVES fundus image vessel segmentation: the train and test photographs (RGB PNG, "
                     "case ids train_* and test_*), vessel masks 0/255 stored as classes 0/1"),
        reference="Jin et al., Sci. Data 9, 475 (2022), doi:10.1038/s41597-022-01564-3; "
                  "doi:10.6084/m9.figshare.19688169",
        licence="CC BY 4.0")
    return len(cases)


# ----------------------------------------------------------------------------- EchoNet-Dynamic: AVI frames

def _is_frame_chunk(chunk: bytes, stream: int) -> bool:
    return chunk[:2] == f"{stream:02d}".encode() and chunk[2:] in (b"dc", b"db")


class _AviChunks:
    """Walks an AVI's RIFF chunks: the stream headers, the video codec, the frame chunks in order."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data = path, data
        self.stream_types: list[bytes] = []
        self.codec = b""
        self.frames: list[bytes] = []

    @property
    def video_stream(self) -> int | None:
        return self.stream_types.index(b"vids") if b"vids" in self.stream_types else None

    def walk(self, start: int, end: int) -> None:
        data, pos = self.data, start
        while pos + 8 <= end:
            chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
            body = pos + 8
            if body + size > end:
                raise file_error(self.path, f"truncated AVI: chunk {chunk.decode('latin-1')!r} at byte {pos} "
                                            f"runs {body + size - end} byte(s) past its end")
            if chunk in (b"RIFF", b"LIST"):
                self.walk(body + 4, body + size)
            elif chunk == b"strh":
                self.stream_types.append(data[body:body + 4])
            elif chunk == b"strf" and self.stream_types and self.stream_types[-1] == b"vids":
                self.codec = data[body + 16:body + 20]  # BITMAPINFOHEADER.biCompression
            elif self.video_stream is not None and _is_frame_chunk(chunk, self.video_stream):
                self.frames.append(data[body:body + size])
            pos = body + size + (size & 1)  # chunks are padded to an even length


def avi_jpeg_frames(path: Path) -> list[bytes]:
    """The JPEG images of a Motion-JPEG AVI's video frames, in order (frame 0 first)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise file_error(path, "video file missing") from None
    except OSError as err:
        raise file_error(path, f"cannot read ({err})") from None
    if data[:4] != b"RIFF" or data[8:12] != b"AVI ":
        raise file_error(path, "not an AVI file (no RIFF 'AVI ' header)")
    avi = _AviChunks(path, data)
    avi.walk(0, len(data))  # also reaches the 'AVIX' RIFF extensions of large (OpenDML) files
    codec = avi.codec.decode("latin-1") or "unknown"
    if avi.video_stream is None or not avi.frames:
        raise file_error(path, "AVI holds no video frames")
    if any(not frame for frame in avi.frames):
        # An empty chunk is a dropped frame; readers differ on whether it counts, so frame numbers would be ambiguous.
        raise file_error(path, "AVI holds empty (dropped) video frames, so its frame numbers are ambiguous")
    if not all(frame[:2] == b"\xff\xd8" for frame in avi.frames):
        raise file_error(path, f"video codec {codec!r} is not Motion JPEG, which is all unetscout reads without a "
                               f"video library; re-encode it, e.g. `{REENCODE_HINT}`")
    return avi.frames


def decode_grey_frame(jpeg: bytes, video: Path, index: int) -> np.ndarray:
    """A frame's grey values [rows, columns]: the decoded luma (Y) of a colour JPEG, as is for a grey one.

    Motion JPEG may leave out the Huffman tables, meaning the standard ones; pillow's
    libjpeg(-turbo) then uses those itself (tests/test_fetch_images.py checks it does).
    """
    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            if image.mode == "RGB":
                image.draft("YCbCr", image.size)  # decode without the colour conversion: Y is the grey
            image.load()
            grey = image.getchannel(0) if image.mode == "YCbCr" else image.convert("L")
            return np.array(grey)
    except _READ_ERRORS as exc:
        raise file_error(video, f"frame {index}: cannot decode its JPEG: {_detail(exc)}") from None


# ----------------------------------------------------------------------------- EchoNet-Dynamic: tracings

def lv_outline(chords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left-ventricle outline (x, y) from one frame's VolumeTracings rows [N, 4] = X1, Y1, X2, Y2.

    The first row is the long axis (apex to mitral annulus) and is no part of the outline;
    every further row is a chord across the ventricle with one end on each wall, so the
    outline runs along the X1/Y1 ends and back along the X2/Y2 ends in reverse, as
    EchoNet's own dataset class reads it.
    """
    x = np.concatenate([chords[1:, 0], chords[:0:-1, 2]])
    y = np.concatenate([chords[1:, 1], chords[:0:-1, 3]])
    return x, y


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Shoelace area of a closed polygon."""
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def rasterise_polygon(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask of the pixels (row y, column x) inside a polygon or on its boundary.

    Vertices are rounded to whole pixels first, and every pixel centre inside the polygon
    or on an edge or vertex counts, as skimage.draw.polygon (EchoNet's rasteriser) decides.
    """
    xs, ys = np.rint(np.asarray(x, float)), np.rint(np.asarray(y, float))
    mask = np.zeros(shape, dtype=np.uint8)
    if len(xs) < 3:
        return mask
    r0, r1 = max(0, int(ys.min())), min(shape[0] - 1, int(ys.max()))
    c0, c1 = max(0, int(xs.min())), min(shape[1] - 1, int(xs.max()))
    if r0 > r1 or c0 > c1:
        return mask
    py, px = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(float)
    inside = np.zeros(py.shape, dtype=bool)
    on_boundary = np.zeros(py.shape, dtype=bool)
    for xa, ya, xb, yb in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1)):
        # Even-odd rule on a ray towards +x; an edge counts where it straddles the pixel's row.
        if ya != yb:
            straddles = (ya > py) != (yb > py)
            crossing = xa + (py - ya) * (xb - xa) / (yb - ya)
            inside ^= straddles & (px < crossing)
        # Integer vertices and pixel centres: the collinearity test is exact.
        collinear = (xb - xa) * (py - ya) == (yb - ya) * (px - xa)
        on_boundary |= (collinear & (px >= min(xa, xb)) & (px <= max(xa, xb))
                        & (py >= min(ya, yb)) & (py <= max(ya, yb)))
    mask[r0:r1 + 1, c0:c1 + 1] = inside | on_boundary
    return mask


def _video_id(name: str) -> str:
    return name[:-4] if name.lower().endswith(".avi") else name


def _echonet_tracings(path: Path) -> dict[str, dict[int, np.ndarray]]:
    """Video id -> traced frame -> its rows [N, 4] (X1, Y1, X2, Y2), in file order."""
    traces: dict[str, dict[int, list[tuple[float, float, float, float]]]] = {}
    for line, row in read_csv_rows(path, ECHONET_TRACING_COLUMNS):
        try:
            chord = tuple(float(row[key]) for key in ("X1", "Y1", "X2", "Y2"))
            frame = int(row["Frame"])
        except ValueError:
            raise file_error(path, f"line {line}: X1, Y1, X2, Y2 must be numbers and Frame an integer, got "
                                   f"{', '.join(row[key] for key in ECHONET_TRACING_COLUMNS[1:])}") from None
        if frame < 0 or not all(np.isfinite(chord)):
            raise file_error(path, f"line {line}: frame {frame} or coordinates {chord} out of range")
        traces.setdefault(_video_id(row["FileName"]), {}).setdefault(frame, []).append(chord)
    return {video: {frame: np.array(rows) for frame, rows in frames.items()} for video, frames in traces.items()}


def _phase_frames(frames: dict[int, np.ndarray]) -> dict[str, int]:
    """ED and ES frames: the traced frames of largest and smallest left-ventricle area.

    By definition the ventricle is fullest at end-diastole and emptiest at end-systole;
    the area decides rather than the order of the rows in VolumeTracings.csv.
    """
    by_area = sorted(frames, key=lambda frame: (polygon_area(*lv_outline(frames[frame])), frame))
    return {"ED": by_area[-1], "ES": by_area[0]}


def convert_echonet_dynamic(src: Path, dst: Path) -> int:
    """EchoNet-Dynamic `{FileList.csv, VolumeTracings.csv, Videos/*.avi}` -> one case per video and phase."""
    root = find_dataset_root(Path(src), "FileList.csv", "VolumeTracings.csv", "Videos")
    videos = [_video_id(row["FileName"]) for _, row in read_csv_rows(root / "FileList.csv", ("FileName",))]
    repeated = sorted(video for video, n in Counter(videos).items() if n > 1)
    if repeated:
        raise file_error(root / "FileList.csv", f"video(s) listed twice: {', '.join(repeated[:5])}")
    traces = _echonet_tracings(root / "VolumeTracings.csv")
    # EchoNet itself leaves out the few videos without two traced frames.
    traced = [video for video in sorted(videos) if len(traces.get(video, {})) >= 2]
    if not traced:
        raise file_error(root / "VolumeTracings.csv", "no video of FileList.csv has two traced frames")
    images_dir, labels_dir = make_case_folders(dst)
    patients: dict[str, str] = {}
    progress = Progress("convert echonet_dynamic", total=len(traced), unit="video")
    for video in traced:
        path = root / "Videos" / f"{video}.avi"
        frames = avi_jpeg_frames(path)
        for phase, index in _phase_frames(traces[video]).items():
            if index >= len(frames):
                raise file_error(path, f"VolumeTracings.csv traces frame {index}, but the video has {len(frames)} "
                                       f"frame(s) (numbered from 0)")
            grey = decode_grey_frame(frames[index], path, index)
            case = f"{video}_{phase}"
            Image.fromarray(grey).save(images_dir / f"{case}_0000.png", format="PNG")
            save_label(rasterise_polygon(*lv_outline(traces[video][index]), grey.shape),
                       labels_dir / f"{case}{LABEL_ENDING}")
            patients[case] = video
        progress.update()
    progress.close()
    left_out = len(videos) - len(traced)
    note = f"; {left_out} video(s) with fewer than two traced frames left out" if left_out else ""
    write_dataset_json(
        dst, name="EchoNet-Dynamic", channel_names=dict(ULTRASOUND_CHANNEL), labels=dict(ECHONET_LABELS),
        num_training=len(patients), file_ending=LABEL_ENDING,
        description=(f"EchoNet-Dynamic apical 4-chamber echocardiograms: the traced end-diastolic (ED) and "
                     f"end-systolic (ES) frame of {len(traced)} videos (grey), the left-ventricle tracing filled "
                     f"as the label; the frames of a video are one patient{note}"),
        reference="Ouyang et al., Nature 580, 252-256 (2020), doi:10.1038/s41586-020-2145-8",
        licence="EchoNet-Dynamic Dataset Research Use Agreement (Stanford, non-commercial)",
        unetscout_patients=patients)
    return len(patients)
