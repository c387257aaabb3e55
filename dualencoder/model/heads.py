"""Projection heads: tower features -> the shared embedding space.

- `ProjectionHead`: the keras-io dual-encoder head (Dense -> GELU -> Dense ->
  Dropout -> residual -> LayerNorm), or a single Dense (`kind="linear"`).
- `AttentionPoolHead`: learned-query multi-head attention pooling over a
  spatial map or token sequence (with mask), then a `ProjectionHead`.

Heads always compute in float32 (their layers use the "float32" dtype policy
whatever the global mixed-precision policy), so embeddings and losses are
float32 even when the towers run in float16/bfloat16. The model
L2-normalises their outputs.
"""

from __future__ import annotations

import keras
from keras import ops

from dualencoder.config import HEAD_KINDS

__all__ = ["ProjectionHead", "AttentionPoolHead", "build_head", "HEAD_KINDS"]


@keras.saving.register_keras_serializable(package="dualencoder")
class ProjectionHead(keras.layers.Layer):
    """Projects pooled features `[B, F]` to `[B, embed_dim]`.

    `kind="mlp"` (keras-io "Natural language image search with a Dual
    Encoder")::

        x = Dense(embed_dim)(features)
        repeat num_layers times:
            y = Dropout(dropout)(Dense(embed_dim)(gelu(x)))
            x = LayerNorm(x + y)

    `kind="linear"`: a single `Dense(embed_dim)` (best on real data with
    frozen towers).

    Args:
        embed_dim: int, output size.
        kind: "mlp" or "linear".
        num_layers: int >= 1, residual blocks of the "mlp" head.
        dropout: float, dropout rate of the "mlp" head.

    Example:
    >>> head = ProjectionHead(embed_dim=16)
    >>> head(np.zeros((2, 64), "float32")).shape
    TensorShape([2, 16])
    """

    def __init__(self, embed_dim=256, kind="mlp", num_layers=1, dropout=0.1, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if kind not in ("mlp", "linear"):
            raise ValueError(f'ProjectionHead kind must be "mlp" or "linear", got {kind!r}')
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.embed_dim = int(embed_dim)
        self.kind = kind
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        dtype = self.dtype_policy
        self.projection = keras.layers.Dense(self.embed_dim, name="projection", dtype=dtype)
        self.blocks = []
        if kind == "mlp":
            for i in range(self.num_layers):
                self.blocks.append(
                    (
                        keras.layers.Dense(self.embed_dim, name=f"dense_{i}", dtype=dtype),
                        keras.layers.Dropout(self.dropout, name=f"dropout_{i}", dtype=dtype),
                        keras.layers.LayerNormalization(
                            epsilon=1e-6, name=f"layer_norm_{i}", dtype=dtype
                        ),
                    )
                )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.projection.build(input_shape)
        inner = input_shape[:-1] + (self.embed_dim,)
        for dense, _, norm in self.blocks:
            dense.build(inner)
            norm.build(inner)

    def call(self, features, training=None):
        x = self.projection(ops.cast(features, self.compute_dtype))
        for dense, dropout, norm in self.blocks:
            y = dense(keras.activations.gelu(x, approximate=False))
            y = dropout(y, training=training)
            x = norm(x + y)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embed_dim": self.embed_dim,
                "kind": self.kind,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
            }
        )
        return config


def _as_sequence(inputs):
    """(sequence [B, N, C], mask [B, N] bool or None) from the tower outputs."""
    if isinstance(inputs, dict):
        return inputs["sequence_output"], inputs.get("padding_mask")
    x = inputs
    if len(x.shape) == 4:  # [B, H, W, C] spatial map
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))
    elif len(x.shape) != 3:
        raise ValueError(
            "AttentionPoolHead expects [B, N, C], [B, H, W, C] or a dict with "
            f"'sequence_output'/'padding_mask', got shape {x.shape}"
        )
    return x, None


