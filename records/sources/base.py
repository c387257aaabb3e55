"""What every source has in common: the item it yields and how it reports bad input.

A source is an iterable of `SourceItem(image_id, image, captions, label)`, where `image` is the
encoded bytes or a path to the file. It has a `name`; class-folder sources also have
`class_names`. Bad input is reported through `Source.bad(where, reason)`, which raises a
`RecordsError` naming the file and row or id, or, when the source was made with
`skip_bad=True`, records it in `Source.skipped` and lets the source carry on.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple

from records.schema import RecordsError


class SourceItem(NamedTuple):
    """One image of a source: its own id, bytes or path, captions and label (-1: none)."""

    image_id: str
    image: object  # bytes or path
    captions: list
    label: int = -1


class Source:
    """Base class for sources.

    Subclasses set `name`, implement `_items()` and may set `class_names` (class-folder data) and
    add entries to `info` (recorded in the manifest under `source_info`).

    Args:
        skip_bad: skip bad input (recording it in `skipped`) instead of raising.
    """

    name = "source"
    class_names = None

    def __init__(self, *, skip_bad: bool = False):
        self.skip_bad = bool(skip_bad)
        self.skipped: list[dict] = []
        self.info: dict = {}

    def bad(self, where: str, reason: str) -> None:
        """Report bad input at `where` (file and row, or id): raise, or record and go on."""
        if not self.skip_bad:
            raise RecordsError(f"{where}: {reason}")
        self.skipped.append({"where": where, "reason": reason})

    def __iter__(self) -> Iterator[SourceItem]:
        return self._items()

    def _items(self) -> Iterator[SourceItem]:  # pragma: no cover - abstract
        raise NotImplementedError


def clean_caption(caption) -> str:
    """Strip a caption and collapse internal runs of whitespace."""
    return " ".join(str(caption).split())


def require_dir(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise RecordsError(f"{path}: {what} not found (not a directory)")
    return path


def require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RecordsError(f"{path}: {what} not found")
    return path


def grouped_items(source: Source, rows, base_dir: str) -> Iterator[SourceItem]:
    """Group `(row_where, image_rel_path, caption)` rows by image, in first-appearance order.

    Empty captions and missing image files are bad input (reported via `source.bad`). An image all
    of whose captions were skipped is itself skipped.
    """
    order: list[str] = []
    captions: dict[str, list[str]] = {}
    first_where: dict[str, str] = {}
    for where, rel, caption in rows:
        rel = str(rel).strip()
        if not rel:
            source.bad(where, "empty image path")
            continue
        text = clean_caption(caption) if caption is not None else ""
        if not text:
            source.bad(where, f"empty caption for image {rel!r}")
            continue
        if rel not in captions:
            order.append(rel)
            captions[rel] = []
            first_where[rel] = where
        captions[rel].append(text)
    for rel in order:
        path = rel if os.path.isabs(rel) else os.path.join(base_dir, rel)
        if not os.path.isfile(path):
            source.bad(first_where[rel], f"image file missing: {path}")
            continue
        yield SourceItem(rel, path, captions[rel], -1)
