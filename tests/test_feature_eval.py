"""dualencoder.encoders.locked: evaluating locked-tower models from cached tower features must give
the towers' embeddings, reuse what training cached, and stay out of the way otherwise."""

import json
import os

import numpy as np
import pytest

from dualencoder.cli import evaluate
from dualencoder.cli import train as train_cli
from dualencoder.data import pipeline as data
from dualencoder.data.annotations import read_captions
from dualencoder.encoders import cache as embed_cache
from dualencoder.train import setup
from dualencoder.train import validation
from dualencoder.features import compute as F
from dualencoder.encoders.ensemble import EnsembleEncoder
from dualencoder.encoders.locked import LockedHeads, model_feature_dirs
from dualencoder.testing import same_towers_new_heads
from dualencoder.testing import tiny_locked_run_config as locked_cfg


def tower_embeddings(encoder, records):
    """The reference: every image and caption of `records` through the towers."""
    images, index = [], []
    for batch in data.image_dataset(records, image_size=encoder.image_size, batch_size=16):
        images.append(encoder.encode_images(batch["images"].numpy()))
        index.append(batch["image_index"].numpy())
    texts, _ = read_captions(records)
    return np.concatenate(images), np.concatenate(index), encoder.encode_texts(texts), texts


def second_head(model, cfg):
    return same_towers_new_heads(model, setup.build(cfg), seed=3, scale=0.3)


@pytest.mark.parametrize("ensemble", [False, True])
def test_heads_on_cached_features_equal_the_towers(synthetic_records, tmp_path, ensemble,
                                                  monkeypatch):
    cfg = locked_cfg()
    model = setup.build(cfg)
    encoder = EnsembleEncoder([model, second_head(model, cfg)]) if ensemble else model
    val = synthetic_records["val"]
    want_img, want_index, want_txt, texts = tower_embeddings(encoder, val)

    first = LockedHeads.of(encoder, write_dir=str(tmp_path / "store"))
    got = first.records_images(val, resize_method="bicubic", progress=False)
    assert not got["features_reused"] and os.path.isfile(got["features_path"])
    np.testing.assert_array_equal(got["image_index"], want_index)
    np.testing.assert_allclose(got["embeddings"], want_img, atol=1e-5)
    txt, path, reused = first.records_captions(val, texts, progress=False)
    assert not reused and os.path.isfile(path)
    np.testing.assert_allclose(txt, want_txt, atol=1e-5)
    np.testing.assert_allclose(first.texts(texts[:7]), want_txt[:7], atol=1e-5)

    # a second evaluation reads the stored features (the towers must not run), and a
    # different resize method is a different file
    again = LockedHeads.of(encoder, feature_dirs=[str(tmp_path / "store")])

    def no_towers(*args, **kwargs):
        raise AssertionError("the towers ran although their features were cached")

    with monkeypatch.context() as m:
        m.setattr(F, "compute_image_features", no_towers)
        m.setattr(F, "compute_text_features", no_towers)
        hit = again.records_images(val, resize_method="bicubic", progress=False)
        assert hit["features_reused"]
        np.testing.assert_array_equal(hit["embeddings"], got["embeddings"])
        assert again.records_captions(val, texts, progress=False)[2]
    assert not again.records_images(val, resize_method="bilinear",
                                     progress=False)["features_reused"]


def test_cross_resolution_ensemble_reads_one_feature_file_per_size(synthetic_records,
                                                                    tmp_path):
    cfg = locked_cfg()
    model = setup.build(cfg)
    big = same_towers_new_heads(model, setup.build(locked_cfg("model.image_size=48")), seed=5)
    encoder = EnsembleEncoder([model, second_head(model, cfg), big])
    val = synthetic_records["val"]
    heads = LockedHeads.of(encoder, write_dir=str(tmp_path / "store"))
    got = heads.records_images(val, resize_method="bicubic", progress=False)
    assert len(got["features_path"]) == 2 and len(set(got["features_path"])) == 2
    # the reference: each member through its towers on images resized from the records
    from dualencoder.encoders.ensemble import combine
    per_member = [tower_embeddings(m, val) for m in encoder.members]
    for _, index, _, _ in per_member:
        np.testing.assert_array_equal(index, got["image_index"])
    np.testing.assert_allclose(got["embeddings"], combine([p[0] for p in per_member]),
                               atol=1e-5)
    texts = per_member[0][3]
    txt, path, _ = heads.records_captions(val, texts, progress=False)
    assert isinstance(path, str)  # one text tower for all three members
    np.testing.assert_allclose(txt, combine([p[2] for p in per_member]), atol=1e-5)


def test_training_features_are_found_by_content(synthetic_records, tmp_path):
    cfg = locked_cfg()
    model = setup.build(cfg)
    val = synthetic_records["val"]
    validation.validate(model, cfg, val, feature_dir=str(tmp_path / "train_feats"),
                     log=lambda *_: None)  # how training caches validation features
    heads = LockedHeads.of(model, feature_dirs=[str(tmp_path / "train_feats")])
    got = heads.records_images(val, resize_method=cfg.data.resize_method, progress=False)
    assert got["features_reused"] and got["features_path"].startswith(str(tmp_path))
    # a damaged or foreign file with the right name is not trusted: recomputed
    with open(got["features_path"], "wb") as fh:
        fh.write(b"garbage")
    assert not heads.records_images(val, resize_method=cfg.data.resize_method,
                                    progress=False)["features_reused"]


