"""The epoch order without images: which `(image_index, caption_index)` pairs each batch of
`pair_dataset` holds, as a tf.data stream or in memory from a `RecordIndex`, and the number
of steps per epoch.

The cached-feature path trains in exactly this order. From a `RecordIndex` the order is
computed in NumPy, mirroring each stage of the streaming pipeline (interleaved shard reads
per caption pass, the captioned-record filter, the caption draw, the windowed sort by shuffle
key) with the same Philox draws (`dualencoder.data.rng`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dualencoder.data import rng
from dualencoder.data.decode import check_image_args
from dualencoder.data.epoch import EpochPlan, pair_stream, plan_epoch
from dualencoder.data.shards import (checked_paths, dataset_options, readable_paths,
                                    record_stream)
from records import schema


class RecordIndex:
    """What `pair_order` needs of a records directory, read once: each record's `image/index`
    and caption count, per shard in manifest order. With it, `pair_order` builds an epoch's
    order in memory instead of reading the records again for every caption pass.

    Args:
        records_dir: a records directory. Its shards are checked (size) and read once;
            a blank caption raises `RecordsError` naming the record, like the strict pipeline.

    Example:
    >>> index = RecordIndex("runs/records/train")
    >>> order = pair_order("runs/records/train", batch_size=32, epoch=3, index=index)
    """

    def __init__(self, records_dir):
        manifest = schema.read_manifest(records_dir)
        self.records_dir = records_dir
        self.shard_sha256 = [sh.get("sha256") for sh in manifest["shards"]]
        spec = {"captions": tf.io.RaggedFeature(tf.string),
                "image/index": tf.io.FixedLenFeature([], tf.int64),
                "image/id": tf.io.FixedLenFeature([], tf.string, default_value="")}
        image_index, num_captions, counts = [], [], []
        for path in checked_paths(records_dir, manifest, skip_bad=False):
            n = 0
            for batch in tf.data.TFRecordDataset(path).batch(1024).map(
                    lambda s: tf.io.parse_example(s, spec)):
                caps = batch["captions"]
                blank = tf.reduce_any(tf.equal(tf.strings.strip(caps), ""), axis=1).numpy()
                if blank.any():
                    bad = batch["image/id"].numpy()[int(np.argmax(blank))].decode()
                    raise schema.RecordsError(
                        f"{records_dir}: record image/id={bad} has an empty caption (corrupt "
                        "record). Rebuild the records, or set skip_bad to drop it.")
                image_index.append(batch["image/index"].numpy())
                num_captions.append(caps.row_lengths().numpy())
                n += len(image_index[-1])
            counts.append(n)
        self.counts = counts
        self.image_index = (np.concatenate(image_index).astype(np.int64) if image_index
                            else np.zeros([0], np.int64))
        self.num_captions = (np.concatenate(num_captions).astype(np.int64) if num_captions
                             else np.zeros([0], np.int64))


def pair_order(records_dir, *, batch_size, seed=0, epoch=0, skip_batches=0, shuffle=True,
               all_captions=False, skip_bad=False, num_shards=1, shard_index=0, index=None):
    """The `(image_index, caption_index)` batches `pair_dataset` would yield with the same
    arguments, without decoding images: the cached-feature path trains in exactly this order.
    With `index` (a `RecordIndex` of `records_dir`; not with `skip_bad`) the records are not
    read at all.

    Example:
    >>> order = pair_order("records/train", batch_size=32, seed=0, epoch=1)
    >>> next(iter(order))["caption_index"]  # which caption of each image
    """
    check_image_args(1, batch_size, "bicubic")
    plan = plan_epoch(records_dir, batch_size=batch_size, seed=seed, epoch=epoch,
                      shuffle=shuffle, all_captions=all_captions, skip_bad=skip_bad,
                      num_shards=num_shards, shard_index=shard_index,
                      skip_batches=skip_batches, index=index)
    return order_batches(plan, index, shuffle_buffer=1024)


def pair_order_arrays(records_dir, *, batch_size, seed=0, epoch=0, skip_batches=0,
                      shuffle=True, all_captions=False, skip_bad=False, num_shards=1,
                      shard_index=0, index=None) -> dict:
    """`pair_order` as NumPy arrays `{"image_index", "caption_index"}` of shape
    `[steps, batch_size]`. With `index` it is computed in memory, no tf.data involved;
    without, the records are read through `pair_order`.

    Example:
    >>> index = RecordIndex("records/train")
    >>> order = pair_order_arrays("records/train", batch_size=32, epoch=1, index=index)
    >>> order["image_index"].shape  # (steps, 32)
    """
    kw = dict(batch_size=batch_size, seed=seed, epoch=epoch, skip_batches=skip_batches,
              shuffle=shuffle, all_captions=all_captions, num_shards=num_shards,
              shard_index=shard_index)
    if index is not None:
        check_image_args(1, batch_size, "bicubic")
        plan = plan_epoch(records_dir, skip_bad=skip_bad, index=index, **kw)
        return order_batches(plan, index, shuffle_buffer=1024, as_arrays=True)
    batches = list(pair_order(records_dir, skip_bad=skip_bad, **kw).as_numpy_iterator())
    return {k: (np.stack([b[k] for b in batches]) if batches
                else np.zeros([0, int(batch_size)], np.int64))
            for k in ("image_index", "caption_index")}


def order_batches(plan: EpochPlan, index, *, shuffle_buffer, as_arrays=False):
    """The `{"image_index", "caption_index"}` batches of `plan`: from `index` (a matching
    `RecordIndex`, or None to stream the records) in NumPy, as a dataset or, with
    `as_arrays`, as arrays `[steps, batch_size]` (`index` only)."""
    if index is None:
        ds = pair_stream(plan, shuffle_buffer=shuffle_buffer)
        ds = ds.map(lambda e: {"image_index": e["image_index"],
                               "caption_index": e["caption_index"]})
        return ds.batch(plan.batch_size, drop_remainder=True).with_options(dataset_options())
    order = _order_from_index(index, plan, shuffle_buffer)
    order = {k: v[plan.shard_index::plan.num_shards][int(plan.skip_batches) * plan.batch_size:]
             for k, v in order.items()}
    steps = len(order["image_index"]) // plan.batch_size
    order = {k: v[:steps * plan.batch_size].reshape(steps, plan.batch_size)
             for k, v in order.items()}
    if as_arrays:
        return order
    return tf.data.Dataset.from_tensor_slices(order).with_options(dataset_options())


def _order_from_index(index, plan: EpochPlan, shuffle_buffer):
    """`pair_dataset`'s element order (before sharding, skipping and batching) computed from
    a `RecordIndex` with NumPy: `{"image_index", "caption_index"}` int64 arrays. Each step
    mirrors a stage of the streaming pipeline (interleaved shard reads per pass, the
    captioned-record filter, the caption draw, the windowed sort by shuffle key)."""
    seed, epoch, counts = plan.seed, plan.epoch, plan.counts
    draws, parts = {}, []
    for r, rotation in enumerate(plan.offsets):
        pos = _interleaved_positions(plan.starts, counts, rotation or [0] * len(counts),
                                     8 if plan.shuffle else 1)
        n = index.num_captions[pos]
        pos, n = pos[n > r], n[n > r]
        ids = index.image_index[pos]
        if "j" not in draws:  # the first draw per image does not depend on the pass
            has = index.num_captions > 0
            draws["j"] = np.zeros(len(index.num_captions), np.int64)
            draws["j"][has] = rng.np_caption_draw(seed, epoch, index.image_index[has],
                                                  index.num_captions[has])
        j = draws["j"][pos]
        if plan.all_captions:
            j = (j + r) % n
        if plan.shuffle:
            keys = rng.np_shuffle_key(seed, epoch, ids, r)
            perm = np.concatenate([
                w + np.argsort(keys[w:w + shuffle_buffer], kind="stable")
                for w in range(0, len(ids), int(shuffle_buffer))] or [np.zeros([0], np.int64)])
            ids, j = ids[perm], j[perm]
        parts.append((ids, j))
    return {"image_index": np.concatenate([p[0] for p in parts]).astype(np.int64),
            "caption_index": np.concatenate([p[1] for p in parts]).astype(np.int64)}


def _interleaved_positions(starts, counts, offsets, cycle: int) -> np.ndarray:
    """`record_stream`'s order as positions, computed in NumPy: record `k` of shard `i`
    comes out as `starts[i] + k`, each shard rotated by `offsets[i]` and the shards
    interleaved exactly as tf.data's `interleave(cycle_length=cycle, block_length=1)` reads
    them (a slot takes one element per turn; a slot whose shard has ended is refilled with the
    next shard on the slot's next turn). The order depends only on the shards' lengths."""
    seqs = [np.concatenate([np.arange(s + o, s + n), np.arange(s, s + o)]).astype(np.int64)
            for s, n, o in zip(starts, counts, offsets)]
    if not seqs:
        return np.zeros([0], np.int64)
    cycle = max(1, min(int(cycle), len(seqs)))
    if cycle == 1:
        return np.concatenate(seqs)
    out, slots, pos = [], [None] * cycle, [0] * cycle
    upcoming, live, i = 0, 0, 0
    while upcoming < len(seqs) or live:
        if slots[i] is not None:
            if pos[i] < len(slots[i]):
                out.append(slots[i][pos[i]])
                pos[i] += 1
            else:  # ended: the slot is refilled on its next turn
                slots[i] = None
                live -= 1
            i = (i + 1) % cycle
        elif upcoming < len(seqs):  # open the next shard here and read from it now
            slots[i], pos[i] = seqs[upcoming], 0
            upcoming += 1
            live += 1
        else:
            i = (i + 1) % cycle
    return np.asarray(out, np.int64)


def steps_per_epoch(records_dir, batch_size, all_captions=False, num_shards=1) -> int:
    """Whole batches per epoch of `pair_dataset` (per worker with `num_shards` workers).

    With `all_captions=True` the count comes from the manifest (`num_captions`);
    otherwise the captioned records are counted by reading only their caption lists
    (records without captions are not pairs). Records that `skip_bad` drops are counted.

    Args:
        records_dir: a records directory.
        batch_size: int.
        all_captions: bool, as in `pair_dataset`.
        num_shards: int, input workers; the result is the smallest worker's count so
            that all workers run the same number of steps.

    Example:
    >>> steps_per_epoch("runs/records/synthetic", 32)
    31
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1.")
    manifest = schema.read_manifest(records_dir)
    if all_captions and "num_captions" in manifest:
        n = int(manifest["num_captions"])
    else:
        n = int(_count_captioned(records_dir, manifest))
    return (n // int(num_shards)) // int(batch_size)


def _count_captioned(records_dir, manifest) -> int:
    if manifest.get("num_captions", None) == 0:
        return 0
    # tolerant: a damaged shard counts its readable records (the pipeline then either names
    # the shard, or with skip_bad reads exactly the intact ones: once salvaged, they are
    # what is counted)
    ds = record_stream(readable_paths(records_dir, manifest), interleave=1, tolerant=True)
    ds = ds.batch(1024).map(lambda s: tf.io.parse_example(
        s, {"captions": tf.io.RaggedFeature(tf.string)})["captions"].row_lengths())
    return int(sum(int(np.count_nonzero(x.numpy())) for x in ds))
