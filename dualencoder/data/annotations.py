"""What records say about their images, read without decoding any: captions, labels,
class names and the most captions per image."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from dualencoder.data.shards import checked_paths, record_stream
from records import schema


def read_labels(records_dir) -> np.ndarray:
    """The `label` of every record in record order (-1 for captioned data); no decoding."""
    ds = tf.data.TFRecordDataset(schema.shard_paths(records_dir)).batch(4096).map(
        lambda s: tf.io.parse_example(
            s, {"label": tf.io.FixedLenFeature([], tf.int64, default_value=-1)})["label"])
    out = [b.numpy() for b in ds]
    return np.concatenate(out).astype(np.int64) if out else np.zeros([0], np.int64)


def read_captions(records_dir, skip_bad: bool = False):
    """All captions in record order with the `image/index` of their image; with `skip_bad`,
    those of the intact records of damaged shards (`shards.checked_paths`).

    Returns:
        `(caption_texts: list[str], caption_image_index: np.ndarray int64)`.

    Example:
    >>> texts, owner = read_captions("runs/records/synthetic")
    >>> texts[0], owner[0]
    ('a red circle above a blue square', 0)
    """
    manifest = schema.read_manifest(records_dir)
    paths = (checked_paths(records_dir, manifest, skip_bad=True) if skip_bad
             else schema.shard_paths(records_dir, manifest))
    ds = record_stream(paths, interleave=1, tolerant=skip_bad)
    spec = {"captions": tf.io.RaggedFeature(tf.string),
            "image/index": tf.io.FixedLenFeature([], tf.int64)}
    ds = ds.batch(1024).map(lambda s: tf.io.parse_example(s, spec))
    texts, owners = [], []
    for batch in ds:
        caps = batch["captions"]
        lengths = caps.row_lengths().numpy()
        texts.extend(c.decode("utf-8") for c in caps.flat_values.numpy().tolist())
        owners.append(np.repeat(batch["image/index"].numpy(), lengths))
    index = np.concatenate(owners).astype(np.int64) if owners else np.zeros([0], np.int64)
    return texts, index


def class_names(records_dir) -> list[str]:
    """The class names of class-folder records (label `i` is `class_names[i]`).

    Raises:
        RecordsError: the records are not class-folder records.
    """
    manifest = schema.read_manifest(records_dir)
    names = manifest.get("class_names")
    if not names:
        raise schema.RecordsError(
            f"{os.path.join(records_dir, schema.MANIFEST_NAME)}: no class_names (source "
            f"{manifest.get('source')!r} is not class-folder data).")
    return [str(n) for n in names]


def max_captions(records_dir, manifest=None) -> int:
    """The most captions any record of `records_dir` holds: the manifest's per-shard
    `max_captions`, or (records built before that field existed) one pass over the captions."""
    manifest = manifest or schema.read_manifest(records_dir)
    shards = manifest["shards"]
    if shards and all("max_captions" in sh for sh in shards):
        return max(int(sh["max_captions"]) for sh in shards)
    _, owner = read_captions(records_dir)
    counts = np.unique(np.asarray(owner, np.int64), return_counts=True)[1]
    return int(counts.max()) if counts.size else 0
