"""2-D natural-image cases (PNG, JPG, BMP, TIFF) in nnU-Net's raw convention, read with pillow.

An image file holds one channel (grey) or several (RGB: three); a case's files
`{case}_0000{ending}`, `{case}_0001{ending}`, ... are concatenated along the channel axis in
that order, so an RGB case is one file and a grey multi-channel case one file per channel, as
nnU-Net's NaturalImage2DIO reads them. A label is one integer-valued file (class numbers,
not colours). Arrays come back as [rows, columns] = [X, Y]; the reader in raw.py makes a case
a one-slice volume of unit spacing.

Headers are checked before any pixel is decoded: a header claiming more pixels than pillow's
decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS) is refused, as is a colour space other
than grey or RGB (CMYK, YCbCr, LAB, HSV: their channels are not what an RGB channel name
means). An alpha channel is not image data: an opaque one is dropped (grey+alpha is grey,
RGBA is RGB), one with transparent pixels is refused, since what they show is undefined.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unetscout.errors import file_error

# Every ending an image file may carry; labels must be lossless (JPG would blur class numbers).
IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSLESS_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
_READ_ERRORS = (OSError, ValueError, SyntaxError, zlib.error, UnidentifiedImageError)
# Colour spaces whose channels are not grey or red/green/blue intensities: refused, not converted
# (pillow's CMYK -> RGB ignores the colour profile, so the converted values would be a guess).
OTHER_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")
ALPHA = "A"


def is_image_ending(file_ending: str) -> bool:
    return file_ending.lower() in IMAGE_ENDINGS


def open_image(path: Path, what: str = "image") -> Image.Image:
    """The image file, opened (header read, no pixel decoded); one-line errors naming it.

    Pillow raises DecompressionBombError above twice MAX_IMAGE_PIXELS but only warns between
    one and two times it, and would then decode: the warning is turned into the same refusal,
    so every header over the limit is refused before its pixels are decoded or allocated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise file_error(path, f"{what} file missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise file_error(path, f"{what} header claims more pixels than pillow's decompression-bomb limit of "
                               f"{Image.MAX_IMAGE_PIXELS:,} allows ({_detail(exc)}): refused without decoding "
                               "(a damaged or hostile file)") from None
    except _READ_ERRORS as exc:
        raise file_error(path, f"cannot read {what} (truncated or not an image file): {_detail(exc)}") from None


def _check_colour_space(path: Path, image: Image.Image) -> None:
    if image.mode in OTHER_COLOUR_SPACES:
        raise file_error(path, f"colour space {image.mode} (pillow mode {image.mode}): an image file must be "
                               "grey or RGB; convert it to RGB (e.g. with ImageMagick: magick IN -colorspace "
                               "sRGB OUT)")


def _intensity_bands(image: Image.Image) -> int:
    """Image channels a file holds: its bands less alpha; a palette image counts as RGB."""
    if image.mode in ("P", "PA"):
        return 3
    return len([band for band in image.getbands() if band != ALPHA])


def channel_count(path: Path) -> int:
    """Channels of an image file, from its header only (a palette image counts as RGB, an
    alpha channel does not count: see read_image_channels)."""
    with open_image(path, "image") as image:
        _check_colour_space(path, image)
        return _intensity_bands(image)


def image_size(path: Path) -> tuple[int, int]:
    """(rows, columns) of an image file, from its header only."""
    with open_image(path, "image") as image:
        return image.height, image.width


def _detail(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _pixels(path: Path, what: str, as_image: bool) -> tuple[np.ndarray, bool]:
    """The decoded pixels, and whether their last axis ends in an alpha channel. An image file
    (`as_image`) must be grey or RGB, its palette becomes RGB (RGBA where it has transparency);
    a label keeps its palette indices, which are its class numbers."""
    with open_image(path, what) as image:
        if as_image:
            _check_colour_space(path, image)
        try:
            if as_image and image.mode in ("P", "PA"):
                transparent = image.mode == "PA" or "transparency" in image.info
                image = image.convert("RGBA" if transparent else "RGB")
            # load() decodes every pixel here, so a truncated file fails here and not later.
            image.load()
            return np.array(image), ALPHA in image.getbands()
        except _READ_ERRORS as exc:
            raise file_error(path, f"cannot read {what} (truncated or not an image file): {_detail(exc)}") from None


def read_image_channels(path: Path) -> np.ndarray:
    """float32 [channels, rows, columns] of one image file (grey: 1 channel, RGB: 3).

    An opaque alpha channel is dropped (grey+alpha is grey, RGBA is RGB); alpha with a
    transparent pixel is an error naming the file, because the intensity a viewer shows
    there depends on the background it composites onto."""
    pixels, has_alpha = _pixels(path, "image", as_image=True)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    if has_alpha:
        alpha = pixels[..., -1]
        transparent = int(np.count_nonzero(alpha != np.iinfo(alpha.dtype).max))
        if transparent:
            raise file_error(path, f"{transparent} of {alpha.size} pixel(s) (partly) transparent in its alpha "
                                   f"channel: an image holds grey or RGB intensities; store it without alpha")
        pixels = pixels[..., :-1]
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    channels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return channels.astype(np.float32)


def read_label_image(path: Path) -> np.ndarray:
    """Integer class map [rows, columns] of a label file (grey or palette indices, any bit depth)."""
    pixels, _ = _pixels(path, "label", as_image=False)
    if pixels.ndim != 2:
        raise file_error(path, f"label must be one channel of class numbers (a grey or palette image), "
                               f"got {pixels.shape[-1]} channels")
    if pixels.dtype.kind == "f":
        if not np.all(np.isfinite(pixels)) or not np.array_equal(pixels, np.round(pixels)):
            raise file_error(path, "label holds non-integer values; it must hold class numbers")
    return pixels.astype(np.int64)
