"""The tower passes that fill the caches: pooled outputs of locked towers (`.npz` tables) and
boundary states of partly trained towers (row stores, streamed to disk batch by batch).

Captions go through the text tower once per distinct caption, in batches of similar length.
"""

from __future__ import annotations

import os

import numpy as np

from dualencoder.features import keys
from dualencoder.features.store import RowStore, RowWriter, cached_npz
from dualencoder.model.tower_precision import tower_precision

# Augmented views are a property of the cached data set, not of a run: every run (any
# `run.seed`) shares them; the run's seed only decides which view an image shows in an epoch.
VIEW_SEED = 0
# Boundary states are stored in half precision (half the disk and read time; tests store
# float32 to check the cached path against the uncached one bit for bit, up to rounding).
STATE_DTYPE = np.float16


def _progress(progress):
    """None: show progress (a bar on a terminal, a few plain lines in a log)."""
    return True if progress is None else progress


def compute_image_features(model, records: str, *, image_size: int, resize_method: str,
                           batch_size: int = 32, view: int = 0, lowres: int = 0,
                           progress: bool | None = None, skip_bad: bool = False):
    """Image-tower outputs of every image of `records` (augmented view `view`, see
    `data.image_dataset`; with `skip_bad` every intact image): {"image_features",
    "image_index"}."""
    from dualencoder.data import pipeline as data
    from dualencoder.model.encoding import tower_functions

    image_fn, _ = tower_functions(model)
    feats, index, _ = data.map_images(
        records, lambda images: np.asarray(image_fn(images), dtype=np.float32),
        image_size=image_size, batch_size=batch_size, resize_method=resize_method, view=view,
        lowres=lowres, seed=VIEW_SEED, skip_bad=skip_bad, progress=_progress(progress),
        desc=f"image features (view {view})" if view else "image features")
    return {"image_features": np.concatenate(feats), "image_index": index}


def compute_text_features(model, records: str, *, progress: bool | None = None,
                          skip_bad: bool = False):
    """Text-tower outputs of every caption of `records` (each distinct caption once; with
    `skip_bad`, of the intact records): {"text_features" [M, F], "caption_image_index" [M]}
    with captions grouped by image."""
    from dualencoder.data.annotations import read_captions
    from dualencoder.model.encoding import encode_texts_by_length

    texts, owner = read_captions(records, skip_bad=skip_bad)
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    feats = encode_texts_by_length(model, [str(t) for t in unique],
                                   progress=_progress(progress))
    return {"text_features": feats[inverse.ravel()],
            "caption_image_index": np.asarray(owner, dtype=np.int64)}


def image_features(model, cfg, records: str, directory: str, *, view: int = 0,
                   log=print) -> dict:
    """The cached pooled outputs of a locked image tower on `records` (once per key, view)."""
    with tower_precision(model, cfg.run.tower_precision):
        precision = model.image_tower.compute_dtype
        key = keys.image_key(keys.frozen_digest(model.image_tower), records,
                             image_size=cfg.model.image_size,
                             resize_method=cfg.data.resize_method, view=view,
                             lowres=cfg.data.lowres_size, precision=precision,
                             skip_bad=cfg.data.skip_bad)
        kind = f"low-res {cfg.data.lowres_size} px" if cfg.data.lowres_size else "augmented"
        what = f"image features of {records}" + (f" ({kind} view {view})" if view else "")
        return cached_npz(os.path.join(directory, f"image-{key}.npz"),
                          lambda: compute_image_features(
                              model, records, image_size=cfg.model.image_size,
                              resize_method=cfg.data.resize_method, view=view,
                              lowres=cfg.data.lowres_size, skip_bad=cfg.data.skip_bad),
                          log=log, what=what)


def text_features(model, cfg, records: str, directory: str, *, log=print) -> dict:
    """The cached pooled outputs of a locked text tower on every caption of `records`."""
    with tower_precision(model, cfg.run.tower_precision):
        precision = model.text_tower.compute_dtype
        key = keys.text_key(keys.frozen_digest(model.text_tower), records,
                            sequence_length=cfg.model.sequence_length,
                            pooling=cfg.model.text_pooling, precision=precision,
                            skip_bad=cfg.data.skip_bad)
        return cached_npz(os.path.join(directory, f"text-{key}.npz"),
                          lambda: compute_text_features(model, records,
                                                        skip_bad=cfg.data.skip_bad), log=log,
                          what=f"caption features of {records}")


# --------------------------------------------------------------------------------------------
# Boundary states
# --------------------------------------------------------------------------------------------
def _open_or_build(path: str, build, *, what: str, log) -> RowStore:
    store = RowStore.open(path)
    if store is not None:
        log(f"reusing cached {what} {path}")
        return store
    log(f"{what} {path} is damaged; computing it again" if os.path.exists(path)
        else f"caching {what} in {path} (once)")
    return build()


