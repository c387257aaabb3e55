"""Validate image bytes once at build time and optionally shrink them.

Every image a source yields passes through `prepare_image`: it is decoded in full (so that a
truncated or unreadable file is caught at build time, not in the middle of training), its size is
read, and the original bytes are kept unchanged when they are JPEG or PNG. Other formats (BMP,
GIF, WebP, ...) and images larger than `max_side` are re-encoded as JPEG.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re

from records.schema import RecordsError

_KEEP_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """An image ready for a record: bytes exactly as stored, their format and pixel size."""

    data: bytes
    image_format: str  # "jpeg" or "png"
    height: int
    width: int
    reencoded: bool


def read_image_bytes(image, *, what: str) -> bytes:
    """Return `image` if it is bytes, else read the file it names.

    Args:
        image: `bytes` or a path (`str` / `os.PathLike`).
        what: how to name the image in an error message (e.g. "image 'x.jpg' (captions.csv row 3)").
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
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


def prepare_image(data: bytes, *, what: str, max_side: int | None = None) -> PreparedImage:
    """Decode `data` once to validate it; re-encode only when needed.

    Args:
        data: the encoded image.
        what: how to name the image in an error message.
        max_side: if set, images whose longer side exceeds it are resized (aspect kept) and
            re-encoded as JPEG.

    Returns:
        A `PreparedImage`.

    Raises:
        RecordsError: the bytes are not a decodable image (truncated, corrupt, unknown format).

    Example:
    >>> img = prepare_image(open("cat.jpg", "rb").read(), what="cat.jpg", max_side=256)
    >>> img.image_format, img.height, img.width
    """
    from PIL import Image  # imported lazily: no work at import time

    if not data:
        raise RecordsError(f"{what}: empty image file")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            probe.load()  # full decode: raises on truncated or corrupt data
            width, height = probe.size
            mode = probe.mode
            need_resize = bool(max_side) and max(width, height) > int(max_side)
            keep = fmt in _KEEP_FORMATS and not need_resize and mode != "CMYK"
            if keep:
                return PreparedImage(data, _KEEP_FORMATS[fmt], height, width, False)
            image = probe.convert("RGB")
    except RecordsError:
        raise
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, ...)
        raise RecordsError(f"{what}: unreadable image ({_reason(exc)})") from exc
    if need_resize:
        scale = int(max_side) / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return PreparedImage(out.getvalue(), "jpeg", image.height, image.width, True)
