"""Losses against NumPy references: values and gradients (finite differences)."""

import numpy as np
import pytest
import tensorflow as tf

from dualencoder import losses

# ---------------------------------------------------------------- references


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _softmax(x):
    return np.exp(_log_softmax(x))


def _positives(index, batch):
    if index is None:
        return np.eye(batch)
    index = np.asarray(index)
    return (index[:, None] == index[None, :]).astype(np.float64)


def ref_clip(img, txt, scale, index=None, bias=None):
    logits = scale * img @ txt.T
    pos = _positives(index, len(img))
    targets = pos / pos.sum(axis=1, keepdims=True)
    i2t = -(targets * _log_softmax(logits)).sum(axis=1).mean()
    t2i = -(targets.T * _log_softmax(logits.T)).sum(axis=1).mean()
    return (i2t + t2i) / 2


def ref_soft(img, txt, scale, index=None, bias=None):
    # keras.io "nl_image_search": logits = T I^T / tau,
    # targets = softmax((I I^T + T T^T) / (2 tau)).
    logits = txt @ img.T * scale
    targets = _softmax((img @ img.T + txt @ txt.T) / 2 * scale)
    captions = -(targets * _log_softmax(logits)).sum(axis=1).mean()
    images = -(targets.T * _log_softmax(logits.T)).sum(axis=1).mean()
    return (captions + images) / 2


def ref_siglip(img, txt, scale, index=None, bias=0.0):
    logits = scale * img @ txt.T + bias
    labels = 2 * _positives(index, len(img)) - 1
    # -log sigmoid(z) = log(1 + exp(-z))
    return np.logaddexp(0.0, -labels * logits).sum() / len(img)


def ref_max_violation(img, txt, scale=None, index=None, bias=None, margin=0.2):
    scores = img @ txt.T
    pos = _positives(index, len(img)).astype(bool)
    total = 0.0
    for i in range(len(img)):
        neg_t = [scores[i, j] for j in range(len(img)) if not pos[i, j]]
        neg_i = [scores[j, i] for j in range(len(img)) if not pos[j, i]]
        if neg_t:
            total += max(0.0, margin + max(neg_t) - scores[i, i])
        if neg_i:
            total += max(0.0, margin + max(neg_i) - scores[i, i])
    return total / len(img)


REFERENCES = {
    "clip": ref_clip,
    "soft": ref_soft,
    "siglip": ref_siglip,
    "max_violation": ref_max_violation,
}

# ---------------------------------------------------------------- helpers


def _embeddings(batch=6, dim=5, seed=0, correlated=True):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(batch, dim))
    txt = rng.normal(size=(batch, dim)) + (2.0 * img if correlated else 0.0)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img, txt


def _numeric_grad(fn, x, eps=1e-6):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = fn(x)
        flat[k] = old - eps
        down = fn(x)
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


