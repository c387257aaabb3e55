"""Input pipeline: shapes, determinism, exact resume, caption sampling, augmentation, errors."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dualencoder.data.annotations import class_names, max_captions, read_captions
from dualencoder.data.decode import RESIZE_METHODS
from dualencoder.data.order import (RecordIndex, _interleaved_positions, pair_order,
                                    pair_order_arrays, steps_per_epoch)
from dualencoder.data.pipeline import image_dataset, pair_dataset
from dualencoder.data.rng import (CAPTION, RNG_ALG, SHUFFLE, element_key, np_caption_draw,
                                  np_shuffle_key)
from dualencoder.model.tokenizer import Tokenizer, tiny_vocabulary
from records import schema

N = 40  # captioned fixture: image i has 1 + i % 3 captions; image 7 has none
SIZE = 24


def _image_bytes(i, width=40, height=32, fmt="JPEG", smooth=False):
    rng = np.random.default_rng(i)
    if smooth:
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
        arr = (base + rng.integers(0, 40, size=3)).clip(0, 255).astype(np.uint8)
    else:
        arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_records(out, records, shard_size=16, class_names=None):
    """Write `records` (dicts for `schema.encode_example`) as shards plus a manifest."""
    os.makedirs(out, exist_ok=True)
    shards = []
    for start in range(0, len(records), shard_size):
        chunk = records[start:start + shard_size]
        name = f"shard-{start // shard_size:05d}-test.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(out, name)) as writer:
            for rec in chunk:
                writer.write(schema.encode_example(**rec))
        shards.append({"name": name, "records": len(chunk),
                       "captions": sum(len(r["captions"]) for r in chunk), "sha256": "",
                       "bytes": 0, "first_index": start})
    manifest = {"schema_version": schema.SCHEMA_VERSION, "source": "test",
                "num_records": len(records), "num_captions": sum(s["captions"] for s in shards),
                "shards": shards, "class_names": class_names, "image_stats": {}, "build": {}}
    with open(os.path.join(out, schema.MANIFEST_NAME), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh)
    return manifest


def _record(i, image_bytes=None, captions=None, label=-1, fmt="jpeg", width=40, height=32):
    if captions is None:
        captions = [] if i == 7 else [f"a red circle number {i} caption {j}" for j in range(1 + i % 3)]
    return {"image_bytes": image_bytes or _image_bytes(i, width, height),
            "image_id": f"img{i}.jpg", "index": i, "captions": captions, "height": height,
            "width": width, "image_format": fmt, "label": label, "source": "test"}


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("records") / "captioned")
    recs = [_record(i) for i in range(N)]
    # one PNG among the JPEGs
    recs[3] = _record(3, image_bytes=_image_bytes(3, fmt="PNG"), fmt="png")
    write_records(out, recs)
    return out


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(tiny_vocabulary(), sequence_length=16)


def _pairs(records_dir, tok, **kw):
    kw = {"image_size": SIZE, "tokenizer": tok, "batch_size": 6, "seed": 1, **kw}
    return list(pair_dataset(records_dir, **kw).as_numpy_iterator())


def _cat(batches, key):
    return np.concatenate([b[key] for b in batches]) if batches else np.zeros([0])


@pytest.fixture(scope="module")
def runs(records_dir, tok):
    """Pipeline runs on the captioned fixture, memoised by their keyword arguments."""
    cache = {}

    def run(**kw):
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = _pairs(records_dir, tok, **kw)
        return cache[key]

    return run


CAPTIONED = [i for i in range(N) if i != 7]  # image 7 has no caption: not a pair


def test_shapes_dtypes(runs, tok):
    batch = runs()[0]
    assert batch["images"].shape == (6, SIZE, SIZE, 3) and batch["images"].dtype == np.float32
    assert batch["token_ids"].shape == (6, 16) and batch["token_ids"].dtype == np.int32
    assert batch["padding_mask"].dtype == bool and batch["image_index"].dtype == np.int64
    assert batch["caption"].dtype == object
    assert 0.0 <= batch["images"].min() and batch["images"].max() <= 255.0
    # the tokens are the batch's captions
    np.testing.assert_array_equal(batch["token_ids"], tok(list(batch["caption"]))["token_ids"])


def test_each_image_once_per_epoch(runs, records_dir):
    run = runs(batch_size=13)  # 39 captioned images = 3 whole batches
    assert sorted(_cat(run, "image_index").tolist()) == CAPTIONED
    assert steps_per_epoch(records_dir, 13) == len(run) == 3
    assert steps_per_epoch(records_dir, 6) == len(runs()) == 6  # drop remainder
    ids = _cat(runs(), "image_index").tolist()
    assert len(set(ids)) == len(ids) == 36
    for b in run:  # the caption belongs to its image
        for idx, cap in zip(b["image_index"], b["caption"]):
            assert f"number {idx} caption" in cap.decode()


def test_order_and_captions_are_a_function_of_seed_and_epoch(runs, records_dir, tok):
    base = runs()
    again = _pairs(records_dir, tok)
    for key in ("image_index", "caption", "images", "token_ids"):
        np.testing.assert_array_equal(_cat(base, key), _cat(again, key))
    ids = _cat(runs(batch_size=13), "image_index").tolist()
    assert ids[:36] == _cat(base, "image_index").tolist()  # batch size keeps the order
    assert ids != sorted(ids)
    assert ids != _cat(runs(seed=2, batch_size=13), "image_index").tolist()
    epoch1 = runs(epoch=1, batch_size=13)
    assert ids != _cat(epoch1, "image_index").tolist()
    ordered = _cat(runs(shuffle=False, batch_size=13), "image_index").tolist()
    assert ordered == CAPTIONED

    def chosen(batches):
        return dict(zip(_cat(batches, "image_index").tolist(), _cat(batches, "caption").tolist()))

    c0, c1 = chosen(runs(batch_size=13)), chosen(epoch1)
    assert c0 != c1 and c0.keys() == c1.keys()


def test_skip_batches_is_exact(runs):
    full = runs(augment=True, epoch=2)
    resumed = runs(augment=True, epoch=2, skip_batches=2)
    assert len(full) == 6 and len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        for key in ("image_index", "caption", "token_ids", "padding_mask", "images"):
            np.testing.assert_array_equal(a[key], b[key])


def test_all_captions(runs, records_dir):
    batches = runs(all_captions=True, batch_size=5)
    got = list(zip(_cat(batches, "image_index").tolist(),
                   [c.decode() for c in _cat(batches, "caption")]))
    texts, owners = read_captions(records_dir)
    assert owners.dtype == np.int64 and len(texts) == len(owners) == 77
    assert texts[0] == "a red circle number 0 caption 0" and owners[:3].tolist() == [0, 1, 1]
    assert len(set(got)) == len(got) == 75 and set(got) <= set(zip(owners.tolist(), texts))
    assert steps_per_epoch(records_dir, 5, all_captions=True) == len(batches) == 15
    # captions of one image are spread out, not adjacent
    first = [i for i, _ in got[:10]]
    assert len(set(first)) >= 8


def test_all_captions_puts_an_images_captions_in_different_batches(tmp_path, tok):
    # 24 images x 3 captions in 3 shards; batch = 24 pairs = one pass over the images
    out = str(tmp_path / "three")
    write_records(out, [_record(i, captions=[f"image {i} caption {j}" for j in range(3)])
                        for i in range(24)], shard_size=8)
    assert max_captions(out) == 3  # counted: the manifest has no max_captions

    def epoch(e):
        return [(b["image_index"].numpy().tolist(), b["caption_index"].numpy().tolist())
                for b in pair_order(out, batch_size=24, seed=3, epoch=e, all_captions=True)]

    batches = epoch(0)
    assert len(batches) == 3
    for images, _ in batches:  # every image once per batch, never the same caption twice
        assert sorted(images) == list(range(24))
    shown = {}
    for images, caps in batches:
        for i, j in zip(images, caps):
            shown.setdefault(i, []).append(j)
    assert all(sorted(js) == [0, 1, 2] for js in shown.values())
    # each pass has its own order, and so has the next epoch
    assert batches[0][0] != batches[1][0] and epoch(1)[0][0] != batches[0][0]


def test_shard_rotation_mixes_shards_differently_each_epoch(records_dir):
    # which records share a batch must change between epochs (it did not: shards were read
    # in lockstep from their first record, so batch k held the same records every epoch)
    def batches(e):
        return [frozenset(b["image_index"].numpy().tolist())
                for b in pair_order(records_dir, batch_size=12, seed=0, epoch=e)]

    assert set(batches(0)).isdisjoint(batches(1))


def test_augmentation_is_deterministic_and_keyed(runs):
    plain = {i: img for b in runs() for i, img in zip(b["image_index"], b["images"])}
    e2 = {i: img for b in runs(augment=True, epoch=2) for i, img in zip(b["image_index"], b["images"])}
    e3 = {i: img for b in runs(augment=True, epoch=3, batch_size=13)
          for i, img in zip(b["image_index"], b["images"])}
    common = sorted(set(plain) & set(e2) & set(e3))
    assert len(common) > 20
    assert np.mean([np.abs(e2[i] - plain[i]).mean() for i in common]) > 1.0
    assert np.mean([np.abs(e2[i] - e3[i]).mean() for i in common]) > 1.0
    # determinism of augmented images: see test_skip_batches_is_exact (two runs, same images)


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_resize_methods(records_dir, method):
    batch = next(iter(image_dataset(records_dir, image_size=SIZE, batch_size=8,
                                    resize_method=method)))
    images = batch["images"].numpy()
    assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255
    if method == "nearest":  # nearest picks source pixels of the decoded image
        assert np.allclose(images, np.round(images))


def test_fast_jpeg_matches_full_decode(tmp_path):
    out = str(tmp_path / "big")
    recs = [_record(i, image_bytes=_image_bytes(i, 160, 120, smooth=True), width=160, height=120,
                    captions=["a cat"]) for i in range(4)]
    write_records(out, recs)
    fast = next(iter(image_dataset(out, image_size=32, batch_size=4)))["images"].numpy()
    full = next(iter(image_dataset(out, image_size=32, batch_size=4,
                                   fast_jpeg=False)))["images"].numpy()
    assert np.abs(fast - full).mean() < 3.0


def test_image_dataset_order_and_class_folder(tmp_path, tok):
    out = str(tmp_path / "classes")
    names = ["circle", "square", "star"]
    write_records(out, [_record(i, captions=[], label=i % 3) for i in range(10)], shard_size=4,
                  class_names=names)
    batches = list(image_dataset(out, image_size=SIZE, batch_size=4))
    assert [b["images"].shape[0] for b in batches] == [4, 4, 2]  # last batch short
    assert _cat(batches, "image_index").tolist() == list(range(10))
    assert _cat(batches, "label").tolist() == [i % 3 for i in range(10)]
    assert class_names(out) == names
    with pytest.raises(schema.RecordsError, match="no captions"):
        pair_dataset(out, image_size=SIZE, tokenizer=tok, batch_size=2)
    assert steps_per_epoch(out, 2) == 0


def test_class_names_error_on_captioned(records_dir):
    with pytest.raises(schema.RecordsError, match="class_names"):
        class_names(records_dir)


def test_missing_manifest_is_named(tmp_path, tok):
    with pytest.raises(schema.RecordsError, match="manifest missing"):
        pair_dataset(str(tmp_path), image_size=SIZE, tokenizer=tok, batch_size=2)


def test_corrupt_image_strict_vs_skip_bad(tmp_path, tok):
    out = str(tmp_path / "bad")
    recs = [_record(i, captions=[f"image {i}"]) for i in range(12)]
    recs[5] = _record(5, image_bytes=b"<html>not an image</html>", captions=["image 5"])
    write_records(out, recs, shard_size=5)
    kw = {"image_size": SIZE, "tokenizer": tok, "batch_size": 2, "seed": 3}
    with pytest.raises(tf.errors.InvalidArgumentError, match="img5.jpg"):
        list(pair_dataset(out, **kw, shuffle=False).as_numpy_iterator())
    good = _pairs(out, tok, **{**kw, "skip_bad": True})
    ids = _cat(good, "image_index").tolist()
    assert len(ids) == len(set(ids)) == 10 and 5 not in ids  # 11 good images: 5 batches of 2
    # the header check runs before skipping, so resuming stays exact
    resumed = _pairs(out, tok, **{**kw, "skip_bad": True, "skip_batches": 2})
    assert _cat(resumed, "image_index").tolist() == ids[4:]


def test_truncated_image_strict_vs_skip_bad(tmp_path):
    out = str(tmp_path / "truncated")
    recs = [_record(i, captions=[f"image {i}"]) for i in range(6)]
    whole = _image_bytes(4)
    recs[4] = _record(4, image_bytes=whole[: len(whole) // 2], captions=["image 4"])
    write_records(out, recs)
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(image_dataset(out, image_size=SIZE, batch_size=4))
    kept = list(image_dataset(out, image_size=SIZE, batch_size=4, skip_bad=True))
    assert _cat(kept, "image_index").tolist() == [0, 1, 2, 3, 5]


def test_multi_worker_shards_partition(runs, records_dir):
    whole = _cat(runs(batch_size=13), "image_index").tolist()
    parts = [_cat(runs(batch_size=1, num_shards=2, shard_index=k), "image_index").tolist()
             for k in (0, 1)]
    assert parts[0] == whole[0::2] and parts[1] == whole[1::2]
    assert steps_per_epoch(records_dir, 4, num_shards=2) == 4


@pytest.mark.parametrize("all_captions", [False, True])
def test_pair_order_matches_pair_dataset(records_dir, tok, all_captions):
    """The cached-feature path trains in `pair_order`'s order: it must be pair_dataset's."""
    kw = dict(batch_size=4, seed=5, epoch=2, skip_batches=1, all_captions=all_captions)
    order = list(pair_order(records_dir, **kw))
    full = list(pair_dataset(records_dir, image_size=16, tokenizer=tok, **kw))
    assert len(order) == len(full) > 0
    for a, b in zip(order, full):
        np.testing.assert_array_equal(a["image_index"].numpy(), b["image_index"].numpy())
        np.testing.assert_array_equal(a["caption_index"].numpy(), b["caption_index"].numpy())
    # caption_index points at the caption that was chosen
    texts, owner = read_captions(records_dir)
    first = {}
    for row, ix in enumerate(owner):
        first.setdefault(int(ix), row)
    for b in full:
        for ix, j, cap in zip(b["image_index"].numpy(), b["caption_index"].numpy(),
                              b["caption"].numpy()):
            assert texts[first[int(ix)] + int(j)] == cap.decode()


@pytest.mark.parametrize("width,height,size,tol", [(160, 120, 64, 1.0), (400, 300, 32, 1.0)])
def test_resize_close_to_pil_antialiased_bicubic(tmp_path, width, height, size, tol):
    # Smooth shading plus mid-frequency texture, as PNG (no DCT-scale decode): below
    # ANTIALIAS_MIN_SHRINK the plain kernel is used, above it the antialiased one; both stay
    # close to PIL's always-antialiased bicubic (what CLIP-style preprocessing uses).
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = 40 * np.sin(x / 3.1) * np.cos(y / 4.3)
    base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (width + height)], -1)
    arr = (base + 28 + texture[..., None]).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = str(tmp_path / "png")
    write_records(out, [_record(0, image_bytes=buf.getvalue(), width=width, height=height,
                                captions=["x"])])
    ours = next(iter(image_dataset(out, image_size=size, batch_size=1)))["images"][0]
    pil = np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC), np.float32)
    assert np.abs(ours.numpy() - pil).mean() < tol


@pytest.mark.parametrize("kw", [dict(all_captions=True, seed=3, epoch=1),
                                dict(all_captions=False, seed=0, epoch=0, skip_batches=2),
                                dict(all_captions=True, seed=1, epoch=4, num_shards=2,
                                     shard_index=1),
                                dict(all_captions=True, shuffle=False)])
def test_record_index_gives_the_same_order_without_reading_records(tmp_path, kw):
    # uneven shards and caption counts: the in-memory order must be the records' order
    out = str(tmp_path / "uneven")
    write_records(out, [_record(i, captions=[f"image {i} caption {j}" for j in range(1 + i % 4)])
                        for i in range(37)], shard_size=7)
    index = RecordIndex(out)
    assert index.counts == [7, 7, 7, 7, 7, 2] and index.num_captions.max() == 4

    def order(**extra):
        return [(b["image_index"].numpy().tolist(), b["caption_index"].numpy().tolist())
                for b in pair_order(out, batch_size=5, **kw, **extra)]

    from_records = order()
    assert len(from_records) > 3
    assert order(index=index) == from_records


def test_record_index_refuses_other_records_and_names_blank_captions(tmp_path, records_dir):
    out = str(tmp_path / "blank")
    write_records(out, [_record(i) for i in range(4)] + [_record(4, captions=["  "])])
    with pytest.raises(schema.RecordsError, match="image/id=.*empty caption"):
        RecordIndex(out)
    other = RecordIndex(records_dir)
    write_records(str(tmp_path / "ok"), [_record(i) for i in range(3)])
    with pytest.raises(ValueError, match="does not match"):
        pair_order(str(tmp_path / "ok"), batch_size=2, index=other)


@pytest.mark.parametrize("seed,epoch", [(0, 0), (5, 2), (-3, 123456789012), (2**40, 7)])
def test_numpy_draws_equal_tensorflow_stateless_draws(seed, epoch):
    # the in-memory order re-computes pair_dataset's per-element tf.random draws in NumPy
    rng = np.random.default_rng(seed & 0xFFFF)
    index = np.concatenate([[0, 1, 2**31, -1], rng.integers(-2**62, 2**62, 40)])
    num_captions = rng.integers(1, 9, len(index))
    draw = np_caption_draw(seed, epoch, index, num_captions)
    keys = np_shuffle_key(seed, epoch, index, 3)
    for i, (ix, n) in enumerate(zip(index, num_captions)):
        key = element_key(seed, epoch, tf.constant(ix, tf.int64), CAPTION)
        assert draw[i] == tf.random.stateless_uniform(
            [], key, minval=0, maxval=tf.constant(n, tf.int64), dtype=tf.int64,
            alg=RNG_ALG).numpy()
        key = element_key(seed, epoch, tf.constant(ix, tf.int64), SHUFFLE, 3)
        assert keys[i] == tf.random.stateless_uniform(
            [], key, minval=None, maxval=None, dtype=tf.int64, alg=RNG_ALG).numpy()
    assert 0 <= draw.min() and (draw < num_captions).all()


def test_interleaved_positions_equal_tf_data_interleave():
    rng = np.random.default_rng(0)
    for trial in range(40):
        counts = rng.integers(0, 12 if trial % 2 else 60, int(rng.integers(1, 12))).tolist()
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        offsets = [int(rng.integers(0, n)) if n else 0 for n in counts]
        cycle = int(rng.choice([1, 2, 3, 8]))
        shards = tf.data.Dataset.from_tensor_slices(
            (tf.constant(starts, tf.int64), tf.constant(counts, tf.int64),
             tf.constant(offsets, tf.int64)))

        def read(start, count, offset):
            return tf.data.Dataset.range(start + offset, start + count).concatenate(
                tf.data.Dataset.range(start, start + offset))

        c = min(cycle, len(counts))  # as record_stream reads shards
        ds = shards.flat_map(read) if c == 1 else shards.interleave(
            read, cycle_length=c, block_length=1, num_parallel_calls=min(c, 4),
            deterministic=True)
        expected = list(ds.as_numpy_iterator())
        got = _interleaved_positions(starts, counts, offsets, cycle)
        assert got.tolist() == expected, (counts, offsets, cycle)


def test_pair_order_arrays_match_pair_order(tmp_path):
    out = str(tmp_path / "uneven")
    write_records(out, [_record(i, captions=[f"image {i} caption {j}" for j in range(1 + i % 3)])
                        for i in range(29)], shard_size=6)
    index = RecordIndex(out)
    for kw in (dict(all_captions=True, seed=2, epoch=3), dict(skip_batches=1, epoch=1)):
        batches = list(pair_order(out, batch_size=4, **kw))
        for arrays in (pair_order_arrays(out, batch_size=4, index=index, **kw),
                       pair_order_arrays(out, batch_size=4, **kw)):
            assert arrays["image_index"].shape == (len(batches), 4)
            for k in ("image_index", "caption_index"):
                np.testing.assert_array_equal(arrays[k], np.stack([b[k].numpy()
                                                                   for b in batches]))
