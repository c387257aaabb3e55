"""The input pipeline: records (see `records/schema.py`) to `tf.data` batches.

Everything random here (shard order, the shuffle, the caption drawn per image, the
augmentation) is a pure function of `(seed, epoch, image_index)` computed with stateless
RNGs, so a run is reproducible bit for bit and `skip_batches` resumes mid-epoch exactly.

Stages of `pair_dataset` (cheap ones first, so that skipping is cheap):

1. shard files in a `(seed, epoch)` permutation, interleaved record by record
   (deterministic, parallel reads);
2. parse; drop records without captions (class-folder data); draw a caption (or expand
   to one element per caption with `all_captions=True`); attach a 64-bit sort key;
3. shuffle: windows of `shuffle_buffer` elements sorted by their keys;
4. `shard(num_shards, shard_index)` for multi-worker input, then `skip(k * batch_size)`;
5. decode + (random resized crop) + resize + (flip) in one parallel, order-keeping map;
   JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT when they are still at least
   `image_size` px after it (`fast_jpeg`), and crops are decoded with
   `decode_and_crop_jpeg`;
6. batch (whole batches), tokenize the batch in graph, prefetch.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from records import schema

AUTOTUNE = tf.data.AUTOTUNE
RESIZE_METHODS = ("bicubic", "bilinear", "nearest", "area")
# bicubic/bilinear resizes apply an antialiasing kernel only when a side shrinks this much or
# more. JPEGs are first decoded at a DCT scale (an area-like downscale) that leaves less than
# 2x to go; a plain kernel aliases little at such factors and costs a fraction of the
# antialiased one (the scale-and-translate kernel was 2-3x the time of decoding a 640x480 JPEG).
ANTIALIAS_MIN_SHRINK = 3
# Purposes folded into the per-image RNG key, so each decision has its own stream.
_CAPTION, _SHUFFLE, _CROP, _FLIP = 1, 2, 3, 4
_CROP_SCALE = (0.6, 1.0)
_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_RNG_ALG = "philox"  # explicit, so keys do not depend on the device


# ----------------------------------------------------------------------------- helpers
def _check_args(image_size, batch_size, resize_method):
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}: expected a positive int (pixels).")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int.")
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method={resize_method!r}: expected one of {RESIZE_METHODS}.")


def _element_key(seed, epoch, image_index, purpose, extra=None):
    """Stateless RNG seed `[2]` keyed by (seed, epoch, image_index, purpose[, extra])."""
    key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, epoch], tf.int64), tf.cast(image_index, tf.int64), alg=_RNG_ALG)
    key = tf.random.experimental.stateless_fold_in(key, purpose, alg=_RNG_ALG)
    if extra is not None:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(extra, tf.int64),
                                                       alg=_RNG_ALG)
    return key


def _record_stream(paths, *, interleave: int, tolerant: bool = False, offsets=None):
    """Serialized records of `paths`, interleaved record by record, deterministic.

    `offsets` (one int per path): shard `i` is read from record `offsets[i]` to its end and
    then from its start, so which records of different shards arrive side by side changes with
    the offsets (each record still comes exactly once).
    `tolerant`: a shard's framing error ends that shard instead of the whole stream (each
    shard stops at its first damaged record; `_checked_paths` salvages the rest)."""
    if offsets is None:
        offsets = [0] * len(paths)
    files = tf.data.Dataset.from_tensor_slices((paths, tf.constant(offsets, tf.int64)))
    cycle = max(1, min(interleave, len(paths)))

    def read(f, offset):
        def part(ds):
            return ds.ignore_errors() if tolerant else ds

        return part(tf.data.TFRecordDataset(f).skip(offset)).concatenate(
            part(tf.data.TFRecordDataset(f).take(offset)))

    if cycle == 1:
        return files.flat_map(read)
    return files.interleave(
        read, cycle_length=cycle,
        block_length=1, num_parallel_calls=min(cycle, 4), deterministic=True)


def _interleaved_positions(starts, counts, offsets, cycle: int) -> np.ndarray:
    """`_record_stream`'s order as positions, computed in NumPy: record `k` of shard `i`
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


# --- the same stateless draws in NumPy, vectorised over elements. TensorFlow's "philox"
# stateless ops scramble a seed `[s0, s1]` into a Philox-4x32-10 key and counter, then draw one
# block of four 32-bit words; `fold_in(seed, x)` is `[full-range draw of seed, x]`. Pinned
# against `tf.random` by tests/test_data.py.
_M32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)


