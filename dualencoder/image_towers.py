"""The image towers by name: one `ImageTowerSpec` row per backbone, one name rule.

Everything the library knows about an image backbone lives in its row: how to build it (a
`keras.applications` constructor, or a builder function for anything else), how it
preprocesses raw pixels, its native and its smallest input side, and how its layers group
into blocks for `trainable=N`. `ImageTower` builds from the row, `Config` checks
`model.image_size` against it, and the supervised baselines take their constructor,
preprocessing and default size from it.

A `keras.applications` CNN is one row of `_APPLICATIONS`. Any other backbone (a keras-hub
ViT, a custom network) is one module that calls `register_image_tower` when imported:

    register_image_tower("myvit", build_myvit, preprocess=scale_to_unit, native_size=224,
                         min_size=32)

Pure Python: rows hold names and functions, and Keras is imported only when a tower is
built, so `dualencoder.config` reads the table without starting TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["ImageTowerSpec", "BLOCK_PATTERN", "DEFAULT_MIN_SIZE", "normalise_name",
           "register_image_tower", "unregister_image_tower", "image_tower_spec",
           "image_tower_names", "min_image_size", "TINY"]

# Block numbers in layer names: Xception / VGG "block14_sepconv1", EfficientNet
# "block6a_expand_conv", the tiny CNN "block2_conv". Other Keras CNNs (ResNet, MobileNet,
# DenseNet, ConvNeXt, ...) carry none, and train their last N layers with weights instead.
BLOCK_PATTERN = r"^block(\d+)[a-z]?_"

# The smallest input side of a backbone without a row of its own (config checks only).
DEFAULT_MIN_SIZE = 32

TINY = "tiny"


@dataclasses.dataclass(frozen=True)
class ImageTowerSpec:
    """One image backbone: everything the tower, the config checks and the baselines need.

    Attributes:
        backbone: the `keras.applications` constructor's name (`"Xception"`), or a function
            `build(image_size, pretrained) -> keras.Model`: a functional model from
            preprocessed images `[B, S, S, 3]` to a feature map `[B, h, w, C]` (a ViT's
            patch tokens reshaped to their grid). `pretrained` is True when the tower asks
            for `weights="imagenet"`, i.e. the backbone's own pretrained weights.
        preprocess: the `keras.applications` module holding the family's
            `preprocess_input` (`"xception"`), or a function from float pixels 0..255 to
            the backbone's input.
        native_size: the input side the pretrained weights were made for (the baselines'
            default image size).
        min_size: the smallest input side the backbone accepts.
        block_pattern: a regular expression whose group 1 is the block number in a layer
            name, for `trainable=N` (the top-N blocks); None, or no match in at least two
            blocks: the last N layers with weights.
        name: the registered (normalised) name; `register_image_tower` fills it in.
    """

    backbone: str | Callable[..., Any]
    preprocess: str | Callable[..., Any]
    native_size: int = 224
    min_size: int = DEFAULT_MIN_SIZE
    block_pattern: str | None = BLOCK_PATTERN
    name: str = ""

    @property
    def display(self) -> str:
        """The name reports show: the Keras constructor's, else the registered one."""
        return self.backbone if isinstance(self.backbone, str) else self.name

    @property
    def from_keras_applications(self) -> bool:
        return isinstance(self.backbone, str)


def normalise_name(name) -> str:
    """The one spelling of a tower name: lowercase without `_` and `-`
    (`"EfficientNet-B3"` -> `"efficientnetb3"`)."""
    return str(name).lower().replace("_", "").replace("-", "")


def _tiny_preprocess(x):
    return x / 127.5 - 1.0


