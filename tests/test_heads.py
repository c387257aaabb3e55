"""Projection heads: keras-io MLP / linear, attention pooling, configs, dtypes."""

import keras
import numpy as np
import pytest

from dualencoder.model.heads import AttentionPoolHead, ProjectionHead, build_head


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def test_mlp_head_matches_keras_io_formula():
    head = ProjectionHead(embed_dim=8, num_layers=2, dropout=0.1)
    x = _x(3, 5)
    out = head(x).numpy()
    assert out.shape == (3, 8)
    w = {v.path.split("/", 1)[1]: v.numpy() for v in head.weights}
    h = x @ w["projection/kernel"] + w["projection/bias"]
    for i in range(2):
        y = _gelu(h) @ w[f"dense_{i}/kernel"] + w[f"dense_{i}/bias"]
        z = h + y
        mean, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
        h = (z - mean) / np.sqrt(var + 1e-6) * w[f"layer_norm_{i}/gamma"] + w[f"layer_norm_{i}/beta"]
    np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)


def test_linear_head_is_one_dense():
    head = ProjectionHead(embed_dim=4, kind="linear")
    x = _x(2, 6)
    out = head(x).numpy()
    kernel, bias = head.get_weights()
    np.testing.assert_allclose(out, x @ kernel + bias, rtol=1e-5, atol=1e-6)
    assert len(head.weights) == 2


def test_dropout_only_in_training():
    head = ProjectionHead(embed_dim=16, dropout=0.5)
    x = _x(4, 8)
    np.testing.assert_allclose(head(x), head(x), rtol=1e-6)
    assert not np.allclose(head(x, training=True), head(x, training=False))


@pytest.mark.parametrize(
    "layer",
    [
        lambda: ProjectionHead(embed_dim=8, kind="mlp", num_layers=2, dropout=0.2, name="p"),
        lambda: AttentionPoolHead(embed_dim=8, num_heads=2, num_queries=3, kind="mlp", name="a"),
    ],
    ids=["projection", "attention"],
)
def test_config_round_trip(layer):
    head = layer()
    x = _x(2, 5, 6)
    out = head(x if isinstance(head, AttentionPoolHead) else x[:, 0])
    config = head.get_config()
    clone = head.__class__.from_config(config)
    assert clone.get_config() == config
    # also through Keras serialization (registered classes)
    clone2 = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(head))
    assert clone2.get_config() == config
    clone(x if isinstance(head, AttentionPoolHead) else x[:, 0])
    clone.set_weights(head.get_weights())
    np.testing.assert_allclose(
        clone(x if isinstance(head, AttentionPoolHead) else x[:, 0]), out, rtol=1e-5, atol=1e-6
    )


def test_heads_compute_in_float32_under_mixed_policy():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        head = ProjectionHead(embed_dim=4)
        attention = AttentionPoolHead(embed_dim=4, num_heads=2)
        assert head(_x(2, 6).astype("float16")).dtype == "float32"
        assert attention(_x(2, 3, 3, 8).astype("float16")).dtype == "float32"
        assert all(v.dtype == "float32" for v in head.weights + attention.weights)
    finally:
        keras.config.set_dtype_policy(previous)


def test_attention_pool_over_spatial_map_and_sequence():
    head = AttentionPoolHead(embed_dim=6, num_heads=2)
    assert head(_x(2, 3, 3, 8)).shape == (2, 6)
    # a [B, H, W, C] map is the same as its flattened [B, HW, C] sequence
    x = _x(2, 3, 3, 8)
    np.testing.assert_allclose(head(x), head(x.reshape(2, 9, 8)), rtol=1e-5, atol=1e-6)


def test_attention_pool_respects_padding_mask():
    head = AttentionPoolHead(embed_dim=6, num_heads=4)
    seq = _x(2, 5, 8)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = head({"sequence_output": seq, "padding_mask": mask}).numpy()
    noisy = seq.copy()
    noisy[0, 3:] = 100.0  # garbage in padded positions
    out2 = head({"sequence_output": noisy, "padding_mask": mask}).numpy()
    np.testing.assert_allclose(out, out2, rtol=1e-5, atol=1e-6)
    # the unpadded prefix alone gives the same result
    short = head({"sequence_output": seq[:1, :3], "padding_mask": mask[:1, :3]}).numpy()
    np.testing.assert_allclose(out[:1], short, rtol=1e-5, atol=1e-6)


def test_attention_pool_validates_heads():
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        AttentionPoolHead(embed_dim=4, num_heads=3)(_x(1, 2, 8))


def test_build_head_kinds():
    assert isinstance(build_head("mlp", 8), ProjectionHead)
    assert build_head("linear", 8).kind == "linear"
    assert isinstance(build_head("attention", 8, num_heads=2), AttentionPoolHead)
    with pytest.raises(ValueError, match="valid heads"):
        build_head("transformer", 8)
    with pytest.raises(ValueError):
        ProjectionHead(8, kind="deep")
