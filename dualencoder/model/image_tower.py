"""The image tower: any registered backbone by name (every `keras.applications` CNN, `"tiny"`
for tests, or one added with `register_image_tower`), with the backbone's own preprocessing
inside, so callers pass raw 0..255 images.

Names, constructors, preprocessing and sizes come from the one table in
`dualencoder.image_towers`. `trainable="all" | "none" | N` trains the top-N blocks
(`trainable_layers`). Nothing is built or downloaded at import.
"""

from __future__ import annotations

import os
import warnings

import keras
from keras import ops

from dualencoder.image_towers import TINY, image_tower_names, image_tower_spec
from dualencoder.model.trainable_layers import parse_trainable, set_top_trainable

__all__ = ["ImageTower", "image_tower_names", "load_weights_quietly", "TINY"]


def _resolve_image_tower(name):
    """`(key, backbone, preprocess)` of tower `name`: the keras.applications constructor (or
    the registered builder) and the preprocessing function; `ValueError` for an unknown
    name, listing the valid ones."""
    spec = image_tower_spec(name)
    return spec.name, _constructor(spec), _preprocess_function(spec)


def _constructor(spec):
    """The keras.applications constructor of `spec` (looked up when a tower is built), or
    its builder function."""
    if spec.from_keras_applications:
        return getattr(keras.applications, spec.backbone)
    return spec.backbone


def _preprocess_function(spec):
    if callable(spec.preprocess):
        return spec.preprocess
    return getattr(keras.applications, spec.preprocess).preprocess_input


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
    """An image encoder with built-in preprocessing.

    Takes raw images `[B, S, S, 3]` (float or uint8, 0..255), applies the
    architecture's own preprocessing, runs the backbone (without its
    classification top) and pools.

    Args:
        architecture: a registered tower name, case-insensitive, `_` and `-`
            ignored: a `keras.applications` CNN (`"xception"`,
            `"efficientnetb0"`..`"efficientnetb7"`, `"efficientnetv2s"`,
            `"resnet50"`, `"mobilenetv2"`, `"convnexttiny"`, ...; see
            `image_tower_names()`), `"tiny"` (a 3-block random-init CNN for
            tests, 64-d features) or one added with `register_image_tower`.
        weights: `"imagenet"` (the backbone's pretrained weights; Keras
            downloads them into ~/.keras), `"none"` (random init) or the path
            to a local weights file (`.weights.h5` or legacy `.h5`) for the
            same architecture without its top.
        image_size: int, input side in pixels.
        pooling: `"avg"` (global average pooling, `[B, C]`) or `"none"`
            (the spatial feature map `[B, H, W, C]`, for attention pooling).
        trainable: `"all"`, `"none"` or int N: only the top-N blocks are
            trainable. Blocks are counted from layer names (the row's
            `block_pattern`): "blockK_" (Xception, VGG, tiny) or "blockKx_"
            (EfficientNet); un-numbered
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
        spec = image_tower_spec(architecture)
        key = spec.name
        if pooling not in ("avg", "none"):
            raise ValueError(f'pooling must be "avg" or "none", got {pooling!r}')
        if int(image_size) < spec.min_size:
            raise ValueError(f"image_size={image_size}: the {key} image tower needs at least "
                             f"{spec.min_size} px")
        weights = "none" if weights in (None, "") else weights
        self.architecture = key
        self.weights_source = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
        self.image_size = int(image_size)
        self.pooling = pooling
        self.trainable_spec = parse_trainable(trainable)
        self.display_name = spec.display
        self.preprocess = _preprocess_function(spec)

        self.backbone = _backbone(spec, weights, self.image_size)
        if weights not in ("imagenet", "none"):
            self._load_weights_file(str(weights), spec)
        trained = set_top_trainable(self.backbone, self.trainable_spec, spec.block_pattern)
        self.output_dim = int(self.backbone.output.shape[-1])
        # the frozen part and the trained part as models (untracked: the backbone owns the
        # weights); None when no single feature map separates them
        object.__setattr__(self, "_split", _split_at_boundary(self.backbone, trained)
                           if isinstance(self.trainable_spec, int) and trained else None)

    def _load_weights_file(self, path, spec):
        shape = f"input_shape=({self.image_size}, {self.image_size}, 3)"
        built = (f"{spec.display}(include_top=False, {shape})" if spec.from_keras_applications
                 else f"the {spec.display} backbone at {shape}")
        expected = (f"{built} weights: {len(self.backbone.weights)} arrays, "
                    f"{self.backbone.count_params():,} parameters")
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
        return self.lower_model(self.preprocess(ops.cast(images, "float32")), training=False)

    def from_boundary(self, states, training=None):
        """The trained blocks and the pooling on boundary feature maps: what `call` returns
        for the same images."""
        return self._pool(self._split[1](states, training=training))

    def call(self, images, training=None):
        x = self.preprocess(ops.cast(images, "float32"))
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


def _backbone(spec, weights, image_size):
    """The backbone of `spec` without its top, pretrained if `weights == "imagenet"`; a
    failed ImageNet download is one OSError saying what to pass instead. Keras' warning
    that MobileNets at other sizes load the 224 px weights is held back: without the top
    they fit every size."""
    build, key = _constructor(spec), spec.name
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`input_shape` is undefined")
            if not spec.from_keras_applications:
                return build(image_size, weights == "imagenet")
            return build(include_top=False, weights="imagenet" if weights == "imagenet"
                         else None, input_shape=(image_size, image_size, 3))
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
        except (ValueError, AttributeError):
            continue
        if wanted <= {id(sub) for sub in upper.layers}:
            return keras.Model(backbone.input, layer.output), upper, layer.name
    return None


def load_weights_quietly(model, path):
    """`model.load_weights(path)`; Keras' per-layer warnings about a file that does not fit
    are held back and only shown if the load succeeds (otherwise the error says it all, on
    one line)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
