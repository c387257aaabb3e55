"""Tower outputs from cached boundary states: the trained part of a tower run over a whole
row store (validation, evaluation of a partly trained tower on cached records)."""

from __future__ import annotations

import numpy as np


def gather_text_states(store, rows):
    """Caption rows `rows` of a text row store, padded to the longest of them:
    `(states [len(rows), L, H] in the store's dtype, mask [len(rows), L] bool)`."""
    starts, lengths = store.index["start"][rows], store.index["length"][rows]
    width = max(int(lengths.max()) if len(rows) else 1, 1)
    mask = np.arange(width)[None, :] < lengths[:, None]
    states = np.zeros((len(rows), width, store.rows.shape[1]), store.rows.dtype)
    states[mask] = store.rows[(starts[:, None] + np.arange(width)[None, :])[mask]]
    return states, mask


def pooled_from_states(model, store, side: str, *, limit: int = 0, batch_size: int = 256):
    """The tower's pooled outputs from boundary states in `store` (`compute.text_states` or
    `compute.image_states`), the trained part in inference mode.

    Returns `{"image_features", "image_index"}` (the first `limit` images, 0 = all) or
    `{"text_features", "caption_image_index"}` (every caption; with `limit`, only captions of
    images with `image/index` below it are computed, the other rows are zero)."""
    import tensorflow as tf

    if side == "image":
        index = store.index["image_index"][:limit or None]
        upper = tf.function(lambda x: model.image_tower.from_boundary(x, training=False),
                            reduce_retracing=True)
        feats = [np.asarray(upper(np.asarray(store.rows[i:i + 64], np.float32)), np.float32)
                 for i in range(0, len(index), 64)]
        width = model.image_tower.output_dim
        return {"image_features": np.concatenate(feats) if feats else np.zeros((0, width)),
                "image_index": index}
    owner = store.index["caption_image_index"]
    wanted = np.flatnonzero(owner < limit) if limit else np.arange(len(owner))
    wanted = wanted[np.argsort(store.index["length"][wanted], kind="stable")]
    upper = tf.function(lambda x, m: model.text_tower.from_boundary(x, m, training=False),
                        reduce_retracing=True)
    out = np.zeros((len(owner), model.text_tower.output_dim), np.float32)
    for i in range(0, len(wanted), batch_size):
        rows = wanted[i:i + batch_size]
        states, mask = gather_text_states(store, rows)
        out[rows] = np.asarray(upper(states.astype(np.float32), mask), np.float32)
    return {"text_features": out, "caption_image_index": owner}
