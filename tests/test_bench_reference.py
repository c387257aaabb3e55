"""bench/reference/keras_io_train_step.py: the keras-io soft-target loss against a NumPy
formula, and one training step of the reference DualEncoder with tiny towers."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from bench.reference import keras_io_train_step as ref  # noqa: E402

SEQ = 12


def numpy_keras_io_loss(captions, images, temperature):
    """keras-io: logits = C I^T / t; targets = softmax((C C^T + I I^T) / 2t); mean of the
    categorical cross-entropies of captions (rows) and images (columns)."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def cross_entropy(targets, logits):
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
        return -(targets * log_probs).sum(-1)

    c, i = captions.astype(np.float64), images.astype(np.float64)
    logits = c @ i.T / temperature
    targets = softmax((c @ c.T + i @ i.T) / (2 * temperature))
    return float(np.mean((cross_entropy(targets, logits)
                          + cross_entropy(targets.T, logits.T)) / 2))


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_loss_matches_numpy_formula(temperature):
    rng = np.random.default_rng(0)
    captions = rng.normal(size=(6, 8)).astype("float32") * 0.3
    images = rng.normal(size=(6, 8)).astype("float32") * 0.3
    got = float(ref.keras_io_loss(tf.constant(captions), tf.constant(images), temperature))
    want = numpy_keras_io_loss(captions, images, temperature)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    # the targets are row-softmaxed: swapping the towers is a different loss
    swapped = float(ref.keras_io_loss(tf.constant(images), tf.constant(captions), temperature))
    assert swapped == pytest.approx(numpy_keras_io_loss(images, captions, temperature),
                                    rel=1e-4, abs=1e-5)


def test_loss_agrees_with_project_soft_loss():
    from dualencoder import losses

    rng = np.random.default_rng(1)
    captions = rng.normal(size=(5, 4)).astype("float32")
    images = rng.normal(size=(5, 4)).astype("float32")
    ours = float(losses.soft_loss(images, captions, 1 / 0.5))
    assert float(ref.keras_io_loss(captions, images, 0.5)) == pytest.approx(ours, rel=1e-5)


def tiny_reference(temperature=0.05):
    import keras_hub

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    cnn = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny_cnn")
    bert = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                         hidden_dim=16, intermediate_dim=32, dropout=0.0,
                                         max_sequence_length=SEQ)
    return ref.build_reference(32, image_backbone=cnn, text_backbone=bert,
                               preprocess_input=lambda t: t / 127.5 - 1.0,
                               sequence_length=SEQ, projection_dims=8, dropout_rate=0.0,
                               temperature=temperature)


def tiny_features(batch=4):
    rng = np.random.default_rng(2)
    lengths = rng.integers(3, SEQ, batch)
    mask = np.arange(SEQ)[None, :] < lengths[:, None]
    return {"image": tf.constant(rng.uniform(0, 255, (batch, 32, 32, 3)).astype("float32")),
            "token_ids": tf.constant(np.where(mask, rng.integers(1, 50, (batch, SEQ)), 0)
                                     .astype("int32")),
            "padding_mask": tf.constant(mask)}


def test_one_train_step_computes_the_loss_and_updates_both_towers():
    model = tiny_reference()
    features = tiny_features()
    assert model.jit_compile is False
    # dropout 0 and the same batch: the step's forward pass is this one
    captions, images = model(features, training=True)
    want = numpy_keras_io_loss(np.asarray(captions), np.asarray(images), 0.05)
    before = [np.array(v) for v in model.trainable_variables]
    names = [v.path for v in model.trainable_variables]
    assert any("tiny_cnn" in n or "conv2d" in n for n in names)
    assert any("bert" in n or "transformer" in n for n in names)
    model.make_train_function()
    logs = model.train_function(iter(tf.data.Dataset.from_tensors(features).repeat()))
    assert float(logs["loss"]) == pytest.approx(want, rel=1e-4, abs=1e-5)
    after = [np.array(v) for v in model.trainable_variables]
    changed = {n for n, a, b in zip(names, before, after) if not np.array_equal(a, b)}
    unused = {n for n in names if "pooled_dense" in n}
    assert not unused  # the unused BERT pooler is frozen, not left without gradients
    assert changed == set(names)


def test_fit_runs_and_text_pooling_choices():
    model = tiny_reference(temperature=1.0)
    history = model.fit(tf.data.Dataset.from_tensors(tiny_features()).repeat(2), epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    with pytest.raises(ValueError, match="pooling"):
        import keras_hub

        bert = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=SEQ)
        ref.create_text_encoder(bert, SEQ, pooling="cls")
