"""Dataset sources: each `records/sources/<name>.py` defines one `Source` subclass.

`get_source(name, **options)` imports the module lazily and builds the source; `SOURCE_NAMES`
lists the names understood by `python -m records build`.
"""

from __future__ import annotations

import importlib

from records.schema import RecordsError

# name -> (module, class)
_REGISTRY = {
    "synthetic": ("records.sources.synthetic", "SyntheticSource"),
    "coco": ("records.sources.coco", "CocoSource"),
    "flickr": ("records.sources.flickr", "FlickrSource"),
    "csv": ("records.sources.csv", "CsvSource"),
    "jsonl": ("records.sources.jsonl", "JsonlSource"),
    "folders": ("records.sources.folders", "FoldersSource"),
    "tfds": ("records.sources.tfds", "TfdsSource"),
}
SOURCE_NAMES = tuple(_REGISTRY)


def source_module(name: str):
    """The module implementing source `name` (imported on demand)."""
    if name not in _REGISTRY:
        raise RecordsError(f"unknown source {name!r}; choose one of {', '.join(SOURCE_NAMES)}")
    return importlib.import_module(_REGISTRY[name][0])


def get_source(name: str, **options):
    """Build source `name` with its options.

    Example:
    >>> src = get_source("flickr", root="../shared/data/flickr8k")
    >>> next(iter(src)).captions[:1]
    """
    module = source_module(name)
    cls = getattr(module, _REGISTRY[name][1])
    try:
        return cls(**options)
    except TypeError as exc:
        raise RecordsError(f"source {name!r}: bad option ({exc})") from exc
