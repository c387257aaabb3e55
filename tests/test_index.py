"""The on-disk embedding index: build, update, resume, exact and faiss search (fake encoder).

`FakeEncoder` and `make_images` are also used by test_retrieval.py and test_server.py.
"""

import hashlib
import json
import os
import re

import numpy as np
import pytest

from dualencoder.search.build import build_index
from dualencoder.search.errors import ImageAccessError, RetrievalError
from dualencoder.search.index import check_k, check_query, EmbeddingIndex
from dualencoder.search.sources import decode_image, ImageFolder
from dualencoder.search.store import check_fingerprint, write_embeddings_index
from dualencoder.search import backends as search_lib


class FakeEncoder:
    """A deterministic Encoder-protocol stand-in: random projections of pixels / hashed words.

    Images: 8x8 average-pooled pixels times a fixed random matrix. Texts: the sum of one fixed
    random vector per word (words seeded by their hash). Counts `encode_images` calls.
    """

    def __init__(self, dim=16, image_size=32, seed=0, fail_after=None):
        self.dim, self.image_size, self.seed = dim, image_size, seed
        rng = np.random.default_rng(seed)
        self.proj = rng.standard_normal((8 * 8 * 3, dim)).astype(np.float32)
        self.image_calls = 0
        self.images_seen = 0
        self.text_calls = 0
        self.fail_after = fail_after

    def fingerprint(self):
        return f"fake-encoder-{self.dim}-{self.image_size}-{self.seed}"

    def encode_images(self, images):
        images = np.asarray(images, dtype=np.float32)
        assert images.shape[1:] == (self.image_size, self.image_size, 3), images.shape
        if self.fail_after is not None and self.image_calls >= self.fail_after:
            raise KeyboardInterrupt("injected interruption")
        self.image_calls += 1
        self.images_seen += len(images)
        b, s = images.shape[0], self.image_size
        pooled = images.reshape(b, 8, s // 8, 8, s // 8, 3).mean(axis=(2, 4)) / 255.0 - 0.5
        out = pooled.reshape(b, -1) @ self.proj
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def word_vector(self, word):
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{word}".encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode_texts(self, texts):
        self.text_calls += 1
        out = np.stack([sum((self.word_vector(w) for w in t.lower().split()),
                            np.zeros(self.dim, np.float32)) + 1e-6 for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_image(path, seed, size=40, fmt=None):
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_images(root, n, start=0):
    """n small random images under root (mixed formats, nested folders); returns rel paths."""
    exts = ["png", "jpg", "bmp", "webp"]
    rels = []
    for i in range(start, start + n):
        rel = f"{'sub/' if i % 3 == 0 else ''}img{i:03d}.{exts[i % len(exts)]}"
        write_image(os.path.join(root, rel), seed=i)
        rels.append(rel)
    return rels


def index_paths(index_dir):
    return sorted(EmbeddingIndex.open(index_dir).paths)


def test_build_update_remove_round_trip(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    rels = make_images(images, 10)
    (images / "notes.txt").write_text("not an image")
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")
    enc = FakeEncoder()
    report = build_index(enc, out, images=images, chunk_size=4, batch_size=3,
                         progress=False)
    assert report.total == 10 and report.embedded == 10
    assert [s["path"] for s in report.skipped] == ["broken.jpg"]
    assert index_paths(out) == sorted(rels)
    state = json.loads((out / "state.json").read_text())
    assert state["complete"] and state["dtype"] == "float16" and state["dim"] == 16
    assert state["fingerprint"] == enc.fingerprint()
    assert sorted(f for f in os.listdir(out) if f.startswith("chunk-")) == \
        [c["file"] for c in state["chunks"]]

    # The stored embedding of each image is the encoder's (to float16 precision).
    idx = EmbeddingIndex.open(out)
    px = decode_image((images / idx.paths[0]).read_bytes(), enc.image_size)
    np.testing.assert_allclose(idx.embeddings[0], enc.encode_images(px[None])[0], atol=2e-3)

    # A complete index is not rebuilt silently.
    with pytest.raises(RetrievalError, match="--update"):
        build_index(enc, out, images=images, progress=False)

    # Nothing changed: update embeds nothing (the broken file is not retried).
    enc2 = FakeEncoder()
    report = build_index(enc2, out, images=images, update=True, progress=False)
    assert report.embedded == 0 and enc2.image_calls == 0 and report.total == 10
    assert json.loads((out / "state.json").read_text())["generation"] == state["generation"]

    # Add 2, change 1 (content and mtime), delete 2.
    make_images(images, 2, start=10)
    write_image(str(images / rels[1]), seed=999)
    os.utime(images / rels[1], ns=(1_000_000_000, 1_000_000_000))
    os.remove(images / rels[2])
    os.remove(images / rels[5])
    enc3 = FakeEncoder()
    report = build_index(enc3, out, images=images, update=True, chunk_size=4,
                         progress=False)
    assert (report.embedded, report.changed, report.removed) == (3, 1, 2)
    assert enc3.images_seen == 3
    expected = sorted((set(rels) - {rels[2], rels[5]}) | {make_rel(10), make_rel(11)})
    assert index_paths(out) == expected
    idx = EmbeddingIndex.open(out)
    changed = idx.paths.index(rels[1])
    px = decode_image((images / rels[1]).read_bytes(), enc.image_size)
    np.testing.assert_allclose(idx.embeddings[changed], enc.encode_images(px[None])[0], atol=2e-3)
    # No orphan or temporary files are left behind.
    state = json.loads((out / "state.json").read_text())
    assert sorted(f for f in os.listdir(out) if f != "state.json") == \
        sorted(c["file"] for c in state["chunks"])

    # Fixing the broken file gets it indexed on the next update.
    write_image(str(images / "broken.jpg"), seed=5, fmt="JPEG")
    report = build_index(FakeEncoder(), out, images=images, update=True,
                         progress=False)
    assert report.embedded == 1 and report.skipped == []


def make_rel(i):
    exts = ["png", "jpg", "bmp", "webp"]
    return f"{'sub/' if i % 3 == 0 else ''}img{i:03d}.{exts[i % len(exts)]}"


def test_interrupted_build_resumes_without_redoing_chunks(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 23)
    # chunk_size 5, batch 5: one encoder call per chunk; interrupted during the 4th chunk.
    failing = FakeEncoder(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_index(failing, out, images=images, chunk_size=5, batch_size=5,
                    progress=False)
    state = json.loads((out / "state.json").read_text())
    assert not state["complete"] and state["count"] == 15 and len(state["chunks"]) == 3
    with pytest.raises(RetrievalError, match="incomplete"):
        EmbeddingIndex.open(out)
    # A crash between a chunk write and the state commit leaves an orphan: it is dropped.
    (out / "chunk-00099.npz").write_bytes(b"orphan")
    (out / "state.json.tmp-1").write_text("{}")

    enc = FakeEncoder()
    report = build_index(enc, out, images=images, chunk_size=5, batch_size=5,
                         progress=False)
    assert report.resumed and report.kept == 15 and report.embedded == 8
    assert enc.images_seen == 8 and enc.image_calls == 2
    idx = EmbeddingIndex.open(out)
    assert len(idx.paths) == len(set(idx.paths)) == 23
    assert not (out / "chunk-00099.npz").exists() and not (out / "state.json.tmp-1").exists()
    # Same embeddings as an uninterrupted build.
    ref_out = tmp_path / "ref"
    build_index(FakeEncoder(), ref_out, images=images, chunk_size=5, progress=False)
    ref = EmbeddingIndex.open(ref_out)
    order = [ref.paths.index(p) for p in idx.paths]
    np.testing.assert_array_equal(idx.embeddings, ref.embeddings[order])


def test_fingerprint_and_source_mismatch(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 3)
    build_index(FakeEncoder(), out, images=images, progress=False)
    with pytest.raises(RetrievalError, match="another model"):
        build_index(FakeEncoder(seed=1), out, images=images, update=True,
                    progress=False)
    idx = EmbeddingIndex.open(out)
    with pytest.raises(RetrievalError, match="different model"):
        check_fingerprint(idx.state, FakeEncoder(seed=1), out)
    check_fingerprint(idx.state, FakeEncoder(), out)
    other = tmp_path / "other"
    make_images(other, 1)
    with pytest.raises(RetrievalError, match="another --out"):
        build_index(FakeEncoder(), out, images=other, update=True, progress=False)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(RetrievalError, match="does not exist"):
        EmbeddingIndex.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrievalError, match="no state.json"):
        EmbeddingIndex.open(tmp_path / "empty")
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 6)
    build_index(FakeEncoder(), out, images=images, chunk_size=2, progress=False)
    os.remove(out / "chunk-00001.npz")
    with pytest.raises(RetrievalError, match="missing 1 chunk file.*chunk-00001.npz"):
        EmbeddingIndex.open(out)


def test_image_access_refuses_traversal(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 2)
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", images / "link.png")
    folder = ImageFolder(images)
    for bad in ["../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png"), "link.png",
                "", "a\x00b"]:
        with pytest.raises(ImageAccessError):
            folder.read_bytes(bad)
    assert folder.read_bytes("img001.jpg")[:2] == b"\xff\xd8"
    build_index(FakeEncoder(), out, images=images, progress=False)
    idx = EmbeddingIndex.open(out)
    # The link points outside the folder: it is skipped at indexing and never served.
    assert "link.png" not in idx.paths
    for bad in ["-1", "99", "x", "../0"]:
        with pytest.raises(ImageAccessError):
            idx.image_bytes(bad)
    data, path = idx.image_bytes(0)
    assert data == (images / path).read_bytes()


def test_check_k_and_query():
    assert check_k(3) == 3 and check_k("10") == 10
    for bad in [0, -1, "0", "abc", "1.5", None, ""]:
        with pytest.raises(RetrievalError, match="k must be"):
            check_k(bad)
    for bad in ["", "   ", None]:
        with pytest.raises(RetrievalError, match="empty query"):
            check_query(bad)


@pytest.mark.parametrize("n,q,k,max_scores", [(1000, 1, 10, 1 << 24), (1000, 7, 5, 300),
                                              (50, 3, 80, 1 << 24), (997, 33, 1, 4096),
                                              (5000, 40, 7, 20_000),
                                              (300_000, 2, 10, 1 << 24)])
@pytest.mark.parametrize("engine", ["numpy", "fp16"])
def test_exact_search_matches_brute_force(n, q, k, max_scores, engine):
    if engine == "fp16" and not search_lib.faiss_available():
        pytest.skip("the fp16 exact engine needs faiss-cpu (pip install -e '.[index]')")
    rng = np.random.default_rng(n + q)
    emb = rng.standard_normal((n, 24)).astype(np.float16 if engine == "fp16" else np.float32)
    queries = rng.standard_normal((q, 24)).astype(np.float32)
    searcher = search_lib.ExactSearcher(emb, max_scores=max_scores, engine=engine, threads=3)
    assert searcher.engine == engine and len(searcher) == n
    scores, ids = searcher.search(queries, k)
    full = queries @ emb.astype(np.float32).T  # the stored values, as float32
    ref = np.argsort(-full, axis=1, kind="stable")[:, :min(k, n)]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ref, 1), rtol=1e-5, atol=1e-5)


