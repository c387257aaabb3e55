"""Nearest-neighbour backends over stored embeddings: exact (NumPy BLAS) and faiss (optional).

Both take L2-normalised float32 queries `[Q, D]` and return `(scores [Q, k], ids [Q, k])`,
best first, with cosine (inner-product) scores. Exact search scans the stored values with NumPy
float32 BLAS, or, for float16-stored embeddings when faiss is installed, with faiss's float16
flat scan in parallel shards (half the memory traffic; the same scores).

Example:
```python
exact = ExactSearcher(embeddings)             # [N, D] float16 or float32
scores, ids = exact.search(queries, k=10)
approx = FaissSearcher.build(embeddings)      # IVF-Flat, nprobe tuned for recall@10 >= 0.95
print(approx.info["recall_at_10"])
```
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from dualencoder.search.errors import RetrievalError
from records.files import remove_quietly, temporary_path, write_json_atomic

FAISS_INDEX_NAME = "faiss-{kind}.index"
FAISS_META_NAME = "faiss.json"


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Column ids of the k largest entries of each row (unordered).

    Long rows (single queries over many embeddings) first take the k-th largest score of a
    prefix as a threshold: it is a lower bound of the row's k-th largest, so the entries at or
    above it contain the exact top-k, and only those few are partitioned.
    """
    rows, n = scores.shape
    if n <= k:
        return np.broadcast_to(np.arange(n), scores.shape).copy()
    prefix = max(65536, 8 * k)
    if n >= 4 * prefix and rows <= 16:
        out = np.empty((rows, k), np.int64)
        for r, row in enumerate(scores):
            threshold = np.partition(row[:prefix], prefix - k)[prefix - k]
            candidates = np.flatnonzero(row >= threshold)
            out[r] = candidates[np.argpartition(row[candidates], len(candidates) - k)[-k:]]
        return out
    return np.argpartition(scores, n - k, axis=1)[:, -k:]


