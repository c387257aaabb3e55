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
    assert data["results"][0]["url"] == f"/image/{ref[0].id}?g={data['generation']}"
    # Image -> image: the query image comes first.
    status, data = get_json(running["port"], "/search?id=5&k=2")
    assert status == 200 and data["results"][0]["id"] == 5
    status, data = get_json(running["port"], "/health")
    assert status == 200 and data == {"ok": True, "count": 8, "backend": "exact",
                                      "generation": service.snapshot().generation}


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
    status, ctype, body = get(port, hit["url"] + "&size=64")
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

    from dualencoder.search import store as hubness

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


# --------------------------------------------------------------------------------------------
# Long requests, strict ids, /info, similar=, paging, uploads


def raw_request(port, data: bytes) -> tuple[int, dict]:
    """Send raw request bytes; the status and JSON body of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.getheader("Content-Type").startswith("application/json")
        return resp.status, json.loads(resp.read())


def post(port, path, body, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        assert resp.getheader("Content-Type").startswith("application/json")
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_100kb_query_is_a_json_error(running):
    status, data = raw_request(running["port"],
                               b"GET /search?q=" + b"a" * 100_000 + b" HTTP/1.1\r\n"
                               b"Host: x\r\n\r\n")
    assert status == 414 and "request too long" in data["error"]
    status, data = get_json(running["port"], "/search?q=" + "a" * 5000)
    assert status == 400 and "longer than 1000" in data["error"]
    status, data = get_json(running["port"], "/health")  # the server is fine afterwards
    assert status == 200


@pytest.mark.parametrize("path", ["/image/%D9%A3", "/image/%EF%BC%93", "/image/+3", "/image/%203",
                                  "/search?similar=%D9%A3", "/search?id=%D9%A3",
                                  "/search?id=+3", "/image/1?size=%D9%A364",
                                  "/search?q=car&offset=-1", "/search?q=car&offset=%D9%A3"])
def test_only_ascii_digits_are_ids(running, path):
    status, data = get_json(running["port"], path)
    assert status == 400 and "must be a non-negative integer" in data["error"], data


def test_info_endpoint(running):
    status, data = get_json(running["port"], "/info")
    state = read_state(str(running["service"].index.index_dir))
    assert status == 200 and data["count"] == 8 and data["generation"] == state["generation"]
    assert data["updated"] == state["updated"] and data["fingerprint"] == state["fingerprint"][:16]
    assert data["backend"] == "exact" and data["similarity"] == "cosine" and data["max_k"] >= 8
    assert "model" in data


def test_model_label():
    assert server_lib.RetrievalService.__module__ == "dualencoder.search.service"
    from dualencoder.search.service import model_label

    assert model_label("/a/b/runs/exp1/model") == "exp1/model"
    assert model_label("/a/b/runs/exp1") == "exp1"
    assert model_label("ensemble:/x/a,/y/b/model") == "ensemble:a,b/model"
    assert model_label("clip:ViT-B-32") == "clip:ViT-B-32"
    assert model_label(None) is None


def test_similar_leaves_the_query_photo_out(running):
    status, data = get_json(running["port"], "/search?similar=5&k=8")
    assert status == 200 and data["id"] == 5 and data["total"] == 7 and not data["more"]
    ids = [r["id"] for r in data["results"]]
    assert 5 not in ids and len(ids) == 7 and [r["rank"] for r in data["results"]] == list(range(1, 8))
    status, legacy = get_json(running["port"], "/search?id=5&k=8")
    assert legacy["results"][0]["id"] == 5 and [r["id"] for r in legacy["results"][1:]] == ids


def test_paging_up_to_the_index_size(running):
    port = running["port"]
    _, full = get_json(port, "/search?q=red+car&k=8")
    assert full["total"] == 8 and not full["more"] and len(full["results"]) == 8
    pages, offset = [], 0
    while True:
        status, page = get_json(port, f"/search?q=red+car&k=3&offset={offset}")
        assert status == 200
        pages.extend(page["results"])
        offset += 3
        if not page["more"]:
            break
    assert [(r["rank"], r["id"]) for r in pages] == [(r["rank"], r["id"]) for r in full["results"]]
    _, beyond = get_json(port, "/search?q=red+car&k=3&offset=50")
    assert beyond["results"] == [] and not beyond["more"]
    status, data = get_json(port, f"/search?q=car&k={server_lib.MAX_K}")
    assert status == 200 and len(data["results"]) == 8
    status, data = get_json(port, "/search?similar=1&k=3&offset=6")
    assert [r["rank"] for r in data["results"]] == [7] and 1 not in [r["id"] for r in data["results"]]


def test_upload_query(running):
    port, images = running["port"], running["images"]
    service = running["service"]
    index = service.index
    for i in (0, 4):
        status, data = post(port, "/search/image?k=3", (images / index.paths[i]).read_bytes())
        assert status == 200 and data["results"][0]["id"] == i and data["image"] == "upload"
        assert data["similarity"] == "cosine" and len(data["results"]) == 3
    status, data = post(port, "/search/image?k=abc", (images / index.paths[0]).read_bytes())
    assert status == 400 and "k must be" in data["error"]
    status, data = post(port, "/search/image", b"not a photo at all")
    assert status == 400 and "not a readable photo" in data["error"]
    status, data = post(port, "/search/image", b"")
    assert status == 400 and "empty upload" in data["error"]


def _png_header(width, height) -> bytes:
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_upload_limits(running):
    port = running["port"]
    for side in (7000, 30000):  # pixel bombs: over our limit, over PIL's own
        status, data = post(port, "/search/image", _png_header(side, side))
        assert status == 413 and "megapixels" in data["error"], data
    # Over 10 MB by its Content-Length: refused before the body is read.
    status, data = raw_request(port, b"POST /search/image HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 20000000\r\n\r\nxx")
    assert status == 413 and "10 MB" in data["error"]
    status, data = raw_request(port, b"POST /search/image HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411
    status, data = raw_request(port, b"POST /search/image HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: \xd9\xa3\r\n\r\n")
    assert status == 400
    status, data = get_json(port, "/search/image")
    assert status == 405
    status, data = get_json(running["port"], "/health")
    assert status == 200


def test_image_caching_is_keyed_by_generation(running):
    port = running["port"]
    _, data = get_json(port, "/search?q=car&k=1")
    url = data["results"][0]["url"]
    assert url.endswith(f"?g={data['generation']}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        body, etag = resp.read(), resp.getheader("ETag")
        assert resp.status == 200 and etag and "max-age" in resp.getheader("Cache-Control")
        conn.request("GET", url, headers={"If-None-Match": etag})
        resp = conn.getresponse()
        assert resp.status == 304 and resp.read() == b"" and resp.getheader("ETag") == etag
        conn.request("GET", url.split("?")[0])  # no generation: revalidate every time
        resp = conn.getresponse()
        assert resp.read() == body and resp.getheader("Cache-Control") == "no-cache"
        conn.request("GET", url.split("?")[0] + "?g=999")
        resp = conn.getresponse()
        assert resp.status == 404 and b"no longer served" in resp.read()
    finally:
        conn.close()
