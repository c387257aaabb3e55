"""An ensemble of dual encoders evaluated as one encoder.

The ensemble's embedding of an image (or text) is the concatenation of the members'
L2-normalised embeddings divided by sqrt(M), so it is unit-length and the cosine similarity
of two ensemble embeddings is the mean of the members' cosine similarities. Zero-shot,
retrieval, probes and the photo index all take it like any other encoder.

Members that share their towers (e.g. several heads trained on the same locked towers, the
usual LiT ensemble) run each tower once per batch; only the heads run per member. Members may
take different image sizes (a cross-resolution ensemble: heads on the same locked tower at
299 and 224 px): the ensemble takes images at the largest size, and members of a smaller size
get them resized (bicubic, antialiased); the feature-cache path (`feature_eval.LockedHeads`)
resizes each group from the source images instead.

Example:
```python
from dualencoder.encoders.ensemble import EnsembleEncoder
from dualencoder.model.saving import load
ens = EnsembleEncoder([load("runs/a/model"), load("runs/b/model")])
sims = ens.encode_images(images) @ ens.encode_texts(["a dog"]).T
```
On the command line: `evaluate.py retrieval --model ensemble:runs/a,runs/b ...`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dualencoder.arrays import l2_normalize
from dualencoder.features.keys import variables_digest
from dualencoder.model.encoding import encode_texts_by_length, tower_functions


def combine(embeddings) -> np.ndarray:
    """The ensemble embedding of per-member embeddings `[N, D_m]`: each row L2-normalised,
    concatenated and divided by sqrt(M), so a dot product is the mean member cosine."""
    parts = [l2_normalize(e) for e in embeddings]
    return np.concatenate(parts, axis=1) / np.sqrt(len(parts))


def head_embeddings(model, features, kind: str, batch_size: int = 4096) -> np.ndarray:
    """`model.embed_from_features` on tower outputs of one kind ("image" or "text"), in
    batches: the heads only, float32 `[N, embed_dim]`."""
    which = 0 if kind == "image" else 1
    parts = []
    for i in range(0, len(features), batch_size):
        pair = [None, None]
        pair[which] = features[i:i + batch_size]
        parts.append(np.asarray(model.embed_from_features(*pair)[which], np.float32))
    return (np.concatenate(parts) if parts
            else np.zeros((0, int(model.embed_dim)), np.float32))


class EnsembleEncoder:
    """The mean-cosine ensemble of `DualEncoder`s (or any encoders).

    Args:
        members: two or more encoders with `encode_images`, `encode_texts` and
            `image_size`. Members with different image sizes are allowed; `image_size` is the
            largest, and `encode_images` expects images of that size.

    Raises:
        ValueError: fewer than two members.
    """

    def __init__(self, members):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = members
        self.image_size = max(int(m.image_size) for m in members)
        self._groups = {kind: group_towers(members, kind) for kind in ("image", "text")}
        self._towers = {}  # group -> compiled tower calls, built on first use

    def tower_groups(self, kind: str) -> list:
        """`[(key, member indices)]`: members whose frozen `kind` tower is identical (and, for
        images, whose image size is equal) share one tower pass; key None = a member that
        runs its own towers."""
        return self._groups[kind]

    @property
    def shares_locked_towers(self) -> bool:
        """Whether every member's towers are frozen and shared within groups (only heads
        differ, and image sizes per group): the ensemble can run from cached tower features."""
        return all(key is not None for kind in ("image", "text")
                   for key, _ in self._groups[kind])

    def fingerprint(self) -> str:
        parts = []
        for m in self.members:
            fp = getattr(m, "fingerprint", None)
            if fp is None:
                return None
            parts.append(str(fp() if callable(fp) else fp))
        return hashlib.sha256(("ensemble:" + ",".join(parts)).encode()).hexdigest()[:16]

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        return self._encode("image", np.asarray(images, np.float32), batch_size)

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        return self._encode("text", list(texts), batch_size)

    def _encode(self, kind: str, items, batch_size: int) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = [None] * len(self.members)
        for g, (key, idx) in enumerate(self._groups[kind]):
            first = self.members[idx[0]]
            x = items
            if kind == "image" and int(first.image_size) != self.image_size:
                x = resize_images(items, int(first.image_size))
            if key is None:  # a member that runs its own towers
                parts[idx[0]] = getattr(first, f"encode_{kind}s")(x)
                continue
            if g not in self._towers:  # graph-mode tower calls (eager Keras is several x slower)
                self._towers[g] = tower_functions(first)
            image_fn, text_fn = self._towers[g]
            if kind == "image":
                feats = np.concatenate([np.asarray(image_fn(x[i:i + batch_size]), np.float32)
                                        for i in range(0, len(x), batch_size)])
            else:
                feats = encode_texts_by_length(first, x, batch_size=batch_size,
                                               text_fn=text_fn, progress=False)
            for i in idx:
                parts[i] = head_embeddings(self.members[i], feats, kind)
        return combine(parts)

    def embed_features(self, image_features, text_features, batch_size: int = 4096):
        """Ensemble embeddings from the shared towers' outputs (heads only), like
        `DualEncoder.embed_from_features`; either argument may be None. Only for ensembles
        whose members all share one image tower at one size and one text tower."""
        if not (self.shares_locked_towers and len(self._groups["image"]) == 1
                and len(self._groups["text"]) == 1):
            raise ValueError("embed_features needs members that share one set of locked "
                             "towers at one image size; use feature_eval.LockedHeads")
        return tuple(
            None if feats is None
            else combine(head_embeddings(m, feats, kind, batch_size) for m in self.members)
            for kind, feats in (("image", image_features), ("text", text_features)))

    @property
    def dim(self) -> int:
        return sum(int(getattr(m, "embed_dim", 0)) for m in self.members)


def resize_images(images, size: int) -> np.ndarray:
    """float `[N, h, w, 3]` images in 0..255 -> `[N, size, size, 3]` (bicubic, antialiased
    when shrinking, clipped to 0..255)."""
    import tensorflow as tf

    out = tf.image.resize(np.asarray(images, np.float32), [size, size], method="bicubic",
                          antialias=True)
    return np.clip(out.numpy(), 0.0, 255.0)


def group_towers(members, kind: str) -> list:
    """`[(key, member indices)]`: members grouped by identical frozen `kind` towers (and image
    size), `key` from `tower_key` (its first item the tower's weights digest), None for a
    member that runs its own towers; see `EnsembleEncoder.tower_groups`."""
    groups, where = [], {}
    for i, m in enumerate(members):
        key = tower_key(m, kind)
        if key is None:
            groups.append((None, [i]))
        elif key in where:
            groups[where[key]][1].append(i)
        else:
            where[key] = len(groups)
            groups.append((key, [i]))
    return groups


def tower_key(model, kind: str):
    """What identifies the outputs of `model`'s frozen `kind` tower: `(weights digest, image
    size)` for images, `(weights digest, sequence length, pooling)` for texts; None when the
    tower is trained, or the model cannot embed from its pooled outputs (not a `DualEncoder`,
    or an attention head, which reads whole maps)."""
    tower = getattr(model, f"{kind}_tower", None)
    if (tower is None or not getattr(tower, "frozen", False)
            or not hasattr(model, "embed_from_features") or not hasattr(model, "model_config")
            or model.model_config.get("head") == "attention"):
        return None
    cfg = model.model_config
    digest = variables_digest(tower.weights)
    if kind == "image":
        return digest, int(model.image_size)
    return digest, int(cfg["sequence_length"]), str(cfg["text_pooling"])

