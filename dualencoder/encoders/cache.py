"""Image and text embeddings, cached on disk.

Encoding a data set is the expensive part of every evaluation; the result
only depends on the model, the data and the preprocessing, so it is cached
under a key made of:

    - the model's `fingerprint()` (models without one are never cached),
    - the records' content (`manifest_checksum`: the shards' sha256 and the record
      count, as the training caches key them; not the build time),
    - the image size and resize method (images) or the texts' checksum (texts).

Each entry is one `.npz` file written to a temporary name in the cache
directory and renamed into place (`os.replace`), so a crash or a concurrent
writer never leaves a half-written entry behind; a stale or unreadable entry
is recomputed.

The default cache directory is `$DUALENCODER_CACHE`, else
`~/.cache/dualencoder`; pass `cache_dir=False` to disable caching.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np

from dualencoder.arrays import read_npz, write_npz
from dualencoder.features.keys import records_digest

__all__ = ["default_cache_dir", "manifest_checksum", "texts_checksum", "embed_images",
           "embed_texts", "encoder_fingerprint"]


def default_cache_dir() -> str:
    """`$DUALENCODER_CACHE` or `~/.cache/dualencoder`."""
    return os.environ.get("DUALENCODER_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dualencoder")


def _resolve_cache_dir(cache_dir):
    if cache_dir is False:
        return None
    return os.path.join(cache_dir or default_cache_dir(), "embeddings")


def manifest_checksum(records_dir: str, skip_bad: bool = False) -> str:
    """A content checksum of a records directory: `features.keys.records_digest` (shard
    hashes, record count; with `skip_bad`, the intact records of damaged shards), hashed."""
    digest = records_digest(records_dir, skip_bad)
    return hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()


def texts_checksum(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def encoder_fingerprint(encoder):
    """`encoder.fingerprint()` (with the towers' precision unless float32: bfloat16 towers
    give other embeddings), or None when the encoder has none (no caching then)."""
    fp = getattr(encoder, "fingerprint", None)
    if fp is None:
        return None
    precision = getattr(encoder, "tower_precision", "float32")
    return str(fp() if callable(fp) else fp) + ("" if precision == "float32" else f"-{precision}")


def locked_heads(encoder, cache_root):
    """A `feature_eval.LockedHeads` for an encoder with locked towers (None otherwise): it reads
    the tower features training cached (`encoder.feature_dirs`) and stores missing ones in
    `<cache root>/features`."""
    from dualencoder.encoders.locked import LockedHeads

    write_dir = os.path.join(os.path.dirname(cache_root), "features") if cache_root else None
    return LockedHeads.of(encoder, feature_dirs=getattr(encoder, "feature_dirs", ()),
                          write_dir=write_dir)


def _entry_path(cache_dir, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
    return os.path.join(cache_dir, f"{key['kind']}-{digest}.npz")


def _load(path, key):
    data = read_npz(path)
    if data is None or "key" not in data or json.loads(str(data.pop("key"))) != key:
        return None
    return data


def _save(path, key, arrays: dict) -> None:
    write_npz(path, {"key": np.array(json.dumps(key, sort_keys=True)), **arrays})


def embed_images(encoder, records_dir: str, *, resize_method: str = "bicubic",
                 batch_size: int = 64, cache_dir=None, skip_bad: bool = False,
                 progress: bool = True) -> dict:
    """Embed every image of a records directory (record order), with caching.

    Args:
        encoder: an Encoder (`encode_images`, `image_size`, optional `fingerprint()`).
        records_dir: a records directory.
        resize_method: how images are resized to `encoder.image_size`.
        batch_size: images per encoder call.
        cache_dir: cache root (default `default_cache_dir()`), or False for no cache.
        skip_bad: drop undecodable records instead of failing.
        progress: show a progress bar.

    An encoder with locked towers (`feature_eval.LockedHeads`) gets its image tower's
    outputs from the feature cache when training (or an earlier evaluation of a model with the
    same tower) stored them, and runs only its heads.

    Returns:
        dict with `embeddings` float32 `[N, D]`, `image_index` int64 `[N]`,
        `labels` int64 `[N]`, `cached` (bool), `seconds` (encoding time, 0 when cached),
        `images_per_second` and `tower_features` (the feature file used, or None).
    """

    cache_root = _resolve_cache_dir(cache_dir)
    fingerprint = encoder_fingerprint(encoder)
    image_size = int(encoder.image_size)
    key = {"kind": "images", "model": fingerprint,
           "data": manifest_checksum(records_dir, skip_bad),
           "image_size": image_size, "resize": resize_method, "skip_bad": bool(skip_bad)}
    path = _entry_path(cache_root, key) if (cache_root and fingerprint) else None
    if path and os.path.isfile(path):
        hit = _load(path, key)
        if hit is not None:
            return {**hit, "cached": True, "seconds": 0.0, "images_per_second": None}

    from dualencoder.data import pipeline as data
    from dualencoder.data.annotations import read_labels

    heads = None if skip_bad else locked_heads(encoder, cache_root)
    if heads is not None:
        start = time.perf_counter()
        got = heads.records_images(records_dir, resize_method=resize_method, progress=progress)
        labels = read_labels(records_dir)
        if len(labels) != len(got["image_index"]):
            raise ValueError(f"{records_dir}: {len(labels)} labels for "
                             f"{len(got['image_index'])} cached image features")
        result = {"embeddings": got["embeddings"], "image_index": got["image_index"],
                  "labels": labels}
        seconds = time.perf_counter() - start
        if path:
            _save(path, key, result)
        n = len(result["image_index"])
        return {**result, "cached": False, "seconds": seconds,
                "images_per_second": n / seconds if seconds > 0 else None,
                "tower_features": got["features_path"],
                "tower_features_reused": got["features_reused"]}

    start = time.perf_counter()
    embs, index, labels = data.map_images(
        records_dir, lambda images: np.asarray(encoder.encode_images(images.numpy()), np.float32),
        image_size=image_size, batch_size=batch_size, resize_method=resize_method,
        skip_bad=skip_bad, progress=progress, desc="encoding images")
    seconds = time.perf_counter() - start
    if not embs:
        raise ValueError(f"{records_dir}: no decodable images")
    result = {"embeddings": np.concatenate(embs), "image_index": index, "labels": labels}
    if path:
        _save(path, key, result)
    n = len(result["image_index"])
    return {**result, "cached": False, "seconds": seconds,
            "images_per_second": n / seconds if seconds > 0 else None, "tower_features": None}


def embed_texts(encoder, texts, *, batch_size: int = 256, cache_dir=None,
                progress: bool = True, desc: str = "encoding texts",
                records_dir=None) -> np.ndarray:
    """Embed a list of strings with `encoder.encode_texts`, with caching.

    With locked towers the text tower runs on length-sorted batches and only the heads run
    per model; `records_dir` says that `texts` are exactly that directory's captions in record
    order (`annotations.read_captions`), whose tower features training may have cached.

    Returns:
        float32 array `[len(texts), D]`.
    """
    texts = list(texts)
    cache_root = _resolve_cache_dir(cache_dir)
    fingerprint = encoder_fingerprint(encoder)
    key = {"kind": "texts", "model": fingerprint, "texts": texts_checksum(texts),
           "count": len(texts)}
    path = _entry_path(cache_root, key) if (cache_root and fingerprint) else None
    if path and os.path.isfile(path):
        hit = _load(path, key)
        if hit is not None:
            return hit["embeddings"]
    heads = locked_heads(encoder, cache_root)
    if heads is not None:
        if records_dir is not None:
            emb = heads.records_captions(records_dir, texts, progress=progress)[0]
        else:
            emb = heads.texts(texts, progress=progress)
        if path:
            _save(path, key, {"embeddings": emb})
        return emb
    from records.progress import track

    starts = range(0, len(texts), batch_size)
    out = [np.asarray(encoder.encode_texts(texts[i:i + batch_size]), np.float32)
           for i in track(starts, desc=desc, unit="batch", enabled=progress and len(starts) > 1)]
    emb = np.concatenate(out) if out else np.zeros([0, 0], np.float32)
    if path:
        _save(path, key, {"embeddings": emb})
    return emb
