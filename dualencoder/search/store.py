"""The on-disk embedding index used by `retrieval.py`: build, resume, update, open, search.

An index is a folder:

```
INDEX/
  state.json          # written atomically, last: what is committed (see `STATE_KEYS`)
  chunk-00000.npz     # embeddings (float16 by default), paths, sizes, mtimes of <= chunk_size images
  chunk-00001.npz
  faiss-ivf.index     # optional, built by the faiss backend from the stored embeddings
  faiss.json          # its settings, measured recall@10 and the index generation it matches
```

Every chunk is written under a temporary name and `os.replace`d into place, then `state.json`
(also atomic) is rewritten to list it. `state.json` is the only source of truth: a chunk file
it does not list is an orphan of an interrupted run and is deleted. A rerun of an interrupted
build re-lists the images and embeds only those that no committed chunk holds. `update=True`
embeds new and changed files (size or mtime differ) and drops deleted ones, rewriting the
chunks that lost rows.

Images come from a folder (recursive; jpg, jpeg, png, webp, bmp) or from a records directory
(`records/`); an entry is named by its path relative to the folder, or `"<shard>#<index>"`.

Example:
```python
report = build_index(encoder, "runs/idx", images="photos/", model_path="runs/exp1/model")
index = EmbeddingIndex.open("runs/idx")
hits = index.search(encoder.encode_texts(["a red car"]), k=9)
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import io
import json
import os
import re
import threading

import numpy as np

from dualencoder.encoders.load import absolute_spec
from dualencoder.model.layout import saved_fingerprint
from dualencoder.search.errors import ImageAccessError, RetrievalError
from records.files import IMAGE_EXTENSIONS, atomic_write, write_json_atomic

FORMAT = "dualencoder-embedding-index"
FORMAT_VERSION = 1
STATE_NAME = "state.json"
_CHUNK_RE = re.compile(r"^chunk-(\d{5,})\.npz$")
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
)


# --------------------------------------------------------------------------------------------
# Image sources


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a source: its name in the index and the stat it is matched on."""

    path: str
    size: int
    mtime_ns: int