def _check(name, index, scale=7.0, bias=-2.0):
    img, txt = _embeddings()
    ref = REFERENCES[name]
    fn = losses.get_loss(name)
    kwargs = {"index": index, "bias": bias}

    t_img = tf.Variable(img, dtype=tf.float32)
    t_txt = tf.Variable(txt, dtype=tf.float32)
    t_scale = tf.Variable(scale, dtype=tf.float32)
    t_bias = tf.Variable(bias, dtype=tf.float32)
    t_index = None if index is None else tf.constant(index, tf.int64)
    with tf.GradientTape() as tape:
        value = fn(t_img, t_txt, t_scale, image_index=t_index, bias=t_bias)
    g_img, g_txt, g_scale, g_bias = tape.gradient(
        value, [t_img, t_txt, t_scale, t_bias]
    )
    assert value.dtype == tf.float32
    np.testing.assert_allclose(
        float(value), ref(img, txt, scale, **kwargs), rtol=1e-5, atol=1e-6
    )

    num_img = _numeric_grad(lambda x: ref(x, txt, scale, **kwargs), img)
    num_txt = _numeric_grad(lambda x: ref(img, x, scale, **kwargs), txt)
    np.testing.assert_allclose(g_img.numpy(), num_img, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(g_txt.numpy(), num_txt, rtol=1e-3, atol=1e-5)
    if name == "max_violation":
        assert g_scale is None  # no temperature in VSE++
    else:
        num_scale = _numeric_grad(
            lambda s: ref(img, txt, float(s), **kwargs), np.array(scale)
        )
        np.testing.assert_allclose(float(g_scale), float(num_scale), rtol=1e-3, atol=1e-6)
    if name == "siglip":
        num_bias = _numeric_grad(
            lambda b: ref(img, txt, scale, index=index, bias=float(b)), np.array(bias)
        )
        np.testing.assert_allclose(float(g_bias), float(num_bias), rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------- tests

MULTI_INDEX = [3, 1, 3, 2, 1, 3]  # images 3 and 1 appear several times


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("index", [None, [0, 1, 2, 3, 4, 5], MULTI_INDEX], ids=["none", "distinct", "multi"])
def test_value_and_gradients_match_numpy(name, index):
    _check(name, index)


def test_multi_positive_targets_are_not_negatives():
    # Two captions of the same image: with multi-positive targets, embeddings
    # that score both captions equally high for that image are optimal (zero
    # gradient); treated as distinct images, the duplicate is a hard negative
    # and the loss pushes the two apart.
    img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    txt = img.copy()

    same = float(losses.clip_loss(img, txt, 20.0, image_index=[7, 7, 9]))
    distinct = float(losses.clip_loss(img, txt, 20.0, image_index=[0, 1, 2]))
    # A perfect model reaches the minimum (the entropy of the uniform
    # 2-positive targets) when duplicates are positives; treated as
    # negatives, the same model is penalised (the minimum would be 0).
    np.testing.assert_allclose(same, 2 / 3 * np.log(2), rtol=1e-4)
    np.testing.assert_allclose(same, ref_clip(img.astype(float), txt.astype(float), 20.0, [7, 7, 9]), atol=1e-6)
    assert distinct > 0.4
    # siglip: same-image pair is labelled +1
    s_same = float(losses.siglip_loss(img, txt, 20.0, [7, 7, 9], bias=-5.0))
    s_dist = float(losses.siglip_loss(img, txt, 20.0, [0, 1, 2], bias=-5.0))
    assert s_same < s_dist
    # max_violation: the duplicate is not a negative
    assert float(losses.max_violation_loss(img, txt, None, [7, 7, 9])) == pytest.approx(0.0)
    # distinct: rows/columns 0 and 1 each violate the margin by exactly 0.2
    assert float(losses.max_violation_loss(img, txt, None, [0, 1, 2])) == pytest.approx(4 * 0.2 / 3)


def test_all_positive_batch_is_finite():
    img, txt = _embeddings(batch=3)
    for name in REFERENCES:
        value = float(losses.get_loss(name)(img, txt, 5.0, image_index=[4, 4, 4], bias=-1.0))
        assert np.isfinite(value)
        np.testing.assert_allclose(value, REFERENCES[name](img, txt, 5.0, index=[4, 4, 4], bias=-1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    img, txt = _embeddings(batch=8, dim=16, seed=3)
    for name in REFERENCES:
        value = losses.get_loss(name)(
            tf.constant(img, dtype), tf.constant(txt, dtype), tf.constant(30.0, dtype),
            image_index=tf.range(8), bias=tf.constant(-3.0, dtype),
        )
        assert value.dtype == tf.float32
        # reference on the rounded inputs
        r_img = tf.cast(tf.constant(img, dtype), tf.float64).numpy()
        r_txt = tf.cast(tf.constant(txt, dtype), tf.float64).numpy()
        expected = REFERENCES[name](r_img, r_txt, 30.0, index=np.arange(8), bias=-3.0)
        np.testing.assert_allclose(float(value), expected, rtol=1e-4, atol=1e-5)


def test_soft_loss_stop_target_gradient():
    img, txt = _embeddings()
    t_img = tf.Variable(img, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        full = losses.soft_loss(t_img, txt, 5.0)
        stopped = losses.soft_loss(t_img, txt, 5.0, stop_target_gradient=True)
    np.testing.assert_allclose(float(full), float(stopped))
    assert not np.allclose(tape.gradient(full, t_img), tape.gradient(stopped, t_img))


def test_get_loss_registry():
    assert losses.get_loss("CLIP") is losses.clip_loss
    assert losses.get_loss("max-violation") is losses.max_violation_loss
    assert losses.get_loss(losses.soft_loss) is losses.soft_loss
    with pytest.raises(ValueError, match="clip.*max_violation.*siglip.*soft"):
        losses.get_loss("triplet")


def test_group_ids_number_images_in_id_order():
    assert [int(g) for g in losses.group_ids([7, 3, 7, 9, 3])] == [1, 0, 1, 2, 0]
    assert [int(g) for g in losses.group_ids(tf.constant([5], tf.int64))] == [0]


def test_clip_loss_matches_explicit_targets_on_a_large_batch():
    # The log-sum-exp form against the textbook one (targets materialised), with many
    # repeated images, as in an all-captions batch.
    rng = np.random.default_rng(1)
    img, txt = _embeddings(batch=256, dim=32, seed=5)
    index = rng.integers(0, 60, 256)
    expected = ref_clip(img.astype(np.float64), txt.astype(np.float64), 12.0, index)
    np.testing.assert_allclose(float(losses.clip_loss(img, txt, 12.0, image_index=index)),
                               expected, rtol=1e-5)
