"""The training loop's compiled, distributed step: `make_train_step(model, optimizer, strategy,
cfg)`.

Every replica embeds its share of the batch; the embeddings are all-gathered
(`gather_replicas`) so the multi-positive contrastive loss covers the *global* batch. The
per-replica work is `dualencoder.model.training_step.training_step` (the step `DualEncoder.fit`
runs too), or, with `optim.micro_batch`, gradient caching (`dualencoder.train.grad_cache`).
"""

from __future__ import annotations

from dualencoder.config import Config
from dualencoder.model.training_step import training_step

# What a training step reads from a batch (captions and ids stay outside the compiled step).
STEP_INPUTS = ("images", "token_ids", "padding_mask", "image_index", "image_features",
               "text_features", "image_states", "text_states", "text_mask")


def make_train_step(model, optimizer, strategy, cfg: Config):
    """A compiled distributed step `fn(batch) -> metrics`: forward, loss on the global batch,
    gradients (with `optim.split_loss_accum` summed over micro-batches that each have their own
    loss; with `optim.micro_batch`, the full-batch gradient by gradient caching), clipping
    (`optim.clipnorm`), AdamW update."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync

    def replica_step(batch):
        return training_step(model, optimizer, batch, split=cfg.optim.split_loss_accum,
                             replicas=replicas, gather=gather_replicas if replicas > 1 else None,
                             clipnorm=cfg.optim.clipnorm)

    if cfg.optim.micro_batch:  # gradient caching replaces the step above
        from dualencoder.train import grad_cache
        replica_step = grad_cache.make_replica_step(model, optimizer, cfg, replicas,
                                                    gather=gather_replicas)

    # XLA compiles the per-replica computation; the outer function stays a plain graph.
    run_replica = (tf.function(tf.autograph.experimental.do_not_convert(replica_step),
                               jit_compile=True) if cfg.run.jit_compile else replica_step)

    @tf.function(jit_compile=False, reduce_retracing=True)
    def step(batch):
        batch = {k: v for k, v in batch.items() if k in STEP_INPUTS}  # no strings into XLA
        per_replica = strategy.run(run_replica, args=(batch,))
        # Every replica computed the loss on the same all-gathered global batch: its metrics
        # are identical everywhere, so the first local replica's are the global ones.
        return {k: strategy.experimental_local_results(v)[0] for k, v in per_replica.items()}

    return step


def gather_replicas(t):
    """Concatenate every replica's `t` along axis 0, in replica order, with gradients.

    Written as an all-reduce of zero-padded blocks: `ReplicaContext.all_gather` fails under
    MultiWorkerMirroredStrategy on CPU ("destinations can not be empty", TF 2.21), and the
    all-reduce's gradient is the same (upstream gradients summed over replicas, then the
    local block). Local batches must have equal sizes (the pipeline drops remainders).
    """
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    n, i = ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group
    local = tf.shape(t)[0]
    pad = [[i * local, (n - 1 - i) * local]] + [[0, 0]] * (len(t.shape) - 1)
    return ctx.all_reduce("SUM", tf.pad(t, pad))
