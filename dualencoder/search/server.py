"""A small HTTP server over an embedding index: JSON API and one web page (stdlib only).

Routes:
    GET  /                      the search page (`dualencoder/search/static/index.html`)
    GET  /search?q=TEXT&k=9     text -> image; `{"query", "k", "offset", "total", "more",
                                "generation", "backend", "count", "ms", "results":
                                [{"rank", "id", "path", "score", "url"}]}`
    GET  /search?similar=N&k=9  image -> image with indexed image N as the query, N itself left
                                out (`id=N`: the same with N included)
         ...&offset=M           results M+1 .. M+k of the ranking (paging up to the index size)
    POST /search/image?k=9      image -> image with the photo sent as the request body (at most
                                10 MB; decoded in memory, never stored)
    GET  /image/N?g=G[&size=256]  indexed image N of index generation G (a result's `url`;
                                optionally a JPEG thumbnail of at most size px)
    GET  /info                  `{"count", "generation", "updated", "model", ...}` for the page
    GET  /health                `{"ok": true, "count": N, "backend": ..., "generation": G}`

The server serves the newest complete generation of the index: a `retrieval.py index --update`
is picked up without a restart (`dualencoder.search.service`). Image URLs name their
generation and may be cached; without `g` they must be revalidated (ETag).

Every error is JSON `{"error": "..."}`: 400 bad request, 404 unknown image or route, 405 wrong
method, 411/413 missing length or too large an upload, 414 too long a URL, 500 an unexpected
failure with a generic message (the traceback goes to the server log, never to clients).
Only images of the index are served, by row id; paths are never taken from the request.

Example:
```python
service = RetrievalService(EmbeddingIndex.open("runs/idx"), encoder)
httpd = make_server(service, "127.0.0.1", 0)     # port 0: an ephemeral port
threading.Thread(target=httpd.serve_forever, daemon=True).start()
```
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sys
import traceback
import urllib.parse

from dualencoder.search.errors import ImageAccessError, RetrievalError
from dualencoder.search.service import MAX_K, MAX_QUERY_CHARS, RetrievalService  # noqa: F401
from dualencoder.search.uploads import MAX_UPLOAD_BYTES, UploadTooLarge

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_LINE = 65536  # the stdlib's limit on a request line


class HTTPProblem(RetrievalError):
    """A request refused with a specific HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Handler(http.server.BaseHTTPRequestHandler):
    service: RetrievalService = None  # set by make_server
    quiet = False
    server_version = "dualencoder-retrieval/1"
    sys_version = ""
    timeout = 60  # seconds a client may take to send a request

    def log_message(self, format, *args):  # noqa: A002
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status, body: bytes, content_type: str, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {"Cache-Control": "no-store"}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and status != 304:
            self.wfile.write(body)

    def _json(self, status, payload):
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json; charset=utf-8")

    def send_error(self, code, message=None, explain=None):
        """The stdlib's own errors (too long a request line, bad syntax) as JSON too."""
        del explain
        if code == 414:
            self._drain_request()
            message = (f"request too long (at most {MAX_LINE // 1024} KB of URL; queries at "
                       f"most {MAX_QUERY_CHARS} characters)")
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        try:
            self._json(code, {"error": message or short})
        except OSError:
            pass

    def _drain_request(self):
        """Read the rest of an over-long request (bounded) so the client gets the answer
        instead of a connection reset."""
        try:
            line, total = self.raw_requestline, 0
            while not line.endswith(b"\n") and total < 16 * MAX_LINE:
                line = self.rfile.readline(MAX_LINE)
                total += len(line)
                if not line:
                    return
            for _ in range(100):
                if self.rfile.readline(MAX_LINE) in (b"\r\n", b"\n", b""):
                    return
        except OSError:
            return
        finally:
            self.command, self.request_version = "GET", "HTTP/1.0"

    def do_HEAD(self):  # noqa: N802
        self.do_GET()

    def do_GET(self):  # noqa: N802
        self._answer(self._route_get)

    def do_POST(self):  # noqa: N802
        self._answer(self._route_post)

    def do_PUT(self):  # noqa: N802
        self._answer(self._wrong_method)

    do_DELETE = do_PATCH = do_PUT

    def _wrong_method(self, *_):
        self.close_connection = True
        raise HTTPProblem(405, f"{self.command} is not supported (GET, or POST /search/image)")

    def _answer(self, route):
        try:
            url = urllib.parse.urlsplit(self.path)
            try:
                params = urllib.parse.parse_qs(url.query, keep_blank_values=True,
                                               strict_parsing=False, max_num_fields=20)
            except ValueError as exc:
                raise RetrievalError(f"bad query string: {exc}") from None
            route(url.path, {key: values[-1] for key, values in params.items()})
        except HTTPProblem as exc:
            self._json(exc.status, {"error": str(exc)})
        except UploadTooLarge as exc:
            self._json(413, {"error": str(exc)})
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

    def _route_get(self, path, one):
        service = self.service
        if path in ("/", "/index.html"):
            with open(os.path.join(STATIC_DIR, "index.html"), "rb") as fh:
                self._send(200, fh.read(), "text/html; charset=utf-8",
                           {"Cache-Control": "no-cache"})
        elif path == "/search":
            self._search(one)
        elif path.startswith("/image/"):
            data, ctype = service.image(urllib.parse.unquote(path[len("/image/"):]),
                                        one.get("size"), one.get("g"))
            self._send_image(data, ctype, keyed="g" in one)
        elif path == "/info":
            self._json(200, service.info())
        elif path == "/health":
            self._json(200, service.health())
        elif path == "/search/image":
            raise HTTPProblem(405, "send the photo with POST /search/image")
        else:
            self._json(404, {"error": f"no such route {path[:100]!r}"})

    def _search(self, one):
        given = [key for key in ("q", "id", "similar") if key in one]
        if not given:
            raise RetrievalError("give q=TEXT (or similar=IMAGE_ID) to search")
        if len(given) > 1:
            raise RetrievalError("give either q (text) or id (image), not both")
        page = {"k": one.get("k", "9"), "offset": one.get("offset", "0")}
        if "q" in one:
            result = self.service.search(q=one["q"], **page)
        else:
            result = self.service.search(image_id=one.get("similar", one.get("id")),
                                         exclude_self="similar" in one, **page)
        self._json(200, result)

    def _send_image(self, data, ctype, keyed: bool):
        """Image bytes with an ETag; cached long when the URL names its generation."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag,
                   "Cache-Control": "private, max-age=86400" if keyed else "no-cache"}
        match = self.headers.get("If-None-Match", "")
        if etag in [tag.strip() for tag in match.split(",")]:
            self._send(304, b"", ctype, headers)
        else:
            self._send(200, data, ctype, headers)

    def _route_post(self, path, one):
        if path != "/search/image":
            self._wrong_method()
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise HTTPProblem(411, "send the photo with a Content-Length header")
        if not (length.isascii() and length.isdigit()):
            self.close_connection = True
            raise RetrievalError(f"bad Content-Length {length[:40]!r}")
        if int(length) > MAX_UPLOAD_BYTES:
            self.close_connection = True  # the body is not read
            raise UploadTooLarge(f"photo larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        data = self.rfile.read(int(length))
        if len(data) != int(length):
            self.close_connection = True
            raise RetrievalError("the upload ended early")
        self._json(200, self.service.search_image(data, k=one.get("k", "9"),
                                                  offset=one.get("offset", "0")))


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
          "(Ctrl-C to stop); a committed `retrieval.py index --update` is picked up",
          file=sys.stderr)
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
