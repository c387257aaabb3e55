"""The textbook form of the multi-positive CLIP loss, for `bench/head_step.py`.

This is how `dualencoder.losses.clip_loss` was written before it moved to the log-sum-exp
form: the `[B, B]` positive mask, row-normalised targets and two log-softmax cross-entropies.
Same value and gradients (tests/test_losses.py checks the product against a NumPy version).
"""

from keras import ops


def clip_loss_explicit(image_emb, text_emb, logit_scale, image_index):
    image_emb = ops.cast(image_emb, "float32")
    text_emb = ops.cast(text_emb, "float32")
    logits = ops.cast(logit_scale, "float32") * ops.matmul(image_emb, ops.transpose(text_emb))
    index = ops.reshape(image_index, (-1,))
    positives = ops.cast(ops.equal(index[:, None], index[None, :]), "float32")
    targets = positives / ops.sum(positives, axis=-1, keepdims=True)

    def cross_entropy(x):
        return ops.mean(-ops.sum(targets * ops.log_softmax(x, axis=-1), axis=-1))

    return (cross_entropy(logits) + cross_entropy(ops.transpose(logits))) / 2.0
