"""Training batches from cached tower outputs, in the streaming pipeline's order.

Batches follow exactly the order and caption choice of the uncached pipeline
(`dualencoder.data.order.pair_order`), so a cached run's losses are the uncached run's for the
same seed. Per tower (see `plan`): pooled features (`image_features`, `text_features`),
boundary states (`image_states` `[B, h, w, c]`; `text_states` `[B, L, H]` with `text_mask`,
`L` the batch's longest caption), or, for an image tower that runs every step, the decoded
images of the pair pipeline with the cached text added to each batch.
"""

from __future__ import annotations

import numpy as np

from dualencoder.features import compute
from dualencoder.features.boundary import gather_text_states
from dualencoder.features.plan import CachePlan


class CachedPairs:
    """Cached-feature batches for one training run.

    Args:
        model: the `DualEncoder` whose frozen parts produce the caches.
        cfg: the training `Config`.
        records: the training records dir.
        directory: where caches live (`WORKDIR/features` or `run.features_dir`).
        plan: the `CachePlan` (which tower reads what).
    """

    def __init__(self, model, cfg, records: str, directory: str, *, plan: CachePlan,
                 log=print):
        from dualencoder.data.order import RecordIndex

        self.cfg, self.records, self.plan, self.directory = cfg, records, plan, directory
        self.text_table = self.text_store = self.image_table = self.image_store = None
        self.tokens = None
        if plan.text == "pooled":
            arrays = compute.text_features(model, cfg, records, directory, log=log)
            self.text_table, owner = arrays["text_features"], arrays["caption_image_index"]
        elif plan.text == "boundary":
            self.text_store = compute.text_states(model, cfg, records, directory, log=log)
            owner = self.text_store.index["caption_image_index"]
        else:  # the whole text tower trains: token ids of every caption, made once
            from dualencoder.data.annotations import read_captions

            texts, owner = read_captions(records, skip_bad=cfg.data.skip_bad)
            tokens = model.tokenizer(texts)
            self.tokens = {k: np.asarray(v) for k, v in tokens.items()}
        self.views = cfg.data.cached_views if plan.image == "pooled" else 1
        if plan.image == "pooled":
            views = [compute.image_features(model, cfg, records, directory, view=v, log=log)
                     for v in range(self.views)]
            for v in views[1:]:
                if not np.array_equal(v["image_index"], views[0]["image_index"]):
                    raise ValueError(f"cached views of {records} list different images; "
                                     f"delete {directory} and rerun")
            # rows [v * N, (v + 1) * N) hold view v
            self.image_table = np.concatenate([v["image_features"] for v in views])
            image_index = views[0]["image_index"]
        elif plan.image == "boundary":
            self.image_store = compute.image_states(model, cfg, records, directory, log=log)
            image_index = self.image_store.index["image_index"]
        if plan.image:  # image i's row: image_rows[searchsorted(image_keys, i)]
            order = np.argsort(image_index, kind="stable")
            self.image_keys = np.asarray(image_index)[order].astype(np.int64)
            self.image_rows = order.astype(np.int64)
            self.per_view = len(image_index)
        # caption_index k of image i is caption row caption_rows[...i] + k (grouped by image)
        owner = np.asarray(owner, np.int64)
        self.caption_keys, first = np.unique(owner, return_index=True)
        self.caption_rows = first.astype(np.int64)
        # the epoch orders come from memory (the records are read here once, not per pass)
        self.record_index = (RecordIndex(records)
                             if plan.image and not cfg.data.skip_bad else None)

    # ---------------------------------------------------------------------------- lookups
    def _position(self, keys, image_index, what) -> np.ndarray:
        """Where each of `image_index` is in the sorted `keys`; an image the caches do not
        hold (its bytes do not decode, or the caches are of other records) is an error."""
        image_index = np.asarray(image_index, np.int64)
        pos = np.minimum(np.searchsorted(keys, image_index), max(len(keys) - 1, 0))
        missing = image_index[(keys[pos] != image_index) if len(keys) else slice(None)]
        if missing.size:
            raise ValueError(f"image {int(missing[0])} of {self.records} has no cached {what} "
                             f"in {self.directory} (it does not decode, or the caches are of "
                             "other records): rebuild the records with `python -m records "
                             "build`, or delete that folder and rerun")
        return pos

    def text_rows(self, image_index, caption_index) -> np.ndarray:
        pos = self._position(self.caption_keys, image_index, "captions")
        return self.caption_rows[pos] + np.asarray(caption_index, np.int64)

    def text_batch(self, rows) -> dict:
        """The cached text of caption rows `rows`."""
        if self.text_table is not None:
            return {"text_features": self.text_table[rows]}
        if self.tokens is not None:
            return {k: v[rows] for k, v in self.tokens.items()}
        states, mask = gather_text_states(self.text_store, rows)
        return {"text_states": states, "text_mask": mask}

    def image_batch(self, image_index, epoch: int) -> dict:
        """The cached image side of images `image_index` in `epoch`."""
        rows = self.image_rows[self._position(self.image_keys, image_index, "image")]
        if self.image_store is not None:
            return {"image_states": np.asarray(self.image_store.rows[np.sort(rows)])[
                np.argsort(np.argsort(rows, kind="stable"), kind="stable")]}
        # with cached views, image i shows view (i + epoch + seed) mod views in this epoch:
        # every view equally often, a different mix of views in every batch
        rows = rows + np.mod(image_index + epoch + self.cfg.run.seed, self.views) * self.per_view
        return {"image_features": self.image_table[rows]}

    # ---------------------------------------------------------------------------- batches
    def host_batches(self, epoch: int, *, skip_batches: int = 0, num_shards: int = 1,
                     shard_index: int = 0):
        """`epoch`'s batches as dicts of NumPy arrays, gathered on the host from the caches
        (image side cached): no tf.data pipeline to build or tear down per epoch."""
        from dualencoder.data.order import pair_order_arrays

        if not self.plan.image:
            raise ValueError("host_batches needs the image side cached")
        cfg = self.cfg
        order = pair_order_arrays(
            self.records, index=self.record_index, skip_bad=cfg.data.skip_bad,
            batch_size=cfg.data.batch_size // num_shards, seed=cfg.run.seed, epoch=epoch,
            skip_batches=skip_batches, all_captions=cfg.data.all_captions,
            num_shards=num_shards, shard_index=shard_index)
        for ii, ci in zip(order["image_index"], order["caption_index"]):
            yield {**self.image_batch(ii, epoch), **self.text_batch(self.text_rows(ii, ci)),
                   "image_index": ii}

    def signature(self, batch) -> dict:
        """The `tf.TensorSpec`s of a host batch of `batch` pairs (None: any)."""
        import tensorflow as tf

        def spec(shape, dtype):
            return tf.TensorSpec([batch] + list(shape), tf.as_dtype(dtype))

        out = {"image_index": spec([], np.int64)}
        if self.text_table is not None:
            out["text_features"] = spec(self.text_table.shape[1:], self.text_table.dtype)
        elif self.tokens is not None:
            out.update({k: spec(v.shape[1:], v.dtype) for k, v in self.tokens.items()})
        else:
            rows = self.text_store.rows
            out["text_states"] = spec([None, rows.shape[1]], rows.dtype)
            out["text_mask"] = spec([None], np.bool_)
        if self.image_table is not None:
            out["image_features"] = spec(self.image_table.shape[1:], self.image_table.dtype)
        elif self.image_store is not None:
            rows = self.image_store.rows
            out["image_states"] = spec(rows.shape[1:], rows.dtype)
        return out

    def epoch(self, epoch: int, *, skip_batches: int = 0, images=None, num_shards: int = 1,
              shard_index: int = 0):
        """A `tf.data.Dataset` of `epoch`'s batches: from the host caches (image side
        cached), or `images` (the pair dataset) with the cached text added to its batches."""
        import tensorflow as tf

        if self.plan.image:
            batch = self.cfg.data.batch_size // num_shards
            return tf.data.Dataset.from_generator(
                lambda: self.host_batches(epoch, skip_batches=skip_batches,
                                          num_shards=num_shards, shard_index=shard_index),
                output_signature=self.signature(batch)).prefetch(2)
        spec = self.signature(None)
        names = sorted(k for k in spec if k.startswith("text_"))

        def lookup(image_index, caption_index):
            out = self.text_batch(self.text_rows(image_index, caption_index))
            return [out[k] for k in names]

        def add_text(batch):
            values = tf.numpy_function(lookup, [batch["image_index"], batch["caption_index"]],
                                       [spec[k].dtype for k in names], stateful=False)
            out = {"images": batch["images"], "image_index": batch["image_index"]}
            for k, v in zip(names, values):
                v.set_shape([batch["image_index"].shape[0]] + list(spec[k].shape[1:]))
                out[k] = v
            return out

        return images.map(add_text, num_parallel_calls=tf.data.AUTOTUNE)