def text_states(model, cfg, records: str, directory: str, *, log=print,
                progress: bool | None = None) -> RowStore:
    """The token states entering the text tower's first trained layer, for every caption of
    `records`: a row store of float16 `[tokens, H]` rows, each caption at its own length.
    Index: `start`, `length` per caption, `caption_image_index` (captions grouped by image)."""
    tower = model.text_tower
    with tower_precision(model, cfg.run.tower_precision):
        precision = model.text_tower.compute_dtype
        key = keys.text_key(keys.frozen_digest(tower), records,
                            sequence_length=cfg.model.sequence_length, pooling="",
                            boundary=tower.boundary, precision=precision,
                            skip_bad=cfg.data.skip_bad)
        path = os.path.join(directory, f"text-states-{key}")
        return _open_or_build(path, lambda: _build_text_states(model, records, path, progress,
                                                               skip_bad=cfg.data.skip_bad),
                              what=f"caption states (text layer {tower.boundary}) of {records}",
                              log=log)


def _build_text_states(model, records, path, progress, batch_size=256, skip_bad=False):
    import tensorflow as tf

    from dualencoder.data.annotations import read_captions
    from records.progress import track

    texts, owner = read_captions(records, skip_bad=skip_bad)
    unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    tokens = model.tokenizer([str(t) for t in unique]) if len(unique) else None
    ids = np.asarray(tokens["token_ids"]) if tokens else np.zeros((0, 1), np.int32)
    mask = np.asarray(tokens["padding_mask"]).astype(bool) if tokens else ids.astype(bool)
    lengths = mask.sum(axis=1).astype(np.int64)
    order = np.argsort(lengths, kind="stable")
    starts = np.zeros(len(unique), np.int64)
    starts[order] = np.concatenate([[0], np.cumsum(lengths[order])[:-1]]) if len(order) else 0
    lower = tf.function(lambda tokens: tf.cast(model.text_tower.boundary_states(tokens),
                                               tf.float32), reduce_retracing=True)
    writer = RowWriter(path, int(lengths.sum()), (model.text_tower.output_dim,), STATE_DTYPE)
    for i in track(range(0, len(order), batch_size), desc="caption states", unit="batch",
                   enabled=_progress(progress), leave=True):
        rows = order[i:i + batch_size]
        width = int(lengths[rows].max())
        states = np.asarray(lower({"token_ids": ids[rows, :width],
                                   "padding_mask": mask[rows, :width]}), dtype=np.float32)
        writer.append(states[mask[rows, :width]])  # each caption's own tokens, in order
    inverse = inverse.ravel()
    return writer.close({"start": starts[inverse], "length": lengths[inverse],
                         "caption_image_index": np.asarray(owner, np.int64)})


def image_states(model, cfg, records: str, directory: str, *, log=print,
                 progress: bool | None = None) -> RowStore:
    """The feature maps entering the image tower's first trained block, for every image of
    `records` (record order): a row store of float16 `[N, h, w, c]`; index: `image_index`."""
    tower = model.image_tower
    with tower_precision(model, cfg.run.tower_precision):
        precision = model.image_tower.compute_dtype
        key = keys.image_key(keys.frozen_digest(tower), records,
                             image_size=cfg.model.image_size,
                             resize_method=cfg.data.resize_method, boundary=tower.boundary,
                             precision=precision, skip_bad=cfg.data.skip_bad)
        path = os.path.join(directory, f"image-states-{key}")
        return _open_or_build(path, lambda: _build_image_states(model, cfg, records, path,
                                                                progress),
                              what=f"image maps (at {tower.boundary}) of {records}", log=log)


def _build_image_states(model, cfg, records, path, progress, batch_size=32):
    import tensorflow as tf

    from dualencoder.data import pipeline as data
    from records.schema import read_manifest

    tower = model.image_tower
    size = cfg.model.image_size
    shape = tuple(int(d) for d in tower.lower_model.output.shape[1:])
    total = int(read_manifest(records)["num_records"])
    lower = tf.function(lambda images: tf.cast(tower.boundary_states(images), tf.float32),
                        reduce_retracing=True)
    writer = RowWriter(path, total, shape, STATE_DTYPE)
    try:
        _, index, _ = data.map_images(
            records, lambda images: writer.append(np.asarray(lower(images), np.float32)),
            image_size=size, batch_size=batch_size, resize_method=cfg.data.resize_method,
            skip_bad=cfg.data.skip_bad, progress=_progress(progress), desc="image maps")
    except BaseException:
        writer.abort()
        raise
    return writer.close({"image_index": index})
