"""The search service behind the photo server: searches one immutable snapshot of the index and
switches to a new one when `retrieval.py index --update` commits a new generation.

Every request takes the current `Snapshot` once and answers from it alone, so it sees either
the old or the new index, never a mix. The service notices a commit by a `stat` of
`state.json` (cheap; at most every `reload_interval` seconds) and loads a complete new
generation in the request thread that noticed it, while the others go on with the old
snapshot; searchers (CSLS, faiss) are rebuilt for it, falling back to exact cosine search when
they cannot be. Image URLs carry the generation (`/image/<id>?g=<generation>`): ids are
reassigned by an update, and the ids of the last few generations stay servable.

Example:
```python
service = RetrievalService(EmbeddingIndex.open("runs/idx"), encoder)
service.search(q="a red car", k=9)["results"][0]["url"]     # "/image/17?g=4"
```
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import threading
import time

import numpy as np

from dualencoder.search.errors import ImageAccessError, RetrievalError
from dualencoder.search.index import EmbeddingIndex, check_k, check_query
from dualencoder.search.store import STATE_NAME, read_state
from dualencoder.search.uploads import decode_upload

MAX_K = 1000  # results per request; `offset` pages further, up to the index size
MAX_QUERY_CHARS = 1000
KEPT_GENERATIONS = 3  # generations whose image ids stay servable after an update
FULL_CHECK_SECONDS = 2.0  # state.json is re-read this often even when its stat looks the same


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One generation of the index with the searchers built for it (never modified)."""

    index: EmbeddingIndex
    generation: int
    backend: str
    csls: bool


def ascii_int(text, what: str) -> int:
    """`text` as a non-negative int written in ASCII digits only (no signs, spaces, other
    scripts' digits)."""
    text = str(text)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise RetrievalError(f"{what} must be a non-negative integer, not {text[:40]!r}")
    return int(text)