class ImageFolder:
    """Images under a folder, recursively, named by their POSIX path relative to it.

    Args:
        root: the folder.
    """

    kind = "images"

    def __init__(self, root):
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise RetrievalError(f"image folder {root} does not exist or is not a folder")

    def list(self, exclude=None) -> list[Item]:
        """Every image file under the folder, sorted by path; `exclude` is a folder to skip."""
        exclude = os.path.realpath(exclude) if exclude else None
        items = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            if exclude and os.path.realpath(dirpath) == exclude:
                dirnames[:] = []
                continue
            dirnames.sort()
            for name in filenames:
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue  # vanished or a dangling link
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                items.append(Item(rel, int(st.st_size), int(st.st_mtime_ns)))
        items.sort(key=lambda it: it.path)
        return items

    def file_path(self, rel: str) -> str:
        """The absolute path of an indexed image, refusing anything outside the folder.

        Symbolic links are resolved first, so a link pointing out of the folder is refused too.
        """
        if not rel or "\x00" in rel or os.path.isabs(rel):
            raise ImageAccessError(f"refused image path {rel!r}")
        full = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([full, self.root]) != self.root or full == self.root:
            raise ImageAccessError(f"refused image path {rel!r}: outside the indexed folder")
        return full

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of an indexed image (checked to lie inside the folder)."""
        path = self.file_path(rel)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ImageAccessError(f"cannot read image {rel!r}: {exc.strerror or exc}") from exc


class RecordsFolder:
    """Images stored in a records directory (`records/`), named `"<shard>#<image index>"`.

    Listing uses only the manifest; images are read from the shards by byte offset (the offset
    table of a shard is built once by walking its record framing, without decoding).

    Args:
        root: the records directory (with `manifest.json`).
    """

    kind = "records"

    def __init__(self, root):
        self.root = os.path.realpath(os.fspath(root))
        if not os.path.isfile(os.path.join(self.root, "manifest.json")):
            raise RetrievalError(f"records folder {root} has no manifest.json (not a complete "
                                 "records build)")
        self._offsets = {}
        self._lock = threading.Lock()
        self._manifest = None

    def manifest(self) -> dict:
        if self._manifest is None:
            from records.schema import read_manifest  # noqa: PLC0415 (imports TensorFlow)

            try:
                self._manifest = read_manifest(self.root)
            except ValueError as exc:
                raise RetrievalError(str(exc)) from exc
        return self._manifest

    def list(self, exclude=None) -> list[Item]:
        del exclude
        items = []
        for shard in self.manifest()["shards"]:
            st = os.stat(os.path.join(self.root, shard["name"]))
            first = int(shard.get("first_index", 0))
            for position in range(int(shard["records"])):
                items.append(Item(f"{shard['name']}#{first + position}", int(st.st_size),
                                  int(st.st_mtime_ns)))
        return items

    def _shard_offsets(self, name: str) -> tuple[int, list[int]]:
        with self._lock:
            if name not in self._offsets:
                shard = next((s for s in self.manifest()["shards"] if s["name"] == name), None)
                if shard is None:
                    raise ImageAccessError(f"unknown records shard {name!r}")
                offsets = []
                with open(os.path.join(self.root, name), "rb") as fh:
                    pos = 0
                    while True:
                        head = fh.read(12)
                        if len(head) < 12:
                            break
                        length = int.from_bytes(head[:8], "little")
                        offsets.append(pos)
                        pos += 12 + length + 4
                        fh.seek(pos)
                self._offsets[name] = (int(shard.get("first_index", 0)), offsets)
            return self._offsets[name]

    def read_bytes(self, rel: str) -> bytes:
        """The encoded image bytes of entry `"<shard>#<index>"`."""
        name, _, index = rel.rpartition("#")
        if not name or not index.isdigit() or "/" in name or "\\" in name:
            raise ImageAccessError(f"refused records entry {rel!r}")
        first, offsets = self._shard_offsets(name)
        position = int(index) - first
        if not 0 <= position < len(offsets):
            raise ImageAccessError(f"records entry {rel!r} is not in its shard")
        with open(os.path.join(self.root, name), "rb") as fh:
            fh.seek(offsets[position])
            length = int.from_bytes(fh.read(12)[:8], "little")
            raw = fh.read(length)
        from records.schema import decode_example_py  # noqa: PLC0415

        record = decode_example_py(raw)
        if record["index"] != int(index):
            raise ImageAccessError(f"records entry {rel!r}: shard holds index {record['index']} "
                                   "at that position (records changed since indexing?)")
        return record["image_bytes"]


def open_source(kind: str, path):
    """An `ImageFolder` or `RecordsFolder` for `kind` in {"images", "records"}."""
    if kind == "images":
        return ImageFolder(path)
    if kind == "records":
        return RecordsFolder(path)
    raise RetrievalError(f"unknown image source kind {kind!r}")


# --------------------------------------------------------------------------------------------
# Images -> pixels


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to float32 `[size, size, 3]` pixels in 0..255.

    The image is converted to RGB and resized to `size` x `size` (bicubic, antialiased, aspect
    ratio not kept), like the evaluation path of the input pipeline (`dualencoder.data.pipeline`).

    Raises:
        ValueError: the bytes are not a decodable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.float32)
    except UnidentifiedImageError as exc:
        raise ValueError("unreadable image (not a recognised image format)") from exc
    except Exception as exc:  # PIL raises many types for bad files
        raise ValueError(f"unreadable image ({type(exc).__name__}: {exc})") from exc


def load_query_image(path, size: int) -> np.ndarray:
    """Read and decode one query image file, raising `RetrievalError` with a clear message."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise RetrievalError(f"cannot read query image {path}: {exc.strerror or exc}") from exc
    try:
        return decode_image(data, size)
    except ValueError as exc:
        raise RetrievalError(f"query image {path}: {exc}") from exc


def check_query_image(path) -> None:
    """Fail fast (before loading any model) when a query image cannot be read or decoded."""
    load_query_image(path, 8)


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (rows of zeros stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------------------------
# Atomic files


def _write_chunk(path: str, embeddings, paths, sizes, mtimes) -> None:
    with atomic_write(path, "wb") as fh:
        np.savez(fh, embeddings=embeddings, paths=np.asarray(paths, dtype=str),
                 sizes=np.asarray(sizes, dtype=np.int64), mtimes=np.asarray(mtimes, dtype=np.int64))


def _read_chunk(path: str, with_embeddings: bool = True) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("paths", "sizes", "mtimes")}
            if with_embeddings:
                out["embeddings"] = z["embeddings"]
    except FileNotFoundError as exc:
        raise RetrievalError(f"index folder {os.path.dirname(path)} is missing "
                             f"{os.path.basename(path)} (listed in {STATE_NAME}); rebuild the "
                             "index with `retrieval.py index`") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise RetrievalError(f"index chunk {path} is unreadable ({exc}); rebuild the index "
                             "with `retrieval.py index`") from exc
    return out


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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Build / resume / update


