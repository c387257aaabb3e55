"""One epoch of (image, caption) pairs before decoding: its plan and its `tf.data` stream.

The plan fixes everything an epoch's order depends on: the shards in a `(seed, epoch)`
permutation, each rotated to start at a random record in every caption pass, and the number
of passes (one, or one per caption slot with `all_captions`). The stream then follows it:

1. shard files read in the planned order, interleaved record by record (deterministic,
   parallel reads);
2. parse; drop records without captions (class-folder data); draw a caption (or, with
   `all_captions`, the pass's caption); attach a 64-bit sort key;
3. shuffle: windows of `shuffle_buffer` elements sorted by their keys;
4. `shard(num_shards, shard_index)` for multi-worker input, then `skip(k * batch_size)`.

Decoding and batching follow in `dualencoder.data.pipeline`; `dualencoder.data.order`
computes the same order in NumPy.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from dualencoder.data import rng
from dualencoder.data.annotations import max_captions
from dualencoder.data.decode import image_kind_ok
from dualencoder.data.shards import checked_paths, record_stream
from records import schema

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class EpochPlan:
    """Which pairs one worker sees in one epoch, and in which order.

    `paths`, `counts` and `starts` list the shards in read order: checked shard paths (None
    when the order comes from a `RecordIndex`), records per shard, and each shard's first
    position in the index. `offsets` holds one entry per caption pass: each shard's first
    record in that pass, or None (no rotation)."""

    seed: int
    epoch: int
    shuffle: bool
    all_captions: bool
    skip_bad: bool
    num_shards: int
    shard_index: int
    skip_batches: int
    batch_size: int
    paths: list
    counts: list
    starts: list
    offsets: list


def plan_epoch(records_dir, *, batch_size, seed, epoch, shuffle, all_captions, skip_bad,
               num_shards, shard_index, skip_batches, index=None) -> EpochPlan:
    """The plan of epoch `epoch` of `records_dir` for worker `shard_index` of `num_shards`.

    With `index` (a `RecordIndex` of `records_dir`) the shards are not opened; the index must
    match the manifest's shards. Raises ValueError for bad arguments, `RecordsError` for
    records without captions or (strict) damaged shards."""
    if not (isinstance(num_shards, int) and num_shards >= 1 and 0 <= shard_index < num_shards):
        raise ValueError(f"num_shards={num_shards!r}, shard_index={shard_index!r}: need "
                         "num_shards >= 1 and 0 <= shard_index < num_shards.")
    if skip_batches < 0:
        raise ValueError(f"skip_batches={skip_batches}: must be >= 0.")
    manifest = schema.read_manifest(records_dir)
    if manifest.get("num_captions", None) == 0:
        raise schema.RecordsError(
            f"{records_dir}: the records hold no captions (class-folder data, source "
            f"{manifest.get('source')!r}); use image_dataset() for them.")
    counts = [int(sh.get("records", 0)) for sh in manifest["shards"]]
    if index is not None:
        _check_index(index, records_dir, manifest, counts, skip_bad)
        paths = [None] * len(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
    else:
        paths = checked_paths(records_dir, manifest, skip_bad=skip_bad)
        starts = [0] * len(counts)
    seed, epoch = int(seed), int(epoch)
    if shuffle:
        perm_rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0x5EED])
        perm = perm_rng.permutation(len(paths))
        paths, counts = [paths[i] for i in perm], [counts[i] for i in perm]
        starts = [starts[i] for i in perm]
    # With all_captions an epoch is `rounds` passes over the records; in pass r every image
    # with more than r captions shows one caption it has not shown this epoch. An image's
    # captions are thus spread over the epoch (a batch does not hold an image five times),
    # and each pass has its own order.
    rounds = 1
    if all_captions:
        rounds = max(1, int(index.num_captions.max(initial=0)) if index is not None
                     else max_captions(records_dir, manifest))
    return EpochPlan(seed=seed, epoch=epoch, shuffle=shuffle, all_captions=all_captions,
                     skip_bad=skip_bad, num_shards=num_shards, shard_index=shard_index,
                     skip_batches=skip_batches, batch_size=int(batch_size), paths=paths,
                     counts=counts, starts=starts,
                     offsets=_rotations(seed, epoch, counts, rounds, shuffle))


def _check_index(index, records_dir, manifest, counts, skip_bad):
    if skip_bad:
        raise ValueError("index= builds the order of intact records only (skip_bad=False)")
    if (index.shard_sha256 != [sh.get("sha256") for sh in manifest["shards"]]
            or index.counts != counts):
        raise ValueError(f"the RecordIndex of {index.records_dir} does not match the "
                         f"shards of {records_dir}; build it from these records")


def _rotations(seed, epoch, counts, rounds, shuffle):
    """Per caption pass, each shard's first record (records of different shards then meet
    differently in each pass); `None` per pass without shuffling."""
    if not shuffle:
        return [None] * rounds
    return [[int(orng.integers(0, n)) if n > 0 else 0 for n in counts]
            for orng in (np.random.default_rng(
                [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, r, 0x0FF5E7])
                for r in range(rounds))]


def pair_stream(plan: EpochPlan, *, shuffle_buffer):
    """The undecoded pairs of `plan` in training order: this worker's share, without the
    skipped batches' pairs. Dicts `image_index`, `caption_index`, `encoded`, `image_id`,
    `caption`."""
    ds = _caption_pass(plan, 0, shuffle_buffer)
    for r in range(1, len(plan.offsets)):
        ds = ds.concatenate(_caption_pass(plan, r, shuffle_buffer))
    if plan.num_shards > 1:
        ds = ds.shard(plan.num_shards, plan.shard_index)
    if plan.skip_batches:
        ds = ds.skip(int(plan.skip_batches) * plan.batch_size)
    return ds


def _caption_pass(plan: EpochPlan, r, shuffle_buffer):
    """Pass `r` of the epoch: every record with more than `r` captions once, with its drawn
    caption (pass `r`'s caption with `all_captions`), shuffled in windows."""
    ds = record_stream(plan.paths, interleave=8 if plan.shuffle else 1,
                       tolerant=plan.skip_bad, offsets=plan.offsets[r])
    ds = ds.map(lambda s: _parse(s, plan.skip_bad), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    ds = ds.filter(lambda e: e["num_captions"] > r)
    if plan.skip_bad:  # before skipping batches, so resuming stays exact
        ds = ds.filter(lambda e: image_kind_ok(e["encoded"])
                       & tf.logical_not(e["empty_caption"]))
    ds = ds.map(lambda e: _choose_caption(e, plan, r), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    if plan.shuffle:
        # prefetch(1) on whole windows: the next window is read and parsed in the
        # background while this one is decoded (double buffering), so window boundaries
        # do not stall.
        ds = ds.batch(int(shuffle_buffer)).map(_sort_window).prefetch(1).unbatch()
    return ds


def _parse(serialized, skip_bad):
    """A record's fields, its caption count and whether a caption is blank (strict: a blank
    caption fails naming the record)."""
    f = schema.parse_example(serialized)
    captions = f["captions"]
    empty = tf.reduce_any(tf.equal(tf.strings.strip(captions), ""))
    if not skip_bad:  # strict: a blank caption is a corrupt record, named
        with tf.control_dependencies([tf.debugging.Assert(
                tf.logical_not(empty),
                ["dualencoder.data.pipeline: record image/id=", f["image/id"], "image/index=",
                 f["image/index"], "has an empty caption (corrupt record). Rebuild the "
                 "records, or pass skip_bad=True to drop it."], summarize=3)]):
            captions = tf.identity(captions)
    return {"encoded": f["image/encoded"], "image_id": f["image/id"],
            "image_index": f["image/index"], "captions": captions,
            "num_captions": tf.shape(captions, out_type=tf.int64)[0],
            "empty_caption": empty}


def _choose_caption(e, plan: EpochPlan, r):
    """The pair of a parsed record in pass `r`: a random first caption, then (with
    `all_captions`) the next one in each pass; with shuffling, the pair's sort key."""
    n = e["num_captions"]
    key = rng.element_key(plan.seed, plan.epoch, e["image_index"], rng.CAPTION)
    j = tf.random.stateless_uniform([], key, minval=0, maxval=n, dtype=tf.int64,
                                    alg=rng.RNG_ALG)
    if plan.all_captions:
        j = tf.math.floormod(j + r, n)
    out = {"image_index": e["image_index"], "caption_index": j,
           "encoded": e["encoded"], "image_id": e["image_id"],
           "caption": e["captions"][j]}
    if plan.shuffle:
        key = rng.element_key(plan.seed, plan.epoch, e["image_index"], rng.SHUFFLE, r)
        out["key"] = tf.random.stateless_uniform([], key, minval=None, maxval=None,
                                                 dtype=tf.int64, alg=rng.RNG_ALG)
    return out


def _sort_window(window):
    """A window of pairs reordered by their sort keys (the key is dropped)."""
    order = tf.argsort(window.pop("key"), stable=True)
    return {k: tf.gather(v, order) for k, v in window.items()}
