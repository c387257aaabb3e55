"""Inference with a `DualEncoder`: compiled tower calls and the loops behind `encode_images`
and `encode_texts`.

Eager Keras re-allocates every intermediate on each call; on a 2-core CPU that made Xception
feature extraction several times slower than the same graph, so every inference path here runs
`tf.function`s. A CPU also runs a large CNN faster on small batches (`image_chunk_size`), and
captions run in batches of similar length, each trimmed to its longest caption
(`encode_texts_by_length`): the padding mask makes the pooled output the same as at full
`sequence_length`, at a fraction of the cost.
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

__all__ = ["image_chunk_size", "tower_functions", "encode_texts_by_length", "encode_images",
           "encode_texts"]


def image_chunk_size() -> int:
    """Images per image-tower call at inference: 8 on a host without a GPU, 0 (no limit) with
    one. A CPU runs a large CNN faster on small batches, whose activations stay in its caches:
    Xception at 299 px on the 2-core reference machine ran ~6.6 img/s in batches of 4-8 and
    ~5.1 img/s in batches of 32 (`bench/tower_batch.py`); on an AMD EPYC with AVX-512 the batch
    size made no difference. A GPU wants large batches."""
    return 0 if tf.config.list_logical_devices("GPU") else 8


_TOWER_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> {precision: (image_fn, text_fn)}
_EMBEDDING_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> {precision: (image_fn, text_fn)}


def tower_functions(model):
    """Compiled (graph-mode) tower calls: `image_fn(images)`, `text_fn(tokens)`.

    `image_fn` runs a batch in chunks of `image_chunk_size()` images. `text_fn` takes texts or
    a tokenizer output dict (of any length up to `sequence_length`). One pair per model, made
    on the first call: every caller (validation, feature caching, reports) shares its traces,
    where a new `tf.function` per caller traced again each time (and TensorFlow warned of
    retracing).
    """
    by_precision = _TOWER_FUNCTIONS.setdefault(model, {})
    precision = model.text_tower.compute_dtype  # traces are per tower precision
    if precision not in by_precision:
        by_precision[precision] = _make_tower_functions(model)
    return by_precision[precision]


def _make_tower_functions(model):

    @tf.function(reduce_retracing=True)
    def image_graph(images):
        return tf.cast(model.image_features(images, training=False), tf.float32)

    chunk = image_chunk_size()

    def image_fn(images):
        n = int(images.shape[0])
        if not chunk or n <= chunk:
            return image_graph(images)
        return tf.concat([image_graph(images[i:i + chunk]) for i in range(0, n, chunk)], 0)

    # One trace for every batch size and caption length (callers trim batches to their
    # longest caption, so lengths vary from call to call).
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None], tf.bool)])
    def text_fn(token_ids, padding_mask):
        return tf.cast(model.text_features({"token_ids": token_ids,
                                            "padding_mask": padding_mask}, training=False),
                       tf.float32)

    def text(tokens):
        if not isinstance(tokens, dict):
            tokens = model.tokenizer(list(tokens))
        return text_fn(tf.cast(tokens["token_ids"], tf.int32),
                       tf.cast(tokens["padding_mask"], tf.bool))

    text.graph = text_fn  # the traced function (tests count its traces)

    return image_fn, text


def encode_texts_by_length(model, texts, *, batch_size: int = 256, text_fn=None,
                           progress: bool = True) -> np.ndarray:
    """Text-tower outputs `[len(texts), F]` (float32), batches grouped by token length.

    Texts are tokenized once, sorted by length and run in batches trimmed to their longest
    text (rounded up to a multiple of 8, to bound retracing); rows come back in input order.
    """
    from records.progress import track

    if text_fn is None:
        _, text_fn = tower_functions(model)
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 0), np.float32)
    tokens = model.tokenizer(texts)
    ids = np.asarray(tokens["token_ids"])
    mask = np.asarray(tokens["padding_mask"]).astype(bool)
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    full = ids.shape[1]
    out = None
    for i in track(range(0, len(texts), batch_size), desc=f"text features ({len(texts)})",
                   unit="batch", enabled=progress, leave=True):
        rows = order[i:i + batch_size]
        width = min(full, max(8, -(-int(lengths[rows].max()) // 8) * 8))
        feats = np.asarray(text_fn({"token_ids": ids[rows, :width],
                                    "padding_mask": mask[rows, :width]}), dtype=np.float32)
        if out is None:
            out = np.empty((len(texts),) + feats.shape[1:], np.float32)
        out[rows] = feats
    return out


def embedding_functions(model):
    """Compiled `(image_fn(images), text_fn(token_ids, padding_mask))`: towers then heads, to
    L2-normalised embeddings. Built once per model and tower precision."""
    by_precision = _EMBEDDING_FUNCTIONS.setdefault(model, {})
    precision = model.text_tower.compute_dtype
    if precision not in by_precision:
        by_precision[precision] = _make_embedding_functions(model)
    return by_precision[precision]


def _make_embedding_functions(model):

    def image(images):
        return model.embed_from_features(model.image_features(images), None)[0]

    def text(token_ids, padding_mask):
        feats = model.text_tower({"token_ids": token_ids, "padding_mask": padding_mask},
                                 training=False)
        return model.embed_from_features(None, feats)[1]

    return (tf.function(image, reduce_retracing=True),
            tf.function(text, reduce_retracing=True))


def encode_images(model, image_fn, images, batch_size=64):
    """`DualEncoder.encode_images` with the model's compiled `image_fn`."""
    chunk = image_chunk_size()
    batch_size = min(batch_size, chunk) if chunk else batch_size
    as_tensor = tf.is_tensor(images)
    if not as_tensor:
        images = np.asarray(images)
    if len(images.shape) != 4 or images.shape[-1] != 3:
        raise ValueError(f"encode_images expects [B, S, S, 3] images, got shape {images.shape}")
    n = int(images.shape[0])
    outputs = [
        image_fn(tf.cast(images[i : i + batch_size], tf.float32)) for i in range(0, n, batch_size)
    ]
    result = tf.concat(outputs, 0) if outputs else tf.zeros((0, model.embed_dim), tf.float32)
    return result if as_tensor else result.numpy()


def encode_texts(model, text_fn, texts, batch_size=256):
    """`DualEncoder.encode_texts` with the model's compiled `text_fn`."""
    if isinstance(texts, dict):
        as_tensor = tf.is_tensor(texts["token_ids"])
        ids = tf.convert_to_tensor(texts["token_ids"])
        mask = tf.convert_to_tensor(texts["padding_mask"])
        n = int(ids.shape[0])
        outputs = [
            text_fn(tf.cast(ids[i : i + batch_size], tf.int32),
                    tf.cast(mask[i : i + batch_size], tf.bool))
            for i in range(0, n, batch_size)
        ]
    else:
        as_tensor = tf.is_tensor(texts)
        if isinstance(texts, str):
            raise ValueError("encode_texts expects a list of strings, got a single str")
        if not as_tensor:
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
        n = int(texts.shape[0]) if as_tensor else len(texts)
        outputs = []
        for i in range(0, n, batch_size):
            tokens = model.tokenizer(texts[i : i + batch_size])
            outputs.append(text_fn(tokens["token_ids"], tokens["padding_mask"]))
    result = tf.concat(outputs, 0) if outputs else tf.zeros((0, model.embed_dim), tf.float32)
    return result if as_tensor else result.numpy()
