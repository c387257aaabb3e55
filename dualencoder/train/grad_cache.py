"""Gradient caching: the exact full-batch contrastive gradient at one micro-batch's memory.

A contrastive loss couples every pair of the batch, so splitting a batch of B into N
micro-batches with a loss per micro-batch (`optim.split_loss_accum`) trains like batch B/N:
each caption sees B/N - 1 negatives. Gradient caching (Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup") keeps the loss on the whole batch:

1. embed every micro-batch without recording gradients (only the `[B, D]` embeddings stay);
2. compute the loss over the whole batch from those embeddings and its gradient with respect
   to the embeddings (and to the loss's own variables: logit scale, SigLIP bias, which get
   their gradient from this step alone);
3. embed each micro-batch again, this time with gradients, and back-propagate its rows of the
   cached embedding gradient through heads and towers (`tape.gradient(emb, variables,
   output_gradients=cached)`), summing parameter gradients over micro-batches;
4. one optimizer step with the sum.

The result is the gradient of the full-batch loss, up to float rounding, for about one more
forward pass per step and a `[B, D]` table (plus an accumulator the size of the trainable
parameters). Peak activation memory is that of one micro-batch: the micro-batches run in a
`tf.while_loop` with `parallel_iterations=1`, so no two of them are in flight at once.

Exactness of the second pass. It must compute the same function as the first:

- Dropout (heads, text transformer) draws its masks from Keras `SeedGenerator` states, which
  every call advances. The states are saved before pass 1 and restored after it, so pass 2
  replays pass 1's draws micro-batch by micro-batch and leaves the states where one pass
  would have left them.
- BatchNorm in training mode normalises with the statistics of the micro-batch it sees (so a
  tower with BatchNorm trains as if its batch were M for its normalisation, like any
  data-parallel run with per-device batch M). Its moving statistics are saved and restored
  around pass 1 too: they are updated once per micro-batch, by pass 2 only.
- Augmentation happens in the input pipeline, before the step: both passes see the same
  pixels.

Under `MirroredStrategy` each replica embeds its own rows, the tables are all-gathered
(`dualencoder.train.step.gather_replicas`), every replica computes the loss on the global batch and
back-propagates the rows of the gradient that belong to it. The optimizer sums the replicas'
parameter gradients, so the per-replica loss is divided by the number of replicas R (as in
the plain step) and its embedding-gradient rows multiplied back by R: replica r's rows feed
the global loss only through replica r's own pass 2.

Used by `dualencoder.train.step.make_train_step` when `optim.micro_batch` > 0; the embeddings
come from `dualencoder.model.training_step.embed_batch`, as in the plain step.
"""

from __future__ import annotations

from dualencoder.config import Config, ConfigError
from dualencoder.model.training_step import apply_gradients, embed_batch

__all__ = ["micro_batches", "state_variables", "cached_gradients", "make_replica_step"]


