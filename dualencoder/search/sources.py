"""Where the photos of an index come from, and how an image becomes pixels.

A source is a folder of image files (recursive; jpg, jpeg, png, webp, bmp, ...) or a records
directory (`records/`). It lists its images as `Item`s — the name used in the index (the POSIX
path relative to the folder, or `"<shard>#<index>"`) with the size and mtime an update compares
— and reads the bytes of one entry, refusing names outside the source.

Example:
```python
source = open_source("images", "photos/")
items = source.list()
pixels = decode_image(source.read_bytes(items[0].path), size=224)   # [224, 224, 3] float32
```
"""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np

from dualencoder.search.errors import ImageAccessError, RetrievalError
from records.files import IMAGE_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a source: its name in the index and the stat it is matched on."""

    path: str
    size: int
    mtime_ns: int


class ImageFolder:
    """Images under a folder, recursively, named by their POSIX path relative to it.

    Symbolic links that lead out of the folder (file links, linked sub-folders) are skipped
    and counted in `links_skipped` / `linked_folders_skipped` after `list()`, unless
    `follow_links`: then they are listed and read like the files they point to.

    Args:
        root: the folder.
        follow_links: include the targets of symbolic links.
    """

    kind = "images"

    def __init__(self, root, follow_links: bool = False):
        self.root = os.path.realpath(os.fspath(root))
        self.follow_links = bool(follow_links)
        if not os.path.isdir(self.root):
            raise RetrievalError(f"image folder {root} does not exist or is not a folder")
        self.links_skipped = 0
        self.linked_folders_skipped = []

    @property
    def where(self) -> dict:
        """The source as recorded in an index's state."""
        where = {"kind": self.kind, "path": self.root}
        return {**where, "follow_links": True} if self.follow_links else where

    def list(self, exclude=None) -> list[Item]:
        """Every image file under the folder, sorted by path; `exclude` is a folder to skip."""
        exclude = os.path.realpath(exclude) if exclude else None
        items, seen = [], set()
        self.links_skipped, self.linked_folders_skipped = 0, []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=self.follow_links):
            real = os.path.realpath(dirpath)
            if (exclude and real == exclude) or real in seen:  # the index, or a link cycle
                dirnames[:] = []
                continue
            seen.add(real)
            if not self.follow_links:
                for name in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    self.linked_folders_skipped.append(self._rel(os.path.join(dirpath, name)))
            dirnames.sort()
            for name in filenames:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    item = self._item(os.path.join(dirpath, name))
                    if item is not None:
                        items.append(item)
        items.sort(key=lambda it: it.path)
        return items

    def _rel(self, full: str) -> str:
        return os.path.relpath(full, self.root).replace(os.sep, "/")

    def _item(self, full: str) -> Item | None:
        """The `Item` of one listed file, or None (vanished, dangling, a link leaving)."""
        if not self.follow_links and not _inside(os.path.realpath(full), self.root):
            self.links_skipped += 1
            return None
        try:
            st = os.stat(full)
        except OSError:
            return None  # vanished or a dangling link
        return Item(self._rel(full), int(st.st_size), int(st.st_mtime_ns))

    def file_path(self, rel: str) -> str:
        """The absolute path of an indexed image, refusing anything outside the folder.

        Symbolic links are resolved first, so a link pointing out of the folder is refused too
        (unless the folder follows links: then the link itself must lie in the folder).
        """
        if not rel or "\x00" in rel or os.path.isabs(rel):
            raise ImageAccessError(f"refused image path {rel!r}")
        if self.follow_links:
            full = os.path.normpath(os.path.join(self.root, rel))
        else:
            full = os.path.realpath(os.path.join(self.root, rel))
        if not _inside(full, self.root) or full == self.root:
            raise ImageAccessError(f"refused image path {rel!r}: outside the indexed folder")
        return full

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of an indexed image (checked to lie inside the folder)."""
        path = self.file_path(rel)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ImageAccessError(f"cannot read image {rel!r}: {exc.strerror or exc}") from exc


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


class RecordsFolder:
    """Images stored in a records directory (`records/`), named `"<shard>#<image index>"`.

    Listing uses only the manifest; images are read from the shards by byte offset (the offset
    table of a shard is built once by walking its record framing, without decoding).

    Args:
        root: the records directory (with `manifest.json`).
    """

    kind = "records"

    def __init__(self, root):
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isfile(os.path.join(self.root, "manifest.json")):
            raise RetrievalError(f"records folder {root} has no manifest.json (not a complete "
                                 "records build)")
        self._offsets = {}
        self._lock = threading.Lock()
        self._manifest = None

    @property
    def where(self) -> dict:
        """The source as recorded in an index's state."""
        return {"kind": self.kind, "path": self.root}

    def manifest(self) -> dict:
        if self._manifest is None:
            from records.schema import read_manifest  # noqa: PLC0415 (imports TensorFlow)

            try:
                self._manifest = read_manifest(self.root)
            except ValueError as exc:
                raise RetrievalError(str(exc)) from exc
        return self._manifest

    def list(self, exclude=None) -> list[Item]:
        del exclude
        items = []
        for shard in self.manifest()["shards"]:
            st = os.stat(os.path.join(self.root, shard["name"]))
            first = int(shard.get("first_index", 0))
            for position in range(int(shard["records"])):
                items.append(Item(f"{shard['name']}#{first + position}", int(st.st_size),
                                  int(st.st_mtime_ns)))
        return items

    def _shard_offsets(self, name: str) -> tuple[int, list[int]]:
        with self._lock:
            if name not in self._offsets:
                shard = next((s for s in self.manifest()["shards"] if s["name"] == name), None)
                if shard is None:
                    raise ImageAccessError(f"unknown records shard {name!r}")
                offsets = []
                with open(os.path.join(self.root, name), "rb") as fh:
                    pos = 0
                    while True:
                        head = fh.read(12)
                        if len(head) < 12:
                            break
                        length = int.from_bytes(head[:8], "little")
                        offsets.append(pos)
                        pos += 12 + length + 4
                        fh.seek(pos)
                self._offsets[name] = (int(shard.get("first_index", 0)), offsets)
            return self._offsets[name]

    def read_bytes(self, rel: str) -> bytes:
        """The encoded image bytes of entry `"<shard>#<index>"`."""
        name, _, index = rel.rpartition("#")
        if not name or not index.isdigit() or "/" in name or "\\" in name:
            raise ImageAccessError(f"refused records entry {rel!r}")
        first, offsets = self._shard_offsets(name)
        position = int(index) - first
        if not 0 <= position < len(offsets):
            raise ImageAccessError(f"records entry {rel!r} is not in its shard")
        with open(os.path.join(self.root, name), "rb") as fh:
            fh.seek(offsets[position])
            length = int.from_bytes(fh.read(12)[:8], "little")
            raw = fh.read(length)
        from records.schema import decode_example_py  # noqa: PLC0415

        try:
            record = decode_example_py(raw)
        except Exception as exc:  # noqa: BLE001 (protobuf raises its own DecodeError)
            raise ImageAccessError(f"records entry {rel!r} is damaged (shard {name} changed "
                                   "or truncated since indexing?)") from exc
        if record["index"] != int(index):
            raise ImageAccessError(f"records entry {rel!r}: shard holds index {record['index']} "
                                   "at that position (records changed since indexing?)")
        return record["image_bytes"]


