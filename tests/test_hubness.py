"""CSLS hubness correction: exact top-k means, score algebra, a hub that CSLS demotes."""

import numpy as np
import pytest

from dualencoder import csls as H
from dualencoder.search import store
from dualencoder.eval import metrics as M


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


def _penalised_index(tmp_path, n=40, dim=8):
    from dualencoder.search import index as index_lib, store

    rng = np.random.default_rng(3)
    emb = _unit(rng.normal(size=(n, dim)))
    store.write_embeddings_index(tmp_path / "idx", emb, [f"im{i}.png" for i in range(n)],
                                 fingerprint="fp", dtype="float32", chunk_size=16)
    state = store.read_state(str(tmp_path / "idx"))
    penalty = rng.uniform(0.0, 0.8, n).astype(np.float32)
    store.save_index_penalties(str(tmp_path / "idx"), penalty, state=state, k=3, bank="bank.txt",
                           num_captions=12)
    return index_lib, emb, penalty


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_index_search_ranks_text_queries_by_csls(tmp_path, backend):
    if backend == "faiss":
        pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e '.[index]')")
    index_lib, emb, penalty = _penalised_index(tmp_path)
    index = index_lib.EmbeddingIndex.open(tmp_path / "idx")
    assert index.has_csls and index.hubness["k"] == 3 and index.hubness_problem is None
    q = _unit(np.random.default_rng(4).normal(size=(5, emb.shape[1])))
    want = q @ emb.T - 0.5 * penalty[None, :]
    for row, hits in zip(want, index.search(q, 7, backend=backend, csls=True)):
        assert [h.id for h in hits] == list(np.argsort(-row, kind="stable")[:7])
        np.testing.assert_allclose([h.score for h in hits], np.sort(row)[::-1][:7], atol=1e-5)
    # cosine when not asked for: a different ranking (the penalties are large)
    plain = index.search(q, 7, backend=backend)
    assert [[h.id for h in hs] for hs in plain] == [list(np.argsort(-r)[:7]) for r in q @ emb.T]
    assert plain != index.search(q, 7, backend=backend, csls=True)


def test_index_penalties_of_another_index_version_are_not_used(tmp_path):
    index_lib, emb, _ = _penalised_index(tmp_path)
    state_path = tmp_path / "idx" / "state.json"
    import json

    state = json.loads(state_path.read_text())
    state["generation"] += 1  # what `retrieval.py index --update` does
    state_path.write_text(json.dumps(state))
    index = index_lib.EmbeddingIndex.open(tmp_path / "idx")
    assert not index.has_csls and "generation" in index.hubness_problem
    assert "retrieval.py hubness" in index.hubness_problem
    q = emb[:2]
    assert index.search(q, 3, csls=True) == index.search(q, 3)  # falls back to cosine
    (tmp_path / "idx" / store.INDEX_PENALTIES).write_bytes(b"garbage")
    index = index_lib.EmbeddingIndex.open(tmp_path / "idx")
    assert not index.has_csls and "unreadable" in index.hubness_problem
    with pytest.raises(ValueError, match="penalties for an index of"):
        store.save_index_penalties(str(tmp_path / "idx"), np.zeros(3), state=state, k=1, bank="b",
                               num_captions=1)
