"""The image tower: any `keras.applications` CNN by name (or `"tiny"` for tests), with the
architecture's own `preprocess_input` inside, so callers pass raw 0..255 images.

`trainable="all" | "none" | N` trains the top-N blocks (`trainable_layers`). Nothing is built
or downloaded at import.
"""

from __future__ import annotations

import os

import keras
from keras import ops

from dualencoder.config import min_image_size
from dualencoder.model.trainable_layers import parse_trainable, set_top_trainable

__all__ = ["ImageTower", "image_tower_names", "load_weights_quietly"]

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
        if int(image_size) < min_image_size(key):
            raise ValueError(f"image_size={image_size}: the {key} image tower needs at least "
                             f"{min_image_size(key)} px")
        weights = "none" if weights in (None, "") else weights
        self.architecture = key
        self.weights_source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
        self.image_size = int(image_size)
        self.pooling = pooling
        self.trainable_spec = parse_trainable(trainable)
        self._preprocess = preprocess or _tiny_preprocess

        input_shape = (self.image_size, self.image_size, 3)
        if fn is None:
            self.backbone = _build_tiny_cnn(self.image_size)
        else:
            self.backbone = _pretrained(fn, key, weights, input_shape)
        if weights not in ("imagenet", "none"):
            self._load_weights_file(str(weights), fn)
        trained = set_top_trainable(self.backbone, self.trainable_spec)
        self.output_dim = int(self.backbone.output.shape[-1])
        # the frozen part and the trained part as models (untracked: the backbone owns the
        # weights); None when no single feature map separates them
        object.__setattr__(self, "_split", _split_at_boundary(self.backbone, trained)
                           if isinstance(self.trainable_spec, int) and trained else None)

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
            load_weights_quietly(self.backbone, path)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"Image tower weights file {path!r} does not fit architecture "
                f"{self.architecture!r}: expected {expected}; the file holds "
                f"{_describe_weights_file(path)}. ({exc.__class__.__name__}: {exc})"
            ) from exc

    @property
    def frozen(self):
        return self.trainable_spec in ("none", 0)

    @property
    def boundary(self):
        """The name of the layer whose output enters the first trained block (top-N blocks
        trained and one feature map separates them from the frozen ones), else None."""
        return None if self._split is None else self._split[2]

    @property
    def lower_model(self):
        """The frozen part below the boundary as a Keras model (sharing the backbone's
        weights): preprocessed images -> the feature map entering the first trained block."""
        if self._split is None:
            raise ValueError(f"image tower trainable={self.trainable_spec!r} has no boundary")
        return self._split[0]

    def boundary_states(self, images):
        """The frozen part's output (inference mode) on raw images: the feature map entering
        the first trained block, `[B, h, w, c]`."""
        return self.lower_model(self._preprocess(ops.cast(images, "float32")), training=False)

    def from_boundary(self, states, training=None):
        """The trained blocks and the pooling on boundary feature maps: what `call` returns
        for the same images."""
        return self._pool(self._split[1](states, training=training))

    def call(self, images, training=None):
        x = self._preprocess(ops.cast(images, "float32"))
        return self._pool(self.backbone(x, training=False if self.frozen else training))

    def _pool(self, x):
        return ops.mean(x, axis=(1, 2)) if self.pooling == "avg" else x

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


def _pretrained(fn, key, weights, input_shape):
    """The keras.applications backbone; a failed ImageNet download is one OSError saying
    what to pass instead."""
    try:
        return fn(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                  input_shape=input_shape)
    except Exception as exc:  # Keras raises a bare Exception("URL fetch failure on ...")
        if weights != "imagenet" or "fetch failure" not in str(exc).lower():
            raise
        what = str(exc).splitlines()[0].split(": None")[0][:200]
        raise OSError(
            f"downloading the ImageNet weights of the {key} image tower failed ({what}); "
            "without internet, pass a local weights file (model.image_weights=PATH, e.g. a "
            "Keras *_notop.weights.h5) or model.image_weights=none (random init)") from None


def _split_at_boundary(backbone, trained, tries=32):
    """`(lower, upper, name)`: `backbone` cut at the output of layer `name`, the latest frozen
    layer before the first trained one whose output alone feeds every trained layer (the
    sub-model from it to the output is connected and holds them all); None if none of the
    `tries` layers before it does (e.g. a residual branch crosses the boundary)."""
    layers = backbone.layers
    first = min(layers.index(layer) for layer in trained)
    wanted = {id(layer) for layer in trained}
    for layer in reversed(layers[max(first - tries, 0):first]):
        try:
            upper = keras.Model(layer.output, backbone.output)
        except ValueError:
            continue
        if wanted <= {id(sub) for sub in upper.layers}:
            return keras.Model(backbone.input, layer.output), upper, layer.name
    return None


def load_weights_quietly(model, path):
    """`model.load_weights(path)`; Keras' per-layer warnings about a file that does not fit
    are held back and only shown if the load succeeds (otherwise the error says it all, on
    one line)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
