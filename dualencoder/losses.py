"""Contrastive losses for dual encoders.

Every loss here is a pure function with the same signature::

    loss = fn(image_emb, text_emb, logit_scale, image_index=None, bias=None)

- `image_emb`, `text_emb`: `[B, D]` L2-normalised embeddings; row `i` of both
  comes from the same (image, caption) pair. Any float dtype is accepted; the
  loss is computed in float32 (so float16/bfloat16 towers under a mixed policy
  are fine).
- `logit_scale`: scalar, the inverse temperature `1 / tau` (already
  exponentiated and clamped by the caller).
- `image_index`: `[B]` ints, the image id of each pair. Pairs whose captions
  describe the same image are *positives* for each other, never negatives
  (this happens when a batch holds several captions of one image). `None`
  means all images differ (positives only on the diagonal).
- `bias`: scalar, only used by `siglip_loss`.

The similarity matrix is `logits[i, j] = logit_scale * <image_i, text_j>`, so
rows are images and columns are texts.

`LOSSES` is the one registry of names: `MAIN_LOSSES` (a model's `loss`) and `EXTRA_LOSSES`
(added to it as `extra_loss`) are read from it by the config checks and the model, and
`get_loss(name)` returns a function by name. Reading the registry loads no Keras (the config
checks run before TensorFlow starts): `keras.ops` is imported when a loss first runs.
"""


class _KerasOps:
    """`keras.ops`, imported on first use."""

    def __getattr__(self, name):
        from keras import ops as keras_ops  # noqa: PLC0415

        return getattr(keras_ops, name)


ops = _KerasOps()

__all__ = [
    "clip_loss",
    "soft_loss",
    "siglip_loss",
    "max_violation_loss",
    "positive_mask",
    "group_ids",
    "top1_accuracy",
    "get_loss",
    "LOSSES",
    "MAIN_LOSSES",
    "EXTRA_LOSSES",
]


def _prepare(image_emb, text_emb, logit_scale):
    image_emb = ops.cast(image_emb, "float32")
    text_emb = ops.cast(text_emb, "float32")
    scale = None if logit_scale is None else ops.cast(logit_scale, "float32")
    return image_emb, text_emb, scale


def positive_mask(image_index, batch_size=None):
    """`[B, B]` float32 matrix, 1 where two pairs show the same image.

    Args:
        image_index: `[B]` integer image ids, or `None` (identity matrix).
        batch_size: needed when `image_index` is `None`.
    """
    if image_index is None:
        return ops.eye(batch_size, dtype="float32")
    image_index = ops.reshape(image_index, (-1,))
    return ops.cast(
        ops.equal(image_index[:, None], image_index[None, :]), "float32"
    )


def _batch_size(x):
    return ops.shape(x)[0]


def _cross_entropy(logits, targets):
    """Mean over rows of the categorical CE between target rows and logits."""
    log_probs = ops.log_softmax(logits, axis=-1)
    return ops.mean(-ops.sum(targets * log_probs, axis=-1))


def group_ids(image_index):
    """`[B]` int32 group number of each pair: pairs of the same image share one, numbered
    0..U-1 in order of image id (no `[B, B]` matrix; sort-based, so XLA compiles it).

    Example:
    >>> [int(g) for g in group_ids([7, 3, 7, 9])]
    [1, 0, 1, 2]
    """
    image_index = ops.reshape(ops.convert_to_tensor(image_index), (-1,))
    order = ops.argsort(image_index)
    ordered = ops.take(image_index, order)
    starts = ops.concatenate(
        [ops.ones((1,), "int32"),
         ops.cast(ops.not_equal(ordered[1:], ordered[:-1]), "int32")], axis=0)
    groups_in_order = ops.cumsum(starts) - 1
    return ops.take(groups_in_order, ops.argsort(order))