@keras.saving.register_keras_serializable(package="dualencoder")
class AttentionPoolHead(keras.layers.Layer):
    """Attention pooling with learned queries, then a projection.

    `num_queries` learned query vectors attend (multi-head attention, keys and
    values = the sequence, padded positions masked out) over a token sequence
    `[B, N, C]`, a spatial map `[B, H, W, C]`, or a text tower's
    `{"sequence_output", "padding_mask"}` dict; the query outputs are averaged,
    layer-normalised and projected by a `ProjectionHead`. Use with towers
    built with `pooling="none"` (frozen towers' spatial/token outputs).

    Args:
        embed_dim: int, output size.
        num_heads: int, attention heads (must divide the feature size C).
        num_queries: int, learned queries (their outputs are averaged).
        kind: projection kind after pooling, "mlp" or "linear".
        num_layers: residual blocks of the "mlp" projection.
        dropout: dropout of the attention weights and the projection.

    Example:
    >>> head = AttentionPoolHead(embed_dim=16, num_heads=4)
    >>> head(np.zeros((2, 4, 4, 64), "float32")).shape
    TensorShape([2, 16])
    """

    def __init__(
        self,
        embed_dim=256,
        num_heads=8,
        num_queries=1,
        kind="linear",
        num_layers=1,
        dropout=0.0,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.num_queries = int(num_queries)
        self.kind = kind
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        dtype = self.dtype_policy
        self.attention = None  # built when the feature size is known
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="pool_norm", dtype=dtype)
        self.projection = ProjectionHead(
            self.embed_dim, kind=kind, num_layers=num_layers, dropout=dropout,
            name="projection", dtype=dtype,
        )

    def build(self, input_shape):
        if isinstance(input_shape, dict):
            channels = input_shape["sequence_output"][-1]
        else:
            channels = input_shape[-1]
        channels = int(channels)
        if channels % self.num_heads:
            raise ValueError(
                f"AttentionPoolHead: num_heads={self.num_heads} must divide the "
                f"feature size {channels}"
            )
        self.query = self.add_weight(
            shape=(self.num_queries, channels),
            initializer=keras.initializers.RandomNormal(stddev=channels**-0.5),
            name="query",
        )
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, channels // self.num_heads, dropout=self.dropout,
            name="attention", dtype=self.dtype_policy,
        )
        self.attention.build((None, self.num_queries, channels), (None, None, channels))
        self.norm.build((None, channels))
        self.projection.build((None, channels))

    def call(self, inputs, training=None):
        sequence, mask = _as_sequence(inputs)
        sequence = ops.cast(sequence, self.compute_dtype)
        batch = ops.shape(sequence)[0]
        query = ops.broadcast_to(
            self.query[None], (batch, self.num_queries, ops.shape(self.query)[-1])
        )
        attention_mask = None
        if mask is not None:
            attention_mask = ops.broadcast_to(
                ops.cast(mask, "bool")[:, None, :],
                (batch, self.num_queries, ops.shape(sequence)[1]),
            )
        pooled = self.attention(
            query, sequence, attention_mask=attention_mask, training=training
        )
        pooled = self.norm(ops.mean(pooled, axis=1))
        return self.projection(pooled, training=training)

    def compute_output_shape(self, input_shape):
        return (None, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embed_dim": self.embed_dim,
                "num_heads": self.num_heads,
                "num_queries": self.num_queries,
                "kind": self.kind,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
            }
        )
        return config


def build_head(kind, embed_dim, num_layers=1, dropout=0.1, num_heads=8, name=None):
    """A head by kind: "mlp", "linear" (`ProjectionHead`) or "attention"
    (`AttentionPoolHead` with a linear projection)."""
    if kind in ("mlp", "linear"):
        return ProjectionHead(embed_dim, kind=kind, num_layers=num_layers, dropout=dropout, name=name)
    if kind == "attention":
        return AttentionPoolHead(
            embed_dim, num_heads=num_heads, kind="linear", num_layers=num_layers,
            dropout=dropout, name=name,
        )
    raise ValueError(f"Unknown head {kind!r}; valid heads: {list(HEAD_KINDS)}")
