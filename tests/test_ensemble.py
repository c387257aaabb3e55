"""dualencoder.ensemble: the mean-cosine ensemble, shared-tower fast path, `ensemble:` specs."""

import numpy as np
import pytest

from dualencoder import evaluation
from dualencoder.ensemble import EnsembleEncoder
from dualencoder.testing import TINY_CAPTIONS, same_towers_new_heads, tiny_model


def locked_pair(trainable="none"):
    a = tiny_model(image_trainable=trainable, text_trainable=trainable, head="linear")
    b = tiny_model(image_trainable=trainable, text_trainable=trainable, head="linear")
    return a, same_towers_new_heads(a, b)  # same towers, different heads


@pytest.mark.parametrize("trainable", ["none", "all"])
def test_ensemble_is_mean_cosine(trainable):
    a, b = locked_pair(trainable)
    ens = EnsembleEncoder([a, b])
    assert ens._shared["image"] == (trainable == "none")
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
    with pytest.raises(ValueError, match="different image sizes"):
        EnsembleEncoder([a, tiny_model(image_size=40)])


def test_ensemble_spec(tmp_path):
    a, b = locked_pair()
    a.save_dir(str(tmp_path / "a")), b.save_dir(str(tmp_path / "b"))
    spec = f"ensemble:{tmp_path / 'a'},{tmp_path / 'b'}"
    info = evaluation.check_model_spec(spec)
    assert info["family"] == "ensemble" and len(info["members"]) == 2
    encoder, info = evaluation.load_encoder(spec)
    assert info["fingerprint"] and encoder.image_size == a.image_size
    texts = list(TINY_CAPTIONS[:2])
    expected = EnsembleEncoder([a, b]).encode_texts(texts)
    np.testing.assert_allclose(encoder.encode_texts(texts), expected, atol=1e-5)
    with pytest.raises(evaluation.EvaluationError, match="at least two"):
        evaluation.check_model_spec(f"ensemble:{tmp_path / 'a'}")
    with pytest.raises(evaluation.EvaluationError, match="no such model"):
        evaluation.check_model_spec(f"ensemble:{tmp_path / 'a'},{tmp_path / 'nope'}")
