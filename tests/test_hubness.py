"""CSLS hubness correction: exact top-k means, score algebra, a hub that CSLS demotes."""

import numpy as np
import pytest

from dualencoder import hubness as H
from dualencoder import metrics as M


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_mean_topk_similarity_equals_brute_force(chunk):
    rng = np.random.default_rng(0)
    items, bank = _unit(rng.normal(size=(11, 5))), _unit(rng.normal(size=(17, 5)))
    for k in (1, 4, 17):
        want = np.sort(items @ bank.T, axis=1)[:, -k:].mean(axis=1)
        got = H.mean_topk_similarity(items, bank, k, chunk=chunk)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_mean_topk_similarity_rejects_bad_input():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="k=4"):
        H.mean_topk_similarity(a, a, 4)
    with pytest.raises(ValueError, match="k=0"):
        H.mean_topk_similarity(a, a, 0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        H.mean_topk_similarity(a, np.zeros((3, 5), np.float32), 1)


def test_csls_embeddings_give_csls_scores():
    rng = np.random.default_rng(1)
    img, txt = _unit(rng.normal(size=(4, 6))), _unit(rng.normal(size=(9, 6)))
    ri, rt = rng.uniform(size=4).astype(np.float32), rng.uniform(size=9).astype(np.float32)
    a, b = H.csls_embeddings(img, txt, ri, rt)
    assert a.shape == (4, 8) and b.shape == (9, 8)
    np.testing.assert_allclose(a @ b.T, 2 * img @ txt.T - ri[:, None] - rt[None, :],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one penalty"):
        H.csls_embeddings(img, txt, ri[:3], rt)


def test_csls_against_a_training_bank_demotes_a_hub():
    """Captions share a common offset (as text embeddings often do), so a gallery image on
    that offset wins many text queries by cosine; its penalty (its closeness to the bank's
    captions) takes those wins away and text->image R@1 recovers."""
    rng = np.random.default_rng(2)
    d, n = 16, 40
    offset = _unit(rng.normal(size=(1, d)))

    def pairs(count):
        raw = rng.normal(size=(count, d))
        return _unit(raw), _unit(raw + 4.0 * offset + 0.5 * rng.normal(size=(count, d)))

    gal_img, gal_txt = pairs(n)
    gal_img[0] = offset[0]  # the hub
    bank_img, bank_txt = pairs(200)  # training pairs: never the gallery
    owner = np.arange(n)
    _, plain_t2i = M.retrieval_ranks(gal_img, gal_txt, owner)
    a, b = H.csls_embeddings(gal_img, gal_txt,
                             H.mean_topk_similarity(gal_img, bank_txt, 10),
                             H.mean_topk_similarity(gal_txt, bank_img, 10))
    _, csls_t2i = M.retrieval_ranks(a, b, owner)

    def hub_wins(t, i):
        return int(((t @ i.T).argmax(1) == 0).sum())

    assert hub_wins(gal_txt, gal_img) >= 15 and hub_wins(b, a) <= 3
    assert (csls_t2i == 1).sum() >= (plain_t2i == 1).sum() + 15
