"""Datasets to sharded TFRecords with a manifest: `python -m records build|verify|inspect`.

Importing `records` does no work: the names below load their modules (and TensorFlow) on first
use.

Example:
>>> from records.build import build_records
>>> from records.reader import iter_records
>>> build_records("synthetic", "data/synth", num_images=256)
>>> next(iter(iter_records("data/synth")))["captions"]
"""

import importlib

_LAZY = {
    "SCHEMA_VERSION": "records.schema", "RecordsError": "records.schema",
    "decode_example_py": "records.schema", "encode_example": "records.schema",
    "parse_example": "records.schema", "read_manifest": "records.schema",
    "shard_paths": "records.schema",
    "build_records": "records.build", "verify_records": "records.verify",
    "iter_records": "records.reader",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'records' has no attribute {name!r}")