def open_source(kind: str, path, follow_links: bool = False):
    """An `ImageFolder` or `RecordsFolder` for `kind` in {"images", "records"}."""
    if kind == "images":
        return ImageFolder(path, follow_links=follow_links)
    if kind == "records":
        return RecordsFolder(path)
    raise RetrievalError(f"unknown image source kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Image bytes -> pixels

# The most pixels a photo's header may claim (where PIL starts warning of a decompression bomb).
MAX_IMAGE_PIXELS = 178_956_970


def decode_image(data: bytes, size: int, *, stored: bool = False,
                 max_pixels: int | None = MAX_IMAGE_PIXELS, formats=None) -> np.ndarray:
    """Decode image bytes to float32 `[size, size, 3]` pixels in 0..255: exactly the pixels
    evaluation gives the same image built into records.

    The bytes are first normalised as a records build normalises them
    (`records.images.normalize_image`: validated, the pixel count checked from the header
    before decoding, EXIF orientation applied, CMYK / palette / GIF / alpha / other formats
    made an RGB JPEG; plain JPEGs and PNGs kept as they are), then decoded and resized
    (bicubic, aspect ratio not kept) by `dualencoder.data.decode.decode_bytes`, the decode
    of the input pipeline's evaluation path.

    Args:
        data: the encoded image.
        size: output side in pixels.
        stored: the bytes come from a records directory: they were normalised when the
            records were built and are decoded exactly as stored, as evaluation does.
        max_pixels: refuse images whose header claims more pixels (None: PIL's limit only).
        formats: PIL format names to accept (None: any PIL opens).

    Raises:
        ValueError: the bytes are not a decodable image; `records.images.ImageTooLarge`
            (a ValueError) when they claim more than `max_pixels` pixels.
    """
    from dualencoder.data.decode import decode_bytes  # noqa: PLC0415 (loads TensorFlow)

    if not stored:
        data = normalized_bytes(data, max_pixels=max_pixels, formats=formats)
    return decode_bytes(data, int(size))


def normalized_bytes(data: bytes, *, max_pixels: int | None = MAX_IMAGE_PIXELS,
                     formats=None) -> bytes:
    """The bytes `decode_image` decodes: `data` as a records build would store it.

    Raises:
        records.images.UnreadableImage: not a decodable image (of `formats`).
        records.images.ImageTooLarge: more than `max_pixels` pixels.
    """
    from records.images import normalize_image  # noqa: PLC0415

    return normalize_image(data, max_pixels=max_pixels, formats=formats).data


def load_query_image(path, size: int) -> np.ndarray:
    """Read and decode one query image file, raising `RetrievalError` with a clear message."""
    try:
        return decode_image(_read_query(path), size)
    except ValueError as exc:
        raise RetrievalError(f"query image {path}: {exc}") from exc


def check_query_image(path) -> None:
    """Fail fast (before loading any model) when a query image cannot be read or is not a
    decodable image."""
    try:
        normalized_bytes(_read_query(path))
    except ValueError as exc:
        raise RetrievalError(f"query image {path}: {exc}") from exc


def _read_query(path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise RetrievalError(f"cannot read query image {path}: {exc.strerror or exc}") from exc