@dataclasses.dataclass
class BuildReport:
    """What `build_index` did. `skipped` lists `{"path", "error"}` of unreadable images."""

    index_dir: str
    total: int = 0
    embedded: int = 0
    kept: int = 0
    removed: int = 0
    changed: int = 0
    resumed: bool = False
    skipped: list = dataclasses.field(default_factory=list)
    encoder_calls: int = 0

    def summary(self) -> str:
        verb = "resumed" if self.resumed else "indexed"
        return (f"{verb} {self.index_dir}: {self.total} images in the index ({self.embedded} "
                f"embedded now, {self.kept} kept, {self.changed} changed, {self.removed} removed, "
                f"{len(self.skipped)} unreadable skipped)")


def _fingerprint(encoder) -> str:
    fp = encoder.fingerprint()
    if not isinstance(fp, str) or not fp:
        raise RetrievalError("the encoder's fingerprint() returned no string")
    return fp


def check_fingerprint(state: dict, encoder, index_dir) -> None:
    """Raise `RetrievalError` unless `encoder` is the model the index was built with."""
    fp = _fingerprint(encoder)
    if fp != state["fingerprint"]:
        raise RetrievalError(
            f"index {index_dir} was built by a different model (fingerprint "
            f"{state['fingerprint'][:16]} from {state.get('model_path')}, this model is "
            f"{fp[:16]}); re-index with this model or pass the matching --model")