def _philox(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> _U32) ^ c1 ^ k0, p1 & _M32, (p0 >> _U32) ^ c3 ^ k1, p0 & _M32
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _M32, (k1 + np.uint64(0xBB67AE85)) & _M32
    return c0, c1, c2, c3


def _philox_words(seed0, seed1):
    """The first four 32-bit words (as uint64 arrays) a stateless op draws for seeds
    `[seed0, seed1]` (int arrays, broadcast; int32 seeds sign-extend like TensorFlow's)."""
    s0, s1 = np.broadcast_arrays(np.asarray(seed0).astype(np.int64).view(np.uint64),
                                 np.asarray(seed1).astype(np.int64).view(np.uint64))
    mix = _philox((s0 & _M32, s0 >> _U32, s1 & _M32, s1 >> _U32),
                  (np.full_like(s0, 0x3EC8F720), np.full_like(s0, 0x02461E29)))
    zero = np.zeros_like(s0)
    return _philox((zero, zero, mix[2], mix[3]), (mix[0], mix[1]))


def _np_full_int64(seed0, seed1):
    w = _philox_words(seed0, seed1)
    return (w[0] | (w[1] << _U32)).view(np.int64)


def _np_element_key(seed, epoch, image_index, purpose, extra=None):
    """`_element_key` for an array of image indices: `(key0, key1)` arrays."""
    key0 = _np_full_int64(seed, epoch)
    key0 = _philox_words(key0, image_index)[0].astype(np.uint32).view(np.int32)  # int32 draw
    key1 = np.full_like(key0, purpose)
    if extra is None:
        return key0, key1
    return _np_full_int64(key0, key1), np.full(key0.shape, extra, np.int64)


def _np_caption_draw(seed, epoch, image_index, num_captions):
    """`pair_dataset`'s caption draw per image: uniform in `[0, num_captions)`."""
    w = _philox_words(*_np_element_key(seed, epoch, image_index, _CAPTION))
    return ((w[0] | (w[1] << _U32)) % np.asarray(num_captions, np.uint64)).astype(np.int64)


def _np_shuffle_key(seed, epoch, image_index, r):
    """`pair_dataset`'s 64-bit shuffle key per image in pass `r`."""
    return _np_full_int64(*_np_element_key(seed, epoch, image_index, _SHUFFLE, r))


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
        for path in _checked_paths(records_dir, manifest, skip_bad=False):
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


_SALVAGED: dict = {}  # (path, size, mtime_ns, sha256) -> path of the shard's intact records


def _checked_paths(records_dir, manifest, *, skip_bad):
    """Shard paths in manifest order, each checked against its manifest entry first.

    Strict (`skip_bad=False`): a shard whose size differs from the manifest (truncated, or
    bytes appended) raises `RecordsError` naming it; a same-size corruption is what
    `records verify` (run before training unless `data.verify=false`) catches.
    `skip_bad=True`: each shard is hashed once per process; a damaged one is replaced by a
    salvaged copy holding exactly its intact records (see `records.reader.salvage_shard`).
    """
    from records.reader import salvage_shard, shard_problem

    paths = []
    for entry in manifest["shards"]:
        path = os.path.join(records_dir, entry["name"])
        try:
            st = os.stat(path)
        except OSError as exc:
            raise schema.RecordsError(f"{records_dir}: shard {entry['name']} is unreadable "
                                      f"({exc.strerror or exc})") from exc
        expected = entry.get("bytes") or None  # 0/absent: not recorded
        if not skip_bad:
            if expected is not None and st.st_size != expected:
                kind = "truncated" if st.st_size < expected else "longer than built"
                raise schema.RecordsError(
                    f"{records_dir}: shard {entry['name']} is damaged ({kind}: {st.st_size} "
                    f"bytes, the manifest says {expected}). Run `python -m records verify` and "
                    "rebuild, or set skip_bad to read its intact records.")
            paths.append(path)
            continue
        key = (path, st.st_size, st.st_mtime_ns, entry.get("sha256"))
        if key not in _SALVAGED:
            blob, problem = shard_problem(records_dir, entry)
            if problem is None:
                _SALVAGED[key] = path
            else:
                import tempfile

                good = salvage_shard(records_dir, entry, blob)
                folder = tempfile.mkdtemp(prefix="dualencoder-salvaged-")
                out = os.path.join(folder, entry["name"])
                with tf.io.TFRecordWriter(out) as writer:
                    for data in good:
                        writer.write(data)
                tf.get_logger().warning(
                    "%s: shard %s is damaged (%s); reading its %d intact records of %d",
                    records_dir, entry["name"], problem, len(good), entry["records"])
                _SALVAGED[key] = out
        paths.append(_SALVAGED[key])
    return paths


