"""The input pipeline: records (see `records/schema.py`) to `tf.data` batches.

Everything random here (shard order, the shuffle, the caption drawn per image, the
augmentation) is a pure function of `(seed, epoch, image_index)` computed with stateless
RNGs, so a run is reproducible bit for bit and `skip_batches` resumes mid-epoch exactly.

Stages of `pair_dataset` (cheap ones first, so that skipping is cheap):

1-4. the epoch's undecoded pairs in order, this worker's share, the skipped batches' pairs
   dropped (`dualencoder.data.epoch`);
5. decode + (random resized crop) + resize + (flip) in one parallel, order-keeping map
   (`dualencoder.data.decode`);
6. batch (whole batches), tokenize the batch in graph, prefetch.

`image_dataset` reads every record's image in record order, for evaluation and caches.
"""

from __future__ import annotations

import tensorflow as tf

from dualencoder.data import rng
from dualencoder.data.decode import (assert_decodable, check_image_args, decode_image,
                                     random_flip, resize_image)
from dualencoder.data.epoch import EpochPlan, pair_stream, plan_epoch
from dualencoder.data.shards import checked_paths, dataset_options, record_stream
from records import schema

AUTOTUNE = tf.data.AUTOTUNE


def pair_dataset(records_dir, *, image_size, tokenizer, batch_size, seed=0, epoch=0,
                 skip_batches=0, shuffle=True, augment=False, all_captions=False,
                 resize_method="bicubic", skip_bad=False, num_shards=1, shard_index=0,
                 shuffle_buffer=1024, fast_jpeg=True):
    """Image-caption pair batches for contrastive training (one epoch).

    Each image appears once per epoch with one of its captions drawn at random
    (stateless RNG keyed by `(seed, epoch, image_index)`), or once per caption with
    `all_captions=True`: then the epoch is one pass over the records per caption slot, each
    pass showing every image (that has that many captions) once with a caption it has not
    shown yet, so the captions of an image land in different batches. Each pass reads the
    shards in a shuffled order, each shard from a random record onwards (wrapping around),
    and shuffles elements in windows of `shuffle_buffer`. The order is a pure function of
    `(seed, epoch)`.

    Args:
        records_dir: a records directory (with `manifest.json`).
        image_size: int, output images are `[image_size, image_size, 3]` (squashed,
            aspect ratio not kept).
        tokenizer: a `dualencoder.model.tokenizer.Tokenizer` (any callable mapping a string
            tensor `[B]` to `{"token_ids", "padding_mask"}` works).
        batch_size: int; only whole batches are produced (drop remainder).
        seed: int, the run's seed.
        epoch: int, the epoch number (changes order, captions and augmentation).
        skip_batches: int, skip the first `k` batches (before decoding: cheap). A run with
            `skip_batches=k` yields exactly batches `k, k+1, ...` of the same `(seed, epoch)`.
        shuffle: bool, shuffle shard order and elements. `False` keeps record order.
        augment: bool, random resized crop (area 0.6-1, aspect 3/4-4/3) and horizontal flip.
        all_captions: bool, one element per caption instead of one per image.
        resize_method: "bicubic" (default), "bilinear", "nearest" or "area";
            bicubic/bilinear are antialiased when a side shrinks by
            `ANTIALIAS_MIN_SHRINK` (3x) or more.
        skip_bad: bool. False (strict): a shard whose size differs from the manifest
            raises `RecordsError` naming it; a record whose bytes are not an image, or
            with a blank caption, fails with an error naming its `image/id`; other decode
            failures raise TensorFlow's error. True: a damaged shard is read record by
            record (its intact records only, see `shards.checked_paths`); bad records are
            dropped (header and caption checks before skipping, so resuming stays exact;
            later decode failures are dropped too, after the skip).
        num_shards: int, number of input workers; each takes every `num_shards`-th
            element (after shuffling).
        shard_index: int, this worker's index in `[0, num_shards)`.
        shuffle_buffer: int, elements per shuffle window (two windows of encoded records
            are held in memory).
        fast_jpeg: bool, decode large JPEGs at a reduced DCT scale (see
            `dualencoder.data.decode`).

    Returns:
        A `tf.data.Dataset` of dicts: `images` float32 `[B, S, S, 3]` (0..255),
        `token_ids` int32 `[B, L]`, `padding_mask` bool `[B, L]`, `image_index` int64 `[B]`,
        `caption` string `[B]`, `caption_index` int64 `[B]` (position of the caption within
        its image's caption list).

    Example:
    >>> tok = Tokenizer(tiny_vocabulary(), sequence_length=16)
    >>> ds = pair_dataset("runs/records/synthetic", image_size=64, tokenizer=tok,
    ...                   batch_size=32, seed=0, epoch=3, skip_batches=10)
    >>> batch = next(iter(ds))  # batch 10 of epoch 3
    """
    check_image_args(image_size, batch_size, resize_method)
    plan = plan_epoch(records_dir, batch_size=batch_size, seed=seed, epoch=epoch,
                      shuffle=shuffle, all_captions=all_captions, skip_bad=skip_bad,
                      num_shards=num_shards, shard_index=shard_index,
                      skip_batches=skip_batches)
    ds = pair_stream(plan, shuffle_buffer=shuffle_buffer)
    load = _pair_loader(plan, int(image_size), resize_method, augment=augment,
                        fast_jpeg=fast_jpeg)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_bad:
        ds = ds.ignore_errors()
    ds = ds.batch(int(batch_size), drop_remainder=True)
    ds = ds.map(lambda batch: _tokenize(batch, tokenizer), num_parallel_calls=AUTOTUNE,
                deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(dataset_options())


def _pair_loader(plan: EpochPlan, size, resize_method, *, augment, fast_jpeg):
    """The map from an undecoded pair to `{"images", "image_index", "caption",
    "caption_index"}`: checked (strict), decoded, (cropped,) resized, (flipped)."""

    def load(e):
        checks = [] if plan.skip_bad else [assert_decodable(e["encoded"], e["image_id"],
                                                            e["image_index"])]
        with tf.control_dependencies(checks):
            crop_key = (rng.element_key(plan.seed, plan.epoch, e["image_index"], rng.CROP)
                        if augment else None)
            img = decode_image(e["encoded"], size, crop_key=crop_key, fast_jpeg=fast_jpeg)
            img = resize_image(img, size, resize_method)
            if augment:
                img = random_flip(img, rng.element_key(plan.seed, plan.epoch,
                                                       e["image_index"], rng.FLIP))
        return {"images": img, "image_index": e["image_index"], "caption": e["caption"],
                "caption_index": e["caption_index"]}

    return load


def _tokenize(batch, tokenizer):
    """`batch` with the tokens of its captions: `token_ids` int32, `padding_mask` bool."""
    tokens = tokenizer(batch["caption"])
    batch = dict(batch)
    batch["token_ids"] = tf.cast(tokens["token_ids"], tf.int32)
    batch["padding_mask"] = tf.cast(tokens["padding_mask"], tf.bool)
    return batch


def image_dataset(records_dir, *, image_size, batch_size, resize_method="bicubic",
                  skip_bad=False, fast_jpeg=True, view=0, seed=0, lowres=0):
    """Every record's image in record order, for evaluation and embedding caches.

    Args:
        records_dir: a records directory.
        image_size: int, output side in pixels.
        batch_size: int; the last batch may be short.
        resize_method: as in `pair_dataset`.
        skip_bad: bool, drop undecodable records instead of failing.
        fast_jpeg: bool, as in `pair_dataset`.
        view: int; 0 is the plain image, `v >= 1` a random resized crop + horizontal flip
            keyed by `(seed, v, image_index)` (the cached augmented views of
            `data.cached_views`): the same view every time.
        seed: int, the run's seed (views >= 1 only).
        lowres: int; with `lowres > 0` views >= 1 are low-resolution renderings (see
            `data.lowres_size`): the image (view 1) or its crop + flip (views >= 2) shrunk
            to `lowres` px, rounded to 8 bits and enlarged back to `image_size`.

    Returns:
        A `tf.data.Dataset` of dicts `images` float32 `[B, S, S, 3]` (0..255),
        `image_index` int64 `[B]`, `label` int64 `[B]` (-1 for captioned data).

    Example:
    >>> for batch in image_dataset("runs/records/zeroshot", image_size=64, batch_size=128):
    ...     emb = model.encode_images(batch["images"])
    """
    check_image_args(image_size, batch_size, resize_method)
    manifest = schema.read_manifest(records_dir)
    ds = record_stream(checked_paths(records_dir, manifest, skip_bad=skip_bad), interleave=1,
                       tolerant=skip_bad)
    load = _image_loader(int(image_size), resize_method, skip_bad=skip_bad,
                         fast_jpeg=fast_jpeg, view=view, seed=seed, lowres=lowres)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_bad:
        ds = ds.ignore_errors()
    ds = ds.batch(int(batch_size))
    return ds.prefetch(AUTOTUNE).with_options(dataset_options())


def map_images(records_dir, fn, *, image_size, batch_size, resize_method="bicubic",
               limit=0, progress=False, desc="images", **options):
    """Embed a records directory: `fn` applied to every batch of `image_dataset` (record
    order), the one loop behind validation, evaluation embeddings and tower-feature caches.

    Args:
        records_dir, image_size, batch_size, resize_method: as in `image_dataset`; `options`
            are its other arguments (skip_bad, view, seed, lowres, fast_jpeg).
        fn: batch of images (float32 tensor `[B, S, S, 3]`) -> anything; called once a batch.
        limit: stop after the batch that reaches `limit` images (0 = all).
        progress: show progress named `desc` (`records.progress`: a bar on a terminal,
            plain lines in a log).

    Returns:
        `(outputs, image_index, labels)`: `fn`'s results in batch order, and int64 `[N]`
        arrays of the images' `image/index` and labels (-1 for captioned data).
    """
    import numpy as np

    from records.progress import progress_bar

    total = limit or schema.read_manifest(records_dir).get("num_records")
    outputs, index, labels = [], [], []
    with progress_bar(total, desc=desc, unit="img", enabled=progress) as bar:
        for batch in image_dataset(records_dir, image_size=image_size, batch_size=batch_size,
                                   resize_method=resize_method, **options):
            outputs.append(fn(batch["images"]))
            index.append(batch["image_index"].numpy())
            labels.append(batch["label"].numpy())
            bar.update(len(index[-1]))
            if limit and sum(len(i) for i in index) >= limit:
                break
    join = (lambda parts: np.concatenate(parts).astype(np.int64) if parts
            else np.zeros(0, np.int64))
    return outputs, join(index), join(labels)


def _image_loader(size, resize_method, *, skip_bad, fast_jpeg, view, seed, lowres):
    """The map from a serialized record to `{"images", "image_index", "label"}` for
    `image_dataset`'s `view` (plain, cropped + flipped, or low-resolution)."""

    def load(serialized):
        f = schema.parse_example(serialized)
        checks = [] if skip_bad else [assert_decodable(f["image/encoded"], f["image/id"],
                                                       f["image/index"])]
        with tf.control_dependencies(checks):
            index = f["image/index"]
            cropped = view >= 2 if lowres else view >= 1
            crop_key = rng.element_key(seed, -int(view), index, rng.CROP) if cropped else None
            first = int(lowres) if view and lowres else size
            img = decode_image(f["image/encoded"], first, crop_key=crop_key,
                               fast_jpeg=fast_jpeg)
            img = resize_image(img, first, resize_method)
            if first != size:  # low-res view: 8-bit pixels at `lowres` px, enlarged back
                img = resize_image(tf.cast(tf.round(img), tf.uint8), size, resize_method)
            if cropped:
                img = random_flip(img, rng.element_key(seed, -int(view), index, rng.FLIP))
        return {"images": img, "image_index": f["image/index"], "label": f["label"]}

    return load
