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

__all__ = ["TOWER_PRECISIONS", "native_bfloat16", "resolve_tower_precision",
           "effective_tower_precision", "set_layers_precision",
           "tower_precision_of", "set_tower_precision", "tower_precision"]

TOWER_PRECISIONS = ("auto", "float32", "bfloat16")
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


def resolve_tower_precision(setting: str) -> str:
    """"float32" or "bfloat16" for a setting in `TOWER_PRECISIONS`."""
    if setting not in TOWER_PRECISIONS:
        raise ValueError(f"tower precision must be one of {', '.join(TOWER_PRECISIONS)}, "
                         f"got {setting!r}")
    if setting == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return setting


def effective_tower_precision(setting: str) -> str:
    """The precision tower passes run in for `setting`: the global policy's compute dtype
    when training runs under a mixed policy (`run.precision`), else `setting` resolved."""
    import keras

    compute = keras.config.dtype_policy().compute_dtype
    return compute if compute != "float32" else resolve_tower_precision(setting)


def _tower_layers(model):
    """Every layer of both towers, with the frozen-part models cut at a boundary."""
    layers = []
    for tower in (model.image_tower, model.text_tower):
        layers += list(tower._flatten_layers(include_self=True))
        if getattr(tower, "boundary", None) is not None:
            layers += list(tower.lower_model._flatten_layers(include_self=True))
    unique = {id(layer): layer for layer in layers}
    return list(unique.values())


def set_layers_precision(layers, precision: str) -> None:
    """Give every one of `layers` the policy of `precision` ("float32" | "bfloat16"): float32
    variables, compute in `precision` (traced functions must be traced again)."""
    for layer in layers:
        layer.dtype_policy = _POLICY[precision]


def tower_precision_of(model) -> str:
    """The compute dtype `model`'s tower passes run in now: "float32", "bfloat16" (asked for,
    or the global mixed_bfloat16 policy the towers were built under) or "float16"."""
    return model.text_tower.compute_dtype


def set_tower_precision(model, precision: str) -> str:
    """Run `model`'s towers in `precision` ("float32" | "bfloat16" | "auto") from now on;
    returns the precision they ran in before. Towers built under a global mixed policy
    (`run.precision`) keep it: their variables already are what that training made."""
    import keras

    before = tower_precision_of(model)
    wanted = resolve_tower_precision(precision)
    if keras.config.dtype_policy().compute_dtype != "float32" or wanted == before:
        return before
    set_layers_precision(_tower_layers(model), wanted)
    return before


@contextlib.contextmanager
def tower_precision(model, precision: str):
    """`set_tower_precision(model, precision)` inside the block, the previous one after."""
    before = set_tower_precision(model, precision)
    try:
        yield tower_precision_of(model)
    finally:
        set_tower_precision(model, before)
