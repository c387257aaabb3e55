"""The cached-feature fast path for locked towers.

A frozen tower's outputs never change, so each image or caption goes through it once and every
later epoch reads the stored features. With both towers locked (LiT with a locked text tower),
training touches only the heads and the temperature. With only the text tower locked (the
synthetic default: a pretrained MiniLM, a CNN learning from scratch), images still flow through
the image tower and the text features come from the cache. Batches follow exactly the order and caption choice of the uncached
pipeline (`dualencoder.data.order.pair_order`), so the loss trajectory is the same for the same seed.

Image and text features are cached separately, as `image-<key>.npz` and `text-<key>.npz` in
`WORKDIR/features/` (or the shared `run.features_dir`). An image key hashes the records' shard
checksums, the image tower's weights, the image size and the resize method; a text key hashes the
shard checksums, the text tower's weights, the sequence length and the pooling. Changing the data
or a tower invalidates only that tower's file (a 299 px run reuses the 224 px run's caption
features); rerunning reuses both. Validation records get the same files, so per-epoch validation
of a locked-tower run runs the heads only, from the first epoch of the first run on.

Captions go through the text tower in batches of similar length
(`dualencoder.model.encoding.encode_texts_by_length`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from dualencoder.config import Config, ConfigError
from records.files import atomic_write

FEATURES_VERSION = 1
# Augmented views are a property of the cached data set, not of a run: every run (any
# `run.seed`) shares them; the run's seed only decides which view an image shows in an epoch.
VIEW_SEED = 0


def use_cache(cfg: Config) -> str | None:
    """Which features training reads from the cache: "both", "text" or None (see
    `_cache_mode`); `data.cached_views > 1` requires "both"."""
    mode = _cache_mode(cfg)
    if cfg.data.cached_views > 1 and mode != "both":
        raise ConfigError(f"data.cached_views={cfg.data.cached_views} caches augmented image "
                          "features: it needs both towers locked (model.image_trainable=none, "
                          "model.text_trainable=none), a pooled head (not attention), "
                          "data.augment=false and run.cache_features auto or on")
    return mode


def _cache_mode(cfg: Config) -> str | None:
    """Which features training reads from the cache: "both", "text" or None.

    "both" when both towers are locked and there is no augmentation (or `run.cache_features=on`),
    "text" when only the text tower is locked, None with `run.cache_features=off`.
    """
    locked = cfg.model.image_trainable == "none" and cfg.model.text_trainable == "none"
    if cfg.run.cache_features == "off":
        return None
    if cfg.run.cache_features == "on" and not locked:
        raise ConfigError("run.cache_features=on needs model.image_trainable=none and "
                          "model.text_trainable=none (features of a trained tower change)")
    if cfg.model.head == "attention":
        if cfg.run.cache_features == "on":
            raise ConfigError("run.cache_features=on with model.head=attention: the attention "
                              "head reads whole spatial/token maps, which are not cached; set "
                              "run.cache_features=off")
        return None
    if cfg.run.cache_features == "on" and cfg.data.augment:
        raise ConfigError("run.cache_features=on with data.augment=true: cached features are "
                          "of the un-augmented images; set data.augment=false")
    if locked and not cfg.data.augment:
        return "both"
    return "text" if cfg.model.text_trainable == "none" else None


def variables_digest(variables) -> str:
    """sha256 hex of a tower's weights (float32 bytes in order): a locked tower's identity."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update(np.ascontiguousarray(np.asarray(v.numpy() if hasattr(v, "numpy") else v,
                                                      dtype=np.float32)).tobytes())
    return digest.hexdigest()


def _manifest_digest(records: str) -> dict:
    from records.schema import read_manifest

    manifest = read_manifest(records)
    return {"shards": [sh.get("sha256") for sh in manifest["shards"]],
            "num_records": manifest["num_records"]}


def image_key(tower_digest: str, records: str, *, image_size: int, resize_method: str,
              view: int = 0, lowres: int = 0) -> str:
    """The cache key of an image tower's outputs on `records` (see the module doc)."""
    from dualencoder.data.decode import ANTIALIAS_MIN_SHRINK

    payload = {"version": FEATURES_VERSION, "kind": "image", **_manifest_digest(records),
               "tower": tower_digest, "image_size": int(image_size), "resize": resize_method,
               "antialias_min_shrink": ANTIALIAS_MIN_SHRINK}
    if view:
        payload["view"] = int(view)
        if lowres:
            payload["lowres"] = int(lowres)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def text_key(tower_digest: str, records: str, *, sequence_length: int, pooling: str) -> str:
    """The cache key of a text tower's outputs on the captions of `records`."""
    payload = {"version": FEATURES_VERSION, "kind": "text", **_manifest_digest(records),
               "tower": tower_digest, "sequence_length": int(sequence_length),
               "pooling": pooling}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def image_cache_key(model, cfg: Config, records: str, view: int = 0) -> str:
    return image_key(variables_digest(model.image_tower.weights), records,
                     image_size=cfg.model.image_size, resize_method=cfg.data.resize_method,
                     view=view, lowres=cfg.data.lowres_size)


