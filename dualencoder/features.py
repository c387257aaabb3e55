"""The cached-feature fast path for locked towers.

A frozen tower's outputs never change, so each image or caption goes through it once and every
later epoch reads the stored features. With both towers locked (LiT with a locked text tower),
training touches only the heads and the temperature. With only the text tower locked (the
synthetic default: a pretrained MiniLM, a CNN learning from scratch), images still flow through
the image tower and the text features come from the cache. Batches follow exactly the order and caption choice of the uncached
pipeline (`dualencoder.data.pair_order`), so the loss trajectory is the same for the same seed.

The cache lives under `WORKDIR/features/<key>/`, where the key hashes the records' shard
checksums, the tower weights themselves, the image size, the resize method and the sequence
length: changing the data or the towers invalidates it, rerunning reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from dualencoder.config import Config, ConfigError

FEATURES_VERSION = 1


def use_cache(cfg: Config) -> str | None:
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


def _variables_digest(variables) -> str:
    digest = hashlib.sha256()
    for v in variables:
        digest.update(np.ascontiguousarray(np.asarray(v.numpy() if hasattr(v, "numpy") else v,
                                                      dtype=np.float32)).tobytes())
    return digest.hexdigest()


def cache_key(model, cfg: Config, records: str, mode: str) -> str:
    from records.schema import read_manifest

    manifest = read_manifest(records)
    payload = {
        "version": FEATURES_VERSION,
        "mode": mode,
        "shards": [s.get("sha256") for s in manifest["shards"]],
        "num_records": manifest["num_records"],
        "image_tower": _variables_digest(model.image_tower.weights) if mode == "both" else None,
        "text_tower": _variables_digest(model.text_tower.weights),
        "image_size": cfg.model.image_size,
        "resize": cfg.data.resize_method,
        "sequence_length": cfg.model.sequence_length,
        "pooling": cfg.model.text_pooling,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tower_functions(model):
    """Compiled (graph-mode) tower calls: `image_fn(images)`, `text_fn(tokens)`.

    Eager Keras re-allocates every intermediate on each call; on a 2-core CPU that made
    Xception feature extraction several times slower than the same graph.
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def image_fn(images):
        return model.image_features(images, training=False)

    @tf.function(reduce_retracing=True)
    def text_fn(token_ids, padding_mask):
        return model.text_features({"token_ids": token_ids, "padding_mask": padding_mask},
                                   training=False)

    def text(tokens):
        if not isinstance(tokens, dict):
            tokens = model.tokenizer(list(tokens))
        return text_fn(tokens["token_ids"], tokens["padding_mask"])

    return image_fn, text


def compute_features(model, cfg: Config, records: str, *, mode: str = "both",
                     batch_size: int = 64, log=print):
    """Tower outputs for every caption (and with mode "both" every image) of `records`."""
    from tqdm.auto import tqdm

    from dualencoder import data
    from records.schema import read_manifest

    image_fn, text_fn = tower_functions(model)
    out = {}
    if mode == "both":
        image_feats, image_index = [], []
        total = read_manifest(records)["num_records"]
        with tqdm(total=total, desc="image features", unit="img") as bar:
            for batch in data.image_dataset(records, image_size=cfg.model.image_size,
                                            batch_size=batch_size,
                                            resize_method=cfg.data.resize_method):
                image_feats.append(np.asarray(image_fn(batch["images"]), dtype=np.float32))
                image_index.append(batch["image_index"].numpy())
                bar.update(len(image_index[-1]))
        out["image_features"] = np.concatenate(image_feats)
        out["image_index"] = np.concatenate(image_index).astype(np.int64)
    texts, owner = data.read_captions(records)
    # Each distinct caption goes through the tower once (templated captions repeat a lot).
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    unique = [str(t) for t in unique]
    text_feats = []
    for i in tqdm(range(0, len(unique), 256), desc=f"text features ({len(unique)} distinct)",
                  unit="batch"):
        text_feats.append(np.asarray(text_fn(unique[i:i + 256]), dtype=np.float32))
    out["text_features"] = np.concatenate(text_feats)[inverse.ravel()]
    out["caption_image_index"] = np.asarray(owner, dtype=np.int64)
    return out


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
        self.cfg, self.records, self.mode = cfg, records, mode
        self.path = os.path.join(directory, cache_key(model, cfg, records, mode), "features.npz")
        arrays = self._load()
        if arrays is None:
            log(f"caching tower features in {os.path.dirname(self.path)} (once)")
            arrays = compute_features(model, cfg, records, mode=mode, log=log)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + f".tmp-{os.getpid()}.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, self.path)
        else:
            log(f"reusing cached tower features {self.path}")
        self.arrays = arrays
        if mode == "both":
            order = np.argsort(arrays["image_index"])
            self.image_rows = _lookup(arrays["image_index"][order], order)
        # caption_index k of image i is text row caption_start[i] + k (captions stay grouped)
        owner = arrays["caption_image_index"]
        starts = {}
        for row, ix in enumerate(owner):
            starts.setdefault(int(ix), row)
        keys = np.array(sorted(starts), dtype=np.int64)
        self.caption_start = _lookup(keys, np.array([starts[int(k)] for k in keys]))

    def _load(self):
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            return None

    def epoch(self, epoch: int, *, skip_batches: int = 0, images=None, num_shards: int = 1,
              shard_index: int = 0):
        """A `tf.data.Dataset` of batches with `text_features` (and `image_features` in mode
        "both") in `pair_dataset`'s order. In mode "text", `images` is that pair dataset and its
        batches gain `text_features`."""
        import tensorflow as tf

        from dualencoder import data

        cfg = self.cfg
        txt = tf.constant(self.arrays["text_features"])
        caption_start = self.caption_start

        def text_rows(batch):
            return caption_start(batch["image_index"]) + tf.cast(batch["caption_index"], tf.int64)

        if self.mode == "text":
            def add_text(batch):
                return {"images": batch["images"], "image_index": batch["image_index"],
                        "text_features": tf.gather(txt, text_rows(batch))}

            return images.map(add_text, num_parallel_calls=tf.data.AUTOTUNE)
        order = data.pair_order(self.records, batch_size=cfg.data.batch_size // num_shards,
                                seed=cfg.run.seed, epoch=epoch, skip_batches=skip_batches,
                                all_captions=cfg.data.all_captions, skip_bad=cfg.data.skip_bad,
                                num_shards=num_shards, shard_index=shard_index)
        img = tf.constant(self.arrays["image_features"])
        image_rows = self.image_rows

        def gather(batch):
            return {"image_features": tf.gather(img, image_rows(batch["image_index"])),
                    "text_features": tf.gather(txt, text_rows(batch)),
                    "image_index": batch["image_index"]}

        return order.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def _lookup(keys: np.ndarray, values: np.ndarray):
    """A graph-safe int64 -> int64 map from sorted `keys` to `values`."""
    import tensorflow as tf

    keys_t = tf.constant(keys, tf.int64)
    values_t = tf.constant(np.asarray(values, np.int64), tf.int64)

    def fn(query):
        return tf.gather(values_t, tf.searchsorted(keys_t, query))

    return fn