def build_index(encoder, index_dir, *, images=None, records=None, model_path=None,
                update: bool = False, chunk_size: int = 512, batch_size: int = 32,
                dtype: str = "float16", workers: int = 2, progress: bool = True) -> BuildReport:
    """Embed every image of a folder (or records directory) into an index folder.

    Resumes an interrupted build of the same index without redoing committed chunks. With
    `update=True` a complete index is refreshed: new and changed images are embedded, deleted
    ones dropped.

    Args:
        encoder: an object of the Encoder protocol (`encode_images`, `image_size`,
            `fingerprint()`).
        index_dir: the index folder (created if absent).
        images: an image folder, searched recursively. Exactly one of `images` / `records`.
        records: a records directory.
        model_path: the model spec (saved model, workdir, `ensemble:`, `clip:`), recorded
            with absolute folders so `search` can reload the model.
        update: allow refreshing a complete index (otherwise it is an error to rebuild one).
        chunk_size: images per committed chunk file.
        batch_size: images per `encode_images` call.
        dtype: stored embedding type, "float16" (default) or "float32".
        workers: threads decoding images.
        progress: show a tqdm progress bar on stderr.

    Returns:
        A `BuildReport`.

    Raises:
        RetrievalError: bad arguments, an index of another model or source, or an existing
            complete index without `update`.
    """
    if (images is None) == (records is None):
        raise RetrievalError("give exactly one of --images DIR or --records DIR")
    if dtype not in ("float16", "float32"):
        raise RetrievalError(f"dtype must be float16 or float32, not {dtype!r}")
    if chunk_size < 1 or batch_size < 1:
        raise RetrievalError("chunk_size and batch_size must be >= 1")
    source = ImageFolder(images) if images is not None else RecordsFolder(records)
    index_dir = os.path.abspath(os.fspath(index_dir))
    if os.path.exists(index_dir) and not os.path.isdir(index_dir):
        raise RetrievalError(f"--out {index_dir} exists and is not a folder")
    fingerprint = _fingerprint(encoder)
    state = read_state(index_dir)
    report = BuildReport(index_dir=index_dir)
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise RetrievalError(
                f"index {index_dir} was built by another model (fingerprint "
                f"{state['fingerprint'][:16]}, this one is {fingerprint[:16]}); write a new "
                "index with a different --out, or delete this one")
        if state["source"] != {"kind": source.kind, "path": source.root}:
            raise RetrievalError(
                f"index {index_dir} holds {state['source']['kind']} from "
                f"{state['source']['path']}, not {source.kind} from {source.root}; use another --out")
        if state["complete"] and not update:
            raise RetrievalError(f"index {index_dir} already exists and is complete; pass "
                                 "--update to add new/changed images and drop deleted ones")
        if state["dtype"] != dtype:
            dtype = state["dtype"]  # keep one storage type per index
        report.resumed = not state["complete"]
    else:
        os.makedirs(index_dir, exist_ok=True)
        state = {
            "format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fingerprint,
            "model_path": absolute_spec(model_path) if model_path else None,
            "source": {"kind": source.kind, "path": source.root}, "dim": None, "dtype": dtype,
            "complete": False, "generation": 0, "next_chunk": 0, "chunks": [], "count": 0,
            "skipped": [], "updated": _now(),
        }
    if model_path:
        state["model_path"] = absolute_spec(model_path)
    before = json.dumps(state, sort_keys=True) if report.resumed or state["complete"] else None

    listing = source.list(exclude=index_dir)
    current = {it.path: (it.size, it.mtime_ns) for it in listing}

    # Reconcile the committed chunks with the listing: keep rows whose file is unchanged.
    done, new_chunks, obsolete = set(), [], []
    for chunk in state["chunks"]:
        data = _read_chunk(os.path.join(index_dir, chunk["file"]), with_embeddings=False)
        keep = np.zeros(len(data["paths"]), dtype=bool)
        for i, (p, s, m) in enumerate(zip(data["paths"].tolist(), data["sizes"].tolist(),
                                          data["mtimes"].tolist())):
            stat = current.get(p)
            if stat is None:
                report.removed += 1
            elif stat != (s, m):
                report.changed += 1
            elif p not in done:
                keep[i] = True
                done.add(p)
        if keep.all():
            new_chunks.append(chunk)
            continue
        obsolete.append(chunk["file"])
        if keep.any():
            full = _read_chunk(os.path.join(index_dir, chunk["file"]))
            name = f"chunk-{state['next_chunk']:05d}.npz"
            state["next_chunk"] += 1
            _write_chunk(os.path.join(index_dir, name), full["embeddings"][keep],
                         full["paths"][keep], full["sizes"][keep], full["mtimes"][keep])
            new_chunks.append({"file": name, "count": int(keep.sum())})
    skipped = []
    for entry in state["skipped"]:  # an unreadable file is retried only once it changes
        if current.get(entry["path"]) == (entry["size"], entry["mtime_ns"]):
            skipped.append(entry)
            done.add(entry["path"])
    state["chunks"], state["skipped"] = new_chunks, skipped
    report.kept = sum(c["count"] for c in new_chunks)
    todo = [it for it in listing if it.path not in done]
    if todo or before is None or json.dumps(state, sort_keys=True) != before:
        _commit(index_dir, state, complete=not todo)  # an unchanged index keeps its generation
    _remove_unlisted(index_dir, state)

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(todo), unit="img", desc="embedding", dynamic_ncols=True)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for start in range(0, len(todo), chunk_size):
            part = todo[start:start + chunk_size]
            embs, ok, bad = _embed_items(encoder, source, part, batch_size, pool, report, bar)
            if ok:
                if state["dim"] is None:
                    state["dim"] = int(embs.shape[1])
                elif embs.shape[1] != state["dim"]:
                    raise RetrievalError(f"the encoder returned {embs.shape[1]}-d embeddings, "
                                         f"the index holds {state['dim']}-d ones")
                name = f"chunk-{state['next_chunk']:05d}.npz"
                state["next_chunk"] += 1
                _write_chunk(os.path.join(index_dir, name), embs.astype(state["dtype"]),
                             [it.path for it in ok], [it.size for it in ok],
                             [it.mtime_ns for it in ok])
                state["chunks"].append({"file": name, "count": len(ok)})
            state["skipped"].extend(bad)
            report.embedded += len(ok)
            _commit(index_dir, state, complete=start + chunk_size >= len(todo))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    for name in obsolete:
        _remove_quietly(os.path.join(index_dir, name))
    report.total = state["count"]
    report.skipped = [{"path": s["path"], "error": s["error"]} for s in state["skipped"]]
    return report


