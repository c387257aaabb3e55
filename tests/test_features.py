"""dualencoder.features: the on-disk cache of locked-tower outputs (split per tower), the
length-grouped text encoding, and validation from the cache."""

import os

import numpy as np
import pytest

from dualencoder.model import encoding
from dualencoder.features import compute
from dualencoder.features.pairs import CachedPairs as _CachedPairs
from dualencoder.features.plan import plan_cache
from dualencoder.train import setup
from dualencoder.train import validation
from dualencoder.testing import tiny_locked_run_config


locked_cfg = tiny_locked_run_config


def CachedPairs(model, cfg, records, directory, **kwargs):
    return _CachedPairs(model, cfg, records, directory, plan=plan_cache(cfg), **kwargs)


def arrays(src):
    """The cached tables of `src`, images in record order."""
    return {"image_features": src.image_table, "text_features": src.text_table,
            "image_index": src.image_keys[np.argsort(src.image_rows)]}


def test_length_grouped_text_features_equal_full_length(synthetic_records):
    model = setup.build(locked_cfg())
    texts = ["a red circle", "a small blue square to the left of a large green star " * 2,
             "star", "a yellow triangle above a purple circle", "", "circle circle circle"]
    _, text_fn = encoding.tower_functions(model)
    full = np.asarray(text_fn(texts))
    grouped = encoding.encode_texts_by_length(model, texts, batch_size=2)
    assert grouped.shape == full.shape
    np.testing.assert_allclose(grouped, full, rtol=1e-4, atol=1e-5)
    # batches of every size and trimmed length ran through one trace (no retracing warnings)
    assert text_fn.graph.experimental_get_tracing_count() == 1


def test_image_and_text_caches_are_separate_files(synthetic_records, tmp_path):
    model = setup.build(locked_cfg())
    train = synthetic_records["train"]
    logs = []
    a = CachedPairs(model, locked_cfg(), train, str(tmp_path), log=logs.append)
    names = sorted(os.listdir(tmp_path))
    assert [n.split("-")[0] for n in names] == ["image", "text"], names
    # Another resize method: a new image file, the caption features are reused.
    CachedPairs(model, locked_cfg("data.resize_method=bilinear"), train, str(tmp_path),
                         log=logs.append)
    names2 = sorted(os.listdir(tmp_path))
    assert len(names2) == 3 and sum(n.startswith("text-") for n in names2) == 1
    assert any("reusing cached caption features" in line for line in logs)
    # Rerun: both reused, same arrays.
    b = CachedPairs(model, locked_cfg(), train, str(tmp_path), log=logs.append)
    for key, value in arrays(a).items():
        np.testing.assert_array_equal(value, arrays(b)[key])


