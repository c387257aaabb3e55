"""A committed index loaded for search: `EmbeddingIndex.open`, `search`, the image bytes.

Example:
```python
index = EmbeddingIndex.open("runs/idx")
hits = index.search(encoder.encode_texts(["a red car"]), k=9)     # [[Hit(id, path, score)]]
data, name = index.image_bytes(hits[0][0].id)
```
"""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np

from dualencoder.arrays import l2_normalize
from dualencoder.search.errors import ImageAccessError, RetrievalError
from dualencoder.search.sources import open_source
from dualencoder.search.store import STATE_NAME, read_chunk, read_state


normalize = l2_normalize  # the index's row normalisation (queries and stored rows)


def check_k(k) -> int:
    """Validate a top-k value (an int >= 1)."""
    try:
        k_int = int(k)
    except (TypeError, ValueError):
        raise RetrievalError(f"k must be an integer >= 1, not {str(k)[:40]!r}") from None
    if k_int < 1 or str(k).strip() not in (str(k_int), f"+{k_int}"):
        raise RetrievalError(f"k must be an integer >= 1, not {str(k)[:40]!r}")
    return k_int


def check_query(text) -> str:
    """Validate a text query (non-empty after stripping)."""
    if text is None or not str(text).strip():
        raise RetrievalError("empty query: give some words to search for")
    return str(text).strip()


@dataclasses.dataclass(frozen=True)
class Hit:
    """One search result: row id in the index, image path (entry name), score (the cosine, or
    `cos - r(image) / 2` for a text query ranked by CSLS)."""

    id: int
    path: str
    score: float

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": round(self.score, 6)}