def _image_kind_ok(encoded):
    """True where the bytes start like a JPEG, PNG, GIF or BMP file (cheap header check)."""
    head = tf.strings.substr(encoded, 0, 8)
    return (tf.io.is_jpeg(encoded)
            | tf.equal(head, _PNG_MAGIC)
            | tf.equal(tf.strings.substr(encoded, 0, 4), b"GIF8")
            | tf.equal(tf.strings.substr(encoded, 0, 2), b"BM"))


def _assert_decodable(encoded, image_id, image_index):
    """Strict mode: fail naming the record when the bytes are not an image at all."""
    return tf.debugging.Assert(
        _image_kind_ok(encoded),
        ["dualencoder.data.pipeline: record image/id=", image_id, "image/index=", image_index,
         "holds bytes that are not a JPEG/PNG/GIF/BMP image (corrupt record). Rebuild the "
         "records, run `python -m records verify`, or pass skip_bad=True to drop it."],
        summarize=3)


def _crop_box(height, width, key):
    """Random resized crop box (y, x, h, w), area scale 0.6-1, aspect 3/4-4/3."""
    u = tf.random.stateless_uniform([4], key, dtype=tf.float32, alg=_RNG_ALG)
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = hf * wf * (_CROP_SCALE[0] + (_CROP_SCALE[1] - _CROP_SCALE[0]) * u[0])
    log_lo, log_hi = np.log(_CROP_RATIO[0]), np.log(_CROP_RATIO[1])
    ratio = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    ch = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, hf)
    cw = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, wf)
    y = tf.floor(u[2] * (hf - ch + 1.0))
    x = tf.floor(u[3] * (wf - cw + 1.0))
    box = tf.cast(tf.stack([y, x, ch, cw]), tf.int32)
    return tf.minimum(box, tf.stack([height - 1, width - 1, height, width]))


