"""The HTTP server: JSON API, 400 errors, image serving, traversal refused (fake encoder)."""

import http.client
import json
import threading

import pytest

from dualencoder.search.build import build_index
from dualencoder.search.index import EmbeddingIndex, normalize
from dualencoder.search.store import read_state
from dualencoder.search import server as server_lib
from test_index import FakeEncoder, make_images


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    images, out = root / "images", root / "index"
    make_images(images, 8)
    (root / "secret.txt").write_text("top secret")
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    service = server_lib.RetrievalService(EmbeddingIndex.open(out), enc)
    httpd = server_lib.make_server(service, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"port": httpd.server_address[1], "images": images, "service": service}
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def get(port, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)  # sent as is: no client-side path normalisation
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def get_json(port, path):
    status, ctype, body = get(port, path)
    assert ctype.startswith("application/json"), (path, ctype)
    return status, json.loads(body)


def test_search_api(running):
    status, data = get_json(running["port"], "/search?q=red+car&k=3")
    assert status == 200 and data["query"] == "red car" and data["k"] == 3
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    # Same as the library call.
    service = running["service"]
    ref = service.index.search(service.encoder.encode_texts(["red car"]), 3)[0]
    assert [r["id"] for r in data["results"]] == [h.id for h in ref]
    assert data["results"][0]["url"] == f"/image/{ref[0].id}"
    # Image -> image: the query image comes first.
    status, data = get_json(running["port"], "/search?id=5&k=2")
    assert status == 200 and data["results"][0]["id"] == 5
    status, data = get_json(running["port"], "/health")
    assert status == 200 and data == {"ok": True, "count": 8, "backend": "exact"}


@pytest.mark.parametrize("path,needle", [
    ("/search?q=&k=3", "empty query"),
    ("/search?q=%20%20", "empty query"),
    ("/search?q=car&k=0", "k must be"),
    ("/search?q=car&k=-2", "k must be"),
    ("/search?q=car&k=abc", "k must be"),
    ("/search?q=car&k=100000", "k must be <="),
    ("/search?k=3", "give q="),
    ("/search?id=abc", "id must be"),
    ("/search?id=99", "no image"),
    ("/search?q=car&id=1", "not both"),
    ("/image/abc", "image id"),
    ("/image/1?size=5", "size must be"),
])
def test_bad_requests_are_400_json(running, path, needle):
    status, data = get_json(running["port"], path)
    assert status == 400, data
    assert needle in data["error"] and "Traceback" not in data["error"]


def test_images_and_traversal(running):
    port, images = running["port"], running["images"]
    status, data = get_json(port, "/search?q=anything&k=1")
    hit = data["results"][0]
    status, ctype, body = get(port, hit["url"])
    assert status == 200 and body == (images / hit["path"]).read_bytes()
    assert ctype.startswith("image/")
    status, ctype, body = get(port, hit["url"] + "?size=64")
    assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, _, body = get(port, "/image/999")
    assert status == 404
    for path in ["/image/../../secret.txt", "/image/..%2F..%2Fsecret.txt", "/image/%2e%2e/secret.txt",
                 "/../secret.txt", "/static/../../secret.txt", "/image/" + str(images / "img001.jpg"),
                 "/image/0/../../secret.txt", "//etc/passwd"]:
        status, ctype, body = get(port, path)
        assert status in (400, 404), path
        assert b"top secret" not in body and ctype.startswith("application/json")
        assert "error" in json.loads(body)


def test_page_and_methods(running):
    status, ctype, body = get(running["port"], "/")
    assert status == 200 and ctype.startswith("text/html") and b'id="q"' in body
    status, ctype, body = get(running["port"], "/search?q=x", method="POST")
    assert status == 405
    status, data = get_json(running["port"], "/nope")
    assert status == 404


def test_internal_error_is_generic_500(running, monkeypatch, capsys):
    def boom(texts):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(running["service"].encoder, "encode_texts", boom)
    status, data = get_json(running["port"], "/search?q=car")
    assert status == 500 and data == {"error": "internal server error"}


def test_service_ranks_text_queries_by_csls_when_the_index_has_penalties(tmp_path):
    import numpy as np

    from dualencoder.eval import hubness

    images, out = tmp_path / "images", tmp_path / "index"
    make_images(images, 8)
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    state = read_state(str(out))
    penalty = np.linspace(0.9, 0.0, 8).astype(np.float32)
    hubness.save_index_penalties(str(out), penalty, state=state, k=1, bank="b.txt",
                                 num_captions=1)
    index = EmbeddingIndex.open(out)
    emb = normalize(index.embeddings)
    q = enc.encode_texts(["red car"])[0]
    for csls, want in ((False, emb @ q), (True, emb @ q - 0.5 * penalty)):
        service = server_lib.RetrievalService(index, enc, csls=csls)
        # the searchers this ranking uses are built when the service starts
        assert ("exact-csls" in index._searchers) == csls and "exact" in index._searchers
        res = service.search(q="red car", k=8)
        assert res["similarity"] == ("csls" if csls else "cosine")
        assert [r["id"] for r in res["results"]] == list(np.argsort(-want, kind="stable"))
    by_image = server_lib.RetrievalService(index, enc).search(image_id=3, k=2)
    assert by_image["similarity"] == "cosine" and by_image["results"][0]["id"] == 3
