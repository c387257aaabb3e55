"""A small HTTP server over an embedding index: JSON API and one web page (stdlib only).

Routes (GET):
    /                       the search page (`dualencoder/static/index.html`)
    /search?q=TEXT&k=9      text -> image; `{"query", "k", "backend", "count", "ms", "results":
                            [{"rank", "id", "path", "score", "url"}]}`
    /search?id=N&k=9        image -> image, with indexed image N as the query
    /image/N[?size=256]     the indexed image N (optionally a JPEG thumbnail of at most size px)
    /health                 `{"ok": true, "count": N, "backend": ...}`

Bad requests answer HTTP 400 with `{"error": "..."}`; unknown routes 404; an unexpected
failure 500 with a generic message (the traceback goes to the server log, never to clients).
Only images of the index are served, by row id; paths are never taken from the request.

Example:
```python
service = RetrievalService(EmbeddingIndex.open("runs/idx"), encoder)
httpd = make_server(service, "127.0.0.1", 0)     # port 0: an ephemeral port
threading.Thread(target=httpd.serve_forever, daemon=True).start()
```
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import sys
import threading
import time
import traceback
import urllib.parse

import numpy as np

from dualencoder.search.errors import ImageAccessError, RetrievalError
from dualencoder.search.index import check_k, check_query

MAX_K = 200
MAX_QUERY_CHARS = 1000
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_IMAGE_TYPES = {b"\xff\xd8": "image/jpeg", b"\x89P": "image/png", b"BM": "image/bmp",
                b"RI": "image/webp", b"GI": "image/gif"}


class RetrievalService:
    """Searches an `EmbeddingIndex` with an encoder; thread-safe (the encoder runs under a lock).

    Args:
        index: an `EmbeddingIndex`.
        encoder: an Encoder-protocol object whose fingerprint matches the index.
        backend: "exact" or "faiss".
        csls: rank text queries by CSLS when the index stores hubness penalties
            (`retrieval.py hubness`); image queries always rank by cosine.
    """

    def __init__(self, index, encoder, backend: str = "exact", csls: bool = True):
        self.index = index
        self.encoder = encoder
        self.backend = backend
        self.csls = bool(csls) and index.has_csls  # text queries rank by CSLS when stored
        self._encode_lock = threading.Lock()
        self.index.prepare(backend, csls=self.csls)  # searchers built now, not on a request

    def warmup(self) -> None:
        """Run one text query so that the first real request does not pay for tracing."""
        with self._encode_lock:
            self.encoder.encode_texts(["warm up"])

    def search(self, *, q=None, image_id=None, k=9) -> dict:
        k = check_k(k)
        if k > MAX_K:
            raise RetrievalError(f"k must be <= {MAX_K}")
        t0 = time.perf_counter()
        if image_id is not None:
            if q is not None:
                raise RetrievalError("give either q (text) or id (image), not both")
            try:
                i = int(image_id)
            except ValueError:
                raise RetrievalError(f"id must be an image id, not {image_id[:40]!r}") from None
            if not 0 <= i < len(self.index):
                raise RetrievalError(f"no image with id {i}")
            query = self.index.embeddings[i]
            label = {"id": i}
        else:
            text = check_query(q)
            if len(text) > MAX_QUERY_CHARS:
                raise RetrievalError(f"query longer than {MAX_QUERY_CHARS} characters")
            with self._encode_lock:
                query = np.asarray(self.encoder.encode_texts([text]), dtype=np.float32)
            label = {"query": text}
        csls = self.csls and image_id is None
        hits = self.index.search(query, k, backend=self.backend, csls=csls)[0]
        return {**label, "k": k, "backend": self.backend, "count": len(self.index),
                "similarity": "csls" if csls else "cosine",
                "ms": round((time.perf_counter() - t0) * 1e3, 2),
                "results": [{"rank": r + 1, **h.to_dict(), "url": f"/image/{h.id}"}
                            for r, h in enumerate(hits)]}

    @functools.lru_cache(maxsize=512)  # noqa: B019 (one service per process)
    def thumbnail(self, image_id: int, size: int) -> bytes:
        from PIL import Image, ImageOps  # noqa: PLC0415

        data, _ = self.index.image_bytes(image_id)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
                img.thumbnail((size, size))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=85)
                return buf.getvalue()
        except Exception as exc:  # noqa: BLE001 (any decoder failure)
            raise ImageAccessError(f"image {image_id} cannot be decoded") from exc

    def image(self, image_id: str, size=None) -> tuple[bytes, str]:
        if not image_id.isdigit():
            raise RetrievalError(f"image id must be a non-negative integer, not {image_id[:40]!r}")
        if size is not None:
            if not str(size).isdigit() or not 16 <= int(size) <= 1024:
                raise RetrievalError("size must be an integer in 16..1024")
            return self.thumbnail(int(image_id), int(size)), "image/jpeg"
        data, _ = self.index.image_bytes(int(image_id))
        return data, _IMAGE_TYPES.get(data[:2], "application/octet-stream")


class _Handler(http.server.BaseHTTPRequestHandler):
    service: RetrievalService = None  # set by make_server
    quiet = False
    server_version = "dualencoder-retrieval/1"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status, body: bytes, content_type: str, cache: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, payload):
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json; charset=utf-8")

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_POST(self):  # noqa: N802
        self._json(405, {"error": "only GET is supported"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def do_GET(self):  # noqa: N802
        try:
            self._route()
        except ImageAccessError as exc:
            self._json(404, {"error": str(exc)})
        except RetrievalError as exc:
            self._json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # noqa: BLE001 (never a traceback to the client)
            traceback.print_exc(file=sys.stderr)
            try:
                self._json(500, {"error": "internal server error"})
            except OSError:
                pass

    def _route(self):
        url = urllib.parse.urlsplit(self.path)
        try:
            params = urllib.parse.parse_qs(url.query, keep_blank_values=True,
                                           strict_parsing=False, max_num_fields=20)
        except ValueError as exc:
            raise RetrievalError(f"bad query string: {exc}") from None
        one = {key: values[-1] for key, values in params.items()}
        path = url.path
        if path in ("/", "/index.html"):
            with open(os.path.join(STATIC_DIR, "index.html"), "rb") as fh:
                self._send(200, fh.read(), "text/html; charset=utf-8")
        elif path == "/search":
            if "q" not in one and "id" not in one:
                raise RetrievalError("give q=TEXT (or id=IMAGE_ID) to search")
            self._json(200, self.service.search(q=one.get("q"), image_id=one.get("id"),
                                                k=one.get("k", "9")))
        elif path.startswith("/image/"):
            data, ctype = self.service.image(urllib.parse.unquote(path[len("/image/"):]),
                                             one.get("size"))
            self._send(200, data, ctype, cache=True)
        elif path == "/health":
            self._json(200, {"ok": True, "count": len(self.service.index),
                             "backend": self.service.backend})
        else:
            self._json(404, {"error": f"no such route {path[:100]!r}"})


class RetrievalHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


def make_server(service: RetrievalService, host: str = "127.0.0.1", port: int = 8000,
                quiet: bool = False) -> RetrievalHTTPServer:
    """A threading HTTP server bound to `host:port` (port 0: ephemeral); not yet serving."""
    handler = type("Handler", (_Handler,), {"service": service, "quiet": quiet})
    try:
        return RetrievalHTTPServer((host, port), handler)
    except OSError as exc:
        raise RetrievalError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(service: RetrievalService, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Serve until interrupted (Ctrl-C); returns 0."""
    httpd = make_server(service, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(service.index)} images on http://{shown}:{httpd.server_address[1]}/ "
          "(Ctrl-C to stop)", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}, not loopback: anyone who can reach this machine "
              "can search the index and see its images", file=sys.stderr)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