def _decode(encoded, size, *, crop_key=None, fast_jpeg=True, dct_method=""):
    """Decode to uint8 `[h, w, 3]`, cropped when `crop_key` is given.

    JPEGs are decoded at a DCT scale of 1/2, 1/4 or 1/8 when the (cropped) image stays
    at least `size` px on its short side, which is both faster and an area-like
    downscale; otherwise at full size.
    """

    def decode_other():
        img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        img = tf.ensure_shape(img, [None, None, 3])
        if crop_key is not None:
            shape = tf.shape(img)
            box = _crop_box(shape[0], shape[1], crop_key)
            img = img[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        return img

    def decode_jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        h, w = shape[0], shape[1]
        box = _crop_box(h, w, crop_key) if crop_key is not None else tf.stack([0, 0, h, w])
        short = tf.minimum(box[2], box[3])
        ratios = (1, 2, 4, 8) if fast_jpeg else (1,)
        # index of the largest ratio r with short / r >= size
        idx = tf.zeros([], tf.int32)
        for i, r in enumerate(ratios[1:], start=1):
            idx = tf.where(short >= r * size, i, idx)

        def at_ratio(r):
            def fn():
                if r == 1:
                    if crop_key is None:
                        return tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method)
                    return tf.io.decode_and_crop_jpeg(encoded, box, channels=3,
                                                      dct_method=dct_method)
                img = tf.io.decode_jpeg(encoded, channels=3, ratio=r, dct_method=dct_method)
                if crop_key is not None:
                    dh, dw = tf.shape(img)[0], tf.shape(img)[1]
                    y0 = tf.minimum(box[0] // r, dh - 1)
                    x0 = tf.minimum(box[1] // r, dw - 1)
                    img = img[y0:y0 + tf.maximum(box[2] // r, 1),
                              x0:x0 + tf.maximum(box[3] // r, 1)]
                return img
            return fn

        if len(ratios) == 1:
            return tf.ensure_shape(at_ratio(1)(), [None, None, 3])
        img = tf.switch_case(idx, [at_ratio(r) for r in ratios])
        return tf.ensure_shape(img, [None, None, 3])

    return tf.cond(tf.io.is_jpeg(encoded), decode_jpeg, decode_other)


def _resize(img, size, method):
    """uint8 `[h, w, 3]` -> float32 `[size, size, 3]` in 0..255 (aspect ratio not kept)."""
    shape = tf.shape(img)

    def same():
        return tf.cast(img, tf.float32)

    def resize(antialias):
        def fn():
            out = tf.image.resize(img, [size, size], method=method, antialias=antialias)
            return tf.clip_by_value(tf.cast(out, tf.float32), 0.0, 255.0)
        return fn

    if method in ("bicubic", "bilinear"):
        # the antialiasing kernel only matters (and only costs) when shrinking a lot
        shrink = ((shape[0] >= ANTIALIAS_MIN_SHRINK * size)
                  | (shape[1] >= ANTIALIAS_MIN_SHRINK * size))
        resized = lambda: tf.cond(shrink, resize(True), resize(False))  # noqa: E731
    else:
        resized = resize(False)
    out = tf.cond((shape[0] == size) & (shape[1] == size), same, resized)
    return tf.ensure_shape(out, [size, size, 3])


def _options(deterministic=True):
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    return options


def _order_from_index(index, starts, counts, offsets, *, seed, epoch, shuffle, all_captions,
                      shuffle_buffer):
    """`pair_dataset`'s element order (before sharding, skipping and batching) computed from
    a `RecordIndex` with NumPy: `{"image_index", "caption_index"}` int64 arrays. Each step
    mirrors a stage of the streaming pipeline (interleaved shard reads per pass, the
    captioned-record filter, the caption draw, the windowed sort by shuffle key)."""
    draws, parts = {}, []
    for r, rotation in enumerate(offsets):
        pos = _interleaved_positions(starts, counts, rotation or [0] * len(counts),
                                     8 if shuffle else 1)
        n = index.num_captions[pos]
        pos, n = pos[n > r], n[n > r]
        ids = index.image_index[pos]
        if "j" not in draws:  # the first draw per image does not depend on the pass
            has = index.num_captions > 0
            draws["j"] = np.zeros(len(index.num_captions), np.int64)
            draws["j"][has] = _np_caption_draw(seed, epoch, index.image_index[has],
                                               index.num_captions[has])
        j = draws["j"][pos]
        if all_captions:
            j = (j + r) % n
        if shuffle:
            keys = _np_shuffle_key(seed, epoch, ids, r)
            perm = np.concatenate([
                w + np.argsort(keys[w:w + shuffle_buffer], kind="stable")
                for w in range(0, len(ids), int(shuffle_buffer))] or [np.zeros([0], np.int64)])
            ids, j = ids[perm], j[perm]
        parts.append((ids, j))
    return {"image_index": np.concatenate([p[0] for p in parts]).astype(np.int64),
            "caption_index": np.concatenate([p[1] for p in parts]).astype(np.int64)}


# ----------------------------------------------------------------------------- public API
def pair_dataset(records_dir, *, image_size, tokenizer, batch_size, seed=0, epoch=0,
                 skip_batches=0, shuffle=True, augment=False, all_captions=False,
                 resize_method="bicubic", skip_bad=False, num_shards=1, shard_index=0,
                 shuffle_buffer=1024, fast_jpeg=True, decode=True, index=None):
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
            record (its intact records only, see `_checked_paths`); bad records are
            dropped (header and caption checks before skipping, so resuming stays exact;
            later decode failures are dropped too, after the skip).
        num_shards: int, number of input workers; each takes every `num_shards`-th
            element (after shuffling).
        shard_index: int, this worker's index in `[0, num_shards)`.
        shuffle_buffer: int, elements per shuffle window (two windows of encoded records
            are held in memory).
        fast_jpeg: bool, decode large JPEGs at a reduced DCT scale (see module doc).
        decode: bool. False yields only `{"image_index", "caption_index"}` batches in the
            same order, without decoding or tokenizing (see `pair_order`). "numpy" (with
            `index` only): those batches as NumPy arrays `[steps, batch_size]` instead of a
            dataset (see `pair_order_arrays`).
        index: a `RecordIndex` of `records_dir` (with `decode=False`, `skip_bad=False`):
            the order is built from it in memory, without reading the records.

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
    _check_args(image_size, batch_size, resize_method)
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
        if decode not in (False, "numpy") or skip_bad:
            raise ValueError("index= builds the order only (decode=False, skip_bad=False)")
        if (index.shard_sha256 != [sh.get("sha256") for sh in manifest["shards"]]
                or index.counts != counts):
            raise ValueError(f"the RecordIndex of {index.records_dir} does not match the "
                             f"shards of {records_dir}; build it from these records")
        paths = [None] * len(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
    else:
        paths = _checked_paths(records_dir, manifest, skip_bad=skip_bad)
        starts = [0] * len(counts)
    seed, epoch = int(seed), int(epoch)
    if shuffle:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0x5EED])
        perm = rng.permutation(len(paths))
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
    if shuffle:  # rotate each shard: records of different shards meet differently per pass
        offsets = [[int(orng.integers(0, n)) if n > 0 else 0 for n in counts]
                   for orng in (np.random.default_rng(
                       [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, r, 0x0FF5E7])
                       for r in range(rounds))]
    else:
        offsets = [None] * rounds
    if index is not None:  # the same order, computed in NumPy from the index
        order = _order_from_index(index, starts, counts, offsets, seed=seed, epoch=epoch,
                                  shuffle=shuffle, all_captions=all_captions,
                                  shuffle_buffer=shuffle_buffer)
        order = {k: v[shard_index::num_shards][int(skip_batches) * int(batch_size):]
                 for k, v in order.items()}
        steps = len(order["image_index"]) // int(batch_size)
        order = {k: v[:steps * int(batch_size)].reshape(steps, int(batch_size))
                 for k, v in order.items()}
        if decode == "numpy":
            return order
        return tf.data.Dataset.from_tensor_slices(order).with_options(
            _options(deterministic=True))

    def parse(serialized):
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

    def one_round(r):
        ds = _record_stream(paths, interleave=8 if shuffle else 1, tolerant=skip_bad,
                            offsets=offsets[r])
        ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda e: e["num_captions"] > r)
        if skip_bad:  # before skipping batches, so resuming stays exact
            ds = ds.filter(lambda e: _image_kind_ok(e["encoded"])
                           & tf.logical_not(e["empty_caption"]))

        def choose(e):
            n = e["num_captions"]
            key = _element_key(seed, epoch, e["image_index"], _CAPTION)
            j = tf.random.stateless_uniform([], key, minval=0, maxval=n, dtype=tf.int64,
                                            alg=_RNG_ALG)
            if all_captions:  # a random first caption, then the next one in each pass
                j = tf.math.floormod(j + r, n)
            out = {"image_index": e["image_index"], "caption_index": j,
                   "encoded": e["encoded"], "image_id": e["image_id"],
                   "caption": e["captions"][j]}
            if shuffle:
                key = _element_key(seed, epoch, e["image_index"], _SHUFFLE, r)
                out["key"] = tf.random.stateless_uniform([], key, minval=None, maxval=None,
                                                         dtype=tf.int64, alg=_RNG_ALG)
            return out

        ds = ds.map(choose, num_parallel_calls=AUTOTUNE, deterministic=True)
        if shuffle:
            def permute(window):
                order = tf.argsort(window.pop("key"), stable=True)
                return {k: tf.gather(v, order) for k, v in window.items()}

            # prefetch(1) on whole windows: the next window is read and parsed in the
            # background while this one is decoded (double buffering), so window boundaries
            # do not stall.
            ds = ds.batch(int(shuffle_buffer)).map(permute).prefetch(1).unbatch()
        return ds

    ds = one_round(0)
    for r in range(1, rounds):
        ds = ds.concatenate(one_round(r))
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    if skip_batches:
        ds = ds.skip(int(skip_batches) * int(batch_size))

    if not decode:
        ds = ds.map(lambda e: {"image_index": e["image_index"],
                               "caption_index": e["caption_index"]})
        return ds.batch(int(batch_size), drop_remainder=True).with_options(
            _options(deterministic=True))

    size = int(image_size)

    def load(e):
        checks = [] if skip_bad else [_assert_decodable(e["encoded"], e["image_id"],
                                                         e["image_index"])]
        with tf.control_dependencies(checks):
            crop_key = (_element_key(seed, epoch, e["image_index"], _CROP) if augment else None)
            img = _decode(e["encoded"], size, crop_key=crop_key, fast_jpeg=fast_jpeg)
            img = _resize(img, size, resize_method)
            if augment:
                flip_key = _element_key(seed, epoch, e["image_index"], _FLIP)
                flip = tf.random.stateless_uniform([], flip_key, alg=_RNG_ALG) < 0.5
                img = tf.cond(flip, lambda: tf.reverse(img, axis=[1]), lambda: img)
        return {"images": img, "image_index": e["image_index"], "caption": e["caption"],
                "caption_index": e["caption_index"]}

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_bad:
        ds = ds.ignore_errors()
    ds = ds.batch(int(batch_size), drop_remainder=True)

    def tokenize(batch):
        tokens = tokenizer(batch["caption"])
        batch = dict(batch)
        batch["token_ids"] = tf.cast(tokens["token_ids"], tf.int32)
        batch["padding_mask"] = tf.cast(tokens["padding_mask"], tf.bool)
        return batch

    ds = ds.map(tokenize, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic=True))


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
    return pair_dataset(records_dir, image_size=1, tokenizer=None, batch_size=batch_size,
                        seed=seed, epoch=epoch, skip_batches=skip_batches, shuffle=shuffle,
                        all_captions=all_captions, skip_bad=skip_bad, num_shards=num_shards,
                        shard_index=shard_index, decode=False, index=index)


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
        return pair_dataset(records_dir, image_size=1, tokenizer=None, decode="numpy",
                            index=index, skip_bad=skip_bad, **kw)
    batches = list(pair_order(records_dir, skip_bad=skip_bad, **kw).as_numpy_iterator())
    return {k: (np.stack([b[k] for b in batches]) if batches
                else np.zeros([0, int(batch_size)], np.int64))
            for k in ("image_index", "caption_index")}


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
    # the shard, or with skip_bad reads exactly the intact ones)
    ds = _record_stream(schema.shard_paths(records_dir, manifest), interleave=1, tolerant=True)
    ds = ds.batch(1024).map(lambda s: tf.io.parse_example(
        s, {"captions": tf.io.RaggedFeature(tf.string)})["captions"].row_lengths())
    return int(sum(int(np.count_nonzero(x.numpy())) for x in ds))


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
    _check_args(image_size, batch_size, resize_method)
    manifest = schema.read_manifest(records_dir)
    ds = _record_stream(_checked_paths(records_dir, manifest, skip_bad=skip_bad), interleave=1,
                        tolerant=skip_bad)
    size = int(image_size)

    def load(serialized):
        f = schema.parse_example(serialized)
        checks = [] if skip_bad else [_assert_decodable(f["image/encoded"], f["image/id"],
                                                         f["image/index"])]
        with tf.control_dependencies(checks):
            index = f["image/index"]
            cropped = view >= 2 if lowres else view >= 1
            crop_key = _element_key(seed, -int(view), index, _CROP) if cropped else None
            first = int(lowres) if view and lowres else size
            img = _decode(f["image/encoded"], first, crop_key=crop_key, fast_jpeg=fast_jpeg)
            img = _resize(img, first, resize_method)
            if first != size:  # low-res view: 8-bit pixels at `lowres` px, enlarged back
                img = _resize(tf.cast(tf.round(img), tf.uint8), size, resize_method)
            if cropped:
                flip_key = _element_key(seed, -int(view), index, _FLIP)
                flip = tf.random.stateless_uniform([], flip_key, alg=_RNG_ALG) < 0.5
                img = tf.cond(flip, lambda: tf.reverse(img, axis=[1]), lambda: img)
        return {"images": img, "image_index": f["image/index"], "label": f["label"]}

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_bad:
        ds = ds.ignore_errors()
    ds = ds.batch(int(batch_size))
    return ds.prefetch(AUTOTUNE).with_options(_options(deterministic=True))


def read_labels(records_dir) -> np.ndarray:
    """The `label` of every record in record order (-1 for captioned data); no decoding."""
    ds = tf.data.TFRecordDataset(schema.shard_paths(records_dir)).batch(4096).map(
        lambda s: tf.io.parse_example(
            s, {"label": tf.io.FixedLenFeature([], tf.int64, default_value=-1)})["label"])
    out = [b.numpy() for b in ds]
    return np.concatenate(out).astype(np.int64) if out else np.zeros([0], np.int64)


def read_captions(records_dir):
    """All captions in record order with the `image/index` of their image.

    Returns:
        `(caption_texts: list[str], caption_image_index: np.ndarray int64)`.

    Example:
    >>> texts, owner = read_captions("runs/records/synthetic")
    >>> texts[0], owner[0]
    ('a red circle above a blue square', 0)
    """
    manifest = schema.read_manifest(records_dir)
    ds = _record_stream(schema.shard_paths(records_dir, manifest), interleave=1)
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
