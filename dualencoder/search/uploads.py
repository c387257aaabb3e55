"""A query photo uploaded to the server: size limits and safe decoding, in memory only.

The bytes are never written to disk. Only common photo formats are opened, and the image
size is checked from its header before any pixel is decoded (a small file can claim a huge
image: a decompression bomb). The pixels are then those the indexer gives the same photo
(`dualencoder.search.sources.decode_image`).

Example:
```python
pixels = decode_upload(request_body, size=224)     # [224, 224, 3] float32, or RetrievalError
```
"""

from __future__ import annotations

import numpy as np

from dualencoder.search.errors import RetrievalError
from dualencoder.search.sources import decode_image
from records.images import ImageTooLarge, UnreadableImage

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class UploadTooLarge(RetrievalError):
    """An upload over the byte or pixel limit (HTTP 413)."""


def decode_upload(data: bytes, size: int) -> np.ndarray:
    """Decode uploaded image bytes to `[size, size, 3]` float32 pixels like the indexer does.

    Raises:
        UploadTooLarge: more than `MAX_UPLOAD_BYTES` bytes or `MAX_UPLOAD_PIXELS` pixels.
        RetrievalError: empty, or not an image of one of `FORMATS`.
    """
    if not data:
        raise RetrievalError("empty upload: send the bytes of a photo (JPEG, PNG, WebP, ...)")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadTooLarge(f"photo larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        return decode_image(data, size, max_pixels=MAX_UPLOAD_PIXELS, formats=FORMATS)
    except ImageTooLarge as exc:
        raise UploadTooLarge(f"photo too large: {exc}") from None
    except UnreadableImage as exc:
        if not exc.recognised:
            raise RetrievalError("the upload is not a readable photo (JPEG, PNG, WebP, GIF, "
                                 "BMP, TIFF)") from None
        raise RetrievalError("the upload is not a readable photo (damaged or truncated)") \
            from None
    except ValueError:
        raise RetrievalError("the upload is not a readable photo (damaged or truncated)") \
            from None
