"""Atomic shard and manifest writing.

A shard is written under a hidden temporary name in the output directory and moved to its final
name with `os.replace` only once it is complete, closed and hashed, so a final shard name never
holds a half-written file. The manifest is written the same way, last.
"""

from __future__ import annotations

import os

import tensorflow as tf

from records.files import TMP_PREFIX, remove_quietly, sha256_file

SHARD_PATTERN = "shard-{:05d}.tfrecord"


class ShardWriter:
    """Writes one shard atomically; use as a context manager.

    Args:
        out_dir: the records directory.
        shard_number: the shard's position, which gives its name (`shard-00003.tfrecord`).
        first_index: `image/index` of its first record.

    Example:
    >>> with ShardWriter("out", 0, first_index=0) as w:
    ...     w.write(serialized_example, num_captions=5)
    >>> w.entry  # the manifest's entry for the shard
    """

    def __init__(self, out_dir: str, shard_number: int, *, first_index: int):
        self.name = SHARD_PATTERN.format(shard_number)
        self.final_path = os.path.join(out_dir, self.name)
        self.tmp_path = os.path.join(out_dir, f"{TMP_PREFIX}{os.getpid()}-{self.name}")
        self.first_index = first_index
        self.records = 0
        self.captions = 0
        self.max_captions = 0
        self.entry = None
        self._writer = None

    def __enter__(self):
        self._writer = tf.io.TFRecordWriter(self.tmp_path)
        return self

    def write(self, serialized: bytes, *, num_captions: int) -> None:
        self._writer.write(serialized)
        self.records += 1
        self.captions += num_captions
        self.max_captions = max(self.max_captions, num_captions)

    def __exit__(self, exc_type, exc, tb):
        self._writer.close()
        if exc_type is not None:
            remove_quietly(self.tmp_path)
            return False
        try:
            self.entry = {
                "name": self.name,
                "records": self.records,
                "captions": self.captions,
                "max_captions": self.max_captions,
                "sha256": sha256_file(self.tmp_path),
                "bytes": os.path.getsize(self.tmp_path),
                "first_index": self.first_index,
            }
            os.replace(self.tmp_path, self.final_path)
        except BaseException:
            remove_quietly(self.tmp_path)
            raise
        return False


def remove_stale(out_dir: str, keep: set[str]) -> None:
    """Remove shards (and our temporary files) in `out_dir` that the new manifest does not list."""
    for name in os.listdir(out_dir):
        is_shard = name.startswith("shard-") and name.endswith(".tfrecord")
        if (is_shard and name not in keep) or name.startswith(TMP_PREFIX):
            remove_quietly(os.path.join(out_dir, name))
