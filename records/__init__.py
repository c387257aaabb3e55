"""Datasets to sharded TFRecords with a manifest: `python -m records build|verify|inspect`."""

from records.schema import (  # noqa: F401
    SCHEMA_VERSION, RecordsError, decode_example_py, encode_example, parse_example,
    read_manifest, shard_paths)