def micro_batches(cfg: Config, replicas: int = 1) -> int:
    """Micro-batches per replica for `optim.micro_batch`; raises `ConfigError` when it does
    not divide the per-replica batch."""
    micro, batch = cfg.optim.micro_batch, cfg.data.batch_size
    if micro <= 0:
        raise ConfigError(f"optim.micro_batch={micro}: gradient caching is off")
    if batch % replicas or (batch // replicas) % micro:
        raise ConfigError(
            f"optim.micro_batch={micro} must divide the per-replica batch: data.batch_size="
            f"{batch} over {replicas} replica(s) is {batch / replicas:g} pairs each; choose a "
            "micro-batch that divides it")
    return batch // replicas // micro


def state_variables(model) -> list:
    """The variables a training-mode forward pass changes: BatchNorm moving statistics and
    the states of `SeedGenerator`s (dropout masks). Weights of frozen layers are left out
    (they never change, and copying a locked Xception would cost its size again)."""
    import keras

    found, seen = [], set()

    def add(v):
        if id(v) not in seen:
            seen.add(id(v))
            found.append(v)

    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            add(layer.moving_mean)
            add(layer.moving_variance)
        for generator in getattr(layer, "_seed_generators", ()):
            add(generator.state)
    return found


def _embedding_variables(model):
    ids = set()
    for part in (model.image_tower, model.text_tower, model.image_head, model.text_head):
        ids.update(id(v) for v in part.trainable_variables)
    return ids


def cached_gradients(model, batch, num_micro: int, *, replicas: int = 1, scale_loss=None,
                     gather=None):
    """Gradients of the full-batch contrastive loss with respect to
    `model.trainable_variables`, computed micro-batch by micro-batch (see the module doc).

    Args:
        model: a `DualEncoder`.
        batch: dict of tensors (`images`/`image_features`, `token_ids` + `padding_mask` /
            `text_features`, `image_index`); strings must be removed beforehand.
        num_micro: micro-batches; must divide the (local) batch.
        replicas: replicas in sync (the loss is divided by it, as the plain step does).
        scale_loss: `optimizer.scale_loss` (mixed-float16 loss scaling), or None.
        gather: `fn(t) -> t` concatenating all replicas' rows (needed when replicas > 1).

    Returns:
        `(grads, metrics)`: a list aligned with `model.trainable_variables` (zeros where a
        variable has no gradient, dense everywhere) and the loss's metrics on the global
        batch.
    """
    import tensorflow as tf

    variables = model.trainable_variables
    embedding_ids = _embedding_variables(model)
    emb_vars = [v for v in variables if id(v) in embedding_ids]
    loss_vars = [v for v in variables if id(v) not in embedding_ids]
    k = int(num_micro)

    def split(t):
        t = tf.convert_to_tensor(t)
        shape = tf.shape(t)
        return tf.reshape(t, tf.concat([[k, shape[0] // k], shape[1:]], 0))

    parts = {key: split(value) for key, value in batch.items()}

    def part(i):
        return {key: value[i] for key, value in parts.items()}

    # 1. the embedding table, no gradients; the random/statistics state is replayed below
    state = state_variables(model)
    saved = [tf.identity(v.value) for v in state]
    dim = model.embed_dim

    def first(i, images, texts):
        img, txt = embed_batch(model, part(i))
        return (i + 1, images.write(i, tf.stop_gradient(img)),
                texts.write(i, tf.stop_gradient(txt)))

    arrays = [tf.TensorArray(tf.float32, size=k, element_shape=tf.TensorShape([None, dim]))
              for _ in range(2)]
    _, images, texts = tf.while_loop(lambda i, *_: i < k, first, [tf.constant(0), *arrays],
                                     parallel_iterations=1)
    img_local = tf.reshape(images.stack(), [-1, dim])
    txt_local = tf.reshape(texts.stack(), [-1, dim])
    # Read the tables before restoring, so the restore cannot be scheduled before pass 1.
    with tf.control_dependencies([img_local, txt_local]):
        for variable, value in zip(state, saved):
            variable.assign(value)

    # 2. the loss on the whole (global) batch; gradients for the table and the loss variables
    index = batch["image_index"]
    img_all, txt_all = img_local, txt_local
    if replicas > 1:
        img_all, txt_all = gather(img_local), gather(txt_local)
        index = tf.cast(gather(tf.cast(index, tf.float64)), tf.int64)
    with tf.GradientTape() as tape:
        tape.watch([img_all, txt_all])
        loss, metrics = model.compute_contrastive_loss(img_all, txt_all, index)
        scaled = loss / replicas
        if scale_loss is not None:
            scaled = scale_loss(scaled)
    g_img, g_txt, *g_loss = tape.gradient(scaled, [img_all, txt_all] + loss_vars)
    if replicas > 1:  # this replica's rows, for the global loss (see the module doc)
        ctx = tf.distribute.get_replica_context()
        rows = tf.shape(img_local)[0]
        start = ctx.replica_id_in_sync_group * rows
        g_img = g_img[start:start + rows] * replicas
        g_txt = g_txt[start:start + rows] * replicas
    g_img, g_txt = split(g_img), split(g_txt)

    # 3. again with gradients, back-propagating the cached rows; sums over micro-batches
    def second(i, *sums):
        p = part(i)
        with tf.control_dependencies(sums):  # one micro-batch at a time
            p = {key: tf.identity(value) for key, value in p.items()}
        with tf.GradientTape() as tape:
            img, txt = embed_batch(model, p)
        grads = tape.gradient([img, txt], emb_vars, output_gradients=[g_img[i], g_txt[i]])
        return (i + 1, *[s if g is None else s + tf.convert_to_tensor(g)
                         for s, g in zip(sums, grads)])

    zeros = [tf.zeros(v.shape, v.dtype) for v in emb_vars]
    _, *sums = tf.while_loop(lambda i, *_: i < k, second, [tf.constant(0), *zeros],
                             parallel_iterations=1)

    by_id = {id(v): g for v, g in zip(emb_vars, sums)}
    by_id.update({id(v): (tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g))
                  for v, g in zip(loss_vars, g_loss)})
    return [by_id[id(v)] for v in variables], metrics


def make_replica_step(model, optimizer, cfg: Config, replicas: int, gather=None):
    """The per-replica training step with gradient caching (`optim.micro_batch` > 0):
    `fn(batch) -> metrics`, applying one optimizer update (with `optim.clipnorm`)."""
    if cfg.optim.split_loss_accum > 1:
        raise ConfigError("optim.micro_batch and optim.split_loss_accum > 1 exclude each "
                          "other; use one")
    k = micro_batches(cfg, replicas)

    def replica_step(batch):
        grads, metrics = cached_gradients(model, batch, k, replicas=replicas,
                                          scale_loss=optimizer.scale_loss, gather=gather)
        apply_gradients(model, optimizer, grads, cfg.optim.clipnorm)
        return metrics

    return replica_step
