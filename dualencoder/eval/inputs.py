"""Evaluation inputs: class-folder and captioned data sets, validated and turned into records.

`prepare_class_data` takes a records directory of class-folder records or raw class folders
(`DIR/<class>/<images>`, built into the cache once) and returns a `ClassData`; it rejects
bad input with a one-line `EvaluationError` before any model is loaded (captioned data:
`dualencoder.eval.caption_inputs`); records are verified against their manifest before use
(`verify_records_dir`); nothing here imports TensorFlow at import time. `embed_class_data` embeds a `ClassData` through `dualencoder.encoders.cache`
and `load_images` decodes a few records for the report figures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from dualencoder.eval import zeroshot as Z
from dualencoder.eval.errors import EvaluationError
from records.files import IMAGE_EXTENSIONS

__all__ = ["ClassData", "is_records_dir", "verify_records_dir", "class_folder_counts", "prepare_class_data",
           "ensure_records", "record_labels", "class_counts", "check_same_classes",
           "check_shots", "embed_class_data", "load_images"]


def is_records_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "manifest.json"))


def verify_records_dir(path: str) -> dict:
    """Check every shard of a records directory against its manifest (sizes, sha256, record
    counts), as training does before it reads records; returns the manifest.

    Raises:
        EvaluationError: a missing or bad manifest, or a damaged shard (named).
    """
    from records import schema
    from records.verify import verify_records

    try:
        verify_records(path)
        return schema.read_manifest(path)
    except schema.RecordsError as exc:
        raise EvaluationError(f"{exc} (run `python -m records verify {path}` and rebuild the "
                              "records)") from exc


def class_folder_counts(path: str) -> dict:
    """`{folder: number of image files}` of a raw class-folder directory, validated.

    Raises:
        EvaluationError: missing path, no class folders, a single class, or an empty class.
    """
    if not os.path.exists(path):
        raise EvaluationError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise EvaluationError(f"{path}: not a directory")
    exts = IMAGE_EXTENSIONS
    counts = {}
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if entry.startswith(".") or not os.path.isdir(full):
            continue
        counts[entry] = sum(1 for f in os.listdir(full)
                            if f.lower().endswith(exts) and os.path.isfile(os.path.join(full, f)))
    if not counts:
        raise EvaluationError(f"{path}: no class folders (expected DIR/<class>/<image files>) "
                              "and no records manifest.json")
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise EvaluationError(f"{path}: class folder {empty[0]!r} has no images"
                              + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""))
    if len(counts) < 2:
        raise EvaluationError(f"{path}: only one class ({next(iter(counts))!r}); "
                              "classification needs at least two class folders")
    return counts


@dataclasses.dataclass
class ClassData:
    """A labelled data set ready for evaluation.

    Attributes:
        path: what the user gave (records dir or raw class folders).
        records_dir: the records directory (built into the cache for raw folders;
            None until built when `prepare_class_data(..., build=False)`).
        folder_names: class names as stored (folder names), label order.
        class_names: after the class-name map.
        counts: images per class when known before building (raw folders), else None.
        name: a display name for reports (the folder's base name).
        skipped: images skipped as unreadable when the records were built.
    """

    path: str
    records_dir: str | None
    folder_names: list
    class_names: list
    counts: dict | None
    name: str
    skipped: list = dataclasses.field(default_factory=list)
    cache_dir: str | None = None
    skip_bad: bool = False

    def info(self) -> dict:
        return {"name": self.name, "path": os.path.abspath(self.path),
                "records_dir": self.records_dir and os.path.abspath(self.records_dir),
                "num_classes": len(self.class_names), "class_names": self.class_names,
                "folder_names": self.folder_names, "skipped_images": len(self.skipped)}


def _cache_root(cache_dir):
    from dualencoder.encoders.cache import default_cache_dir
    return cache_dir or default_cache_dir()


def folder_key(path: str, extra) -> str:
    """A cache key of a raw data folder: its files' names, sizes and times, plus `extra`."""
    h = hashlib.sha256(os.path.abspath(path).encode())
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            h.update(f"{os.path.relpath(os.path.join(root, f), path)}|{st.st_size}|"
                     f"{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:24]


# What `--skip-bad` skips at build time: errors about one image or row of the source.
_SKIPPABLE = ("unreadable image", "image file missing", "empty image", "cannot read image",
              "empty caption")


def build_cached_records(source, key, cache_dir, skip_bad, **options):
    """`(records_dir, manifest)` of `source` built into the cache under `key`: reused when it
    verifies, (re)built otherwise; a build error is an EvaluationError."""
    from records import schema
    from records.build import build_records

    out = os.path.join(_cache_root(cache_dir), "records", f"{source}-{key}")
    if is_records_dir(out):
        try:
            verify_records_dir(out)
            return out, schema.read_manifest(out)
        except (EvaluationError, schema.RecordsError):
            pass  # damaged since it was built: build it again
    try:
        manifest = build_records(source, out, skip_bad=skip_bad, **options)
    except schema.RecordsError as exc:
        skippable = any(what in str(exc) for what in _SKIPPABLE)
        hint = " (pass --skip-bad to skip unreadable images)" if skippable and not skip_bad \
            else ""
        root = os.fspath(options.get("root") or "")
        where = f"{root}: " if root and root not in str(exc) else ""  # ids are relative to it
        raise EvaluationError(f"{where}{exc}{hint}") from exc
    return out, manifest


def prepare_class_data(path: str, *, class_map=None, cache_dir=None, skip_bad=False,
                       build=True, name=None) -> ClassData:
    """Validate a class-folder data set and (optionally) build its records.

    Args:
        path: a records directory of class-folder records, or a raw directory
            `path/<class>/<images>`.
        class_map: a `zeroshot.load_class_map` spec or a dict.
        cache_dir: cache root for records built from raw folders.
        skip_bad: skip unreadable images (counted in `skipped`) instead of failing.
        build: build records for raw folders now (False: validate only).
        name: display name (default: the directory's base name).

    Raises:
        EvaluationError: any problem with the input, in one line.
    """
    from records import schema

    if not os.path.exists(path):
        raise EvaluationError(f"{path}: no such file or directory")
    mapping = class_map if isinstance(class_map, dict) else _load_map(class_map)
    name = name or os.path.basename(os.path.normpath(path))
    if is_records_dir(path):
        try:
            manifest = schema.read_manifest(path)
        except schema.RecordsError as exc:
            raise EvaluationError(str(exc)) from exc
        folders = manifest.get("class_names")
        if not folders:
            raise EvaluationError(f"{path}: records of source {manifest.get('source')!r} have "
                                  "no class names; this needs class-folder records")
        if len(folders) < 2:
            raise EvaluationError(f"{path}: only one class ({folders[0]!r}); classification "
                                  "needs at least two")
        if manifest.get("num_records", 0) == 0:
            raise EvaluationError(f"{path}: the records hold no images")
        verify_records_dir(path)  # the cheap checks first
        skipped = list((manifest.get("build") or {}).get("skipped") or [])
        data = ClassData(path, path, list(folders), _map(folders, mapping), None, name,
                         skipped, cache_dir, skip_bad)
        return data
    counts = class_folder_counts(path)
    folders = list(counts)
    data = ClassData(path, None, folders, _map(folders, mapping), counts, name, [], cache_dir,
                     skip_bad)
    if build:
        ensure_records(data)
    return data


def ensure_records(data: ClassData) -> ClassData:
    """Build the records of a raw class-folder `ClassData` into the cache (once)."""
    if data.records_dir is not None:
        return data
    key = folder_key(data.path, {"skip_bad": data.skip_bad})
    out, manifest = build_cached_records("folders", key, data.cache_dir, data.skip_bad,
                                          root=data.path)
    built = list(manifest.get("class_names") or [])
    if built != data.folder_names:
        raise EvaluationError(f"{data.path}: records were built with classes {built}, "
                              f"expected {data.folder_names}")
    data.records_dir = out
    data.skipped = list((manifest.get("build") or {}).get("skipped") or [])
    return data


def _load_map(spec):
    try:
        return Z.load_class_map(spec)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def _map(folders, mapping):
    try:
        return Z.apply_class_map(folders, mapping)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc


def record_labels(records_dir: str) -> np.ndarray:
    """The label of every record in record order (parses labels only; no image decoding)."""
    from dualencoder.data import annotations as D

    return D.read_labels(records_dir)


def class_counts(data: ClassData) -> np.ndarray:
    """Images per class (from the folders when known, else from the records)."""
    if data.counts is not None:
        return np.array([data.counts[f] for f in data.folder_names])
    labels = record_labels(data.records_dir)
    return np.bincount(labels[labels >= 0], minlength=len(data.folder_names))


def check_same_classes(train: ClassData, test: ClassData) -> None:
    """Raises EvaluationError unless `train` and `test` have the same classes in one order."""
    if train.class_names != test.class_names:
        raise EvaluationError(f"train and test classes differ: {train.class_names} vs "
                              f"{test.class_names}")


def check_shots(shots: int, smallest: int) -> None:
    """Raises EvaluationError when `shots` per class is more than the smallest class holds."""
    if shots > smallest:
        raise EvaluationError(f"--shots {shots} is more than the smallest training class has "
                              f"({smallest} images)")


def embed_class_data(encoder, data: ClassData, *, resize, batch_size, cache_dir, progress,
                     skip_bad=False) -> dict:
    """`embed_images` of `data`'s records (built first when raw), with an undecodable image or
    a label outside the classes as an EvaluationError."""
    from dualencoder.encoders.cache import embed_images

    ensure_records(data)
    try:
        emb = embed_images(encoder, data.records_dir, resize_method=resize,
                           batch_size=batch_size, cache_dir=cache_dir,
                           skip_bad=skip_bad or data.skip_bad, progress=progress)
    except Exception as exc:  # tf.errors.InvalidArgumentError from an undecodable record
        if type(exc).__name__ != "InvalidArgumentError":
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvaluationError(f"{data.path}: unreadable image ({first[:200]}); pass "
                              "--skip-bad to skip and count such images") from exc
    labels = emb["labels"]
    if (labels < 0).any() or (labels >= len(data.class_names)).any():
        raise EvaluationError(f"{data.path}: records have labels outside the "
                              f"{len(data.class_names)} classes")
    return emb


def load_images(records_dir: str, indices, size: int) -> dict:
    """Decode the images with the given `image/index` values; `{index: uint8 [size, size, 3]}`."""
    import tensorflow as tf

    from records import schema

    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return {}
    table = tf.constant(wanted, tf.int64)
    ds = tf.data.TFRecordDataset(schema.shard_paths(records_dir))

    def keep(s):
        idx = tf.io.parse_single_example(s, {"image/index": tf.io.FixedLenFeature([],
                                                                                    tf.int64)})
        return tf.reduce_any(tf.equal(table, idx["image/index"]))

    def load(s):
        f = schema.parse_example(s)
        img = tf.io.decode_image(f["image/encoded"], channels=3, expand_animations=False)
        img = tf.image.resize(img, [size, size], method="bicubic", antialias=True)
        return f["image/index"], tf.cast(tf.clip_by_value(img, 0, 255), tf.uint8)

    out = {}
    for idx, img in ds.filter(keep).map(load):
        out[int(idx)] = img.numpy()
    return out