def _embed_items(encoder, source, items, batch_size, pool, report, bar):
    size = int(encoder.image_size)

    def load(item):
        try:
            return decode_image(source.read_bytes(item.path), size), None
        except (ValueError, OSError) as exc:
            return None, str(exc)

    embs, ok, bad = [], [], []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        pixels, good = [], []
        for item, (px, err) in zip(batch, pool.map(load, batch)):
            if px is None:
                bad.append({"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns,
                            "error": err})
            else:
                pixels.append(px)
                good.append(item)
        if pixels:
            out = encoder.encode_images(np.stack(pixels))
            report.encoder_calls += 1
            out = np.asarray(out, dtype=np.float32)
            if out.ndim != 2 or out.shape[0] != len(pixels):
                raise RetrievalError(f"encode_images returned shape {out.shape} for "
                                     f"{len(pixels)} images")
            embs.append(normalize(out))
            ok.extend(good)
        if bar is not None:
            bar.update(len(batch))
    return (np.concatenate(embs) if embs else None), ok, bad


def _commit(index_dir: str, state: dict, complete: bool) -> None:
    state["complete"] = bool(complete)
    state["count"] = int(sum(c["count"] for c in state["chunks"]))
    state["generation"] = int(state.get("generation", 0)) + 1
    state["updated"] = _now()
    write_json_atomic(os.path.join(index_dir, STATE_NAME), state)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_unlisted(index_dir: str, state: dict) -> None:
    """Delete chunk files and temporaries that the committed state does not list."""
    listed = {c["file"] for c in state["chunks"]}
    for name in os.listdir(index_dir):
        if (_CHUNK_RE.match(name) and name not in listed) or ".tmp-" in name:
            _remove_quietly(os.path.join(index_dir, name))


def write_embeddings_index(index_dir, embeddings, paths, *, fingerprint: str,
                           source_path: str = ".", chunk_size: int = 65536,
                           dtype: str = "float16") -> None:
    """Write precomputed embeddings as a complete index (benchmarks, tests, other tools)."""
    index_dir = os.fspath(index_dir)
    os.makedirs(index_dir, exist_ok=True)
    embeddings = np.asarray(embeddings)
    state = {
        "format": FORMAT, "version": FORMAT_VERSION, "fingerprint": fingerprint,
        "model_path": None, "source": {"kind": "images", "path": os.path.realpath(source_path)},
        "dim": int(embeddings.shape[1]), "dtype": dtype, "complete": False, "generation": 0,
        "next_chunk": 0, "chunks": [], "count": 0, "skipped": [], "updated": _now(),
    }
    for start in range(0, len(embeddings), chunk_size):
        stop = min(start + chunk_size, len(embeddings))
        name = f"chunk-{state['next_chunk']:05d}.npz"
        state["next_chunk"] += 1
        _write_chunk(os.path.join(index_dir, name), embeddings[start:stop].astype(dtype),
                     list(paths[start:stop]), np.zeros(stop - start, np.int64),
                     np.zeros(stop - start, np.int64))
        state["chunks"].append({"file": name, "count": stop - start})
    _commit(index_dir, state, complete=True)


# --------------------------------------------------------------------------------------------
# Open and search


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
        index_dir = os.path.abspath(os.fspath(index_dir))
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
        stored = np.float16 if state.get("dtype", "float16") == "float16" else np.float32
        emb = np.empty((state["count"], state["dim"]), dtype=stored)
        paths, row = [], 0
        for chunk in state["chunks"]:
            data = _read_chunk(os.path.join(index_dir, chunk["file"]))
            n = len(data["paths"])
            if n != chunk["count"] or data["embeddings"].shape != (n, state["dim"]):
                raise RetrievalError(f"index chunk {chunk['file']} does not match {STATE_NAME}; "
                                     "rebuild the index")
            emb[row:row + n] = data["embeddings"]
            paths.extend(data["paths"].tolist())
            row += n
        from dualencoder.eval.hubness import load_index_penalties  # noqa: PLC0415 (NumPy only)

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
            self._source = open_source(src["kind"], src["path"])
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


