"""2-D natural-image cases (PNG, JPG, BMP, TIFF) in nnU-Net's raw convention, read with pillow.

An image file holds one channel (grey) or several (RGB: three); a case's files
`{case}_0000{ending}`, `{case}_0001{ending}`, ... are concatenated along the channel axis in
that order, so an RGB case is one file and a grey multi-channel case one file per channel, as
nnU-Net's NaturalImage2DIO reads them. A label is one integer-valued file (class numbers,
not colours). Arrays come back as [rows, columns] = [X, Y]; the reader in raw.py makes a case
a one-slice volume of unit spacing.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unetscout.errors import file_error

# Every ending an image file may carry; labels must be lossless (JPG would blur class numbers).
IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSLESS_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
_READ_ERRORS = (OSError, ValueError, SyntaxError, zlib.error, UnidentifiedImageError, Image.DecompressionBombError)


def is_image_ending(file_ending: str) -> bool:
    return file_ending.lower() in IMAGE_ENDINGS


def channel_count(path: Path) -> int:
    """Channels of an image file, from its header only (a palette image counts as RGB)."""
    try:
        with Image.open(path) as image:
            return 3 if image.mode == "P" else len(image.getbands())
    except FileNotFoundError:
        raise file_error(path, "image file missing") from None
    except _READ_ERRORS as exc:
        raise file_error(path, f"cannot read image (truncated or not an image file): {_detail(exc)}") from None


def _detail(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _pixels(path: Path, what: str, palette_as_rgb: bool) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode == "P" and palette_as_rgb:
                image = image.convert("RGB")
            # load() decodes every pixel here, so a truncated file fails here and not later.
            image.load()
            return np.array(image)
    except FileNotFoundError:
        raise file_error(path, f"{what} file missing") from None
    except _READ_ERRORS as exc:
        raise file_error(path, f"cannot read {what} (truncated or not an image file): {_detail(exc)}") from None


def read_image_channels(path: Path) -> np.ndarray:
    """float32 [channels, rows, columns] of one image file (grey: 1 channel, RGB: 3)."""
    pixels = _pixels(path, "image", palette_as_rgb=True)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    channels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return channels.astype(np.float32)


def read_label_image(path: Path) -> np.ndarray:
    """Integer class map [rows, columns] of a label file (grey or palette indices, any bit depth)."""
    pixels = _pixels(path, "label", palette_as_rgb=False)
    if pixels.ndim != 2:
        raise file_error(path, f"label must be one channel of class numbers (a grey or palette image), "
                               f"got {pixels.shape[-1]} channels")
    if pixels.dtype.kind == "f":
        if not np.all(np.isfinite(pixels)) or not np.array_equal(pixels, np.round(pixels)):
            raise file_error(path, "label holds non-integer values; it must hold class numbers")
    return pixels.astype(np.int64)
