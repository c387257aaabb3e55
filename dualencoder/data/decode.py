"""Image bytes to float pixels: header check, decoding (JPEGs at a reduced DCT scale when
large enough), random resized crop, resize and random flip.

JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT when they are still at least
`image_size` px after it (`fast_jpeg`), and crops are decoded with `decode_and_crop_jpeg`.

`decode_pixels` is the one decode + resize of a whole image: evaluation (`image_dataset`'s
plain view) and photo search (`dualencoder.search.sources`) both produce their pixels with it.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import tensorflow as tf

from dualencoder.data.rng import RNG_ALG

RESIZE_METHODS = ("bicubic", "bilinear", "nearest", "area")
# bicubic/bilinear resizes apply an antialiasing kernel only when a side shrinks this much or
# more. JPEGs are first decoded at a DCT scale (an area-like downscale) that leaves less than
# 2x to go; a plain kernel aliases little at such factors and costs a fraction of the
# antialiased one (the scale-and-translate kernel was 2-3x the time of decoding a 640x480 JPEG).
ANTIALIAS_MIN_SHRINK = 3
_CROP_SCALE = (0.6, 1.0)
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_image_args(image_size, batch_size, resize_method):
    """ValueError unless `image_size` and `batch_size` are positive ints and `resize_method`
    is one of `RESIZE_METHODS`."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}: expected a positive int (pixels).")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int.")
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method={resize_method!r}: expected one of {RESIZE_METHODS}.")


def image_kind_ok(encoded):
    """True where the bytes start like a JPEG, PNG, GIF or BMP file (cheap header check)."""
    head = tf.strings.substr(encoded, 0, 8)
    return (tf.io.is_jpeg(encoded)
            | tf.equal(head, _PNG_MAGIC)
            | tf.equal(tf.strings.substr(encoded, 0, 4), b"GIF8")
            | tf.equal(tf.strings.substr(encoded, 0, 2), b"BM"))


def assert_decodable(encoded, image_id, image_index):
    """Strict mode: fail naming the record when the bytes are not an image at all."""
    return tf.debugging.Assert(
        image_kind_ok(encoded),
        ["dualencoder.data.pipeline: record image/id=", image_id, "image/index=", image_index,
         "holds bytes that are not a JPEG/PNG/GIF/BMP image (corrupt record). Rebuild the "
         "records, run `python -m records verify`, or pass skip_bad=True to drop it."],
        summarize=3)


def _crop_box(height, width, key):
    """Random resized crop box (y, x, h, w), area scale 0.6-1, aspect 3/4-4/3."""
    u = tf.random.stateless_uniform([4], key, dtype=tf.float32, alg=RNG_ALG)
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = hf * wf * (_CROP_SCALE[0] + (_CROP_SCALE[1] - _CROP_SCALE[0]) * u[0])
    log_lo, log_hi = np.log(_CROP_RATIO[0]), np.log(_CROP_RATIO[1])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    ch = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, hf)
    cw = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, wf)
    y = tf.floor(u[2] * (hf - ch + 1.0))
    x = tf.floor(u[3] * (wf - cw + 1.0))
    box = tf.cast(tf.stack([y, x, ch, cw]), tf.int32)
    return tf.minimum(box, tf.stack([height - 1, width - 1, height, width]))


