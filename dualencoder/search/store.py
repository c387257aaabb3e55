"""The on-disk form of a photo-search index: `state.json`, chunk files, commits.

An index is a folder:

```
INDEX/
  state.json          # written atomically, last: what is committed (see `STATE_KEYS`)
  chunk-00000.npz     # embeddings (float16 by default), paths, sizes, mtimes of <= chunk_size
  chunk-00001.npz
  faiss-ivf.index     # optional, built by the faiss backend from the stored embeddings
  faiss.json          # its settings, measured recall@10 and the index generation it matches
```

Every chunk is written under a temporary name and `os.replace`d into place, then `state.json`
(also atomic) is rewritten to list it (`commit`). `state.json` is the only source of truth: a
chunk file it does not list is an orphan of an interrupted run and is deleted
(`remove_unlisted`). Building and updating are in `dualencoder.search.build`, loading and
searching in `dualencoder.search.index`.

Example:
```python
write_embeddings_index("runs/idx", embeddings, paths, fingerprint="bench")
state = read_state("runs/idx")          # None when the folder holds no index yet
```
"""

from __future__ import annotations

import datetime
import json
import os
import re
import zipfile

import numpy as np

from dualencoder.arrays import write_npz
from dualencoder.encoders.load import absolute_spec
from dualencoder.model.layout import saved_fingerprint
from dualencoder.search.errors import RetrievalError
from records.files import remove_quietly, write_json_atomic

FORMAT = "dualencoder-embedding-index"
FORMAT_VERSION = 1
STATE_NAME = "state.json"
CHUNK_NAME = re.compile(r"^chunk-(\d{5,})\.npz$")
STATE_KEYS = (
    "format",  # FORMAT
    "version",  # FORMAT_VERSION
    "fingerprint",  # str, the encoder's fingerprint()
    "model_path",  # str or null, the model spec the embeddings came from (absolute folders)
    "source",  # {"kind": "images" | "records", "path": absolute folder}
    "dim",  # int, embedding size
    "dtype",  # "float16" or "float32", as stored
    "complete",  # bool, false while a build or update is unfinished
    "generation",  # int, +1 on every commit (derived indexes record the one they match)
    "next_chunk",  # int, number of the next chunk file
    "chunks",  # [{"file": "chunk-00000.npz", "count": int}] in id order
    "count",  # int, total embedded images
    "skipped",  # [{"path", "size", "mtime_ns", "error"}] unreadable images
    "updated",  # ISO time of the last commit
    "tower_precision",  # "float32" | "bfloat16": the towers' precision of the last build or
    # update (embeddings are float32 after the heads either way: queries may use the other)
)


def new_state(fingerprint: str, source: dict, *, model_path=None, dim=None,
              dtype: str = "float16") -> dict:
    """The state of an empty, incomplete index (not written yet).

    Args:
        fingerprint: the encoder's fingerprint.
        source: `{"kind": "images" | "records", "path": absolute folder}`.
        model_path: the model spec, recorded with absolute folders (`absolute_spec`).
        dim: the embedding size, or None until the first chunk.
        dtype: stored embedding type.
    """
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fingerprint,
        "model_path": absolute_spec(model_path) if model_path else None, "source": source,
        "dim": dim, "dtype": dtype, "complete": False, "generation": 0, "next_chunk": 0,
        "chunks": [], "count": 0, "skipped": [], "updated": _now(),
    }


