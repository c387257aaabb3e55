"""NumPy helpers on weight and embedding arrays that every layer shares (no TensorFlow).

- `hash_arrays`: feed arrays' bytes into a hashlib digest, the one way weights are
  fingerprinted (a saved model's `fingerprint()`, a locked tower's cache key).
- `l2_normalize`: row-wise L2 normalisation in float32 (rows of zeros stay zero).
- `write_npz` / `read_npz`: arrays stored atomically (a temporary file renamed into place)
  and read back tolerantly (a missing or damaged file reads as None), the one way caches,
  best-epoch weights, index chunks and penalty files are kept.
"""

from __future__ import annotations

import os

import numpy as np

from records.files import atomic_write

__all__ = ["hash_arrays", "l2_normalize", "read_npz", "write_npz"]


def hash_arrays(digest, arrays, *, as_float32: bool = False, with_layout: bool = False):
    """Update `digest` (a hashlib object) with each array's bytes, in order; returns it.

    Args:
        arrays: NumPy arrays, or objects with `.numpy()` (Keras / TensorFlow variables).
        as_float32: hash the float32 values (a tower's identity whatever its storage dtype).
        with_layout: also hash each array's dtype and shape first.
    """
    for value in arrays:
        value = np.asarray(value.numpy() if hasattr(value, "numpy") else value,
                           dtype=np.float32 if as_float32 else None)
        if with_layout:
            digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest


def l2_normalize(x, axis: int = -1) -> np.ndarray:
    """`x / ||x||` along `axis` in float32; rows of zeros stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def write_npz(path: str, arrays: dict) -> None:
    """Store `arrays` at `path` atomically: a reader sees the old file or the whole new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def read_npz(path: str):
    """The arrays of an `.npz` file (no pickles), or None when it is missing or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, KeyError):
        return None
