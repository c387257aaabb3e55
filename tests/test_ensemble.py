"""dualencoder.encoders.ensemble: the mean-cosine ensemble, shared-tower fast path, `ensemble:` specs."""

import numpy as np
import pytest

from dualencoder.encoders import load as load_lib
from dualencoder.encoders.ensemble import EnsembleEncoder, resize_images
from dualencoder.model.saving import save_model
from dualencoder.testing import TINY_CAPTIONS, same_towers_new_heads, tiny_model


def locked_pair(trainable="none"):
    a = tiny_model(image_trainable=trainable, text_trainable=trainable, head="linear")
    b = tiny_model(image_trainable=trainable, text_trainable=trainable, head="linear")
    return a, same_towers_new_heads(a, b)  # same towers, different heads


@pytest.mark.parametrize("trainable", ["none", "all"])
def test_ensemble_is_mean_cosine(trainable):
    a, b = locked_pair(trainable)
    ens = EnsembleEncoder([a, b])
    assert ens.shares_locked_towers == (trainable == "none")
    assert [idx for _, idx in ens.tower_groups("image")] == (
        [[0, 1]] if trainable == "none" else [[0], [1]])
    images = np.random.default_rng(0).uniform(0, 255, (5, a.image_size, a.image_size, 3))
    texts = list(TINY_CAPTIONS[:4])
    ei, et = ens.encode_images(images, batch_size=2), ens.encode_texts(texts, batch_size=3)
    assert ei.shape == (5, 2 * a.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(ei, axis=1), 1.0, rtol=1e-5)
    expected = 0.5 * (a.encode_images(images) @ a.encode_texts(texts).T
                      + b.encode_images(images) @ b.encode_texts(texts).T)
    np.testing.assert_allclose(ei @ et.T, expected, atol=1e-5)


def test_ensemble_errors():
    a = tiny_model()
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleEncoder([a])


@pytest.mark.parametrize("trainable", ["none", "all"])
def test_cross_resolution_ensemble(trainable):
    """Heads over the same towers at 32 and 40 px: the ensemble takes 40 px images and the
    32 px member sees them resized; locked towers run once per image size."""
    a, _ = locked_pair(trainable)
    b = same_towers_new_heads(a, tiny_model(image_trainable=trainable,
                                            text_trainable=trainable, head="linear",
                                            image_size=40))
    ens = EnsembleEncoder([a, b])
    assert ens.image_size == 40
    groups = [idx for _, idx in ens.tower_groups("image")]
    assert groups == [[0], [1]]
    assert [idx for _, idx in ens.tower_groups("text")] == (
        [[0, 1]] if trainable == "none" else [[0], [1]])
    assert ens.shares_locked_towers == (trainable == "none")
    images = np.random.default_rng(0).uniform(0, 255, (5, 40, 40, 3))
    texts = list(TINY_CAPTIONS[:4])
    small = resize_images(images, 32)
    assert small.shape == (5, 32, 32, 3) and small.min() >= 0 and small.max() <= 255
    expected = 0.5 * (a.encode_images(small) @ a.encode_texts(texts).T
                      + b.encode_images(images) @ b.encode_texts(texts).T)
    got = ens.encode_images(images, batch_size=2) @ ens.encode_texts(texts).T
    np.testing.assert_allclose(got, expected, atol=1e-5)
    if trainable == "none":
        with pytest.raises(ValueError, match="one image size"):
            ens.embed_features(np.zeros((1, 64), np.float32), None)


def test_ensemble_spec(tmp_path):
    a, b = locked_pair()
    save_model(a, str(tmp_path / "a")), save_model(b, str(tmp_path / "b"))
    spec = f"ensemble:{tmp_path / 'a'},{tmp_path / 'b'}"
    info = load_lib.check_model_spec(spec)
    assert info["family"] == "ensemble" and len(info["members"]) == 2
    encoder, info = load_lib.load_encoder(spec)
    assert info["fingerprint"] and encoder.image_size == a.image_size
    texts = list(TINY_CAPTIONS[:2])
    expected = EnsembleEncoder([a, b]).encode_texts(texts)
    np.testing.assert_allclose(encoder.encode_texts(texts), expected, atol=1e-5)
    with pytest.raises(load_lib.ModelSpecError, match="at least two"):
        load_lib.check_model_spec(f"ensemble:{tmp_path / 'a'}")
    with pytest.raises(load_lib.ModelSpecError, match="no such model"):
        load_lib.check_model_spec(f"ensemble:{tmp_path / 'a'},{tmp_path / 'nope'}")