def _build_tiny_cnn(image_size, pretrained=False):
    """A 3-block random-init CNN (16/32/64 channels, stride 2 each); there are no
    pretrained weights, so `pretrained` changes nothing."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    for block, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


# keras.applications constructor, module with its preprocess_input, native side, minimum side
_APPLICATIONS = (
    ("Xception", "xception", 299, 71),
    ("InceptionV3", "inception_v3", 299, 75),
    ("InceptionResNetV2", "inception_resnet_v2", 299, 75),
    ("ResNet50", "resnet", 224, 32),
    ("ResNet101", "resnet", 224, 32),
    ("ResNet152", "resnet", 224, 32),
    ("ResNet50V2", "resnet_v2", 224, 32),
    ("ResNet101V2", "resnet_v2", 224, 32),
    ("ResNet152V2", "resnet_v2", 224, 32),
    ("MobileNet", "mobilenet", 224, 32),
    ("MobileNetV2", "mobilenet_v2", 224, 32),
    ("MobileNetV3Small", "mobilenet_v3", 224, 32),
    ("MobileNetV3Large", "mobilenet_v3", 224, 32),
    ("DenseNet121", "densenet", 224, 32),
    ("DenseNet169", "densenet", 224, 32),
    ("DenseNet201", "densenet", 224, 32),
    ("NASNetMobile", "nasnet", 224, 32),
    ("NASNetLarge", "nasnet", 331, 32),
    ("VGG16", "vgg16", 224, 32),
    ("VGG19", "vgg19", 224, 32),
    ("EfficientNetB0", "efficientnet", 224, 32),
    ("EfficientNetB1", "efficientnet", 240, 32),
    ("EfficientNetB2", "efficientnet", 260, 32),
    ("EfficientNetB3", "efficientnet", 300, 32),
    ("EfficientNetB4", "efficientnet", 380, 32),
    ("EfficientNetB5", "efficientnet", 456, 32),
    ("EfficientNetB6", "efficientnet", 528, 32),
    ("EfficientNetB7", "efficientnet", 600, 32),
    ("EfficientNetV2B0", "efficientnet_v2", 224, 32),
    ("EfficientNetV2B1", "efficientnet_v2", 224, 32),
    ("EfficientNetV2B2", "efficientnet_v2", 224, 32),
    ("EfficientNetV2B3", "efficientnet_v2", 224, 32),
    ("EfficientNetV2S", "efficientnet_v2", 224, 32),
    ("EfficientNetV2M", "efficientnet_v2", 224, 32),
    ("EfficientNetV2L", "efficientnet_v2", 224, 32),
    ("ConvNeXtTiny", "convnext", 224, 32),
    ("ConvNeXtSmall", "convnext", 224, 32),
    ("ConvNeXtBase", "convnext", 224, 32),
    ("ConvNeXtLarge", "convnext", 224, 32),
    ("ConvNeXtXLarge", "convnext", 224, 32),
)

_REGISTRY: dict[str, ImageTowerSpec] = {}


def register_image_tower(name, spec, *, replace=False, **fields) -> ImageTowerSpec:
    """Make `name` (any spelling `normalise_name` maps to the same key) an image tower.

    Args:
        name: the tower's name, as `model.image_tower=NAME` and `ImageTower(NAME)` take it.
        spec: an `ImageTowerSpec`, or its `backbone` (a constructor name or a builder
            function) with the other fields as keywords (`preprocess=` at least).
        replace: allow replacing an existing row (otherwise a `ValueError`).

    Returns:
        The registered spec (its `name` set). Models saved with a registered tower load in
        a process that registered it again (import the registering module first).
    """
    key = normalise_name(name)
    if not key:
        raise ValueError(f"image tower name {name!r} is empty")
    if not isinstance(spec, ImageTowerSpec):
        spec = ImageTowerSpec(spec, **fields)
    elif fields:
        spec = dataclasses.replace(spec, **fields)
    if not (isinstance(spec.backbone, str) or callable(spec.backbone)):
        raise TypeError(f"image tower {key!r}: backbone must be a keras.applications "
                        f"constructor name or a builder function, got {spec.backbone!r}")
    if not (isinstance(spec.preprocess, str) or callable(spec.preprocess)):
        raise TypeError(f"image tower {key!r}: preprocess must be a keras.applications "
                        f"module name or a function, got {spec.preprocess!r}")
    if not 1 <= int(spec.min_size) <= int(spec.native_size):
        raise ValueError(f"image tower {key!r}: need 1 <= min_size <= native_size, got "
                         f"min_size={spec.min_size}, native_size={spec.native_size}")
    if key in _REGISTRY and not replace:
        raise ValueError(f"image tower {key!r} is already registered (pass replace=True to "
                         "replace it)")
    spec = dataclasses.replace(spec, name=key)
    _REGISTRY[key] = spec
    return spec


def unregister_image_tower(name) -> None:
    """Remove a registered tower (a no-op for a name that is not registered)."""
    _REGISTRY.pop(normalise_name(name), None)


def image_tower_names() -> list[str]:
    """Every valid image tower name (normalised): "tiny" first, then sorted."""
    return [TINY] + sorted(key for key in _REGISTRY if key != TINY)


def image_tower_spec(name) -> ImageTowerSpec:
    """The row of tower `name` (case-insensitive, `_` and `-` ignored); `ValueError`
    listing the valid names for an unknown one."""
    spec = _REGISTRY.get(normalise_name(name))
    if spec is None:
        raise ValueError(f"Unknown image tower {name!r}; valid names (case-insensitive): "
                         f"{', '.join(image_tower_names())}")
    return spec


def min_image_size(image_tower) -> int:
    """The smallest image side tower `image_tower` accepts (`DEFAULT_MIN_SIZE` for a name
    without a row: building that tower reports the unknown name)."""
    spec = _REGISTRY.get(normalise_name(image_tower))
    return DEFAULT_MIN_SIZE if spec is None else int(spec.min_size)


register_image_tower(TINY, _build_tiny_cnn, preprocess=_tiny_preprocess, native_size=32,
                     min_size=8)
for _ctor, _module, _native, _min in _APPLICATIONS:
    register_image_tower(_ctor, _ctor, preprocess=_module, native_size=_native, min_size=_min)
del _ctor, _module, _native, _min
