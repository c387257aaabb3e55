"""The dual encoder: image tower + text tower + projection heads + loss.

`build_model(config)` makes a `DualEncoder` from a flat config dict (keys and defaults:
`dualencoder.config.ModelConfig`); `dualencoder.model.saving` writes and loads it as a
self-contained folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math

import keras
import tensorflow as tf
from keras import ops

from dualencoder import losses as losses_lib
from dualencoder.arrays import hash_arrays
from dualencoder.config import model_defaults
from dualencoder.model import encoding, training_step
from dualencoder.model.heads import HEAD_KINDS, build_head
from dualencoder.model.image_tower import ImageTower
from dualencoder.model.text_tower import TextTower

__all__ = ["DualEncoder", "build_model"]


def _resolve_config(config):
    resolved = model_defaults()
    unknown = sorted(set(config) - set(resolved))
    if unknown:
        raise ValueError(f"Unknown model config key(s) {unknown}; valid keys: {sorted(resolved)}")
    resolved.update(copy.deepcopy(dict(config)))
    if resolved["head"] not in HEAD_KINDS:
        raise ValueError(f"Unknown head {resolved['head']!r}; valid heads: {list(HEAD_KINDS)}")
    if resolved["loss"] not in losses_lib.MAIN_LOSSES:
        extra = (f" ({resolved['loss']} is an extra_loss)"
                 if resolved["loss"] in losses_lib.EXTRA_LOSSES else "")
        raise ValueError(f"loss must be one of {', '.join(losses_lib.MAIN_LOSSES)}, got "
                         f"{resolved['loss']!r}{extra}")
    if resolved["extra_loss"] is not None:
        losses_lib.get_loss(resolved["extra_loss"])
    if not float(resolved["logit_scale_lr_mult"]) > 0:
        raise ValueError(f"logit_scale_lr_mult={resolved['logit_scale_lr_mult']} must be > 0")
    if not 0 < float(resolved["init_logit_scale"]) <= float(resolved["max_logit_scale"]):
        raise ValueError(
            f"init_logit_scale={resolved['init_logit_scale']} must be in "
            f"(0, max_logit_scale={resolved['max_logit_scale']}]"
        )
    return resolved


@keras.saving.register_keras_serializable(package="dualencoder")
class MaxValue(keras.constraints.Constraint):
    """Clips a variable to `<= max_value` after each optimizer step."""

    def __init__(self, max_value):
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.minimum(w, ops.cast(self.max_value, w.dtype))

    def get_config(self):
        return {"max_value": self.max_value}


def _l2_normalize(x):
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="dualencoder")
class DualEncoder(keras.Model):
    """A CLIP-style dual encoder: image and text towers with projection heads.

    Built from a flat config (`dualencoder.config.ModelConfig` documents every key); prefer
    `build_model(config)`. Calling the model on a batch
    `{"images" [B,S,S,3] 0..255, "token_ids" [B,L], "padding_mask" [B,L], ...}`
    returns `(image_emb, text_emb)`, both `[B, embed_dim]` float32 and
    L2-normalised. `fit` works on `data.pair_dataset` batches (it needs
    `image_index`: captions of the same image are positives).

    The temperature is learned as `log_logit_scale` (init
    `log(init_logit_scale) / logit_scale_lr_mult`); the scale used in the forward
    pass is `exp(min(mult * log_logit_scale, log(max_logit_scale)))` and the
    variable is also clipped after every optimizer step. With Adam a step moves a
    variable by about the learning rate whatever its gradient's size, so the
    multiplier is what lets the temperature travel in a short (e.g. 100-step) run.

    Mixed precision: the towers follow the global Keras dtype policy (e.g.
    "mixed_float16"); heads, embeddings and losses are float32.

    Args:
        config: dict of `ModelConfig` keys; missing keys take the defaults.
        name: the Keras model name.
        **overrides: more config keys, applied over `config`.

    Example:
    >>> model = build_model({"image_tower": "tiny", "image_weights": "none",
    ...                      "image_size": 32, "text_tower": "tiny", "embed_dim": 16})
    >>> model.encode_texts(["a red circle"]).shape
    (1, 16)
    >>> model.compile(optimizer="adam")
    >>> model.fit(pair_dataset(...), epochs=1)
    """

    def __init__(self, config=None, name="dual_encoder", **overrides):
        config = {**dict(config or {}), **overrides}
        dtype = config.pop("dtype", None)
        trainable = config.pop("trainable", True)
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        # Bypass Keras attribute tracking: a tracked dict would deep-copy the
        # model itself with every `copy.deepcopy(config)`.
        object.__setattr__(self, "_model_config", _resolve_config(config))
        c = self._model_config
        attention = c["head"] == "attention"
        self.image_size = int(c["image_size"])
        self.embed_dim = int(c["embed_dim"])
        self.loss_name = c["loss"]

        self.image_tower = ImageTower(
            c["image_tower"],
            weights=c["image_weights"],
            image_size=self.image_size,
            pooling="none" if attention else "avg",
            trainable=c["image_trainable"],
            name="image_tower",
        )
        text = c["text_tower"]
        text_kwargs = dict(text) if isinstance(text, dict) else {"preset": text}
        self.text_tower = TextTower(
            pooling="none" if attention else c["text_pooling"],
            trainable=c["text_trainable"],
            sequence_length=c["sequence_length"],
            name="text_tower",
            **text_kwargs,
        )
        self.tokenizer = self.text_tower.tokenizer

        head_kwargs = dict(
            embed_dim=self.embed_dim,
            num_layers=c["head_layers"],
            dropout=c["head_dropout"],
            num_heads=c["attention_heads"],
        )
        self.image_head = build_head(c["head"], name="image_head", **head_kwargs)
        self.text_head = build_head(c["head"], name="text_head", **head_kwargs)
        tower_image_shape = (None,) + tuple(
            self.image_tower.compute_output_shape((None, self.image_size, self.image_size, 3))[1:]
        )
        self.image_head.build(tower_image_shape)
        text_dim = self.text_tower.output_dim
        if attention:
            self.text_head.build(
                {"sequence_output": (None, None, text_dim), "padding_mask": (None, None)}
            )
        else:
            self.text_head.build((None, text_dim))

        self._max_log_scale = math.log(float(c["max_logit_scale"]))
        self._scale_mult = float(c["logit_scale_lr_mult"])
        self.log_logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(
                math.log(float(c["init_logit_scale"])) / self._scale_mult),
            constraint=MaxValue(self._max_log_scale / self._scale_mult),
            dtype="float32",
            name="log_logit_scale",
        )
        self.logit_bias = None
        if self.loss_name == "siglip":
            self.logit_bias = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(float(c["init_logit_bias"])),
                dtype="float32",
                name="logit_bias",
            )
        self._loss_fn = losses_lib.get_loss(self.loss_name)
        extra = c["extra_loss"]
        self._extra_loss_fn = losses_lib.get_loss(extra) if extra is not None else None
        self._extra_loss_weight = float(c["extra_loss_weight"])

        names = ["loss", "temperature", "logit_scale", "i2t_acc", "t2i_acc"]
        if self.logit_bias is not None:
            names.append("logit_bias")
        self._trackers = [keras.metrics.Mean(name=n) for n in names]
        self.built = True

    # ------------------------------------------------------------------ config

    @property
    def model_config(self):
        """The resolved flat config (a copy)."""
        return copy.deepcopy(self._model_config)

    def get_config(self):
        config = self.model_config
        config["name"] = self.name
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def portable_config(self):
        """The config that rebuilds this model without presets or weight files.

        `image_weights` becomes "none" and `text_tower` the backbone's own
        architecture (the weights then come from a checkpoint); the text
        vocabulary is left as `None` (`saving.save_model` writes it as vocab.txt).
        """
        config = self.model_config
        config["image_weights"] = "none"
        tower = self.text_tower.portable_config()
        config["text_tower"] = {
            "backbone_config": tower["backbone_config"],
            "lowercase": tower["lowercase"],
            "vocabulary": None,
        }
        return config

    # ------------------------------------------------------------------ pieces

    @property
    def logit_scale(self):
        """The inverse temperature used in the loss, `exp(log_logit_scale)` clamped."""
        return ops.exp(ops.minimum(self._scale_mult * self.log_logit_scale, self._max_log_scale))

    @property
    def temperature(self):
        return 1.0 / self.logit_scale

    def image_features(self, images, training=False):
        """Image tower output only (pooled `[B, C]`, or the spatial map for
        attention heads), for caching features of frozen towers."""
        return self.image_tower(images, training=training)

    def text_features(self, tokens, training=False):
        """Text tower output only. `tokens`: a token dict or a list of strings."""
        if not isinstance(tokens, dict):
            tokens = self.tokenizer(list(tokens) if not tf.is_tensor(tokens) else tokens)
        tokens = {"token_ids": tokens["token_ids"], "padding_mask": tokens["padding_mask"]}
        return self.text_tower(tokens, training=training)

    def embed_from_features(self, image_features, text_features, training=False):
        """Heads only: tower features -> L2-normalised float32 embeddings.

        Either argument may be None (its output is then None).
        """
        img = txt = None
        if image_features is not None:
            img = _l2_normalize(self.image_head(image_features, training=training))
        if text_features is not None:
            txt = _l2_normalize(self.text_head(text_features, training=training))
        return img, txt

    def call(self, batch, training=None):
        img_feats = self.image_tower(batch["images"], training=training)
        txt_feats = self.text_tower(
            {"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]},
            training=training,
        )
        return self.embed_from_features(img_feats, txt_feats, training=training)

    def compute_contrastive_loss(self, image_emb, text_emb, image_index=None):
        """The configured loss (plus the weighted extra loss) and batch metrics.

        Args:
            image_emb: `[B, D]` normalised image embeddings.
            text_emb: `[B, D]` normalised text embeddings.
            image_index: `[B]` image ids (same id = positives), or None.

        Returns:
            `(loss, {"loss", "temperature", "logit_scale", "i2t_acc",
            "t2i_acc"[, "logit_bias"]})`; the accuracies are in-batch top-1
            retrieval accuracies counting any caption/image of the same image
            as a hit.
        """
        scale = self.logit_scale
        loss = self._loss_fn(image_emb, text_emb, scale, image_index=image_index,
                             bias=self.logit_bias)
        if self._extra_loss_fn is not None and self._extra_loss_weight:
            loss = loss + self._extra_loss_weight * self._extra_loss_fn(
                image_emb, text_emb, scale, image_index=image_index, bias=self.logit_bias
            )
        similarity = ops.matmul(ops.cast(image_emb, "float32"),
                                ops.transpose(ops.cast(text_emb, "float32")))
        metrics = {
            "loss": loss,
            "temperature": 1.0 / scale,
            "logit_scale": scale,
            "i2t_acc": losses_lib.top1_accuracy(similarity, image_index),
            "t2i_acc": losses_lib.top1_accuracy(ops.transpose(similarity), image_index),
        }
        if self.logit_bias is not None:
            metrics["logit_bias"] = ops.convert_to_tensor(self.logit_bias)
        return loss, metrics

    # ------------------------------------------------------------------ fit

    @property
    def metrics(self):
        return list(self._trackers)

    def _update_trackers(self, logs):
        for tracker in self._trackers:
            tracker.update_state(logs[tracker.name])
        return {t.name: t.result() for t in self._trackers}

    @staticmethod
    def _unpack(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        """`fit`'s step: `training_step.training_step` (the training loop's step too)."""
        metrics = training_step.training_step(self, self.optimizer, self._unpack(data))
        return self._update_trackers(metrics)

    def test_step(self, data):
        _, metrics = training_step.batch_loss(self, self._unpack(data), training=False)
        return self._update_trackers(metrics)

    # ------------------------------------------------------------------ encoding

    def _encode_fns(self):
        return encoding.embedding_functions(self)

    def encode_images(self, images, batch_size=64):
        """L2-normalised image embeddings `[B, embed_dim]`.

        Args:
            images: `[B, S, S, 3]` raw pixels (uint8 or float 0..255; `S` is
                `self.image_size`): a NumPy array, a list, or a tensor.
            batch_size: images per forward pass (at most
                `encoding.image_chunk_size()` on a host without a GPU: a CPU runs
                large CNNs faster on small batches).

        Returns:
            A NumPy float32 array, or a tf.Tensor when `images` is a tensor.
        """
        return encoding.encode_images(self, self._encode_fns()[0], images, batch_size)

    def encode_texts(self, texts, batch_size=256):
        """L2-normalised text embeddings `[B, embed_dim]`.

        Args:
            texts: a list / array of strings, a tf.string tensor `[B]`, or a
                token dict `{"token_ids", "padding_mask"}` (from
                `self.tokenizer`).
            batch_size: texts per forward pass.

        Returns:
            A NumPy float32 array, or a tf.Tensor when `texts` (or the token
            dict's values) are tensors.
        """
        return encoding.encode_texts(self, self._encode_fns()[1], texts, batch_size)

    # ------------------------------------------------------------------ identity

    def fingerprint(self):
        """Short sha256 hex of the portable config, vocabulary and all weights.

        Equal for a model and its `save_model`/`load` copy; changes with any
        weight update.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps(self.portable_config(), sort_keys=True, default=str).encode())
        digest.update("\n".join(self.tokenizer.get_vocabulary()).encode("utf-8"))
        # by order, not weight.path: auto-generated layer names ("conv2d_4") vary with how
        # many models the process built before.
        return hash_arrays(digest, self.weights, with_layout=True).hexdigest()[:16]


def build_model(config=None, **overrides):
    """A `DualEncoder` from a flat config dict (missing keys: `config.model_defaults()`).

    Args:
        config: dict of `ModelConfig` keys.
        **overrides: more keys, applied over `config`.

    Raises:
        ValueError: unknown keys (listing the valid ones), unknown towers,
            heads or losses, unloadable weights.

    Example:
    >>> model = build_model({"image_trainable": "none", "head": "linear"})
    """
    config = dict(config or {})
    config.update(overrides)
    return DualEncoder(**config)
