"""Building an index: embed every image of a source, resume an interrupted build, update.

A rerun of an interrupted build re-lists the images and embeds only those that no committed
chunk holds. `update=True` embeds new and changed files (size or mtime differ) and drops
deleted ones, rewriting the chunks that lost rows. Each chunk is committed as soon as it is
written (`dualencoder.search.store`), so an interruption loses at most one chunk of work.

Example:
```python
report = build_index(encoder, "runs/idx", images="photos/", model_path="runs/exp1/model")
print(report.summary())
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os

import numpy as np

from dualencoder.encoders.load import absolute_spec
from dualencoder.search import store
from dualencoder.search.errors import RetrievalError
from dualencoder.search.hubness import refresh_hubness
from dualencoder.search.index import normalize
from dualencoder.search.sources import ImageFolder, RecordsFolder, decode_image
from records.files import remove_quietly


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
    links_skipped: int = 0
    linked_folders_skipped: list = dataclasses.field(default_factory=list)
    hubness: dict | None = None  # the penalties recomputed after an update (`refresh_hubness`)
    hubness_problem: str | None = None  # why stale penalties could not be recomputed

    def summary(self) -> str:
        verb = "resumed" if self.resumed else "indexed"
        lines = [f"{verb} {self.index_dir}: {self.total} images in the index ({self.embedded} "
                 f"embedded now, {self.kept} kept, {self.changed} changed, {self.removed} "
                 f"removed, {len(self.skipped)} unreadable skipped)"]
        if self.links_skipped:
            lines.append(f"{self.links_skipped} links leaving the folder skipped; "
                         "--follow-links to include them")
        if self.linked_folders_skipped:
            n, names = len(self.linked_folders_skipped), self.linked_folders_skipped
            shown = ", ".join(names[:5]) + (", ..." if n > 5 else "")
            lines.append(f"{n} linked sub-folder{'s' if n > 1 else ''} skipped ({shown}); "
                         "--follow-links to include them")
        if self.hubness:
            lines.append(f"hubness penalties recomputed against the {self.hubness['bank_captions']}"
                         f" captions of {self.hubness['bank']} (k={self.hubness['k']}): text "
                         "queries still rank by CSLS")
        return "\n".join(lines)


def build_index(encoder, index_dir, *, images=None, records=None, model_path=None,
                update: bool = False, chunk_size: int = 512, batch_size: int = 32,
                dtype: str = "float16", workers: int = 2, progress: bool = True,
                follow_links: bool = False) -> BuildReport:
    """Embed every image of a folder (or records directory) into an index folder.

    Resumes an interrupted build of the same index without redoing committed chunks. With
    `update=True` a complete index is refreshed: new and changed images are embedded, deleted
    ones dropped. Hubness penalties the update makes stale are recomputed against their bank
    (`report.hubness`; `report.hubness_problem` says why not when the bank is gone).

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
        progress: show progress on stderr (a bar on a terminal, plain lines in a log).
        follow_links: also index images behind symbolic links that leave the folder (by
            default they are skipped and counted in the report).

    Returns:
        A `BuildReport`.

    Raises:
        RetrievalError: bad arguments, an index of another model or source, an existing
            complete index without `update`, or an index folder inside the image folder.
    """
    source = _checked_source(images, records, dtype, chunk_size, batch_size, follow_links)
    index_dir = os.path.abspath(os.fspath(index_dir))
    check_out(index_dir, images)
    report = BuildReport(index_dir=index_dir)
    state = _open_state(index_dir, encoder, source, model_path=model_path, update=update,
                        dtype=dtype, report=report)
    before = json.dumps(state, sort_keys=True) if report.resumed or state["complete"] else None

    listing = source.list(exclude=index_dir)
    report.links_skipped = getattr(source, "links_skipped", 0)
    report.linked_folders_skipped = list(getattr(source, "linked_folders_skipped", []))
    current = {it.path: (it.size, it.mtime_ns) for it in listing}
    done, obsolete = _keep_unchanged(index_dir, state, current, report)
    todo = [it for it in listing if it.path not in done]
    if todo or before is None or json.dumps(state, sort_keys=True) != before:
        store.commit(index_dir, state, complete=not todo)  # an unchanged index keeps its generation
    store.remove_unlisted(index_dir, state)

    _embed_missing(encoder, source, todo, index_dir, state, report, chunk_size=chunk_size,
                   batch_size=batch_size, workers=workers, progress=progress)
    for name in obsolete:
        remove_quietly(os.path.join(index_dir, name))
    report.total = state["count"]
    report.skipped = [{"path": s["path"], "error": s["error"]} for s in state["skipped"]]
    if state["complete"]:  # penalties made stale by this build: recomputed, or why not
        try:
            report.hubness = refresh_hubness(index_dir, encoder, progress=progress)
        except RetrievalError as exc:
            report.hubness_problem = str(exc)
    return report


def check_out(index_dir, images=None) -> None:
    """Refuse an index folder that is a file, or the image folder or inside it."""
    index_dir = os.path.abspath(os.fspath(index_dir))
    if os.path.exists(index_dir) and not os.path.isdir(index_dir):
        raise RetrievalError(f"--out {index_dir} exists and is not a folder")
    if images is not None:
        root, out = os.path.realpath(os.fspath(images)), os.path.realpath(index_dir)
        if os.path.commonpath([root, out]) == root:
            raise RetrievalError(f"--out {index_dir} is inside the --images folder {images}; "
                                 "put the index in a folder of its own outside the photos")


def _checked_source(images, records, dtype, chunk_size, batch_size, follow_links=False):
    """The image source of a build, after checking the build's arguments."""
    if (images is None) == (records is None):
        raise RetrievalError("give exactly one of --images DIR or --records DIR")
    if dtype not in ("float16", "float32"):
        raise RetrievalError(f"dtype must be float16 or float32, not {dtype!r}")
    if chunk_size < 1 or batch_size < 1:
        raise RetrievalError("chunk_size and batch_size must be >= 1")
    if images is not None:
        return ImageFolder(images, follow_links=follow_links)
    return RecordsFolder(records)


