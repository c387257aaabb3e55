"""Reference: the training step of the keras-io example "Natural language image search with a
Dual Encoder" (Khalid Salama, 2021), re-implemented here from its description for benchmarks.

What the example does, and what this module reproduces:

* a vision encoder `keras.Model`: `xception.preprocess_input` -> Xception (no top, average
  pooling) -> projection head; a text encoder `keras.Model`: BERT -> pooled output ->
  projection head. Both towers are re-encoded (and, with `trainable=True`, fine-tuned) at every
  step: nothing is cached;
* the projection head `project_embeddings`: `Dense(projection_dims)`, then per projection
  layer `gelu -> Dense -> Dropout -> Add(residual) -> LayerNormalization`. The embeddings are
  *not* L2-normalised;
* `DualEncoder(keras.Model)` with a fixed `temperature`, a `Mean` loss tracker, and a custom
  `train_step` under `tf.GradientTape` (float32, no XLA: compile with `jit_compile=False`);
* the loss with soft targets::

      logits = captions_emb @ images_emb.T / temperature
      images_similarity = images_emb @ images_emb.T
      captions_similarity = captions_emb @ captions_emb.T
      targets = softmax((captions_similarity + images_similarity) / (2 * temperature))
      captions_loss = categorical_crossentropy(targets, logits, from_logits=True)
      images_loss = categorical_crossentropy(targets.T, logits.T, from_logits=True)
      loss = (captions_loss + images_loss) / 2

  Gradients flow through the targets as in the example. The example returned the per-pair
  vector (so `GradientTape.gradient` differentiated its *sum*); here it is reduced with a mean,
  which changes only the gradient scale, not the work;
* the optimizer: AdamW (the example used `tfa.optimizers.AdamW(learning_rate=0.001,
  weight_decay=0.001)`; `keras.optimizers.AdamW` here).

Deliberate differences, so that a benchmark compares *the step*, not the towers or the data:

* the towers are those of this project: Xception from a local ImageNet weights file at any
  `image_size`, and (instead of the example's TF-Hub BERT) a keras-hub `BertBackbone` such as
  all-MiniLM-L6-v2, pooled like `dualencoder.model.text_tower.TextTower` (masked mean by default; the
  unused `pooled_dense` stays frozen, as in the project);
* captions arrive tokenized (`token_ids`, `padding_mask`): the example ran its TF-Hub
  preprocessor inside the model, tokenization is part of the input-pipeline benchmark
  (`bench/reference/keras_io_pipeline.py`).

Batches: `{"image": float32 [B, S, S, 3] 0..255, "token_ids": int32 [B, L],
"padding_mask": bool [B, L]}` (extra keys are ignored). This is a benchmark baseline only.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

__all__ = [
    "project_embeddings",
    "create_vision_encoder",
    "create_text_encoder",
    "keras_io_loss",
    "DualEncoder",
    "build_reference",
]


def project_embeddings(embeddings, num_projection_layers, projection_dims, dropout_rate):
    """The example's projection head (functional API)."""
    projected_embeddings = layers.Dense(units=projection_dims)(embeddings)
    for _ in range(num_projection_layers):
        x = layers.Activation(lambda t: tf.nn.gelu(t, approximate=False))(projected_embeddings)
        x = layers.Dense(projection_dims)(x)
        x = layers.Dropout(dropout_rate)(x)
        x = layers.Add()([projected_embeddings, x])
        projected_embeddings = layers.LayerNormalization()(x)
    return projected_embeddings


def create_vision_encoder(backbone, image_size, preprocess_input, num_projection_layers=1,
                          projection_dims=256, dropout_rate=0.1, trainable=True):
    """`preprocess_input -> backbone (pooled [B, C]) -> projection head` as a `keras.Model`.

    Args:
        backbone: a CNN `keras.Model` with pooling (e.g. `Xception(include_top=False,
            pooling="avg")`).
        image_size: input side in pixels.
        preprocess_input: the backbone's preprocessing function (raw 0..255 -> model range).
        trainable: fine-tune the backbone (the benchmark's "full fine-tuning").
    """
    for layer in backbone.layers:
        layer.trainable = trainable
    inputs = layers.Input(shape=(image_size, image_size, 3), name="image_input")
    x = layers.Lambda(preprocess_input, name="preprocess")(inputs)
    embeddings = backbone(x)
    outputs = project_embeddings(embeddings, num_projection_layers, projection_dims,
                                 dropout_rate)
    return keras.Model(inputs, outputs, name="vision_encoder")


class _MaskedMean(layers.Layer):
    def call(self, sequence, mask):
        weights = tf.cast(mask, sequence.dtype)[:, :, None]
        total = tf.reduce_sum(sequence * weights, axis=1)
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