def clip_loss(image_emb, text_emb, logit_scale, image_index=None, bias=None):
    """Symmetric InfoNCE (CLIP) with multi-positive targets.

    `logits = logit_scale * I @ T^T`. The target distribution of row `i` is
    uniform over the texts whose image equals image `i` (one-hot when every
    image in the batch is distinct, which is plain CLIP); likewise for the
    columns. The loss is the mean of the image->text and text->image
    cross-entropies.

    Computed without materialising targets: a row's cross-entropy against
    uniform targets over its `n` positives is `logsumexp(row) - mean of its
    positive logits`, and the positive logits of a group of pairs that show
    one image sum to `scale * <sum of its image embeddings, sum of its text
    embeddings>`. So the only `[B, B]` work is the logits and their row and
    column log-sum-exps (on a CPU the elementwise passes over `[B, B]` cost
    more than the matmul: `bench/head_step.py` times a head-only step at batch
    4,096 against the explicit-target form).

    Args:
        image_emb: `[B, D]` normalised image embeddings.
        text_emb: `[B, D]` normalised text embeddings.
        logit_scale: scalar inverse temperature.
        image_index: optional `[B]` image ids (same id = positive pair).
        bias: ignored (accepted for a uniform signature).

    Returns:
        A float32 scalar.

    Example:
    >>> import numpy as np
    >>> x = np.eye(4, 8, dtype="float32")
    >>> float(clip_loss(x, x, 10.0)) < 0.01
    True
    """
    del bias
    image_emb, text_emb, scale = _prepare(image_emb, text_emb, logit_scale)
    batch = _batch_size(image_emb)
    logits = ops.matmul(image_emb * scale, ops.transpose(text_emb))
    row_lse = ops.logsumexp(logits, axis=1)
    col_lse = ops.logsumexp(logits, axis=0)
    if image_index is None:  # one positive per row: the diagonal
        positive = 2.0 * scale * ops.sum(image_emb * text_emb)
    else:
        groups = group_ids(image_index)
        image_sums = ops.segment_sum(image_emb, groups, num_segments=batch)
        text_sums = ops.segment_sum(text_emb, groups, num_segments=batch)
        sizes = ops.segment_sum(ops.ones_like(image_emb[:, 0]), groups, num_segments=batch)
        # sum over pairs (i, j) of one group of logits[i, j] * (1/n_i + 1/n_j)
        positive = 2.0 * scale * ops.sum(
            ops.sum(image_sums * text_sums, axis=1) / ops.maximum(sizes, 1.0))
    n = ops.cast(batch, "float32")
    return (ops.sum(row_lse) + ops.sum(col_lse) - positive) / (2.0 * n)


def soft_loss(
    image_emb,
    text_emb,
    logit_scale,
    image_index=None,
    bias=None,
    stop_target_gradient=False,
):
    """The keras-io dual-encoder loss with soft targets.

    As in the keras.io "Natural language image search with a Dual Encoder"
    example: `logits = T @ I^T * scale`, `targets = softmax(((T @ T^T +
    I @ I^T) / 2) * scale)` along the last axis, and the loss is the mean of
    `CE(targets, logits)` (captions) and `CE(targets^T, logits^T)` (images).
    Pairs showing the same image get high targets naturally, so `image_index`
    is not needed. As in keras-io, gradients also flow through the targets
    unless `stop_target_gradient=True`.

    Args:
        image_emb: `[B, D]` normalised image embeddings.
        text_emb: `[B, D]` normalised text embeddings.
        logit_scale: scalar inverse temperature (keras-io's `1 / temperature`).
        image_index: ignored.
        bias: ignored.
        stop_target_gradient: treat the targets as constants.

    Returns:
        A float32 scalar.
    """
    del image_index, bias
    image_emb, text_emb, scale = _prepare(image_emb, text_emb, logit_scale)
    logits = scale * ops.matmul(text_emb, ops.transpose(image_emb))
    images_similarity = ops.matmul(image_emb, ops.transpose(image_emb))
    texts_similarity = ops.matmul(text_emb, ops.transpose(text_emb))
    targets = ops.softmax(
        (images_similarity + texts_similarity) / 2.0 * scale, axis=-1
    )
    if stop_target_gradient:
        targets = ops.stop_gradient(targets)
    captions_loss = _cross_entropy(logits, targets)
    images_loss = _cross_entropy(
        ops.transpose(logits), ops.transpose(targets)
    )
    return (captions_loss + images_loss) / 2.0


