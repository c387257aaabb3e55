"""Embedding index under faults: a build or an update interrupted at any commit point, and
photos deleted or changed between updates (fake encoder: no TensorFlow)."""

import os

import numpy as np
import pytest

from dualencoder.search import store
from dualencoder.search.build import build_index
from dualencoder.search.index import EmbeddingIndex
from test_index import FakeEncoder, make_images, write_image


def _open(out):
    idx = EmbeddingIndex.open(out)
    assert len(idx.paths) == len(set(idx.paths)), "duplicate entries"
    return idx


def _by_path(idx):
    return {p: idx.embeddings[i] for i, p in enumerate(idx.paths)}


class Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["before_commit", "encoder"])
@pytest.mark.parametrize("at", [1, 3])
def test_interrupted_build_resumes_without_duplicates(tmp_path, monkeypatch, where, at):
    images, out = tmp_path / "images", tmp_path / "index"
    rels = make_images(images, 17)
    if where == "encoder":  # interrupted while embedding chunk `at`
        enc = FakeEncoder(fail_after=at)
        exc = KeyboardInterrupt
    else:  # chunk `at` written, killed before state.json lists it (an orphan chunk)
        enc, exc = FakeEncoder(), Crash
        real, calls = store.commit, {"n": 0}

        def commit(index_dir, state, complete):
            calls["n"] += 1
            if calls["n"] == at + 1:  # the first commit is the empty start state
                raise Crash()
            return real(index_dir, state, complete)

        monkeypatch.setattr(store, "commit", commit)
    with pytest.raises(exc):
        build_index(enc, out, images=images, chunk_size=4, batch_size=4,
                    progress=False)
    monkeypatch.undo()
    state = store.read_state(out)
    assert not state["complete"]
    committed = state["count"]

    enc = FakeEncoder()
    report = build_index(enc, out, images=images, chunk_size=4, batch_size=4,
                         progress=False)
    assert report.resumed and report.kept == committed
    assert enc.images_seen == 17 - committed  # committed chunks are not redone
    idx = _open(out)
    assert sorted(idx.paths) == sorted(rels)
    chunk_files = sorted(n for n in os.listdir(out) if n.startswith("chunk-"))
    assert chunk_files == sorted(c["file"] for c in idx.state["chunks"])  # no orphans

    ref = tmp_path / "ref"
    build_index(FakeEncoder(), ref, images=images, chunk_size=4, progress=False)
    want = _by_path(_open(ref))
    for path, emb in _by_path(idx).items():
        np.testing.assert_array_equal(emb, want[path])


def _change(path, seed):
    """New pixels (and a new mtime) at the same path."""
    st = os.stat(path)
    write_image(path, seed=seed, size=48)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))


def test_update_removes_and_refreshes_exactly_the_touched_photos(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    rels = make_images(images, 14)
    build_index(FakeEncoder(), out, images=images, chunk_size=4, progress=False)
    before = _by_path(_open(out))

    deleted, changed = [rels[1], rels[6]], [rels[2], rels[9], rels[13]]
    for rel in deleted:
        os.remove(images / rel)
    for n, rel in enumerate(changed):
        _change(images / rel, seed=100 + n)
    added = make_images(images, 1, start=50)

    enc = FakeEncoder()
    report = build_index(enc, out, images=images, update=True, chunk_size=4,
                         progress=False)
    assert (report.removed, report.changed, report.embedded) == (2, 3, 4)
    assert report.kept == 14 - 2 - 3 and enc.images_seen == 4  # only changed + new embedded
    idx = _open(out)
    after = _by_path(idx)
    assert sorted(after) == sorted(set(rels) - set(deleted) | set(added))
    for rel in set(rels) - set(deleted) - set(changed):
        np.testing.assert_array_equal(after[rel], before[rel])  # untouched rows kept as is
    fresh = tmp_path / "fresh"
    build_index(FakeEncoder(), fresh, images=images, chunk_size=4, progress=False)
    want = _by_path(_open(fresh))
    for rel in changed + added:
        np.testing.assert_array_equal(after[rel], want[rel])  # refreshed from the new pixels
        assert not np.array_equal(after[rel], before.get(rel, after[rel] + 1))

    # An update interrupted midway, then rerun: finishes, no duplicates, same result.
    os.remove(images / rels[0])
    for n, rel in enumerate([rels[3], rels[4], rels[5]]):
        _change(images / rel, seed=200 + n)
    with pytest.raises(KeyboardInterrupt):
        build_index(FakeEncoder(fail_after=0), out, images=images, update=True,
                    chunk_size=1, batch_size=1, progress=False)
    build_index(FakeEncoder(), out, images=images, update=True, chunk_size=1,
                progress=False)
    idx = _open(out)
    fresh2 = tmp_path / "fresh2"
    build_index(FakeEncoder(), fresh2, images=images, chunk_size=4, progress=False)
    want = _by_path(_open(fresh2))
    got = _by_path(idx)
    assert sorted(got) == sorted(want)
    for rel in want:  # float16 storage: batch composition may move the last bit
        np.testing.assert_allclose(got[rel], want[rel], atol=2e-3)