def create_text_encoder(bert, sequence_length, num_projection_layers=1, projection_dims=256,
                        dropout_rate=0.1, trainable=True, pooling="mean"):
    """`BERT -> pooling -> projection head` as a `keras.Model` on token dicts.

    Args:
        bert: a keras-hub `BertBackbone`.
        sequence_length: tokens per caption.
        trainable: fine-tune the BERT.
        pooling: "mean" (masked mean, like the project's MiniLM tower) or "pooled" (BERT's
            `pooled_output`, as the example's TF-Hub BERT).
    """
    bert.trainable = trainable
    if pooling == "mean":
        bert.get_layer("pooled_dense").trainable = False  # unused: no gradient-less weights
    token_ids = layers.Input(shape=(sequence_length,), dtype="int32", name="token_ids")
    padding_mask = layers.Input(shape=(sequence_length,), dtype="bool", name="padding_mask")
    mask = layers.Lambda(lambda m: tf.cast(m, "int32"), name="mask_int")(padding_mask)
    segment_ids = layers.Lambda(lambda t: tf.zeros_like(t), name="segments")(token_ids)
    outputs = bert({"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": mask})
    if pooling == "mean":
        embeddings = _MaskedMean(name="masked_mean")(outputs["sequence_output"], padding_mask)
    elif pooling == "pooled":
        embeddings = outputs["pooled_output"]
    else:
        raise ValueError(f'pooling must be "mean" or "pooled", got {pooling!r}')
    outputs = project_embeddings(embeddings, num_projection_layers, projection_dims,
                                 dropout_rate)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, outputs,
                       name="text_encoder")


def keras_io_loss(caption_embeddings, image_embeddings, temperature):
    """The example's soft-target loss, reduced to a scalar mean over the batch."""
    logits = tf.matmul(caption_embeddings, image_embeddings, transpose_b=True) / temperature
    images_similarity = tf.matmul(image_embeddings, image_embeddings, transpose_b=True)
    captions_similarity = tf.matmul(caption_embeddings, caption_embeddings, transpose_b=True)
    targets = keras.activations.softmax(
        (captions_similarity + images_similarity) / (2 * temperature))
    captions_loss = keras.losses.categorical_crossentropy(
        y_true=targets, y_pred=logits, from_logits=True)
    images_loss = keras.losses.categorical_crossentropy(
        y_true=tf.transpose(targets), y_pred=tf.transpose(logits), from_logits=True)
    return tf.reduce_mean((captions_loss + images_loss) / 2)


class DualEncoder(keras.Model):
    """The example's `DualEncoder`: custom `train_step`, fixed temperature, loss tracker."""

    def __init__(self, text_encoder, image_encoder, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.temperature = temperature
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, features, training=False):
        # The example pinned the towers to /gpu:0 and /gpu:1; one device here.
        caption_embeddings = self.text_encoder(
            {"token_ids": features["token_ids"], "padding_mask": features["padding_mask"]},
            training=training)
        image_embeddings = self.image_encoder(features["image"], training=training)
        return caption_embeddings, image_embeddings

    def dual_encoder_loss(self, caption_embeddings, image_embeddings):
        return keras_io_loss(caption_embeddings, image_embeddings, self.temperature)

    def train_step(self, features):
        with tf.GradientTape() as tape:
            caption_embeddings, image_embeddings = self(features, training=True)
            loss = self.dual_encoder_loss(caption_embeddings, image_embeddings)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, features):
        caption_embeddings, image_embeddings = self(features, training=False)
        loss = self.dual_encoder_loss(caption_embeddings, image_embeddings)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def build_reference(image_size, *, image_backbone=None, xception_weights=None, text_backbone,
                    sequence_length=64, projection_dims=256, num_projection_layers=1,
                    dropout_rate=0.1, temperature=0.05, learning_rate=0.001,
                    weight_decay=0.001, trainable=True, text_pooling="mean",
                    preprocess_input=None):
    """A compiled reference `DualEncoder` (float32, `jit_compile=False`).

    Args:
        image_size: input side in pixels.
        image_backbone: a pooled CNN `keras.Model`; default: Xception (no top, avg pooling)
            with `xception_weights` (a local `.weights.h5`, or None for random init).
        text_backbone: a keras-hub `BertBackbone`, or a preset name / folder for
            `BertBackbone.from_preset`.
        preprocess_input: the image backbone's preprocessing; default Xception's.
        temperature: fixed (the example's 0.05).
    """
    import keras_hub

    if image_backbone is None:
        image_backbone = keras.applications.Xception(
            include_top=False, weights=None, input_shape=(image_size, image_size, 3),
            pooling="avg")
        if xception_weights:
            image_backbone.load_weights(xception_weights)
        preprocess_input = preprocess_input or keras.applications.xception.preprocess_input
    if preprocess_input is None:
        raise ValueError("preprocess_input is required with a custom image_backbone")
    if isinstance(text_backbone, (str, os.PathLike)):
        text_backbone = keras_hub.models.BertBackbone.from_preset(os.fspath(text_backbone))
    vision = create_vision_encoder(image_backbone, image_size, preprocess_input,
                                   num_projection_layers, projection_dims, dropout_rate,
                                   trainable=trainable)
    text = create_text_encoder(text_backbone, sequence_length, num_projection_layers,
                               projection_dims, dropout_rate, trainable=trainable,
                               pooling=text_pooling)
    model = DualEncoder(text, vision, temperature=temperature, name="keras_io_dual_encoder")
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=learning_rate,
                                                   weight_decay=weight_decay),
                  jit_compile=False)
    return model