def text_cache_key(model, cfg: Config, records: str) -> str:
    return text_key(variables_digest(model.text_tower.weights), records,
                    sequence_length=cfg.model.sequence_length, pooling=cfg.model.text_pooling)


def compute_image_features(model, records: str, *, image_size: int, resize_method: str,
                           batch_size: int = 32, view: int = 0, lowres: int = 0,
                           progress: bool | None = None):
    """Image-tower outputs of every image of `records` (augmented view `view`, see
    `data.image_dataset`): {"image_features", "image_index"}. A progress bar when
    `progress` (default: when stderr is a terminal)."""
    from dualencoder.data import pipeline as data
    from dualencoder.model.encoding import tower_functions

    image_fn, _ = tower_functions(model)
    feats, index, _ = data.map_images(
        records, lambda images: np.asarray(image_fn(images), dtype=np.float32),
        image_size=image_size, batch_size=batch_size, resize_method=resize_method, view=view,
        lowres=lowres, seed=VIEW_SEED,
        progress=sys.stderr.isatty() if progress is None else progress,
        desc=f"image features (view {view})" if view else "image features")
    return {"image_features": np.concatenate(feats), "image_index": index}


def compute_text_features(model, records: str, *, progress: bool | None = None):
    """Text-tower outputs of every caption of `records` (each distinct caption once):
    {"text_features" [M, F], "caption_image_index" [M]} with captions grouped by image."""
    from dualencoder.data.annotations import read_captions
    from dualencoder.model.encoding import encode_texts_by_length

    texts, owner = read_captions(records)
    # Each distinct caption goes through the tower once (templated captions repeat a lot).
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    progress = sys.stderr.isatty() if progress is None else progress
    feats = encode_texts_by_length(model, [str(t) for t in unique], progress=progress)
    return {"text_features": feats[inverse.ravel()],
            "caption_image_index": np.asarray(owner, dtype=np.int64)}


def read_npz(path: str):
    """The arrays of an `.npz` cache file, or None when it is missing or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        return None  # a damaged cache file is recomputed


def cached(path: str, compute, *, log=print, what: str = "tower features") -> dict:
    """`compute()`'s arrays, stored at `path` (atomically) on the first call, read afterwards."""
    arrays = read_npz(path)
    if arrays is not None:
        log(f"reusing cached {what} {path}")
        return arrays
    log(f"caching {what} in {path} (once)")
    arrays = compute()
    write_npz(path, arrays)
    return arrays