class EmbeddingIndex:
    """A committed index loaded for search: the embeddings in memory as stored (float16 by
    default, so exact search can scan them without a float32 copy), paths, metadata.

    Use `EmbeddingIndex.open(path)`; it checks that every listed file is present before
    reading anything heavy, so a broken folder fails fast with a `RetrievalError`.
    """

    def __init__(self, index_dir: str, state: dict, embeddings: np.ndarray, paths: list[str],
                 penalty: np.ndarray | None = None, hubness: dict | None = None,
                 hubness_problem: str | None = None):
        self.index_dir = index_dir
        self.state = state
        self.embeddings = embeddings
        self.paths = paths
        self.penalty = penalty  # r(image) against bank captions (`retrieval.py hubness`)
        self.hubness = hubness
        self.hubness_problem = hubness_problem
        self._searchers = {}
        self._source = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, index_dir, *, allow_incomplete: bool = False) -> "EmbeddingIndex":
        """Load the index in folder `index_dir` (an unfinished one only with
        `allow_incomplete`), with its hubness penalties when they are current."""
        index_dir = os.path.abspath(os.fspath(index_dir))
        state = _searchable_state(index_dir, allow_incomplete)
        emb, paths = _read_embeddings(index_dir, state)
        from dualencoder.search.store import load_index_penalties  # noqa: PLC0415

        penalty, meta, problem = load_index_penalties(index_dir, state)
        return cls(index_dir, state, emb, paths, penalty, meta, problem)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        return self.state["fingerprint"]

    @property
    def model_path(self) -> str | None:
        return self.state.get("model_path")

    @property
    def source(self):
        """The `ImageFolder` / `RecordsFolder` the images are served from."""
        if self._source is None:
            src = self.state["source"]
            self._source = open_source(src["kind"], src["path"], src.get("follow_links", False))
        return self._source

    def searcher(self, backend: str = "exact", **options):
        """The search backend over the stored embeddings ("exact" or "faiss"), built once."""
        from dualencoder.search import backends as search_lib  # noqa: PLC0415

        with self._lock:
            if backend not in self._searchers:
                if backend == "exact":
                    self._searchers[backend] = search_lib.ExactSearcher(self.embeddings)
                elif backend == "exact-csls":  # [e, -r/2] . [q, 1] = cos - r(image) / 2
                    shift = (-0.5 * self.penalty)[:, None].astype(self.embeddings.dtype)
                    self._searchers[backend] = search_lib.ExactSearcher(
                        np.concatenate([self.embeddings, shift], axis=1))
                elif backend == "faiss":
                    self._searchers[backend] = search_lib.load_or_build_faiss(
                        self.index_dir, self.embeddings, self.state["generation"], **options)
                else:
                    raise RetrievalError(f"unknown backend {backend!r} (use exact or faiss)")
            return self._searchers[backend]

    @property
    def has_csls(self) -> bool:
        """Whether current hubness penalties are stored (`retrieval.py hubness`)."""
        return self.penalty is not None

    def ranking(self, backend: str = "exact", csls: bool = False) -> str:
        """How `search(..., backend, csls)` ranks: "cosine", "exact-csls" (one scan of the
        CSLS-shifted embeddings) or "rerank-csls" (the backend's cosine top hits re-ranked)."""
        if not (csls and self.has_csls):
            return "cosine"
        return "exact-csls" if backend == "exact" else "rerank-csls"

    def prepare(self, backend: str = "exact", csls: bool = False) -> None:
        """Build now every searcher `search(..., backend, csls)` and a cosine query on
        `backend` use (a server does this at start, not on its first request)."""
        self.searcher(backend)
        if self.ranking(backend, csls) == "exact-csls":
            self.searcher("exact-csls")

    def search(self, queries, k: int, backend: str = "exact",
               csls: bool = False) -> list[list[Hit]]:
        """Top-k hits for each query embedding `[Q, D]` (or `[D]`), best first.

        With `csls=True` and stored penalties (text queries; `has_csls`), hits rank by
        `cos - r(image) / 2` (text→image CSLS against the bank; the score returned). The exact
        backend ranks all images by it; faiss re-ranks its top max(4k, k + 64) by cosine.
        """
        k = check_k(k)
        q = normalize(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.embeddings.shape[1]:
            raise RetrievalError(f"query embeddings are {q.shape[1]}-d, the index holds "
                                 f"{self.embeddings.shape[1]}-d ones")
        k = min(k, len(self))
        ranking = self.ranking(backend, csls)
        if ranking == "cosine":
            scores, ids = self.searcher(backend).search(q, k)
        elif ranking == "exact-csls":
            ones = np.ones((len(q), 1), np.float32)
            scores, ids = self.searcher("exact-csls").search(np.concatenate([q, ones], 1), k)
        else:
            scores, ids = self.searcher(backend).search(q, min(len(self), max(4 * k, k + 64)))
            adjusted = np.where(ids >= 0, scores - 0.5 * self.penalty[np.maximum(ids, 0)],
                                -np.inf)
            order = np.argsort(-adjusted, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(adjusted, order, 1)
            ids = np.where(np.isfinite(scores), np.take_along_axis(ids, order, 1), -1)
        return [[Hit(int(i), self.paths[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, ids)]

    def image_bytes(self, image_id) -> tuple[bytes, str]:
        """The bytes of indexed image `image_id` (a row id) and its entry name."""
        try:
            i = int(image_id)
        except (TypeError, ValueError):
            raise ImageAccessError(f"image id must be an integer, not {str(image_id)[:40]!r}")
        if not 0 <= i < len(self.paths):
            raise ImageAccessError(f"no image with id {i} (the index holds {len(self.paths)})")
        return self.source.read_bytes(self.paths[i]), self.paths[i]


def _searchable_state(index_dir: str, allow_incomplete: bool) -> dict:
    """The committed state, after checking (before reading anything heavy) that every listed
    chunk file is present, the build finished and the index holds images."""
    if not os.path.isdir(index_dir):
        raise RetrievalError(f"index folder {index_dir} does not exist; build it with "
                             "`retrieval.py index`")
    state = read_state(index_dir)
    if state is None:
        raise RetrievalError(f"index folder {index_dir} has no {STATE_NAME}; build it with "
                             "`retrieval.py index`")
    missing = [c["file"] for c in state["chunks"]
               if not os.path.isfile(os.path.join(index_dir, c["file"]))]
    if missing:
        raise RetrievalError(f"index folder {index_dir} is missing {len(missing)} chunk "
                             f"file(s) ({', '.join(missing[:3])}); rebuild it with "
                             "`retrieval.py index`")
    if not state["complete"] and not allow_incomplete:
        raise RetrievalError(f"index {index_dir} is incomplete (an interrupted build); rerun "
                             "the same `retrieval.py index` command to finish it")
    if state["count"] == 0:
        raise RetrievalError(f"index {index_dir} holds no images")
    return state


def _read_embeddings(index_dir: str, state: dict) -> tuple[np.ndarray, list[str]]:
    """Every chunk's embeddings (as stored) in one array, and the paths, in id order."""
    stored = np.float16 if state.get("dtype", "float16") == "float16" else np.float32
    emb = np.empty((state["count"], state["dim"]), dtype=stored)
    paths, row = [], 0
    for chunk in state["chunks"]:
        data = read_chunk(os.path.join(index_dir, chunk["file"]))
        n = len(data["paths"])
        if n != chunk["count"] or data["embeddings"].shape != (n, state["dim"]):
            raise RetrievalError(f"index chunk {chunk['file']} does not match {STATE_NAME}; "
                                 "rebuild the index")
        emb[row:row + n] = data["embeddings"]
        paths.extend(data["paths"].tolist())
        row += n
    return emb, paths
