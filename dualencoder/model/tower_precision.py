"""The precision of tower passes: frozen towers filling feature caches, evaluation embeddings
and photo-search indexing, separately from the training precision (`run.precision`).

`"bfloat16"` runs a tower's layers with bfloat16 compute on its float32 weights (Keras's
`mixed_bfloat16` policy, set on the tower's layers for as long as it is asked for); the heads,
embeddings and losses stay float32, so an index built in one precision answers queries
encoded in another. `"auto"` picks bfloat16 where the device computes it natively (a GPU of
compute capability 8.0 or later, a CPU with `amx_bf16` or `avx512_bf16`) and float32
elsewhere, where bfloat16 is emulated and slower (`bench/precision.py`).
"""

from __future__ import annotations

import contextlib

from dualencoder.config import TOWER_PRECISIONS

__all__ = ["TOWER_PRECISIONS", "native_bfloat16", "resolve_tower_precision",
           "set_layers_precision",
           "tower_precision_of", "set_tower_precision", "tower_precision"]

_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def native_bfloat16() -> str:
    """Why this machine computes bfloat16 natively ("GPU ... compute capability 8.0",
    "CPU amx_bf16, avx512_bf16"), or "" when it does not."""
    import tensorflow as tf

    from records.machine import bf16_flags

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return f"GPU {gpu.name} compute capability {capability[0]}.{capability[1]}"
    if tf.config.list_physical_devices("GPU"):
        return ""  # the towers run on a GPU without bfloat16 units
    flags = bf16_flags()
    return f"CPU {', '.join(flags)}" if flags else ""


# Tower families whose bfloat16 pass ran slower than float32 on a CPU with bfloat16 units
# (bench/precision.py: EfficientNetB0 at 224 px 0.86x, its depthwise convolutions): `auto`
# keeps them in float32 on CPUs.
SLOWER_IN_BFLOAT16_ON_CPU = ("efficientnet",)


def resolve_tower_precision(setting: str, tower=None) -> str:
    """"float32" or "bfloat16" for a setting in `TOWER_PRECISIONS` (and, for `auto`, the
    `tower` it is for: a family in `SLOWER_IN_BFLOAT16_ON_CPU` stays float32 on a CPU)."""
    if setting not in TOWER_PRECISIONS:
        raise ValueError(f"tower precision must be one of {', '.join(TOWER_PRECISIONS)}, "
                         f"got {setting!r}")
    if setting == "auto":
        native = native_bfloat16()
        family = str(getattr(tower, "architecture", "")).lower()
        if native.startswith("CPU") and family.startswith(SLOWER_IN_BFLOAT16_ON_CPU):
            return "float32"
        return "bfloat16" if native else "float32"
    return setting


def _tower_layers(tower):
    """Every layer of a tower, with its frozen-part model when it is cut at a boundary."""
    layers = list(tower._flatten_layers(include_self=True))
    if getattr(tower, "boundary", None) is not None:
        layers += list(tower.lower_model._flatten_layers(include_self=True))
    return list({id(layer): layer for layer in layers}.values())


def set_layers_precision(layers, precision: str) -> None:
    """Give every one of `layers` the policy of `precision` ("float32" | "bfloat16"): float32
    variables, compute in `precision` (traced functions must be traced again)."""
    for layer in layers:
        layer.dtype_policy = _POLICY[precision]


def tower_precision_of(model) -> str:
    """What `model`'s tower passes run in now: "float32", "bfloat16" (asked for, or the global
    mixed policy the towers were built under), "float16", or "image X, text Y" when the two
    towers differ."""
    image, text = model.image_tower.compute_dtype, model.text_tower.compute_dtype
    return image if image == text else f"image {image}, text {text}"


def set_tower_precision(model, precision: str) -> None:
    """Run `model`'s towers in `precision` ("float32" | "bfloat16" | "auto", per tower) from
    now on. Towers built under a global mixed policy (`run.precision`) keep it: their
    variables already are what that training made."""
    import keras

    if keras.config.dtype_policy().compute_dtype != "float32":
        return
    for tower in (model.image_tower, model.text_tower):
        wanted = resolve_tower_precision(precision, tower)
        if tower.compute_dtype != wanted:
            set_layers_precision(_tower_layers(tower), wanted)


@contextlib.contextmanager
def tower_precision(model, precision: str):
    """`set_tower_precision(model, precision)` inside the block (yielding
    `tower_precision_of(model)`), each tower's previous precision after."""
    before = [(tower, tower.compute_dtype) for tower in (model.image_tower, model.text_tower)]
    set_tower_precision(model, precision)
    try:
        yield tower_precision_of(model)
    finally:
        for tower, dtype in before:
            if tower.compute_dtype != dtype:
                set_layers_precision(_tower_layers(tower), dtype)
