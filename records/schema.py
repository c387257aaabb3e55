"""The record schema shared by every source, the writer, the reader and `dualencoder.data`.

One TFRecord example per *image*; the image keeps all of its captions.

Features:
    image/encoded   bytes   the encoded image (JPEG or PNG), exactly as stored.
    image/format    bytes   "jpeg" or "png".
    image/id        bytes   the source's own id (file name, COCO id, ...), unique per build.
    image/index     int64   0..N-1, unique within a records directory (the ledger id).
    image/height    int64
    image/width     int64
    captions        bytes[] zero or more captions (zero only for class-folder data).
    label           int64   class index for class-folder data, -1 otherwise.
    source          bytes   the source name ("coco", "flickr", "synthetic", ...).

The manifest (`manifest.json`, written last) is described by `MANIFEST_KEYS`.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_KEYS = (
    "schema_version",  # int, == SCHEMA_VERSION
    "source",  # str
    "num_records",  # int, total images
    "num_captions",  # int, total captions
    "shards",  # list of {"name", "records", "captions", "max_captions" (most captions of one
    #            record; absent in records built before it existed), "sha256", "bytes",
    #            "first_index"}
    "class_names",  # list[str] or null (class-folder data)
    "image_stats",  # {"min_height", "max_height", "mean_height", "min_width", ...}
    "build",  # {"args": ..., "skipped": [...], "created": iso time}
)

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value=b"jpeg"),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/index": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "captions": tf.io.RaggedFeature(tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "source": tf.io.FixedLenFeature([], tf.string, default_value=b""),
}


class RecordsError(ValueError):
    """Bad records input: a message that names the file, shard, record or field at fault."""


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_example(*, image_bytes: bytes, image_id: str, index: int, captions, height: int,
                   width: int, image_format: str = "jpeg", label: int = -1,
                   source: str = "") -> bytes:
    """Serialise one image with its captions to a `tf.train.Example` string."""
    feature = {
        "image/encoded": _bytes([image_bytes]),
        "image/format": _bytes([image_format.encode()]),
        "image/id": _bytes([str(image_id).encode("utf-8")]),
        "image/index": _int([int(index)]),
        "image/height": _int([int(height)]),
        "image/width": _int([int(width)]),
        "captions": _bytes([c.encode("utf-8") for c in captions]),
        "label": _int([int(label)]),
        "source": _bytes([source.encode("utf-8")]),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)  # map order: same bytes every run


def parse_example(serialized):
    """Parse one serialised example (graph-safe) into a dict of tensors (`captions` is ragged)."""
    return tf.io.parse_single_example(serialized, FEATURES)


def decode_example_py(serialized: bytes) -> dict:
    """Parse one example in plain Python (no graph), for tools and tests."""
    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature

    def one(name, kind="bytes", default=None):
        if name not in f:
            return default
        vals = getattr(f[name], f"{kind}_list").value
        return vals[0] if vals else default

    return {
        "image_bytes": one("image/encoded"),
        "image_format": (one("image/format") or b"jpeg").decode(),
        "image_id": one("image/id").decode("utf-8"),
        "index": int(one("image/index", "int64")),
        "height": int(one("image/height", "int64", 0)),
        "width": int(one("image/width", "int64", 0)),
        "captions": [c.decode("utf-8") for c in f["captions"].bytes_list.value]
        if "captions" in f else [],
        "label": int(one("label", "int64", -1)),
        "source": (one("source") or b"").decode("utf-8"),
    }


def read_manifest(records_dir: str) -> dict:
    """Load and sanity-check `records_dir/manifest.json` (content, not just existence).

    Raises:
        RecordsError: the directory or manifest is missing, unreadable, of another schema
            version, or lists shards that are not on disk.
    """
    path = os.path.join(records_dir, MANIFEST_NAME)
    if not os.path.isdir(records_dir):
        raise RecordsError(f"{records_dir}: not a directory. Build records first: "
                           f"python -m records build synthetic --out {records_dir}")
    if not os.path.isfile(path):
        raise RecordsError(f"{path}: manifest missing, so the directory is not a complete build "
                           "(an interrupted build writes the manifest last). Rebuild it with "
                           "`python -m records build ...`.")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordsError(f"{path}: unreadable manifest ({exc}). Rebuild the records.") from exc
    if not isinstance(manifest, dict):
        raise RecordsError(f"{path}: not a JSON object. Rebuild the records.")
    missing = [k for k in ("schema_version", "source", "num_records", "shards") if k not in manifest]
    if missing:
        raise RecordsError(f"{path}: manifest lacks field(s) {missing}. Rebuild the records.")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise RecordsError(f"{path}: schema_version {manifest['schema_version']!r}, this version "
                           f"reads {SCHEMA_VERSION}. Rebuild the records.")
    shards = manifest["shards"]

    def well_formed(shard):
        name = shard.get("name") if isinstance(shard, dict) else None
        return (isinstance(name, str) and name == os.path.basename(name)
                and name not in ("", ".", "..")
                and all(isinstance(shard.get(k, 0), int) and not isinstance(shard.get(k, 0), bool)
                        and shard.get(k, 0) >= 0 for k in ("records", "captions", "first_index"))
                and isinstance(shard.get("records"), int))

    if (not isinstance(shards, list) or not all(well_formed(s) for s in shards)
            or not isinstance(manifest["num_records"], int)):
        raise RecordsError(f"{path}: malformed shard list or counts. Rebuild the records.")
    for shard in shards:
        if not os.path.isfile(os.path.join(records_dir, shard["name"])):
            raise RecordsError(f"{records_dir}: shard {shard['name']} listed in the manifest is "
                               "missing. Run `python -m records verify` and rebuild.")
    return manifest


def shard_paths(records_dir: str, manifest: dict | None = None) -> list[str]:
    """Absolute shard paths in manifest order."""
    manifest = manifest or read_manifest(records_dir)
    return [os.path.join(records_dir, s["name"]) for s in manifest["shards"]]
