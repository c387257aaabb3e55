"""Evaluating locked-tower encoders from cached tower features.

A LiT model's towers are frozen: its embeddings of a data set are its heads applied to tower
outputs that never change. Training already stored those outputs for its train and validation
records (`dualencoder.features`, `run.features_dir`), so evaluating the model on the same
records needs the heads only, and evaluating a second head (another seed, an ensemble) on new
records needs the towers once. `LockedHeads` finds such an encoder's tower features by their
content key (records checksums, tower weights digest, image size and resize method, or
sequence length and pooling) in the model's feature directories, computes and stores them when
they are missing, and applies the heads.

Used by `dualencoder.embed_cache.embed_images` / `embed_texts`, so `evaluate.py` takes this
path by itself for a model whose towers are locked. The result equals running the towers
(up to float rounding of a different batch size): `tests/test_feature_eval.py` checks it.

Example:
```python
from dualencoder.feature_eval import LockedHeads
from dualencoder.model import load
heads = LockedHeads.of(load("runs/f8k/recipe/model"), feature_dirs=["runs/f8k/features"])
emb = heads.records_images("runs/f8k/records/dev", resize_method="bicubic")
```
"""

from __future__ import annotations

import os

import numpy as np

from dualencoder import features as F


class LockedHeads:
    """The heads of one `DualEncoder`, or of an ensemble of them, over shared frozen towers.

    Build it with `LockedHeads.of(encoder)`, which returns None for any encoder this does not
    apply to (a trained tower, an attention head that reads whole maps, members with different
    towers, a CLIP adapter).

    Args:
        encoder: the encoder whose embeddings are computed (a `DualEncoder` or an
            `EnsembleEncoder`); it must have `embed_from_features` / `embed_features`.
        tower: a `DualEncoder` holding the shared frozen towers.
        feature_dirs: directories searched for cached tower features, in order.
        write_dir: where missing features are stored (None: not stored).
    """

    def __init__(self, encoder, tower, *, feature_dirs=(), write_dir=None):
        self.encoder, self.tower = encoder, tower
        self.feature_dirs = [d for d in feature_dirs if d]
        self.write_dir = write_dir
        cfg = tower.model_config
        self.sequence_length, self.pooling = int(cfg["sequence_length"]), cfg["text_pooling"]
        self.image_size = int(tower.image_size)
        self._digests = {}

    @classmethod
    def of(cls, encoder, *, feature_dirs=(), write_dir=None):
        """`LockedHeads` for `encoder` (unwrapping `FrozenEncoder`), or None."""
        inner = getattr(encoder, "encoder", encoder)
        members = list(getattr(inner, "members", [inner]))
        for m in members:
            if not (hasattr(m, "embed_from_features") and hasattr(m, "model_config")):
                return None
            if not (getattr(m.image_tower, "frozen", False)
                    and getattr(m.text_tower, "frozen", False)):
                return None
            if m.model_config["head"] == "attention":
                return None  # reads spatial / token maps, which are not cached
        if len(members) > 1 and not getattr(inner, "shares_locked_towers", False):
            return None
        return cls(inner, members[0], feature_dirs=feature_dirs, write_dir=write_dir)

    # ------------------------------------------------------------------ keys and files

    def _digest(self, kind: str) -> str:
        if kind not in self._digests:
            tower = self.tower.image_tower if kind == "image" else self.tower.text_tower
            self._digests[kind] = F.variables_digest(tower.weights)
        return self._digests[kind]

    def _find(self, name: str):
        """The first readable cached file `name` in the feature directories, or None."""
        for d in self.feature_dirs + ([self.write_dir] if self.write_dir else []):
            path = os.path.join(d, name)
            arrays = F.read_npz(path)
            if arrays is not None:
                return path, arrays
        return None

    def _features(self, name: str, compute, check):
        """(arrays, path, reused): cached features `name` that pass `check`, else computed
        (and stored in `write_dir`)."""
        hit = self._find(name)
        if hit is not None and check(hit[1]):
            return hit[1], hit[0], True
        arrays = compute()
        path = None
        if self.write_dir:
            path = os.path.join(self.write_dir, name)
            F.write_npz(path, arrays)
        return arrays, path, False

    # ------------------------------------------------------------------ embeddings

    def _embed(self, image_features=None, text_features=None):
        from dualencoder.ensemble import head_embeddings

        enc = self.encoder
        if hasattr(enc, "embed_features"):  # an ensemble
            return enc.embed_features(image_features, text_features)
        return tuple(None if feats is None else head_embeddings(enc, feats, kind)
                     for kind, feats in (("image", image_features), ("text", text_features)))

    def records_images(self, records_dir: str, *, resize_method: str, batch_size: int = 32,
                       progress: bool = True) -> dict:
        """Embeddings of every image of `records_dir` in record order:
        {"embeddings", "image_index", "features_path", "features_reused"}."""
        from records.schema import read_manifest

        name = "image-" + F.image_key(self._digest("image"), records_dir,
                                      image_size=self.image_size, resize_method=resize_method)
        total = int(read_manifest(records_dir)["num_records"])

        def compute():
            return F.compute_image_features(self.tower, records_dir, image_size=self.image_size,
                                            resize_method=resize_method, batch_size=batch_size,
                                            progress=progress)

        def check(a):  # every record once, in record order
            return ("image_features" in a and "image_index" in a
                    and len(a["image_index"]) == len(a["image_features"]) == total)

        arrays, path, reused = self._features(name + ".npz", compute, check)
        emb = self._embed(image_features=np.asarray(arrays["image_features"], np.float32))[0]
        return {"embeddings": emb, "image_index": np.asarray(arrays["image_index"], np.int64),
                "features_path": path, "features_reused": reused}

    def records_captions(self, records_dir: str, texts, *, progress: bool = True):
        """Embeddings of `texts`, which must be every caption of `records_dir` in record order
        (`data.read_captions`): (embeddings, features_path, reused)."""
        name = "text-" + F.text_key(self._digest("text"), records_dir,
                                    sequence_length=self.sequence_length, pooling=self.pooling)

        def check(a):
            return "text_features" in a and len(a["text_features"]) == len(texts)

        arrays, path, reused = self._features(
            name + ".npz", lambda: F.compute_text_features(self.tower, records_dir,
                                                           progress=progress), check)
        emb = self._embed(text_features=np.asarray(arrays["text_features"], np.float32))[1]
        return emb, path, reused

    def texts(self, texts, *, progress: bool = False) -> np.ndarray:
        """Embeddings of any texts: the text tower in length-sorted batches, then the heads."""
        feats = F.encode_texts_by_length(self.tower, list(texts), progress=progress)
        return self._embed(text_features=feats)[1]


def model_feature_dirs(path: str) -> list:
    """Where the training run behind `path` (a workdir, or its `model/` folder) cached its tower
    features: its config's `run.features_dir` and `WORKDIR/features`, those that exist."""
    import json

    path = os.path.normpath(path)
    for workdir in (path, os.path.dirname(path)):
        try:
            with open(os.path.join(workdir, "config.json"), encoding="utf-8") as fh:
                run = json.load(fh).get("run")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(run, dict):  # a training config (a model's config has no "run")
            dirs = [run.get("features_dir"), os.path.join(workdir, "features")]
            return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]
    return []
