"""Which layers of a pretrained backbone train: the `trainable="all" | "none" | N` spec shared
by the image and text towers, and the top-N-blocks rule for CNNs."""

from __future__ import annotations

import re

from dualencoder.image_towers import BLOCK_PATTERN

__all__ = ["parse_trainable", "set_top_trainable"]

# Xception / VGG "block14_sepconv1", EfficientNet "block6a_expand_conv", tiny "block2_conv".
_BLOCK_RE = re.compile(BLOCK_PATTERN)


def parse_trainable(trainable):
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


def _producers(layer):
    """The layers whose outputs `layer` reads (functional graphs), or None when unknown."""
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return None
    tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    found = [getattr(getattr(t, "_keras_history", None), "operation", None) for t in tensors]
    return None if any(op is None for op in found) else found


def _block_after_ancestors(layer, depth=64, pattern=_BLOCK_RE):
    """1 + the highest block number among the nearest numbered layers upstream of `layer`
    (walking back level by level through un-numbered ones): the block a residual conv or a
    stem feeds. 1 when the walk reaches the input; None when the graph is unknown."""
    level, seen = [layer], set()
    for _ in range(depth):
        parents = []
        for node in level:
            found = _producers(node)
            if found is None:
                return None
            parents += [p for p in found if id(p) not in seen and not seen.add(id(p))]
        numbered = [int(m.group(1)) for p in parents if (m := pattern.match(p.name))]
        if numbered:
            return max(numbered) + 1
        if not parents:
            return 1
        level = parents
    return None


def _block_of_layers(layers, pattern=_BLOCK_RE):
    """Block number per layer from "blockK_" / "blockKx_" names (group 1 of the compiled
    regex `pattern`), or None.

    A layer without a block prefix belongs to the block it feeds: in a functional graph the
    block after the last numbered layers upstream of it (Xception's residual 1x1 convs run
    beside the block that reads the same input, even though Keras lists them after it;
    EfficientNet's stem -> block 1); without a graph, the next numbered layer in order.
    Layers after the last block (EfficientNet's `top_conv`) belong to it.
    Returns None when fewer than two blocks are named (use the fallback).
    """
    numbers = [
        int(m.group(1)) if (m := pattern.match(layer.name)) else None
        for layer in layers
    ]
    if len({n for n in numbers if n is not None}) < 2:
        return None
    last = max(n for n in numbers if n is not None)
    for i, layer in enumerate(layers):
        fed = None if numbers[i] is not None else _block_after_ancestors(layer, pattern=pattern)
        if fed is not None:
            numbers[i] = min(fed, last)
    blocks, pending = [], 0
    for n in numbers:
        if n is not None:
            blocks.extend([n] * (pending + 1))
            pending = 0
        else:
            pending += 1
    blocks.extend([last] * pending)
    return blocks


def set_top_trainable(model, trainable, block_pattern=BLOCK_PATTERN):
    """Freeze `model` except for its top blocks; returns the trainable layers.

    `trainable`: "all", "none" or N. For N, the top-N *blocks* are trainable
    when layer names carry block numbers (group 1 of `block_pattern`; by default
    "blockK_" as in Xception and VGG, "blockKx_" as in EfficientNet); otherwise
    (ResNet, MobileNet, ConvNeXt, DenseNet, ..., or `block_pattern=None`) the
    last N layers that have weights. Frozen BatchNorm layers run in inference
    mode (Keras 3 semantics of `trainable=False`).
    """
    trainable = parse_trainable(trainable)
    layers = _layers_with_weights(model)
    if trainable == "all":
        flags = [True] * len(layers)
    elif trainable == "none" or trainable == 0:
        flags = [False] * len(layers)
    else:
        blocks = (None if block_pattern is None
                  else _block_of_layers(layers, pattern=re.compile(block_pattern)))
        depth, unit = ((len(set(blocks)), "blocks") if blocks is not None
                       else (len(layers), "layers with weights"))
        if trainable > depth:
            raise ValueError(f"image_trainable={trainable}: the {model.name} image tower has "
                             f"{depth} {unit}; train at most {depth} or \"all\"")
        if blocks is not None:
            top = max(blocks)
            flags = [b > top - trainable for b in blocks]
        else:
            flags = [i >= len(layers) - trainable for i in range(len(layers))]
    model.trainable = True
    for layer, flag in zip(layers, flags):
        layer.trainable = flag
    return [layer for layer, flag in zip(layers, flags) if flag]

