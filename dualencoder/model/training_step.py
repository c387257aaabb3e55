"""One training step of a `DualEncoder`: the one implementation behind `DualEncoder.fit` and the
training loop's compiled, distributed step (`dualencoder.train.step`).

- `embed_batch`: embeddings of a batch; cached tower features (locked towers) when the batch
  carries them, else the towers. A frozen tower runs in inference mode whatever `training`
  says (`ImageTower.frozen`, `TextTower.frozen`).
- `batch_loss`: the configured contrastive loss and its metrics, optionally on the all-gathered
  global batch of a multi-replica step.
- `loss_gradients`: its gradients with respect to `model.trainable_variables`, optionally
  summed over `split` micro-batches that each have their own loss (`optim.split_loss_accum`).
- `training_step`: gradients, optional global-norm clipping, one optimizer update.

Gradient caching (`optim.micro_batch`, `dualencoder.train.grad_cache`) computes the gradients
of the full-batch loss another way, from the same `embed_batch`.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["embed_batch", "batch_loss", "loss_gradients", "apply_gradients", "training_step"]


def embed_batch(model, batch, *, training=True):
    """`(image_emb, text_emb)`, both `[B, D]`, of a batch. Each side from what the batch
    carries: pooled tower outputs (`image_features`, `text_features`), the frozen part's
    outputs at the tower's boundary (`image_states`; `text_states` + `text_mask`, only the
    trained layers run, captions in length buckets), or raw inputs (`images`; `token_ids` +
    `padding_mask`)."""
    img_f = batch.get("image_features")
    if img_f is None and "image_states" in batch:
        img_f = model.image_tower.from_boundary(batch["image_states"], training=training)
    elif img_f is None:
        img_f = model.image_features(batch["images"], training=training)
    txt_f = batch.get("text_features")
    if txt_f is None and "text_states" in batch:
        txt_f = model.text_tower.from_boundary(batch["text_states"], batch["text_mask"],
                                               training=training,
                                               buckets=length_buckets(batch["text_mask"]))
    elif txt_f is None:
        txt_f = model.text_features({"token_ids": batch["token_ids"],
                                     "padding_mask": batch["padding_mask"]},
                                    training=training)
    return model.embed_from_features(img_f, txt_f, training=training)


def length_buckets(mask) -> int:
    """How many length buckets the trained text layers run in for a batch: one per 64
    captions, at most 8 (4 when the batch size is not known when tracing)."""
    rows = mask.shape[0]
    return 4 if rows is None else max(1, min(8, rows // 64))


def batch_loss(model, batch, *, training=True, gather=None):
    """`model.compute_contrastive_loss` on the batch's embeddings: `(loss, metrics)`.

    `gather`: `fn(t) -> t` concatenating every replica's rows (a multi-replica step computes
    the loss on the global batch), or None."""
    img, txt = embed_batch(model, batch, training=training)
    index = batch["image_index"]
    if gather is not None:
        img, txt = gather(img), gather(txt)
        index = tf.cast(gather(tf.cast(index, tf.float64)), tf.int64)
    return model.compute_contrastive_loss(img, txt, index)


def loss_gradients(model, batch, *, scale_loss=None, split=1, replicas=1, gather=None):
    """Gradients of the batch's loss with respect to `model.trainable_variables`.

    Args:
        model: a `DualEncoder`.
        batch: dict of tensors (no strings when `split` > 1).
        scale_loss: `optimizer.scale_loss` (mixed-float16 loss scaling), or None.
        split: micro-batches, each with its own loss, gradients summed (1 = the whole batch).
        replicas: replicas in sync; the loss is divided by `replicas * split` (the optimizer
            sums the replicas' gradients).
        gather: see `batch_loss`.

    Returns:
        `(grads, metrics)`: a list aligned with `model.trainable_variables` (zeros where a
        variable has no gradient) and the last micro-batch's metrics.
    """
    variables = model.trainable_variables
    grads, metrics = None, None
    for micro in range(split):
        part = batch if split == 1 else {
            k: tf.split(v, split, axis=0)[micro] for k, v in batch.items()}
        with tf.GradientTape() as tape:
            loss, metrics = batch_loss(model, part, gather=gather)
            scaled = loss / (replicas * split)
            if scale_loss is not None:
                scaled = scale_loss(scaled)
        g = tape.gradient(scaled, variables)
        if split > 1:  # sums of IndexedSlices (embedding rows) need dense tensors
            g = [None if x is None else tf.convert_to_tensor(x) for x in g]
        grads = g if grads is None else [
            b if a is None else a if b is None else a + b for a, b in zip(grads, g)]
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
    return grads, metrics


def apply_gradients(model, optimizer, grads, clipnorm=0.0):
    """One optimizer update of `model.trainable_variables`, after global-norm clipping to
    `clipnorm` (0 = off)."""
    if clipnorm:
        grads, _ = tf.clip_by_global_norm(grads, clipnorm)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))


def training_step(model, optimizer, batch, *, split=1, replicas=1, gather=None, clipnorm=0.0):
    """`loss_gradients` then `apply_gradients`; returns the loss's metrics."""
    grads, metrics = loss_gradients(model, batch, scale_loss=optimizer.scale_loss, split=split,
                                    replicas=replicas, gather=gather)
    apply_gradients(model, optimizer, grads, clipnorm)
    return metrics