def read_state(index_dir) -> dict | None:
    """The committed `state.json` of an index folder, or None if there is none yet."""
    path = os.path.join(os.fspath(index_dir), STATE_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise RetrievalError(f"{path} is unreadable ({exc}); rebuild the index") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RetrievalError(f"{path} is not a {FORMAT} state file")
    if state.get("version") != FORMAT_VERSION:
        raise RetrievalError(f"{path}: index format version {state.get('version')!r}, this "
                             f"code reads {FORMAT_VERSION}; rebuild the index")
    return state


def commit(index_dir: str, state: dict, complete: bool) -> None:
    """Write `state` as the committed `state.json` (atomically), one generation later."""
    state["complete"] = bool(complete)
    state["count"] = int(sum(c["count"] for c in state["chunks"]))
    state["generation"] = int(state.get("generation", 0)) + 1
    state["updated"] = _now()
    write_json_atomic(os.path.join(index_dir, STATE_NAME), state)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Chunk files


def add_chunk(index_dir: str, state: dict, embeddings, paths, sizes, mtimes) -> None:
    """Write one chunk file (atomically) under the next free name and list it in `state`
    (not committed yet: `commit` makes it part of the index)."""
    name = f"chunk-{state['next_chunk']:05d}.npz"
    state["next_chunk"] += 1
    write_npz(os.path.join(index_dir, name), {
        "embeddings": embeddings, "paths": np.asarray(paths, dtype=str),
        "sizes": np.asarray(sizes, dtype=np.int64), "mtimes": np.asarray(mtimes, dtype=np.int64)})
    state["chunks"].append({"file": name, "count": int(len(paths))})


def read_chunk(path: str, with_embeddings: bool = True) -> dict:
    """A chunk file's `paths`, `sizes`, `mtimes` (and `embeddings`) as arrays."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("paths", "sizes", "mtimes")}
            if with_embeddings:
                out["embeddings"] = z["embeddings"]
    except FileNotFoundError as exc:
        raise RetrievalError(f"index folder {os.path.dirname(path)} is missing "
                             f"{os.path.basename(path)} (listed in {STATE_NAME}); rebuild the "
                             "index with `retrieval.py index`") from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RetrievalError(f"chunk file {path} is damaged; rebuild with retrieval.py "
                             "index") from exc
    if not isinstance(out["paths"], np.ndarray) or out["paths"].ndim != 1:
        raise RetrievalError(f"chunk file {path} is damaged; rebuild with retrieval.py index")
    return out


def remove_unlisted(index_dir: str, state: dict) -> None:
    """Delete chunk files and temporaries that the committed state does not list."""
    listed = {c["file"] for c in state["chunks"]}
    for name in os.listdir(index_dir):
        if (CHUNK_NAME.match(name) and name not in listed) or ".tmp-" in name:
            remove_quietly(os.path.join(index_dir, name))


def write_embeddings_index(index_dir, embeddings, paths, *, fingerprint: str,
                           source_path: str = ".", chunk_size: int = 65536,
                           dtype: str = "float16") -> None:
    """Write precomputed embeddings as a complete index (benchmarks, tests, other tools)."""
    index_dir = os.fspath(index_dir)
    os.makedirs(index_dir, exist_ok=True)
    embeddings = np.asarray(embeddings)
    state = new_state(fingerprint, {"kind": "images", "path": os.path.realpath(source_path)},
                      dim=int(embeddings.shape[1]), dtype=dtype)
    for start in range(0, len(embeddings), chunk_size):
        stop = min(start + chunk_size, len(embeddings))
        add_chunk(index_dir, state, embeddings[start:stop].astype(dtype),
                  list(paths[start:stop]), np.zeros(stop - start, np.int64),
                  np.zeros(stop - start, np.int64))
    commit(index_dir, state, complete=True)


# --------------------------------------------------------------------------------------------
# Which model an index belongs to


def fingerprint_of(encoder) -> str:
    """The encoder's `fingerprint()`, checked to be a non-empty string."""
    fp = encoder.fingerprint()
    if not isinstance(fp, str) or not fp:
        raise RetrievalError("the encoder's fingerprint() returned no string")
    return fp


def check_fingerprint(state: dict, encoder, index_dir) -> None:
    """Raise `RetrievalError` unless `encoder` is the model the index was built with."""
    fp = fingerprint_of(encoder)
    if fp != state["fingerprint"]:
        raise RetrievalError(
            f"index {index_dir} was built by a different model (fingerprint "
            f"{state['fingerprint'][:16]} from {state.get('model_path')}, this model is "
            f"{fp[:16]}); re-index with this model or pass the matching --model")


def check_saved_fingerprint(state: dict, model_dir, index_dir) -> None:
    """Fail fast (before loading the model) when a saved model's recorded fingerprint differs."""
    fp = saved_fingerprint(model_dir)
    if fp is not None and fp != state["fingerprint"]:
        raise RetrievalError(
            f"index {index_dir} was built by a different model (fingerprint "
            f"{state['fingerprint'][:16]} from {state.get('model_path')}, {model_dir} is "
            f"{fp[:16]}); re-index with this model or pass the matching --model")


# --------------------------------------------------------------------------------------------
# Hubness penalties (CSLS, `dualencoder.csls`): INDEX/hubness.npz beside the chunks

INDEX_PENALTIES = "hubness.npz"


def save_index_penalties(index_dir: str, penalty, *, state: dict, k: int, bank: str,
                         num_captions: int) -> str:
    """Store the r(image) of every image of a committed index (row order) beside it.

    The file records the index generation, image count and model fingerprint it was computed
    for, so a later `--update` of the index makes it stale instead of silently wrong. Written
    under a temporary name and renamed into place (an interrupted write leaves no half file).

    Returns:
        the path written.
    """
    penalty = np.asarray(penalty, np.float32)
    if penalty.shape != (int(state["count"]),):
        raise ValueError(f"{len(penalty)} penalties for an index of {state['count']} images")
    meta = {"generation": int(state["generation"]), "count": int(state["count"]),
            "fingerprint": state["fingerprint"], "k": int(k), "bank": bank,
            "num_captions": int(num_captions)}
    path = os.path.join(index_dir, INDEX_PENALTIES)
    write_npz(path, {"penalty": penalty, "meta": np.array(json.dumps(meta))})
    return path


def load_index_penalties(index_dir: str, state: dict):
    """The stored r(image) of an index: `(penalty [count] or None, meta or None, problem)`.

    `problem` is None when the file is absent or current, else one line saying why it is not
    used (written for another generation, count or model, or unreadable) and what to do.
    """
    path = os.path.join(index_dir, INDEX_PENALTIES)
    if not os.path.exists(path):
        return None, None, None
    redo = "rerun `retrieval.py hubness` to recompute them; text queries rank by cosine until then"
    try:
        with np.load(path, allow_pickle=False) as z:
            penalty = np.asarray(z["penalty"], np.float32)
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        return None, None, f"{path} is unreadable ({exc}); {redo}"
    for key in ("generation", "count", "fingerprint"):
        if meta.get(key) != state.get(key):
            return None, meta, (f"{path} holds hubness penalties for another version of the index "
                                f"({key} {meta.get(key)!r}, the index has {state.get(key)!r}); "
                                f"{redo}")
    if penalty.shape != (int(state["count"]),):
        return None, meta, f"{path} holds {penalty.shape} penalties for {state['count']} images; {redo}"
    return penalty, meta, None