def _open_state(index_dir, encoder, source, *, model_path, update, dtype, report) -> dict:
    """The committed state of the index to continue (checked to be this model's and this
    source's), or a new one; `report.resumed` says whether a build was unfinished."""
    fingerprint = store.fingerprint_of(encoder)
    state = store.read_state(index_dir)
    where = source.where
    if state is None:
        os.makedirs(index_dir, exist_ok=True)
        state = store.new_state(fingerprint, where, model_path=model_path, dtype=dtype)
        state["tower_precision"] = getattr(encoder, "tower_precision", "float32")
        return state
    state["tower_precision"] = getattr(encoder, "tower_precision", "float32")
    if state["fingerprint"] != fingerprint:
        raise RetrievalError(
            f"index {index_dir} was built by another model (fingerprint "
            f"{state['fingerprint'][:16]}, this one is {fingerprint[:16]}); write a new "
            "index with a different --out, or delete this one")
    if (state["source"]["kind"], state["source"]["path"]) != (where["kind"], where["path"]):
        raise RetrievalError(
            f"index {index_dir} holds {state['source']['kind']} from "
            f"{state['source']['path']}, not {source.kind} from {source.root}; use another --out")
    if state["complete"] and not update:
        raise RetrievalError(f"index {index_dir} already exists and is complete; pass "
                             "--update to add new/changed images and drop deleted ones")
    report.resumed = not state["complete"]
    state["source"] = where  # whether links are followed is the latest run's choice
    if model_path:  # the storage type stays the index's own (state["dtype"])
        state["model_path"] = absolute_spec(model_path)
    return state


def _keep_unchanged(index_dir, state, current, report) -> tuple[set, list]:
    """Reconcile the committed chunks with the listing `current` ({path: (size, mtime)}):
    keep the rows of unchanged files (rewriting a chunk that lost rows) and the unreadable
    files that did not change. Returns the paths that need no embedding and the chunk files
    made obsolete (deleted once the build is committed)."""
    done, obsolete = set(), []
    old_chunks, state["chunks"] = state["chunks"], []
    for chunk in old_chunks:
        path = os.path.join(index_dir, chunk["file"])
        keep = _unchanged_rows(store.read_chunk(path, with_embeddings=False), current, done,
                               report)
        if keep.all():
            state["chunks"].append(chunk)
            continue
        obsolete.append(chunk["file"])
        if keep.any():
            full = store.read_chunk(path)
            store.add_chunk(index_dir, state, full["embeddings"][keep], full["paths"][keep],
                            full["sizes"][keep], full["mtimes"][keep])
    report.kept = sum(c["count"] for c in state["chunks"])
    skipped = []
    for entry in state["skipped"]:  # an unreadable file is retried only once it changes
        if current.get(entry["path"]) == (entry["size"], entry["mtime_ns"]):
            skipped.append(entry)
            done.add(entry["path"])
    state["skipped"] = skipped
    return done, obsolete


def _unchanged_rows(chunk: dict, current: dict, done: set, report) -> np.ndarray:
    """Mask of a chunk's rows whose file is listed with the same size and mtime (the first
    row of a path only); counts removed and changed files in `report`, adds kept paths to
    `done`."""
    keep = np.zeros(len(chunk["paths"]), dtype=bool)
    for i, (p, s, m) in enumerate(zip(chunk["paths"].tolist(), chunk["sizes"].tolist(),
                                      chunk["mtimes"].tolist())):
        stat = current.get(p)
        if stat is None:
            report.removed += 1
        elif stat != (s, m):
            report.changed += 1
        elif p not in done:
            keep[i] = True
            done.add(p)
    return keep


def _embed_missing(encoder, source, todo, index_dir, state, report, *, chunk_size, batch_size,
                   workers, progress) -> None:
    """Embed the `todo` items, committing one chunk file per `chunk_size` of them."""
    from records.progress import progress_bar  # noqa: PLC0415

    bar = progress_bar(len(todo), desc="embedding", unit="img", enabled=progress and bool(todo),
                       leave=True)
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
                store.add_chunk(index_dir, state, embs.astype(state["dtype"]),
                                [it.path for it in ok], [it.size for it in ok],
                                [it.mtime_ns for it in ok])
            state["skipped"].extend(bad)
            report.embedded += len(ok)
            store.commit(index_dir, state, complete=start + chunk_size >= len(todo))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _embed_items(encoder, source, items, batch_size, pool, report, bar):
    """Decode `items` on `pool` and embed them `batch_size` at a time. Returns the normalised
    embeddings of the readable ones (or None), those items, and state entries of the rest."""
    size = int(encoder.image_size)
    stored = source.kind == "records"  # bytes normalised at records build: decoded as stored

    def load(item):
        try:
            return decode_image(source.read_bytes(item.path), size, stored=stored), None
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
        bar.update(len(batch))
    return (np.concatenate(embs) if embs else None), ok, bad
