"""What every source has in common: the item it yields, how it reports bad input, and what it
declares about itself.

A source is an iterable of `SourceItem(image_id, image, captions, label)`, where `image` is the
encoded bytes or a path to the file. It has a `name`; class-folder sources also have
`class_names`. Bad input is reported through `Source.bad(where, reason)`, which raises a
`RecordsError` naming the file and row or id, or, when the source was made with
`skip_bad=True`, records it in `Source.skipped` and lets the source carry on.

Each `Source` class also declares, as class attributes read without building it, what the
programs need to know about it: its one-line `description` and command-line `arguments`
(`python -m records build NAME`), and, optionally, the evaluation data spec it answers to
(`spec_syntax`, `from_spec`) and the split keys of a recipe dataset of its kind
(`recipe_split_keys`, `recipe_build_args`, `recipe_inputs`). Importing a source module loads
no TensorFlow: `records.schema` (and its `RecordsError`) loads when an error is raised.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple


def records_error(message: str) -> Exception:
    """A `records.schema.RecordsError(message)`, for `raise records_error(...)`; the schema
    module (and TensorFlow with it) is imported only here, when there is an error."""
    from records.schema import RecordsError

    return RecordsError(message)


def argument(*flags, **kwargs) -> tuple:
    """One command-line argument of a source, as `(flags, kwargs)` for argparse's
    `add_argument`; its destination (the first flag, dashes as underscores, or `dest=`) is a
    keyword argument of the source's constructor.

    Example:
    >>> argument("--split", default="train", help="split to read")
    (('--split',), {'default': 'train', 'help': 'split to read'})
    """
    return flags, kwargs


def argument_dest(flags, kwargs) -> str:
    """The keyword an `argument(...)` fills: `dest=`, else the first flag without dashes."""
    return kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")


class SpecData(NamedTuple):
    """What an evaluation data spec `KIND:REST` names: the source's build options, a short
    name for reports, and the folder whose files key a cached build of it."""

    options: dict
    name: str
    key_dir: str


class SourceItem(NamedTuple):
    """One image of a source: its own id, bytes or path, captions and label (-1: none)."""

    image_id: str
    image: object  # bytes or path
    captions: list
    label: int = -1


class Source:
    """Base class for sources.

    Subclasses set `name`, `description` and `arguments`, implement `_items()` and may set
    `class_names` (class-folder data) and add entries to `info` (recorded in the manifest
    under `source_info`). A source that evaluation can build from raw data sets
    `spec_syntax` and implements `from_spec`; one a recipe can name as its dataset kind sets
    `recipe_split_keys` and implements `recipe_build_args` and `recipe_inputs`.

    Args:
        skip_bad: skip bad input (recording it in `skipped`) instead of raising.
    """

    name = "source"
    class_names = None
    # One line: the help of `python -m records build NAME`.
    description = ""
    # `argument(...)` tuples: the command-line arguments of `python -m records build NAME`.
    arguments: tuple = ()
    # An evaluation data spec of raw data, e.g. "coco:DIR:SPLIT"; None: records only.
    spec_syntax: str | None = None
    # The keys of one split of a recipe dataset of this kind; empty: not a recipe kind.
    recipe_split_keys: frozenset = frozenset()

    def __init__(self, *, skip_bad: bool = False):
        self.skip_bad = bool(skip_bad)
        self.skipped: list[dict] = []
        self.info: dict = {}

    def bad(self, where: str, reason: str) -> None:
        """Report bad input at `where` (file and row, or id): raise, or record and go on."""
        if not self.skip_bad:
            raise records_error(f"{where}: {reason}")
        self.skipped.append({"where": where, "reason": reason})

    def __iter__(self) -> Iterator[SourceItem]:
        return self._items()

    def _items(self) -> Iterator[SourceItem]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_spec(cls, rest: str) -> SpecData:
        """The build of evaluation data spec `NAME:REST` (`spec_syntax`), its paths checked;
        raises `RecordsError` naming what is missing."""
        raise records_error(f"{cls.name}: no evaluation data spec (give a records directory)")

    @staticmethod
    def recipe_build_args(root: str, split: dict) -> list:
        """The `python -m records build NAME` arguments (before `--out`) of one recipe split
        (`{key: value}` over `recipe_split_keys`) of the dataset at `root`."""
        raise NotImplementedError

    @staticmethod
    def recipe_inputs(root: str, split: dict) -> list:
        """The paths one recipe split reads, checked to exist before any stage runs."""
        raise NotImplementedError


def clean_caption(caption) -> str:
    """Strip a caption and collapse internal runs of whitespace."""
    return " ".join(str(caption).split())


def require_dir(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise records_error(f"{path}: {what} not found (not a directory)")
    return path


def require_file(path, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise records_error(f"{path}: {what} not found")
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
