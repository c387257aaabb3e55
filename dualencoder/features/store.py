"""Cache files: small tables as atomic `.npz` files, large per-row arrays as row stores.

A row store is a folder `NAME/` holding `rows.bin` (raw float16 `[T, ...]`, read
memory-mapped, never loaded whole), `index.npz` (per-item `start` and `length` into the rows, plus any
per-item arrays) and `done.json` (shapes, written last). It is written in a sibling
`NAME.partial-PID/` with plain file writes (a full disk is an `OSError`, never a crash on a
memory-mapped page) and renamed into place when complete, so an interrupted or failed write
leaves no half store behind. A store that does not open cleanly is recomputed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np

from dualencoder import arrays as arrays_lib
from dualencoder.arrays import read_npz

__all__ = ["read_npz", "write_npz", "cached_npz", "RowStore", "RowWriter", "CacheWriteError"]


class CacheWriteError(OSError):
    """A cache could not be written (full disk, no permission); nothing half-written stays."""


def write_npz(path: str, arrays: dict) -> None:
    """Store `arrays` at `path` atomically; a failure is a `CacheWriteError`."""
    try:
        arrays_lib.write_npz(path, arrays)
    except OSError as exc:
        raise _write_error(path, exc) from exc


def cached_npz(path: str, compute, *, log=print, what: str = "tower features") -> dict:
    """`compute()`'s arrays, stored at `path` on the first call and read afterwards; a
    damaged file is recomputed with one line saying so."""
    arrays = read_npz(path)
    if arrays is not None:
        log(f"reusing cached {what} {path}")
        return arrays
    if os.path.exists(path):
        log(f"cached {what} {path} is damaged; computing it again")
    else:
        log(f"caching {what} in {path} (once)")
    arrays = compute()
    write_npz(path, arrays)
    return arrays


def _write_error(path: str, exc: OSError) -> CacheWriteError:
    reason = ("no space left on the device" if exc.errno == errno.ENOSPC
              else exc.strerror or str(exc))
    return CacheWriteError(exc.errno, f"cannot write the feature cache {path}: {reason}; free "
                                      "space there or point run.features_dir at another disk")


class RowWriter:
    """Writes a row store: `append(rows)` in order, then `close(index_arrays)`.

    Args:
        path: the store folder (`NAME/`).
        total: the most rows that will be appended (fewer when damaged records are skipped).
        row_shape: the shape of one row.
    """

    def __init__(self, path: str, total: int, row_shape, dtype=np.float16):
        self.path, self.total = path, int(total)
        self.row_shape, self.dtype = tuple(int(d) for d in row_shape), np.dtype(dtype)
        self.partial = f"{path}.partial-{os.getpid()}"
        self.written = 0
        try:
            shutil.rmtree(self.partial, ignore_errors=True)
            os.makedirs(self.partial)
            self._fh = open(os.path.join(self.partial, "rows.bin"), "wb")
        except OSError as exc:
            self.abort()
            raise _write_error(path, exc) from exc

    def append(self, rows) -> None:
        rows = np.ascontiguousarray(np.asarray(rows, dtype=self.dtype))
        if rows.shape[1:] != self.row_shape or self.written + len(rows) > self.total:
            self.abort()
            raise ValueError(f"{self.path}: rows {rows.shape} do not fit a store of "
                             f"{self.total} x {self.row_shape}")
        try:
            self._write_rows(rows.tobytes())
        except OSError as exc:
            self.abort()
            raise _write_error(self.path, exc) from exc
        self.written += len(rows)

    def _write_rows(self, data: bytes) -> None:
        self._fh.write(data)

    def close(self, index: dict) -> "RowStore":
        """Finish: the index arrays and `done.json`, then the folder renamed into place."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            np.savez(os.path.join(self.partial, "index.npz"), **index)
            with open(os.path.join(self.partial, "done.json"), "w", encoding="utf-8") as fh:
                json.dump({"rows": self.written, "row_shape": list(self.row_shape),
                           "dtype": self.dtype.name, "items": sorted(index)}, fh)
            shutil.rmtree(self.path, ignore_errors=True)  # a damaged store it replaces
            os.rename(self.partial, self.path)
        except OSError as exc:
            self.abort()
            raise _write_error(self.path, exc) from exc
        return RowStore.open(self.path)

    def abort(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.close()
        shutil.rmtree(self.partial, ignore_errors=True)


class RowStore:
    """An opened row store: `rows` (memory-mapped `[T, ...]`) and `index` (dict of arrays)."""

    def __init__(self, path: str, rows, index: dict):
        self.path, self.rows, self.index = path, rows, index

    @classmethod
    def open(cls, path: str):
        """The store at `path`, or None when it is missing, incomplete or damaged."""
        try:
            with open(os.path.join(path, "done.json"), encoding="utf-8") as fh:
                done = json.load(fh)
            shape = (int(done["rows"]),) + tuple(int(d) for d in done["row_shape"])
            dtype = np.dtype(done["dtype"])
            data = os.path.join(path, "rows.bin")
            if os.path.getsize(data) != int(np.prod(shape)) * dtype.itemsize:
                return None  # truncated or grown
            rows = (np.memmap(data, dtype=dtype, mode="r", shape=shape) if shape[0]
                    else np.zeros(shape, dtype))
            index = read_npz(os.path.join(path, "index.npz"))
        except (OSError, ValueError, EOFError, KeyError, TypeError):
            return None
        if index is None or sorted(index) != done.get("items"):
            return None
        return cls(path, rows, index)
