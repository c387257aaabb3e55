"""Files that are never half written, and the file kinds every reader accepts (stdlib only).

Every program of the project writes its results through these helpers: the data goes to a
hidden temporary file in the target's folder, is flushed and fsync'd, then renamed over the
target (`os.replace`, atomic on POSIX), and the folder is fsync'd. A crash leaves either the old
file or the new one, never a mix; a failed write removes its temporary file.

Example:
```python
from records.files import atomic_write, write_json_atomic
write_json_atomic("out/report.json", {"recall@1": 0.31})
with atomic_write("out/table.npz", "wb") as fh:
    numpy.savez(fh, x=x)
```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os

TMP_PREFIX = ".tmp-"

# Image files read by records sources, evaluation folders and photo search alike.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_file(name: str) -> bool:
    """True when `name` ends with one of `IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_quietly(path: str) -> None:
    """Remove `path` if it exists; errors are ignored (used for clean-up only)."""
    try:
        os.remove(path)
    except OSError:
        pass


def fsync_dir(folder: str) -> None:
    """fsync a folder so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str) -> str:
    """The hidden temporary name `atomic_write` uses for `path` (same folder, this process)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{base}")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """Open a temporary file for writing; on a clean exit it replaces `path` atomically.

    Args:
        path: the final file. Its folder must exist.
        mode: "w" (text, UTF-8) or "wb" (bytes).

    Yields:
        The open file object.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    tmp = temporary_path(path)
    try:
        kwargs = {"encoding": "utf-8"} if mode == "w" else {}
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(path))


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def jsonable(value):
    """`value` with NumPy scalars/arrays, tuples and path-likes turned into JSON types;
    non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # NumPy arrays and scalars, without importing NumPy
        return jsonable(value.tolist())
    return str(value)


def write_json_atomic(path: str, data, *, indent: int = 1, sort_keys: bool = False) -> None:
    """Write `data` (made `jsonable`) as JSON to `path` atomically, with a final newline."""
    text = json.dumps(jsonable(data), indent=indent, sort_keys=sort_keys, ensure_ascii=False)
    write_text_atomic(path, text + "\n")
