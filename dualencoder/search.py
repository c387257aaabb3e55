"""Nearest-neighbour backends over stored embeddings: exact (NumPy BLAS) and faiss (optional).

Both take L2-normalised float32 queries `[Q, D]` and return `(scores [Q, k], ids [Q, k])`,
best first, with cosine (inner-product) scores.

Example:
```python
exact = ExactSearcher(embeddings)             # float32 [N, D], kept contiguous
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
    """Exact top-k by chunked matrix products (argpartition per chunk, then merge).

    Memory is bounded: at most `max_scores` float32 scores are alive at once, so many queries
    are processed over row chunks of the embeddings; one query is a single matrix-vector product.

    Args:
        embeddings: `[N, D]` stored embeddings; converted once to a contiguous float32 array.
        max_scores: the score-buffer budget in elements (default 2**24, i.e. 64 MiB).
    """

    def __init__(self, embeddings, max_scores: int = 1 << 24):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.max_scores = int(max_scores)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, queries, k: int):
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = self.embeddings.shape[0]
        k = min(int(k), n)
        out_s = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        # Queries in groups so that one group against one row chunk fits the budget.
        group = max(1, min(q.shape[0], self.max_scores // max(n, 1) or 1))
        rows = max(k, min(n, self.max_scores // group))
        for g in range(0, q.shape[0], group):
            qg = q[g:g + group]
            best_s = best_i = None
            for start in range(0, n, rows):
                block = self.embeddings[start:start + rows]
                scores = qg @ block.T
                cols = _top_k_rows(scores, k)
                s = np.take_along_axis(scores, cols, axis=1)
                i = cols.astype(np.int64) + start
                if best_s is not None:
                    s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
                    sel = _top_k_rows(s, k)
                    s, i = np.take_along_axis(s, sel, 1), np.take_along_axis(i, sel, 1)
                best_s, best_i = s, i
            out_s[g:g + group], out_i[g:g + group] = _sort_desc(best_s, best_i)
        return out_s, out_i


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
        from dualencoder.index import RetrievalError  # noqa: PLC0415

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
            from dualencoder.index import RetrievalError  # noqa: PLC0415

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
        from dualencoder.index import write_json_atomic  # noqa: PLC0415

        name = FAISS_INDEX_NAME.format(kind=self.info["kind"])
        tmp = os.path.join(folder, f"{name}.tmp-{os.getpid()}")
        faiss.write_index(self.index, tmp)
        os.replace(tmp, os.path.join(folder, name))
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
