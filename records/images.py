"""Validate image bytes once at build time, normalise them, and optionally shrink them.

Every image a source yields passes through `prepare_image`: it is decoded in full (so that a
truncated or unreadable file is caught at build time, not in the middle of training), its size
is read, and the original bytes are kept unchanged when they are an upright RGB or greyscale
JPEG (MPO included) or a PNG. Everything else is re-encoded as JPEG: other formats (BMP, GIF,
WebP, TIFF, ...; first frame, alpha dropped), CMYK JPEGs (converted to RGB), images whose EXIF
orientation asks for a rotation or mirror (turned upright, the tag dropped) and images larger
than `max_side`.

Photo search normalises the photos it indexes and the query photos it is given with the same
function (`normalize_image`), so a photo has the same pixels whether it is searched from a
folder or built into records and evaluated: both then decode the normalised bytes the same way.
Importing this module loads neither PIL nor TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re

# MPO: a camera's JPEG with more pictures appended; decoders read the first, a plain JPEG
_KEEP_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}
# PNG: any mode (its decoders drop alpha, expand palettes and grey)
_KEEP_MODES = {"JPEG": ("L", "RGB"), "MPO": ("L", "RGB")}
_ORIENTATION_TAG = 0x0112  # EXIF orientation: 1 upright, 2-8 mirrored and/or rotated
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """An image ready for a record: bytes exactly as stored, their format and pixel size."""

    data: bytes
    image_format: str  # "jpeg" or "png"
    height: int
    width: int
    reencoded: bool


class UnreadableImage(ValueError):
    """Bytes that are not a decodable image. `recognised` says whether the format was known
    (a damaged or truncated file) or not (not an image, or a format not allowed)."""

    def __init__(self, message: str, recognised: bool):
        super().__init__(message)
        self.recognised = recognised


class ImageTooLarge(ValueError):
    """An image whose header claims more pixels than allowed (a decompression bomb)."""


def read_image_bytes(image, *, what: str) -> bytes:
    """Return `image` if it is bytes, else read the file it names.

    Args:
        image: `bytes` or a path (`str` / `os.PathLike`).
        what: how to name the image in an error message (e.g. "image 'x.jpg' (captions.csv row 3)").
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    from records.schema import RecordsError  # noqa: PLC0415 (loads TensorFlow)

    path = os.fspath(image)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise RecordsError(f"{what}: image file missing: {path}") from None
    except OSError as exc:
        raise RecordsError(f"{what}: cannot read image file {path}: {exc}") from exc


def _reason(exc: Exception) -> str:
    """Why PIL could not decode an image, without the in-memory file object's repr that PIL
    puts in some messages (`cannot identify image file <_io.BytesIO object at 0x...>`)."""
    if type(exc).__name__ == "UnidentifiedImageError":
        return "not a recognised image format"
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _orientation(image) -> int:
    """The EXIF orientation of an opened image (1, upright, when absent or unreadable)."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if 1 <= int(value) <= 8 else 1
    except Exception:  # noqa: BLE001 (a damaged EXIF block means no usable orientation)
        return 1


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.6g}"


def normalize_image(data: bytes, *, max_side: int | None = None, max_pixels: int | None = None,
                    formats=None) -> PreparedImage:
    """Decode `data` once to validate it; return it unchanged or re-encoded (see the module).

    Args:
        data: the encoded image.
        max_side: if set, images whose longer side exceeds it are resized (aspect kept) and
            re-encoded as JPEG.
        max_pixels: if set, an image whose header claims more pixels is refused before any
            pixel is decoded. PIL's own decompression-bomb limit applies in any case.
        formats: if set, the PIL format names to open (e.g. `("JPEG", "PNG")`); others are
            refused as unreadable.

    Returns:
        A `PreparedImage` whose bytes are an RGB or greyscale JPEG or a PNG, upright.

    Raises:
        UnreadableImage: empty, truncated, corrupt, or not an image (of `formats`).
        ImageTooLarge: over `max_pixels` (or PIL's limit).
    """
    from PIL import Image, ImageOps  # imported lazily: no work at import time

    if not data:
        raise UnreadableImage("empty image file", recognised=False)
    try:
        with Image.open(io.BytesIO(data), formats=formats) as probe:
            width, height = probe.size  # from the header: nothing decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image of {width}x{height} pixels; at most "
                                    f"{_megapixels(max_pixels)} megapixels")
            fmt = probe.format
            probe.load()  # full decode: raises on truncated or corrupt data
            upright = _orientation(probe) == 1
            need_resize = bool(max_side) and max(width, height) > int(max_side)
            keep = (fmt in _KEEP_FORMATS and upright and not need_resize
                    and probe.mode in _KEEP_MODES.get(fmt, (probe.mode,)))
            if keep:
                return PreparedImage(data, _KEEP_FORMATS[fmt], height, width, False)
            image = probe if upright else ImageOps.exif_transpose(probe)
            image = image.convert("RGB")
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image of more than {_megapixels(Image.MAX_IMAGE_PIXELS * 2)} "
                            "megapixels") from None
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, ...)
        recognised = type(exc).__name__ != "UnidentifiedImageError"
        raise UnreadableImage(f"unreadable image ({_reason(exc)})", recognised) from exc
    if need_resize:
        scale = int(max_side) / max(image.width, image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return PreparedImage(out.getvalue(), "jpeg", image.height, image.width, True)


def prepare_image(data: bytes, *, what: str, max_side: int | None = None) -> PreparedImage:
    """`normalize_image` for a records build, its errors as `RecordsError` naming `what`.

    Args:
        data: the encoded image.
        what: how to name the image in an error message.
        max_side: if set, images whose longer side exceeds it are resized (aspect kept) and
            re-encoded as JPEG.

    Returns:
        A `PreparedImage`.

    Raises:
        RecordsError: the bytes are not a decodable image (truncated, corrupt, unknown format,
            over PIL's decompression-bomb limit).

    Example:
    >>> img = prepare_image(open("cat.jpg", "rb").read(), what="cat.jpg", max_side=256)
    >>> img.image_format, img.height, img.width
    """
    from records.schema import RecordsError  # noqa: PLC0415 (loads TensorFlow)

    try:
        return normalize_image(data, max_side=max_side)
    except (UnreadableImage, ImageTooLarge) as exc:
        raise RecordsError(f"{what}: {exc}") from exc
