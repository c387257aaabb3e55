"""Dataset sources: each `records/sources/<name>.py` defines one `Source` subclass, registered
below by name. The registry is the one list of sources: `python -m records build`, the
evaluation data specs (`flickr:DIR`, `coco:DIR:SPLIT`) and a recipe's `dataset.kind` all read
what each source class declares about itself (`records.sources.base.Source`), so a new source
is its file plus one line here.

`get_source(name, **options)` imports the module lazily and builds the source;
`source_class(name)` and `source_classes()` give the classes themselves (importing a source
module loads no TensorFlow).
"""

from __future__ import annotations

import importlib

# name -> (module, class), in the order listings show them
_REGISTRY = {
    "synthetic": ("records.sources.synthetic", "SyntheticSource"),
    "flickr": ("records.sources.flickr", "FlickrSource"),
    "coco": ("records.sources.coco", "CocoSource"),
    "csv": ("records.sources.csv", "CsvSource"),
    "jsonl": ("records.sources.jsonl", "JsonlSource"),
    "folders": ("records.sources.folders", "FoldersSource"),
    "tfds": ("records.sources.tfds", "TfdsSource"),
}


def source_names() -> tuple:
    """The registered source names, in registry order."""
    return tuple(_REGISTRY)


def source_module(name: str):
    """The module implementing source `name` (imported on demand)."""
    if name not in _REGISTRY:
        from records.schema import RecordsError

        raise RecordsError(f"unknown source {name!r}; choose one of {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[name][0])


def source_class(name: str) -> type:
    """The `Source` class registered as `name`."""
    return getattr(source_module(name), _REGISTRY[name][1])


def source_classes() -> dict:
    """`{name: Source class}` of every registered source, in registry order."""
    return {name: source_class(name) for name in _REGISTRY}


def get_source(name: str, **options):
    """Build source `name` with its options.

    Example:
    >>> src = get_source("flickr", root="../shared/data/flickr8k")
    >>> next(iter(src)).captions[:1]
    """
    cls = source_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        from records.schema import RecordsError

        raise RecordsError(f"source {name!r}: bad option ({exc})") from exc