def read_bank_captions(bank) -> list[str]:
    """The captions of a CSLS bank: a captioned records directory (every caption, in record
    order) or a UTF-8 text file with one caption per line."""
    bank = os.fspath(bank)
    if os.path.isdir(bank):
        if not os.path.isfile(os.path.join(bank, "manifest.json")):
            raise RetrievalError(f"--bank {bank}: a folder without manifest.json; give a records "
                                 "directory (`python -m records build ...`) or a text file "
                                 "with one caption per line")
        from dualencoder.data.annotations import read_captions  # noqa: PLC0415 (imports TensorFlow)

        texts = read_captions(bank)[0]
    elif os.path.isfile(bank):
        try:
            with open(bank, encoding="utf-8") as fh:
                texts = [line.strip() for line in fh if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrievalError(f"cannot read --bank {bank}: {exc}") from exc
    else:
        raise RetrievalError(f"--bank {bank} does not exist")
    if not texts:
        raise RetrievalError(f"--bank {bank} holds no captions")
    return texts


def add_hubness(index_dir, encoder, bank, *, k: int = 10, progress: bool = True) -> dict:
    """Compute and store every indexed image's hubness penalty r(image): its mean cosine to
    its `k` nearest captions of `bank` (training captions, not the photos' own), so that text
    queries rank by CSLS (`EmbeddingIndex.search(..., csls=True)`).

    Args:
        index_dir: a complete index.
        encoder: the index's model (its fingerprint is checked).
        bank: a captioned records directory or a text file with one caption per line.
        k: bank neighbours averaged (1 to the number of bank captions).
        progress: progress bar while the captions are embedded.

    Returns:
        `{"path", "images", "bank_captions", "k", "mean_penalty"}`.
    """
    from dualencoder.eval import hubness  # noqa: PLC0415
    from dualencoder.encoders.cache import embed_texts  # noqa: PLC0415

    index = EmbeddingIndex.open(index_dir)
    check_fingerprint(index.state, encoder, index.index_dir)
    texts = read_bank_captions(bank)
    if not 1 <= int(k) <= len(texts):
        raise RetrievalError(f"--bank-k {k}: must be between 1 and the bank's {len(texts)} "
                             "captions")
    records = bank if os.path.isdir(bank) else None
    bank_emb = normalize(embed_texts(encoder, texts, progress=progress, cache_dir=False,
                                     desc="encoding bank captions", records_dir=records))
    penalty = np.empty(len(index), np.float32)
    for start in range(0, len(index), 65536):  # float32 copies of one block at a time
        rows = normalize(index.embeddings[start:start + 65536])
        penalty[start:start + len(rows)] = hubness.mean_topk_similarity(rows, bank_emb, int(k))
    path = hubness.save_index_penalties(index.index_dir, penalty, state=index.state, k=int(k),
                                        bank=os.path.abspath(bank), num_captions=len(texts))
    return {"path": path, "images": len(index), "bank_captions": len(texts), "k": int(k),
            "mean_penalty": float(penalty.mean())}


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


# --------------------------------------------------------------------------------------------
# Models and result grids


def check_saved_fingerprint(state: dict, model_dir, index_dir) -> None:
    """Fail fast (before loading the model) when a saved model's recorded fingerprint differs."""
    fp = saved_fingerprint(model_dir)
    if fp is not None and fp != state["fingerprint"]:
        raise RetrievalError(
            f"index {index_dir} was built by a different model (fingerprint "
            f"{state['fingerprint'][:16]} from {state.get('model_path')}, {model_dir} is "
            f"{fp[:16]}); re-index with this model or pass the matching --model")


def save_grid(index: EmbeddingIndex, hits: list[Hit], out_path, *, thumb: int = 192,
              columns: int | None = None, title: str | None = None) -> None:
    """Write the hit images as a PNG grid with rank, score and name under each thumbnail."""
    from PIL import Image, ImageDraw, ImageOps  # noqa: PLC0415

    if not hits:
        raise RetrievalError("no results to draw")
    columns = columns or min(len(hits), max(1, int(np.ceil(np.sqrt(len(hits))))))
    rows = int(np.ceil(len(hits) / columns))
    label_h, head_h, pad = 30, (24 if title else 0), 6
    cell_w, cell_h = thumb + pad, thumb + label_h + pad
    canvas = Image.new("RGB", (columns * cell_w + pad, head_h + rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 6), title[:120], fill="black")
    for n, hit in enumerate(hits):
        x, y = pad + (n % columns) * cell_w, head_h + pad + (n // columns) * cell_h
        try:
            data, _ = index.image_bytes(hit.id)
            with Image.open(io.BytesIO(data)) as img:
                tile = ImageOps.pad(img.convert("RGB"), (thumb, thumb), color="#eeeeee")
        except (RetrievalError, OSError, ValueError):
            tile = Image.new("RGB", (thumb, thumb), "#cc9999")
        canvas.paste(tile, (x, y))
        name = hit.path if len(hit.path) <= 28 else "..." + hit.path[-25:]
        draw.text((x, y + thumb + 2), f"{n + 1}. {hit.score:.3f}", fill="black")
        draw.text((x, y + thumb + 15), name, fill="#444444")
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path, format="PNG")