def test_damaged_cache_file_is_recomputed(synthetic_records, tmp_path):
    model = setup.build(locked_cfg())
    train = synthetic_records["train"]
    a = CachedPairs(model, locked_cfg(), train, str(tmp_path), log=lambda *_: None)
    image_file = next(p for p in os.listdir(tmp_path) if p.startswith("image-"))
    with open(tmp_path / image_file, "wb") as fh:
        fh.write(b"not a zip file")
    b = CachedPairs(model, locked_cfg(), train, str(tmp_path), log=lambda *_: None)
    np.testing.assert_allclose(arrays(a)["image_features"], arrays(b)["image_features"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("val_subset", [0, 50])
def test_validation_from_disk_cache_matches_towers(synthetic_records, tmp_path, val_subset):
    cfg = locked_cfg(f"run.val_subset={val_subset}")
    model = setup.build(cfg)
    val = synthetic_records["val"]
    expected = validation.validate(model, cfg, val)
    got = validation.validate(model, cfg, val, feature_dir=str(tmp_path), log=lambda *_: None)
    assert sorted(os.listdir(tmp_path))  # the validation features were cached
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-3), key
    again = validation.validate(model, cfg, val, feature_dir=str(tmp_path), log=lambda *_: None)
    assert again == pytest.approx(got)


def test_cached_views_rotate_per_epoch(synthetic_records, tmp_path):
    cfg = locked_cfg("data.cached_views=3", "run.seed=5")
    model = setup.build(cfg)
    train = synthetic_records["train"]
    src = CachedPairs(model, cfg, train, str(tmp_path), log=lambda *_: None)
    assert sum(n.startswith("image-") for n in os.listdir(tmp_path)) == 3
    n = len(arrays(src)["image_index"])
    feats = arrays(src)["image_features"].reshape(3, n, -1)
    assert not np.allclose(feats[0], feats[1]) and not np.allclose(feats[1], feats[2])
    # view 0 is the plain image: the same features as without views
    plain = CachedPairs(model, locked_cfg(), train, str(tmp_path), log=lambda *_: None)
    np.testing.assert_allclose(feats[0], arrays(plain)["image_features"], rtol=1e-6)
    row_of = {int(ix): r for r, ix in enumerate(arrays(src)["image_index"])}
    for epoch in (0, 1):
        batch = next(iter(src.epoch(epoch)))
        for ix, got in zip(batch["image_index"].numpy(), batch["image_features"].numpy()):
            view = (int(ix) + epoch + 5) % 3
            np.testing.assert_allclose(got, feats[view, row_of[int(ix)]], rtol=1e-6)
        # the host batches (one-device training) are the dataset's batches, element for
        # element, and skipping resumes inside them
        host = list(src.host_batches(epoch))
        dataset = [{k: v.numpy() for k, v in b.items()} for b in src.epoch(epoch)]
        assert len(host) == len(dataset) > 1
        for a, b in zip(host, dataset):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        skipped = list(src.host_batches(epoch, skip_batches=1))
        np.testing.assert_array_equal(skipped[0]["image_index"], host[1]["image_index"])
    # the views belong to the data set: another run seed reuses the same files
    before = sorted(os.listdir(tmp_path))
    CachedPairs(model, locked_cfg("data.cached_views=3", "run.seed=6"), train,
                         str(tmp_path), log=lambda *_: None)
    assert sorted(os.listdir(tmp_path)) == before
    # a recomputation gives the same views (fixed crops and flips)
    again = CachedPairs(model, cfg, str(train), str(tmp_path / "other"),
                                 log=lambda *_: None)
    np.testing.assert_allclose(arrays(again)["image_features"], arrays(src)["image_features"],
                               rtol=1e-5, atol=1e-6)


def test_cached_views_need_locked_towers():
    with pytest.raises(Exception, match="data.cached_views=2"):
        plan_cache(locked_cfg("data.cached_views=2", "model.image_trainable=all"))
    with pytest.raises(Exception, match="data.cached_views"):
        locked_cfg("data.cached_views=0")


def test_lowres_views(synthetic_records, tmp_path):
    """`data.lowres_size`: view 1 is the whole image at lowres px (8-bit) enlarged back, view
    2 the same after its crop + flip; their features are cached under their own keys."""
    import tensorflow as tf

    from dualencoder.data import pipeline as data

    train = synthetic_records["train"]
    cfg = locked_cfg("data.cached_views=3", "data.lowres_size=8")
    size = cfg.model.image_size
    kw = dict(image_size=size, batch_size=64, resize_method="bicubic", seed=compute.VIEW_SEED)
    small = next(iter(data.image_dataset(train, image_size=8, batch_size=64)))["images"]
    expected = tf.clip_by_value(tf.image.resize(tf.cast(tf.round(small), tf.uint8),
                                                [size, size], method="bicubic"), 0.0, 255.0)
    view1 = next(iter(data.image_dataset(train, view=1, lowres=8, **kw)))["images"]
    np.testing.assert_allclose(view1.numpy(), expected.numpy(), atol=1e-4)
    view2 = next(iter(data.image_dataset(train, view=2, lowres=8, **kw)))["images"].numpy()
    crop2 = next(iter(data.image_dataset(train, view=2, **kw)))["images"].numpy()
    assert not np.allclose(view2, view1.numpy())  # cropped and flipped
    # view 2 is its full-resolution counterpart's crop, only blurred: closer to it than to
    # the uncropped low-res view
    assert np.abs(view2 - crop2).mean() < np.abs(view1.numpy() - crop2).mean()
    model = setup.build(cfg)
    src = CachedPairs(model, cfg, train, str(tmp_path), log=lambda *_: None)
    n = len(arrays(src)["image_index"])
    feats = arrays(src)["image_features"].reshape(3, n, -1)
    image_fn, _ = encoding.tower_functions(model)
    np.testing.assert_allclose(feats[1][:64], np.asarray(image_fn(view1)), rtol=1e-4, atol=1e-5)
    # other files than the full-resolution crop views (same view numbers)
    CachedPairs(model, locked_cfg("data.cached_views=3"), train, str(tmp_path),
                         log=lambda *_: None)
    assert sum(n.startswith("image-") for n in os.listdir(tmp_path)) == 5


@pytest.mark.parametrize("sets, needle", [
    (["data.lowres_size=8"], "needs data.cached_views >= 2"),
    (["data.cached_views=2", "data.lowres_size=4"], "data.lowres_size=4"),
    (["data.cached_views=2", "data.lowres_size=-1"], "data.lowres_size=-1"),
])
def test_lowres_size_is_checked(sets, needle):
    with pytest.raises(Exception, match=needle):
        locked_cfg(*sets)