def write_npz(path: str, arrays: dict) -> None:
    """Store `arrays` at `path` atomically (a temporary file renamed into place; an
    interrupted write leaves no half file behind)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def image_features(model, cfg: Config, records: str, directory: str, *, view: int = 0,
                   log=print) -> dict:
    """The cached image-tower outputs of `records` (computed once per key and view)."""
    path = os.path.join(directory, f"image-{image_cache_key(model, cfg, records, view)}.npz")
    kind = f"low-res {cfg.data.lowres_size} px" if cfg.data.lowres_size else "augmented"
    what = f"image features of {records}" + (f" ({kind} view {view})" if view else "")
    return cached(path, lambda: compute_image_features(
        model, records, image_size=cfg.model.image_size, resize_method=cfg.data.resize_method,
        view=view, lowres=cfg.data.lowres_size),
                  log=log, what=what)


def text_features(model, cfg: Config, records: str, directory: str, *, log=print) -> dict:
    """The cached text-tower outputs of every caption of `records` (computed once per key)."""
    path = os.path.join(directory, f"text-{text_cache_key(model, cfg, records)}.npz")
    return cached(path, lambda: compute_text_features(model, records), log=log,
                  what=f"caption features of {records}")


class CachedPairs:
    """Feature batches in the uncached pipeline's order.

    Args:
        model: the `DualEncoder` whose (locked) towers produce the features.
        cfg: the training `Config`.
        records: the training records dir.
        directory: where caches live (`WORKDIR/features`).
        mode: "both" (image and text features) or "text" (text features only).
    """

    def __init__(self, model, cfg: Config, records: str, directory: str, *, mode: str = "both",
                 log=print):
        from dualencoder.data.order import RecordIndex

        self.cfg, self.records, self.mode = cfg, records, mode
        arrays = dict(text_features(model, cfg, records, directory, log=log))
        self.views = cfg.data.cached_views if mode == "both" else 1
        if mode == "both":
            views = [image_features(model, cfg, records, directory, view=v, log=log)
                     for v in range(self.views)]
            for v in views[1:]:
                if not np.array_equal(v["image_index"], views[0]["image_index"]):
                    raise ValueError(f"cached views of {records} list different images; "
                                     f"delete {directory} and rerun")
            # rows [v * N, (v + 1) * N) hold view v
            arrays["image_features"] = np.concatenate([v["image_features"] for v in views])
            arrays["image_index"] = views[0]["image_index"]
        self.arrays = arrays
        if mode == "both":  # image i's feature row: image_rows_np[searchsorted(image_keys, i)]
            order = np.argsort(arrays["image_index"], kind="stable")
            self.image_keys = arrays["image_index"][order].astype(np.int64)
            self.image_rows_np = order.astype(np.int64)
        # caption_index k of image i is text row caption_start[i] + k (captions stay grouped)
        owner = np.asarray(arrays["caption_image_index"], np.int64)
        keys, first = np.unique(owner, return_index=True)
        self.caption_keys, self.caption_rows_np = keys, first.astype(np.int64)
        self.caption_start = _lookup(keys, first)
        # the epoch orders come from memory (the records are read here once, not per pass)
        self.record_index = (RecordIndex(records)
                             if mode == "both" and not cfg.data.skip_bad else None)

    def epoch(self, epoch: int, *, skip_batches: int = 0, images=None, num_shards: int = 1,
              shard_index: int = 0):
        """A `tf.data.Dataset` of batches with `text_features` (and `image_features` in mode
        "both") in `pair_dataset`'s order. In mode "text", `images` is that pair dataset and its
        batches gain `text_features`."""
        import tensorflow as tf

        cfg = self.cfg
        if self.mode == "text":
            txt = tf.constant(self.arrays["text_features"])
            caption_start = self.caption_start

            def text_rows(batch):
                return caption_start(batch["image_index"]) + tf.cast(batch["caption_index"],
                                                                     tf.int64)

            def add_text(batch):
                return {"images": batch["images"], "image_index": batch["image_index"],
                        "text_features": tf.gather(txt, text_rows(batch))}

            return images.map(add_text, num_parallel_calls=tf.data.AUTOTUNE)
        batch = cfg.data.batch_size // num_shards
        img, text = self.arrays["image_features"], self.arrays["text_features"]
        signature = {
            "image_features": tf.TensorSpec([batch, img.shape[1]], tf.as_dtype(img.dtype)),
            "text_features": tf.TensorSpec([batch, text.shape[1]], tf.as_dtype(text.dtype)),
            "image_index": tf.TensorSpec([batch], tf.int64)}
        return tf.data.Dataset.from_generator(
            lambda: self.host_batches(epoch, skip_batches=skip_batches, num_shards=num_shards,
                                      shard_index=shard_index),
            output_signature=signature).prefetch(2)

    def host_batches(self, epoch: int, *, skip_batches: int = 0, num_shards: int = 1,
                     shard_index: int = 0):
        """`epoch`'s batches (mode "both") as dicts of NumPy arrays, gathered on the host
        from the feature tables: no tf.data pipeline, so nothing to build or tear down per
        epoch (a single-device trainer iterates these directly; `epoch` wraps them for
        distribution strategies)."""
        from dualencoder.data.order import pair_order_arrays

        if self.mode != "both":
            raise ValueError("host_batches needs cached image and text features (mode 'both')")
        cfg = self.cfg
        kw = dict(batch_size=cfg.data.batch_size // num_shards, seed=cfg.run.seed, epoch=epoch,
                  skip_batches=skip_batches, all_captions=cfg.data.all_captions,
                  num_shards=num_shards, shard_index=shard_index)
        order = pair_order_arrays(self.records, index=self.record_index,
                                  skip_bad=cfg.data.skip_bad, **kw)
        img, text = self.arrays["image_features"], self.arrays["text_features"]
        views, per_view = self.views, len(self.arrays["image_index"])
        for ii, ci in zip(order["image_index"], order["caption_index"]):
            # with cached views, image i shows view (i + epoch + seed) mod views in this
            # epoch: every view equally often, a different mix of views in every batch
            rows = self.image_rows_np[np.searchsorted(self.image_keys, ii)] + (
                np.mod(ii + epoch + cfg.run.seed, views) * per_view)
            text_rows = self.caption_rows_np[np.searchsorted(self.caption_keys, ii)] + ci
            yield {"image_features": img[rows], "text_features": text[text_rows],
                   "image_index": ii}


def _lookup(keys: np.ndarray, values: np.ndarray):
    """A graph-safe int64 -> int64 map from sorted `keys` to `values`."""
    import tensorflow as tf

    keys_t = tf.constant(keys, tf.int64)
    values_t = tf.constant(np.asarray(values, np.int64), tf.int64)

    def fn(query):
        return tf.gather(values_t, tf.searchsorted(keys_t, query))

    return fn
