"""Stateless random keys of the input pipeline, in TensorFlow and mirrored in NumPy.

Every random decision about an image (which caption, its shuffle key, its crop, its flip) uses
a stateless RNG seed keyed by `(seed, epoch, image_index, purpose)`, so it is a pure function
of those numbers: a run is reproducible bit for bit and resumes mid-epoch exactly. The NumPy
functions compute the same draws for arrays of images, so an epoch's order can be built in
memory (`dualencoder.data.order`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

RNG_ALG = "philox"  # explicit, so keys do not depend on the device
# Purposes folded into the per-image RNG key, so each decision has its own stream.
CAPTION, SHUFFLE, CROP, FLIP = 1, 2, 3, 4


def element_key(seed, epoch, image_index, purpose, extra=None):
    """Stateless RNG seed `[2]` keyed by (seed, epoch, image_index, purpose[, extra])."""
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, epoch], tf.int64), tf.cast(image_index, tf.int64), alg=RNG_ALG)
    key = tf.random.experimental.stateless_fold_in(key, purpose, alg=RNG_ALG)
    if extra is not None:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(extra, tf.int64),
                                                       alg=RNG_ALG)
    return key


# --- the same stateless draws in NumPy, vectorised over elements. TensorFlow's "philox"
# stateless ops scramble a seed `[s0, s1]` into a Philox-4x32-10 key and counter, then draw one
# block of four 32-bit words; `fold_in(seed, x)` is `[full-range draw of seed, x]`. Pinned
# against `tf.random` by tests/test_data.py.
_M32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)


def _philox(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> _U32) ^ c1 ^ k0, p1 & _M32, (p0 >> _U32) ^ c3 ^ k1, p0 & _M32
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _M32, (k1 + np.uint64(0xBB67AE85)) & _M32
    return c0, c1, c2, c3


def _philox_words(seed0, seed1):
    """The first four 32-bit words (as uint64 arrays) a stateless op draws for seeds
    `[seed0, seed1]` (int arrays, broadcast; int32 seeds sign-extend like TensorFlow's)."""
    s0, s1 = np.broadcast_arrays(np.asarray(seed0).astype(np.int64).view(np.uint64),
                                 np.asarray(seed1).astype(np.int64).view(np.uint64))
    mix = _philox((s0 & _M32, s0 >> _U32, s1 & _M32, s1 >> _U32),
                  (np.full_like(s0, 0x3EC8F720), np.full_like(s0, 0x02461E29)))
    zero = np.zeros_like(s0)
    return _philox((zero, zero, mix[2], mix[3]), (mix[0], mix[1]))


def _np_full_int64(seed0, seed1):
    w = _philox_words(seed0, seed1)
    return (w[0] | (w[1] << _U32)).view(np.int64)


def _np_element_key(seed, epoch, image_index, purpose, extra=None):
    """`element_key` for an array of image indices: `(key0, key1)` arrays."""
    key0 = _np_full_int64(seed, epoch)
    key0 = _philox_words(key0, image_index)[0].astype(np.uint32).view(np.int32)  # int32 draw
    key1 = np.full_like(key0, purpose)
    if extra is None:
        return key0, key1
    return _np_full_int64(key0, key1), np.full(key0.shape, extra, np.int64)


def np_caption_draw(seed, epoch, image_index, num_captions):
    """`pair_dataset`'s caption draw per image: uniform in `[0, num_captions)`."""
    w = _philox_words(*_np_element_key(seed, epoch, image_index, CAPTION))
    return ((w[0] | (w[1] << _U32)) % np.asarray(num_captions, np.uint64)).astype(np.int64)


def np_shuffle_key(seed, epoch, image_index, r):
    """`pair_dataset`'s 64-bit shuffle key per image in pass `r`."""
    return _np_full_int64(*_np_element_key(seed, epoch, image_index, SHUFFLE, r))