def decode_image(encoded, size, *, crop_key=None, fast_jpeg=True, dct_method=""):
    """Decode to uint8 `[h, w, 3]`, cropped when `crop_key` is given.

    JPEGs are decoded at a DCT scale of 1/2, 1/4 or 1/8 when the (cropped) image stays
    at least `size` px on its short side, which is both faster and an area-like
    downscale; otherwise at full size.
    """

    def decode_other():
        img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        img = tf.ensure_shape(img, [None, None, 3])
        if crop_key is not None:
            shape = tf.shape(img)
            box = _crop_box(shape[0], shape[1], crop_key)
            img = img[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        return img

    def decode_jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        h, w = shape[0], shape[1]
        box = _crop_box(h, w, crop_key) if crop_key is not None else tf.stack([0, 0, h, w])
        short = tf.minimum(box[2], box[3])
        ratios = (1, 2, 4, 8) if fast_jpeg else (1,)
        # index of the largest ratio r with short / r >= size
        idx = tf.zeros([], tf.int32)
        for i, r in enumerate(ratios[1:], start=1):
            idx = tf.where(short >= r * size, i, idx)

        def at_ratio(r):
            def fn():
                if r == 1:
                    if crop_key is None:
                        return tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method)
                    return tf.io.decode_and_crop_jpeg(encoded, box, channels=3,
                                                      dct_method=dct_method)
                img = tf.io.decode_jpeg(encoded, channels=3, ratio=r, dct_method=dct_method)
                if crop_key is not None:
                    dh, dw = tf.shape(img)[0], tf.shape(img)[1]
                    y0 = tf.minimum(box[0] // r, dh - 1)
                    x0 = tf.minimum(box[1] // r, dw - 1)
                    img = img[y0:y0 + tf.maximum(box[2] // r, 1),
                              x0:x0 + tf.maximum(box[3] // r, 1)]
                return img
            return fn

        if len(ratios) == 1:
            return tf.ensure_shape(at_ratio(1)(), [None, None, 3])
        img = tf.switch_case(idx, [at_ratio(r) for r in ratios])
        return tf.ensure_shape(img, [None, None, 3])

    return tf.cond(tf.io.is_jpeg(encoded), decode_jpeg, decode_other)


def resize_image(img, size, method):
    """uint8 `[h, w, 3]` -> float32 `[size, size, 3]` in 0..255 (aspect ratio not kept)."""
    shape = tf.shape(img)

    def same():
        return tf.cast(img, tf.float32)

    def resize(antialias):
        def fn():
            out = tf.image.resize(img, [size, size], method=method, antialias=antialias)
            return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 255.0)
        return fn

    if method in ("bicubic", "bilinear"):
        # the antialiasing kernel only matters (and only costs) when shrinking a lot
        shrink = ((shape[0] >= ANTIALIAS_MIN_SHRINK * size)
                  | (shape[1] >= ANTIALIAS_MIN_SHRINK * size))
        resized = lambda: tf.cond(shrink, resize(True), resize(False))  # noqa: E731
    else:
        resized = resize(False)
    out = tf.cond((shape[0] == size) & (shape[1] == size), same, resized)
    return tf.ensure_shape(out, [size, size, 3])


def random_flip(img, key):
    """`img` `[h, w, c]` mirrored left-right with probability 1/2, drawn from `key`."""
    flip = tf.random.stateless_uniform([], key, alg=RNG_ALG) < 0.5
    return tf.cond(flip, lambda: tf.reverse(img, axis=[1]), lambda: img)


def decode_pixels(encoded, size, resize_method="bicubic", *, fast_jpeg=True):
    """The plain pixels of an encoded image: `decode_image` (no crop) then `resize_image`.

    Graph-safe (`encoded` a scalar string tensor); float32 `[size, size, 3]` in 0..255.
    """
    img = decode_image(encoded, size, fast_jpeg=fast_jpeg)
    return resize_image(img, size, resize_method)


_COMPILED = {}
_COMPILED_LOCK = threading.Lock()


def _compiled_decode(size, resize_method):
    """A `tf.function` of `decode_pixels` for one size and method, traced once."""
    key = (int(size), resize_method)
    with _COMPILED_LOCK:
        if key not in _COMPILED:
            _COMPILED[key] = tf.function(
                lambda encoded: decode_pixels(encoded, key[0], resize_method),
                input_signature=[tf.TensorSpec([], tf.string)])
        return _COMPILED[key]


def decode_bytes(data: bytes, size: int, resize_method: str = "bicubic") -> np.ndarray:
    """`decode_pixels` of Python bytes, outside tf.data: float32 `[size, size, 3]` NumPy.

    Runs a compiled function (one per size and method, safe to call from several threads).

    Raises:
        ValueError: TensorFlow cannot decode the bytes.
    """
    check_image_args(size, 1, resize_method)
    try:
        return _compiled_decode(size, resize_method)(tf.constant(data)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
        first = (exc.message or "").strip().splitlines()[:1] or [""]
        reason = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", first[0]).strip()
        raise ValueError(f"unreadable image ({reason or type(exc).__name__})") from None