def _stat(index_dir: str):
    try:
        st = os.stat(os.path.join(index_dir, STATE_NAME))
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class RetrievalService:
    """Searches an `EmbeddingIndex` with an encoder; thread-safe (the encoder runs under a lock).

    Args:
        index: an `EmbeddingIndex` (its folder is watched for new generations).
        encoder: an Encoder-protocol object whose fingerprint matches the index.
        backend: "exact" or "faiss".
        csls: rank text queries by CSLS when the index stores current hubness penalties
            (`retrieval.py hubness`); image queries always rank by cosine.
        reload_interval: seconds between checks of `state.json` (0: on every request).
        log: called with a line when a new generation is loaded (or cannot be).
    """

    def __init__(self, index, encoder, backend: str = "exact", csls: bool = True,
                 reload_interval: float = 0.0, log=None):
        self.encoder = encoder
        self.want_backend = backend
        self.want_csls = bool(csls)
        self.reload_interval = float(reload_interval)
        self.log = log or (lambda line: None)
        self._encode_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._thumbs = collections.OrderedDict()
        self._images = collections.OrderedDict()  # generation -> (paths, source)
        self._seen = (_stat(index.index_dir), time.monotonic())
        self._checked = time.monotonic()
        self._penalty_seen = None  # the stat of the penalties file last looked at
        self._install(self._snapshot_of(index, strict=True))

    # ----------------------------------------------------------------------------------------
    # Generations

    def _snapshot_of(self, index, strict: bool = False) -> Snapshot:
        backend, csls = self.want_backend, self.want_csls and index.has_csls
        try:
            index.prepare(backend, csls=csls)  # searchers built now, not on a request
        except (RetrievalError, ImportError, RuntimeError) as exc:
            if strict or backend == "exact":
                raise
            self.log(f"warning: {backend} searcher unavailable for generation "
                     f"{index.state['generation']} ({exc}); searching exactly")
            backend = "exact"
            index.prepare(backend, csls=csls)
        return Snapshot(index, int(index.state["generation"]), backend, csls)

    def _install(self, snap: Snapshot) -> None:
        with self._cache_lock:
            self._images[snap.generation] = (snap.index.paths, snap.index.source)
            while len(self._images) > KEPT_GENERATIONS:
                self._images.popitem(last=False)
        self._snap = snap  # one reference swap: a request sees the old or the new snapshot

    def snapshot(self) -> Snapshot:
        """The current snapshot, after loading a newly committed generation if there is one."""
        snap, now = self._snap, time.monotonic()
        if now - self._checked < self.reload_interval:
            return snap
        self._checked = now
        stamp, read_at = self._seen
        current = _stat(snap.index.index_dir)
        if current == stamp and now - read_at < FULL_CHECK_SECONDS:
            return snap
        if not self._reload_lock.acquire(blocking=False):
            return snap  # another request is loading it; answer from the current one
        try:
            self._reload(current, now)
        finally:
            self._reload_lock.release()
        return self._snap

    def _reload(self, stamp, now) -> None:
        snap = self._snap
        self._seen = (stamp, now)
        index_dir = snap.index.index_dir
        try:
            state = read_state(index_dir)
        except RetrievalError:
            return  # mid-write or damaged: keep serving the loaded generation
        if state is None or not state.get("complete") or state.get("count", 0) == 0:
            return  # an update in progress keeps the last complete generation
        if state.get("generation") == snap.generation and not self._csls_arrived(snap, state):
            return
        if state.get("fingerprint") != snap.index.fingerprint:
            self.log(f"warning: {index_dir} now holds another model's embeddings; still "
                     f"serving generation {snap.generation}")
            return
        try:
            new = self._snapshot_of(EmbeddingIndex.open(index_dir))
        except (RetrievalError, OSError) as exc:
            self.log(f"warning: cannot load the new generation of {index_dir} ({exc}); still "
                     f"serving generation {snap.generation}")
            return
        self._install(new)
        ranking = (", text queries by CSLS" if new.csls
                   else ", text queries by cosine" if self.want_csls else "")
        self.log(f"loaded generation {new.generation} of {index_dir}: {len(new.index)} "
                 f"images{ranking}")
        if self.want_csls and new.index.hubness_problem:
            self.log(f"warning: {new.index.hubness_problem}")

    def _csls_arrived(self, snap: Snapshot, state: dict) -> bool:
        """Whether hubness penalties for the loaded generation were written after it was
        loaded (`index --update` recomputes them once it has committed)."""
        if not self.want_csls or snap.csls:
            return False
        from dualencoder.search.store import INDEX_PENALTIES, load_index_penalties  # noqa: PLC0415

        path = os.path.join(snap.index.index_dir, INDEX_PENALTIES)
        try:
            st = os.stat(path)
        except OSError:
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._penalty_seen:
            return False
        self._penalty_seen = stamp
        return load_index_penalties(snap.index.index_dir, state)[0] is not None

    # ----------------------------------------------------------------------------------------
    # Compatibility views of the current snapshot

    @property
    def index(self) -> EmbeddingIndex:
        return self.snapshot().index

    @property
    def backend(self) -> str:
        return self._snap.backend

    @property
    def csls(self) -> bool:
        return self._snap.csls

    def warmup(self) -> None:
        """Run one text query so that the first real request does not pay for tracing."""
        with self._encode_lock:
            self.encoder.encode_texts(["warm up"])

    # ----------------------------------------------------------------------------------------
    # Requests

    def search(self, *, q=None, image_id=None, k=9, offset=0, exclude_self=False) -> dict:
        """Text (`q`) or indexed-image (`image_id`) query; `exclude_self` leaves the query
        image out of its own results. Results `offset` .. `offset + k` of the ranking."""
        k, offset = self._check_page(k, offset)
        snap = self.snapshot()
        t0 = time.perf_counter()
        if image_id is not None:
            if q is not None:
                raise RetrievalError("give either q (text) or id (image), not both")
            i = ascii_int(image_id, "id")
            if not 0 <= i < len(snap.index):
                raise RetrievalError(f"no image with id {i}")
            query = snap.index.embeddings[i]
            label = {"id": i, "path": snap.index.paths[i]}
            exclude = i if exclude_self else None
        else:
            text = check_query(q)
            if len(text) > MAX_QUERY_CHARS:
                raise RetrievalError(f"query longer than {MAX_QUERY_CHARS} characters")
            with self._encode_lock:
                query = np.asarray(self.encoder.encode_texts([text]), dtype=np.float32)
            label, exclude = {"query": text}, None
        return self._ranked(snap, query, label, k, offset, t0, csls=image_id is None,
                            exclude=exclude)

    def search_image(self, data: bytes, *, k=9, offset=0) -> dict:
        """Image -> image search with an uploaded photo (bytes; decoded in memory only)."""
        k, offset = self._check_page(k, offset)
        snap = self.snapshot()
        t0 = time.perf_counter()
        pixels = decode_upload(data, int(self.encoder.image_size))
        with self._encode_lock:
            query = np.asarray(self.encoder.encode_images(pixels[None]), dtype=np.float32)
        return self._ranked(snap, query, {"image": "upload", "bytes": len(data)}, k, offset,
                            t0, csls=False, exclude=None)

    @staticmethod
    def _check_page(k, offset) -> tuple[int, int]:
        k = check_k(k)
        if k > MAX_K:
            raise RetrievalError(f"k must be <= {MAX_K} (page further with offset)")
        return k, ascii_int(offset, "offset")

    @staticmethod
    def _ranked(snap, query, label, k, offset, t0, *, csls, exclude) -> dict:
        n = len(snap.index)
        total = n - (exclude is not None)
        csls = csls and snap.csls
        want = min(n, offset + k + (exclude is not None))
        hits = snap.index.search(query, want, backend=snap.backend, csls=csls)[0] if want else []
        hits = [h for h in hits if h.id != exclude][offset:offset + k]
        g = snap.generation
        return {**label, "k": k, "offset": offset, "backend": snap.backend, "count": n,
                "total": total, "more": offset + len(hits) < total, "generation": g,
                "similarity": "csls" if csls else "cosine",
                "ms": round((time.perf_counter() - t0) * 1e3, 2),
                "results": [{"rank": offset + r + 1, **h.to_dict(), "url": f"/image/{h.id}?g={g}"}
                            for r, h in enumerate(hits)]}

    def image(self, image_id: str, size=None, generation=None) -> tuple[bytes, str]:
        """The bytes (or a JPEG thumbnail of at most `size` px) of image `image_id` of
        `generation` (default: the current one) and their content type."""
        i = ascii_int(image_id, "image id")
        if size is not None:
            size = ascii_int(size, "size")
            if not 16 <= size <= 1024:
                raise RetrievalError("size must be an integer in 16..1024")
        g = self.snapshot().generation if generation is None else ascii_int(generation, "g")
        with self._cache_lock:
            paths, source = self._images.get(g, (None, None))
        if paths is None:
            raise ImageAccessError(f"image ids of index generation {g} are no longer served "
                                   "(the index was updated); search again")
        if not 0 <= i < len(paths):
            raise ImageAccessError(f"no image with id {i} (the index holds {len(paths)})")
        if size is None:
            data = source.read_bytes(paths[i])
            return data, IMAGE_TYPES.get(data[:2], "application/octet-stream")
        return self._thumbnail(g, source, paths[i], size), "image/jpeg"

    def _thumbnail(self, generation, source, path, size) -> bytes:
        key = (generation, path, size)
        with self._cache_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        data = make_thumbnail(source.read_bytes(path), size, path)
        with self._cache_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 512:
                self._thumbs.popitem(last=False)
        return data

    def info(self) -> dict:
        """What the page shows on load: size, model, date of the current generation."""
        snap = self.snapshot()
        state = snap.index.state
        return {"count": len(snap.index), "generation": snap.generation,
                "updated": state.get("updated"), "model": model_label(state.get("model_path")),
                "fingerprint": state["fingerprint"][:16], "dim": state["dim"],
                "source": state["source"]["kind"], "backend": snap.backend,
                "similarity": "csls" if snap.csls else "cosine", "max_k": MAX_K}

    def health(self) -> dict:
        snap = self.snapshot()
        return {"ok": True, "count": len(snap.index), "backend": snap.backend,
                "generation": snap.generation}


IMAGE_TYPES = {b"\xff\xd8": "image/jpeg", b"\x89P": "image/png", b"BM": "image/bmp",
               b"RI": "image/webp", b"GI": "image/gif"}


def make_thumbnail(data: bytes, size: int, name: str) -> bytes:
    """A JPEG of at most `size` x `size` px of image bytes `data`."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 (any decoder failure)
        raise ImageAccessError(f"image {name!r} cannot be decoded") from exc


def model_label(spec) -> str | None:
    """A short name for a recorded model spec: folder names without their parents."""
    if not spec:
        return None
    if spec.startswith("clip:"):
        return spec
    prefix, rest = ("ensemble", spec[len("ensemble:"):]) if spec.startswith("ensemble:") else \
        ("", spec)
    names = []
    for part in rest.split(","):
        parts = [p for p in part.replace(os.sep, "/").split("/") if p]
        names.append("/".join(parts[-2:]) if parts and parts[-1] == "model" else
                     (parts[-1] if parts else part))
    return (prefix + ":" if prefix else "") + ",".join(names)