def test_exact_engine_auto_choice():
    emb16 = np.eye(4, dtype=np.float16)
    expected = "fp16" if search_lib.faiss_available() else "numpy"
    assert search_lib.ExactSearcher(emb16).engine == expected
    assert search_lib.ExactSearcher(emb16.astype(np.float32)).engine == "numpy"
    with pytest.raises(ValueError, match="engine must be"):
        search_lib.ExactSearcher(emb16, engine="gpu")


def test_index_search_returns_the_image_itself(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 12)
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    idx = EmbeddingIndex.open(out)
    hits = idx.search(idx.embeddings[[4, 7]], k=3)
    assert [h[0].id for h in hits] == [4, 7]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-3)
    assert all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:]))
    assert len(idx.search(idx.embeddings[0], k=100)[0]) == 12


def clustered(n, d, clusters, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_recall_and_sidecar(tmp_path, kind):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e '.[index]')")
    emb = clustered(5000, 32, 50, seed=1)
    out = tmp_path / "index"
    write_embeddings_index(out, emb, [f"v{i}" for i in range(len(emb))],
                           fingerprint="f", chunk_size=1500)
    idx = EmbeddingIndex.open(out)
    messages = []
    searcher = search_lib.load_or_build_faiss(str(out), idx.embeddings, idx.state["generation"],
                                              kind=kind, log=messages.append)
    assert searcher.info["recall_at_10"] >= 0.95
    assert any(re.search(r"recall@10 vs exact 0\.9\d|recall@10 vs exact 1\.0", m)
               for m in messages)
    queries = search_lib.sample_queries(idx.embeddings, 100, seed=7)
    _, truth = idx.searcher("exact").search(queries, 10)
    _, got = searcher.search(queries, 10)
    assert search_lib.recall_at_k(got, truth, 10) >= 0.9
    # Saved beside the index and reused; a new generation makes it stale.
    assert (out / f"faiss-{kind}.index").exists()
    again = search_lib.FaissSearcher.load(str(out), idx.state["generation"], kind)
    assert again is not None and again.info == {**searcher.info, "file": f"faiss-{kind}.index",
                                                "generation": idx.state["generation"]}
    assert search_lib.FaissSearcher.load(str(out), idx.state["generation"] + 1) is None