def _sort_desc(scores: np.ndarray, ids: np.ndarray):
    """Sort each row by score, descending (ties: smaller id first)."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


class ExactSearcher:
    """Exact top-k over all stored embeddings (no approximation), memory bounded.

    Two engines compute the same scores (the inner products of the queries with the stored
    values) and return the same top-k:

    * "numpy": chunked float32 matrix products (BLAS), argpartition per chunk, then a merge; at
      most `max_scores` float32 scores are alive at once. Keeps a float32 copy of the matrix.
    * "fp16": a brute-force scan of the float16 values as stored, with faiss's
      `IndexScalarQuantizer(QT_fp16)` (decoded to float32 in registers, float32 accumulation),
      rows split into one shard per thread and scanned in parallel. It reads half the bytes of
      the float32 path, and one query over 1M x 256 is memory-bound, so it is about 2x faster
      there. Batches of 16+ queries are compute-bound instead and go through the chunked BLAS
      path, each block of rows upcast once. Needs faiss-cpu (the `index` extra).

    Args:
        embeddings: `[N, D]` stored embeddings (float16 or float32).
        max_scores: the "numpy" engine's score-buffer budget in elements (2**24 = 64 MiB).
        engine: "auto" (the default: "fp16" when the embeddings are float16 and faiss is
            installed, else "numpy"), "numpy" or "fp16".
        threads: shards scanned in parallel by the "fp16" engine (default: the CPU count, at
            most 8).
    """

    def __init__(self, embeddings, max_scores: int = 1 << 24, engine: str = "auto",
                 threads: int | None = None):
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
        if engine == "auto":
            engine = "fp16" if embeddings.dtype == np.float16 and faiss_available() else "numpy"
        if engine not in ("numpy", "fp16"):
            raise ValueError(f"engine must be auto, numpy or fp16, not {engine!r}")
        self.engine = engine
        self.max_scores = int(max_scores)
        self._n, self._dim = embeddings.shape
        if engine == "numpy":
            self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        else:
            self.embeddings = embeddings  # float16, not copied: batches of queries scan it
            self._build_shards(embeddings, threads or min(os.cpu_count() or 1, 8))

    def __len__(self) -> int:
        return self._n

    def search(self, queries, k: int):
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(int(k), self._n)
        if self.engine == "fp16" and q.shape[0] < 16:
            return self._search_fp16(q, k)  # few queries: memory-bound, scan float16
        return self._search_numpy(q, k)  # many queries: compute-bound, BLAS on float32 blocks

    # -- numpy engine -------------------------------------------------------------------
    def _search_numpy(self, q: np.ndarray, k: int, matrix: np.ndarray | None = None):
        """Blocks of rows (upcast to float32 once per block if stored as float16) against
        groups of queries; the running top-k of each query is merged block by block."""
        matrix = self.embeddings if matrix is None else matrix
        n, nq = matrix.shape[0], q.shape[0]
        group = max(1, min(nq, 256, self.max_scores // max(k, 1)))
        rows = max(k, min(n, self.max_scores // group))
        best_s = np.full((nq, k), -np.inf, np.float32)
        best_i = np.full((nq, k), -1, np.int64)
        for start in range(0, n, rows):
            block = np.asarray(matrix[start:start + rows], dtype=np.float32)
            for g in range(0, nq, group):
                scores = q[g:g + group] @ block.T
                cols = _top_k_rows(scores, k)
                s = np.concatenate([best_s[g:g + group],
                                    np.take_along_axis(scores, cols, axis=1)], 1)
                i = np.concatenate([best_i[g:g + group], cols.astype(np.int64) + start], 1)
                sel = _top_k_rows(s, k)
                best_s[g:g + group] = np.take_along_axis(s, sel, 1)
                best_i[g:g + group] = np.take_along_axis(i, sel, 1)
        return _sort_desc(best_s, best_i)

    # -- fp16 engine --------------------------------------------------------------------
    def _build_shards(self, embeddings: np.ndarray, threads: int, chunk: int = 65536) -> None:
        faiss = _import_faiss()
        bounds = np.linspace(0, self._n, max(1, min(threads, self._n)) + 1).astype(np.int64)
        self._offsets, self._shards = [], []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            shard = faiss.IndexScalarQuantizer(self._dim, faiss.ScalarQuantizer.QT_fp16,
                                               faiss.METRIC_INNER_PRODUCT)
            for start in range(lo, hi, chunk):  # float32 only a chunk at a time
                shard.add(np.ascontiguousarray(embeddings[start:min(hi, start + chunk)],
                                               dtype=np.float32))
            self._offsets.append(int(lo))
            self._shards.append(shard)
        self._pool = None
        if len(self._shards) > 1:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            self._pool = ThreadPoolExecutor(len(self._shards), thread_name_prefix="exact-scan")

    def _search_fp16(self, q: np.ndarray, k: int):
        def scan(i):  # faiss releases the GIL while it scans
            shard = self._shards[i]
            s, ids = shard.search(q, min(k, shard.ntotal))
            return s, ids.astype(np.int64) + self._offsets[i]

        if self._pool is None:
            parts = [scan(0)]
        else:
            parts = list(self._pool.map(scan, range(len(self._shards))))
        s = np.concatenate([p[0] for p in parts], 1)
        ids = np.concatenate([p[1] for p in parts], 1)
        sel = _top_k_rows(s, k)
        return _sort_desc(np.take_along_axis(s, sel, 1), np.take_along_axis(ids, sel, 1))


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _import_faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError as exc:
        raise RetrievalError("the faiss backend needs faiss-cpu: pip install -e '.[index]' "
                             "(or use --backend exact)") from exc
    return faiss


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) / min(k, len(e))
            for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 1.0


def sample_queries(embeddings: np.ndarray, n: int = 200, noise: float = 0.5, seed: int = 0):
    """Held-out-like queries: stored vectors plus isotropic noise, renormalised."""
    rng = np.random.default_rng(seed)
    base = embeddings[rng.integers(0, len(embeddings), size=min(n, len(embeddings)))]
    q = base + rng.standard_normal(base.shape).astype(np.float32) * (noise / np.sqrt(base.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


class FaissSearcher:
    """Approximate search with faiss (HNSW or IVF-Flat, inner product) over stored embeddings.

    Build with `FaissSearcher.build(...)`; `info` holds the settings, build time and the
    recall@10 measured against exact search on sample queries.
    """

    def __init__(self, index, info: dict):
        self.index = index
        self.info = info
        self._apply_search_param()

    def _apply_search_param(self):
        faiss = _import_faiss()
        if self.info["kind"] == "hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = int(self.info["ef_search"])
        else:
            faiss.extract_index_ivf(self.index).nprobe = int(self.info["nprobe"])

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries, k: int):
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, ids = self.index.search(q, min(int(k), self.index.ntotal))
        return scores, ids.astype(np.int64)

    @classmethod
    def build(cls, embeddings, *, kind: str = "ivf", m: int = 32, ef_construction: int = 80,
              nlist: int | None = None, target_recall: float = 0.95, num_queries: int = 200,
              exact=None, verbose: bool = False) -> "FaissSearcher":
        """Build from `[N, D]` embeddings and tune the search breadth for `target_recall`.

        Args:
            embeddings: stored embeddings (float16/float32).
            kind: "ivf" (IVF-Flat, the default: quick build, meets recall@10 >= 0.95 at 1M
                clustered vectors in ~0.2 ms) or "hnsw" (graph; slow to build at 1M, and with
                ef_construction 40 its recall@10 stalled near 0.92 there).
            m, ef_construction: HNSW graph degree and build breadth.
            nlist: IVF lists (default about 4 * sqrt(N)).
            target_recall: the smallest efSearch / nprobe reaching this recall@10 is kept.
            num_queries: sample queries for the recall measurement.
            exact: an `ExactSearcher` over the same embeddings (made if None).
        """
        faiss = _import_faiss()
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, d = x.shape
        t0 = time.perf_counter()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.add(x)
            settings = {"m": m, "ef_construction": ef_construction}
        elif kind == "ivf":
            nlist = int(nlist or max(1, min(n // 39, int(4 * np.sqrt(n)))))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            rng = np.random.default_rng(0)
            sample = min(n, nlist * 40)
            train = x[np.sort(rng.choice(n, size=sample, replace=False))] if sample < n else x
            index.train(train)
            index.add(x)
            settings = {"nlist": nlist}
        else:

            raise RetrievalError(f"unknown faiss kind {kind!r} (use hnsw or ivf)")
        build_s = time.perf_counter() - t0
        exact = exact or ExactSearcher(x)
        queries = sample_queries(x, num_queries)
        k = min(10, n)
        _, truth = exact.search(queries, k)
        param = "ef_search" if kind == "hnsw" else "nprobe"
        grid = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512] if kind == "hnsw" else \
            [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256]
        if kind == "ivf":
            grid = [p for p in grid if p < settings["nlist"]] + [settings["nlist"]]
        info = {"kind": kind, **settings, "count": n, "dim": d, "build_seconds": round(build_s, 3)}
        searcher = None
        for value in grid:
            info[param] = value
            searcher = cls(index, dict(info))
            _, got = searcher.search(queries, k)
            recall = recall_at_k(got, truth, k)
            if verbose:
                print(f"faiss {kind} {param}={value}: recall@{k}={recall:.4f}", file=sys.stderr)
            if recall >= target_recall:
                break
        searcher.info["recall_at_10"] = round(recall, 4)
        searcher.info["recall_queries"] = len(queries)
        return searcher

    def save(self, folder: str, generation: int) -> None:
        """Write the faiss index and `faiss.json` (atomically) beside an embedding index."""
        faiss = _import_faiss()
        name = FAISS_INDEX_NAME.format(kind=self.info["kind"])
        final = os.path.join(folder, name)
        tmp = temporary_path(final)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, final)
        finally:
            remove_quietly(tmp)
        write_json_atomic(os.path.join(folder, FAISS_META_NAME),
                          {**self.info, "file": name, "generation": int(generation)})

    @classmethod
    def load(cls, folder: str, generation: int, kind: str | None = None):
        """The saved faiss index of `folder` if it matches `generation` (and `kind`), else None."""
        faiss = _import_faiss()
        meta_path = os.path.join(folder, FAISS_META_NAME)
        try:
            with open(meta_path, encoding="utf-8") as fh:
                info = json.load(fh)
            if info.get("generation") != generation or (kind and info.get("kind") != kind):
                return None
            index = faiss.read_index(os.path.join(folder, info["file"]))
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        if index.ntotal != info.get("count"):
            return None
        return cls(index, info)


def load_or_build_faiss(folder: str, embeddings, generation: int, *, kind: str | None = None,
                        save: bool = True, log=None, **build_options) -> FaissSearcher:
    """The faiss index saved beside an embedding index, (re)built when absent or stale."""
    searcher = FaissSearcher.load(folder, generation, kind)
    if searcher is not None:
        return searcher
    log = log or (lambda msg: print(msg, file=sys.stderr))
    log(f"building the faiss {kind or 'ivf'} index over {len(embeddings)} embeddings ...")
    searcher = FaissSearcher.build(embeddings, kind=kind or "ivf", **build_options)
    info = searcher.info
    param = "ef_search" if info["kind"] == "hnsw" else "nprobe"
    log(f"faiss {info['kind']} built in {info['build_seconds']:.1f}s: recall@10 vs exact "
        f"{info['recall_at_10']:.3f} ({param}={info[param]}, {info['recall_queries']} queries)")
    if save:
        try:
            searcher.save(folder, generation)
        except OSError as exc:
            log(f"warning: could not save the faiss index beside {folder} ({exc})")
    return searcher