def siglip_loss(image_emb, text_emb, logit_scale, image_index=None, bias=None):
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023).

    `logits = logit_scale * I @ T^T + bias`; labels are +1 for positives
    (the diagonal and any pair of the same image) and -1 otherwise;
    `loss = -sum(log_sigmoid(labels * logits)) / B` (normalised by the
    batch size as in the paper, not by `B^2`).

    Args:
        image_emb: `[B, D]` normalised image embeddings.
        text_emb: `[B, D]` normalised text embeddings.
        logit_scale: scalar inverse temperature (the paper's `exp(t')`).
        image_index: optional `[B]` image ids.
        bias: scalar learnable bias (paper init -10); `None` means 0.

    Returns:
        A float32 scalar.
    """
    image_emb, text_emb, scale = _prepare(image_emb, text_emb, logit_scale)
    logits = scale * ops.matmul(image_emb, ops.transpose(text_emb))
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    positives = positive_mask(image_index, _batch_size(image_emb))
    labels = 2.0 * positives - 1.0
    batch = ops.cast(_batch_size(image_emb), "float32")
    return -ops.sum(ops.log_sigmoid(labels * logits)) / batch


def max_violation_loss(
    image_emb,
    text_emb,
    logit_scale=None,
    image_index=None,
    bias=None,
    margin=0.2,
):
    """VSE++ hinge loss on the hardest negatives (Faghri et al. 2018).

    On cosine similarities `S = I @ T^T` (no temperature): for each pair `i`,
    `max(0, margin + max_j S[i, j] - S[i, i])` over negative texts `j` plus
    `max(0, margin + max_j S[j, i] - S[i, i])` over negative images `j`,
    averaged over the batch (VSE++ sums; the mean keeps the scale independent
    of the batch size). Pairs of the same image are never negatives. Meant as
    an extra term next to a contrastive loss (`extra_loss="max_violation"`).

    Args:
        image_emb: `[B, D]` normalised image embeddings.
        text_emb: `[B, D]` normalised text embeddings.
        logit_scale: ignored.
        image_index: optional `[B]` image ids.
        bias: ignored.
        margin: hinge margin.

    Returns:
        A float32 scalar.
    """
    del logit_scale, bias
    image_emb, text_emb, _ = _prepare(image_emb, text_emb, None)
    scores = ops.matmul(image_emb, ops.transpose(text_emb))
    positive_scores = ops.diagonal(scores)
    positives = positive_mask(image_index, _batch_size(image_emb))
    # Positives are pushed far below any real score so they are never picked
    # as the hardest negative; a row without negatives then costs 0.
    masked = scores - 10.0 * positives
    hardest_text = ops.max(masked, axis=1)
    hardest_image = ops.max(masked, axis=0)
    cost_text = ops.relu(margin + hardest_text - positive_scores)
    cost_image = ops.relu(margin + hardest_image - positive_scores)
    return ops.mean(cost_text + cost_image)


def top1_accuracy(similarity, image_index):
    """In-batch top-1 retrieval accuracy: the fraction of rows of `similarity` whose best
    column shows the same image (`image_index`; None = the diagonal)."""
    best = ops.argmax(similarity, axis=1)
    if image_index is None:
        hits = ops.equal(best, ops.arange(ops.shape(similarity)[0], dtype=best.dtype))
    else:
        image_index = ops.reshape(image_index, (-1,))
        hits = ops.equal(ops.take(image_index, best), image_index)
    return ops.mean(ops.cast(hits, "float32"))


# name -> (function, role): "main" losses train a model alone (`model.loss`), "extra" ones are
# added to a main loss with a weight (`model.extra_loss`, `model.extra_loss_weight`).
_REGISTRY = {
    "clip": (clip_loss, "main"),
    "soft": (soft_loss, "main"),
    "siglip": (siglip_loss, "main"),
    "max_violation": (max_violation_loss, "extra"),
}
LOSSES = {name: fn for name, (fn, _) in _REGISTRY.items()}
MAIN_LOSSES = tuple(name for name, (_, role) in _REGISTRY.items() if role == "main")
EXTRA_LOSSES = tuple(name for name, (_, role) in _REGISTRY.items() if role == "extra")


def get_loss(name):
    """The loss function registered under `name` (case-insensitive).

    Args:
        name: a name in `LOSSES` (or a callable, returned unchanged).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if callable(name):
        return name
    key = str(name).lower().replace("-", "_")
    if key not in LOSSES:
        raise ValueError(
            f"Unknown loss {name!r}; valid names: {sorted(LOSSES)}"
        )
    return LOSSES[key]