def test_tuned_text_members_read_cached_images_and_run_their_own_text_tower(
        synthetic_records, tmp_path):
    """LiT members (image locked, text top layer tuned) beside a locked one: images from the
    caches, each tuned member's captions through its own text tower; equal to the towers."""
    cfg = locked_cfg()
    model = setup.build(cfg)
    tuned = same_towers_new_heads(model, setup.build(locked_cfg("model.text_trainable=1")),
                                  seed=4)
    w = tuned.text_tower.trainable_weights[0]
    w.assign(w.numpy() + 0.05)  # its own text tower now
    encoder = EnsembleEncoder([model, tuned])
    val = synthetic_records["val"]
    want_img, want_index, want_txt, texts = tower_embeddings(encoder, val)
    heads = LockedHeads.of(encoder, write_dir=str(tmp_path / "store"))
    assert heads is not None and [idx for _, idx in heads.groups["image"]] == [[0, 1]]
    got = heads.records_images(val, resize_method="bicubic", progress=False)
    np.testing.assert_array_equal(got["image_index"], want_index)
    np.testing.assert_allclose(got["embeddings"], want_img, atol=1e-5)
    txt, _, reused = heads.records_captions(val, texts, progress=False)
    assert not reused
    np.testing.assert_allclose(txt, want_txt, atol=1e-5)


def test_not_for_trained_towers_or_attention_heads():
    assert LockedHeads.of(setup.build(locked_cfg("model.image_trainable=all"))) is None
    assert LockedHeads.of(setup.build(locked_cfg("model.head=attention"))) is None
    assert LockedHeads.of(object()) is None
    cfg = locked_cfg()
    model = setup.build(cfg)
    other = second_head(model, cfg)
    assert LockedHeads.of(EnsembleEncoder([model, other])) is not None
    w = other.image_tower.weights[0]
    w.assign(w.numpy() + 0.01)  # another image tower: one feature file per tower
    heads = LockedHeads.of(EnsembleEncoder([model, other]))
    assert [idx for _, idx in heads.groups["image"]] == [[0], [1]]
    assert [idx for _, idx in heads.groups["text"]] == [[0, 1]]
    trained = setup.build(locked_cfg("model.image_trainable=all"))
    assert LockedHeads.of(EnsembleEncoder([model, trained])) is None


def test_evaluate_reuses_the_training_feature_cache(synthetic_records, tmp_path):
    feats, workdir = str(tmp_path / "features"), str(tmp_path / "run")
    sets = ["model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
            "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
            "model.head=linear", "model.image_trainable=none", "model.text_trainable=none",
            "data.batch_size=16", "optim.epochs=1", "run.val_subset=0",
            f"run.features_dir={feats}"]
    assert train_cli.main(["--records", synthetic_records["train"], "--val-records",
                           synthetic_records["val"], "--workdir", workdir]
                          + [a for s in sets for a in ("--set", s)]) == 0
    assert model_feature_dirs(workdir) == [feats, ]
    assert model_feature_dirs(os.path.join(workdir, "model")) == [feats]
    cached_before = sorted(os.listdir(feats))
    out, cache = str(tmp_path / "eval"), str(tmp_path / "cache")
    assert evaluate.main(["retrieval", "--model", workdir, "--data",
                          f"records:{synthetic_records['val']}", "--out", out,
                          "--cache-dir", cache, "--quiet"]) == 0
    with open(os.path.join(out, "report.json")) as fh:
        report = json.load(fh)
    assert os.path.dirname(report["timing"]["tower_features"]) == feats
    assert sorted(os.listdir(feats)) == cached_before  # nothing recomputed
    assert not os.path.isdir(os.path.join(cache, "features"))

    # the same numbers as running the towers
    import dualencoder
    from dualencoder.eval import metrics

    model = dualencoder.load(os.path.join(workdir, "model"))
    img, index, txt, _ = tower_embeddings(model, synthetic_records["val"])
    _, owner = read_captions(synthetic_records["val"])
    row = {int(i): r for r, i in enumerate(index)}
    want = metrics.retrieval_metrics(img, txt, np.array([row[int(o)] for o in owner]))
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert report["metrics"][direction][f"R@{k}"] == pytest.approx(
                want[direction][f"R@{k}"], abs=0.02), (direction, k)


def test_embed_cache_without_locked_towers_runs_the_encoder(synthetic_records, tmp_path):
    model = setup.build(locked_cfg("model.image_trainable=all"))
    got = embed_cache.embed_images(model, synthetic_records["val"], cache_dir=False,
                                   progress=False)
    assert got["tower_features"] is None
    want_img, want_index, _, _ = tower_embeddings(model, synthetic_records["val"])
    np.testing.assert_array_equal(got["image_index"], want_index)
    np.testing.assert_allclose(got["embeddings"], want_img, atol=1e-5)
