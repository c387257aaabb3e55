"""A running server picks up `retrieval.py index --update`: every response comes from one
complete generation, even with requests arriving while the update commits (fake encoder)."""

import http.client
import json
import os
import threading
import time

import numpy as np
import pytest

from dualencoder.search import server as server_lib
from dualencoder.search import store
from dualencoder.search.build import build_index
from dualencoder.search.index import EmbeddingIndex
from test_index import FakeEncoder, make_images


@pytest.fixture
def serving():
    started = []

    def start(service):
        httpd = server_lib.make_server(service, "127.0.0.1", 0, quiet=True)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        started.append((httpd, thread))
        return httpd.server_address[1]

    yield start
    for httpd, thread in started:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def test_concurrent_requests_during_an_update_see_one_generation_each(tmp_path, monkeypatch,
                                                                       serving):
    images, out = tmp_path / "images", tmp_path / "index"
    rels = make_images(images, 12)
    enc = FakeEncoder()
    build_index(enc, out, images=images, chunk_size=4, progress=False)
    generations = {}  # every complete generation: its paths in id order

    def record():
        idx = EmbeddingIndex.open(out)
        generations[idx.state["generation"]] = list(idx.paths)

    record()
    first = min(generations)
    port = serving(server_lib.RetrievalService(EmbeddingIndex.open(out), enc))

    deleted = rels[:3]
    for rel in deleted:
        os.remove(images / rel)
    added = make_images(images, 5, start=40)
    real_commit = store.commit

    def commit(index_dir, state, complete):
        real_commit(index_dir, state, complete)
        if complete:
            record()
        time.sleep(0.05)  # requests get to see every commit point

    monkeypatch.setattr(store, "commit", commit)
    searches, images_seen, problems = [], [], []
    stop = threading.Event()

    def hammer(n):
        for i in range(150):  # bounded: at most 150 request pairs per thread
            if stop.is_set():
                return
            status, _, body = get(port, f"/search?q=red+car+{n}&k=100")
            if status != 200:
                problems.append(f"search {status} {body[:200]!r}")
                continue
            data = json.loads(body)
            searches.append(data)
            hit = data["results"][(i + n) % len(data["results"])]
            status, _, body = get(port, hit["url"] + ("&size=32" if i % 2 else ""))
            images_seen.append((data["generation"], hit["id"], hit["path"], status, body, i % 2))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(searches) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    build_index(FakeEncoder(), out, images=images, update=True, chunk_size=2, batch_size=2,
                progress=False)
    final = max(generations)
    while (not any(s["generation"] == final for s in searches)
           and time.monotonic() < deadline and any(t.is_alive() for t in threads)):
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    monkeypatch.undo()

    assert not problems, problems[:5]
    served = {s["generation"] for s in searches}
    assert first in served and final in served and served <= set(generations), served
    for data in searches:  # count, ids and paths all of the response's own generation
        paths = generations[data["generation"]]
        assert data["count"] == len(paths) == len(data["results"])
        assert all(paths[r["id"]] == r["path"] for r in data["results"])
        assert all(r["url"] == f"/image/{r['id']}?g={data['generation']}"
                   for r in data["results"])
    for g, i, path, status, body, thumb in images_seen:
        if path in deleted:
            assert status == 404, (g, path, status)
            continue
        assert status == 200, (g, i, path, status, body[:200])
        if not thumb:
            assert body == (images / path).read_bytes(), (g, i, path)
    # After the update: the new count, new photos found, deleted ones gone.
    _, _, body = get(port, "/health")
    assert json.loads(body)["count"] == 12 - 3 + 5
    _, _, body = get(port, "/search?q=red+car&k=100")
    found = {r["path"] for r in json.loads(body)["results"]}
    assert found == set(rels[3:]) | set(added)


def test_an_interrupted_update_keeps_the_last_complete_generation(tmp_path):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 6)
    enc = FakeEncoder()
    build_index(enc, out, images=images, chunk_size=2, progress=False)
    service = server_lib.RetrievalService(EmbeddingIndex.open(out), enc)
    before = service.health()
    make_images(images, 4, start=20)
    with pytest.raises(KeyboardInterrupt):
        build_index(FakeEncoder(fail_after=1), out, images=images, update=True, chunk_size=2,
                    batch_size=2, progress=False)
    assert not store.read_state(out)["complete"]
    assert service.health() == before
    assert len(service.search(q="car", k=100)["results"]) == 6
    build_index(FakeEncoder(), out, images=images, update=True, progress=False)
    after = service.health()
    assert after["count"] == 10 and after["generation"] > before["generation"]


def test_stale_hubness_penalties_fall_back_to_cosine_after_an_update(tmp_path):
    from dualencoder.search import store as hubness

    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 6)
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    hubness.save_index_penalties(str(out), np.linspace(0.9, 0.0, 6).astype(np.float32),
                                 state=store.read_state(str(out)), k=1, bank="b.txt",
                                 num_captions=1)
    logged = []
    service = server_lib.RetrievalService(EmbeddingIndex.open(out), enc, log=logged.append)
    assert service.search(q="car", k=3)["similarity"] == "csls"
    make_images(images, 2, start=30)
    build_index(enc, out, images=images, update=True, progress=False)
    res = service.search(q="car", k=100)
    assert res["similarity"] == "cosine" and res["count"] == 8
    assert service.info()["similarity"] == "cosine"
    assert any("loaded generation" in line for line in logged)


def test_reload_interval_bounds_the_checks(tmp_path, monkeypatch):
    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 3)
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    service = server_lib.RetrievalService(EmbeddingIndex.open(out), enc, reload_interval=3600)
    make_images(images, 2, start=10)
    build_index(enc, out, images=images, update=True, progress=False)
    assert service.health()["count"] == 3  # not checked yet
    service.reload_interval = 0
    assert service.health()["count"] == 5
