"""An ensemble of dual encoders evaluated as one encoder.

The ensemble's embedding of an image (or text) is the concatenation of the members'
L2-normalised embeddings divided by sqrt(M), so it is unit-length and the cosine similarity
of two ensemble embeddings is the mean of the members' cosine similarities. Zero-shot,
retrieval, probes and the photo index all take it like any other encoder.

Members that share their towers (e.g. several heads trained on the same locked towers, the
usual LiT ensemble) run each tower once per batch; only the heads run per member.

Example:
```python
from dualencoder.ensemble import EnsembleEncoder
from dualencoder.model import load
ens = EnsembleEncoder([load("runs/a/model"), load("runs/b/model")])
sims = ens.encode_images(images) @ ens.encode_texts(["a dog"]).T
```
On the command line: `evaluate.py retrieval --model ensemble:runs/a,runs/b ...`.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dualencoder.features import encode_texts_by_length, tower_functions, variables_digest


def combine(embeddings) -> np.ndarray:
    """The ensemble embedding of per-member embeddings `[N, D_m]`: each row L2-normalised,
    concatenated and divided by sqrt(M), so a dot product is the mean member cosine."""
    parts = [np.asarray(e, np.float32) for e in embeddings]
    parts = [p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts]
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
            `image_size` (all members must use the same image size).

    Raises:
        ValueError: fewer than two members, or different image sizes.
    """

    def __init__(self, members):
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        sizes = {int(m.image_size) for m in members}
        if len(sizes) != 1:
            raise ValueError(f"ensemble members use different image sizes {sorted(sizes)}")
        self.members = members
        self.image_size = sizes.pop()
        self._shared = {"image": self._shares("image_tower"), "text": self._shares("text_tower")}
        self._towers = None  # compiled calls of the shared towers, built on first use

    def _shares(self, attr) -> bool:
        """Whether every member is a DualEncoder with frozen, identical `attr` towers."""
        towers = [getattr(m, attr, None) for m in self.members]
        if any(t is None or not getattr(t, "frozen", False) for t in towers):
            return False
        if not all(hasattr(m, "embed_from_features") for m in self.members):
            return False
        first = variables_digest(towers[0].weights)
        return all(variables_digest(t.weights) == first for t in towers[1:])

    @property
    def shares_locked_towers(self) -> bool:
        """Whether all members run the same frozen image and text towers (heads differ)."""
        return self._shared["image"] and self._shared["text"]

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
        if not self._shared[kind]:  # each member runs its own towers
            return combine(getattr(m, f"encode_{kind}s")(items) for m in self.members)
        if self._towers is None:  # graph-mode tower calls (eager Keras is several x slower)
            self._towers = tower_functions(self.members[0])
        image_fn, text_fn = self._towers
        if kind == "image":
            feats = [np.asarray(image_fn(items[i:i + batch_size]), np.float32)
                     for i in range(0, len(items), batch_size)]
            if not feats:
                return np.zeros((0, self.dim), np.float32)
            return self.embed_features(np.concatenate(feats), None)[0]
        if not items:
            return np.zeros((0, self.dim), np.float32)
        feats = encode_texts_by_length(self.members[0], items, batch_size=batch_size,
                                       text_fn=text_fn, progress=False)
        return self.embed_features(None, feats)[1]

    def embed_features(self, image_features, text_features, batch_size: int = 4096):
        """Ensemble embeddings from the shared towers' outputs (heads only), like
        `DualEncoder.embed_from_features`; either argument may be None."""
        return tuple(
            None if feats is None
            else combine(head_embeddings(m, feats, kind, batch_size) for m in self.members)
            for kind, feats in (("image", image_features), ("text", text_features)))

    @property
    def dim(self) -> int:
        return sum(int(getattr(m, "embed_dim", 0)) for m in self.members)
