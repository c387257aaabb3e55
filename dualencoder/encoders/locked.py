"""Evaluating locked-tower encoders from cached tower features.

A LiT model's towers are frozen: its embeddings of a data set are its heads applied to tower
outputs that never change. Training already stored those outputs for its train and validation
records (`dualencoder.features`, `run.features_dir`), so evaluating the model on the same
records needs the heads only, and evaluating a second head (another seed, an ensemble) on new
records needs the towers once. `LockedHeads` finds such an encoder's tower features by their
content key (records checksums, tower weights digest, image size and resize method, or
sequence length and pooling) in the model's feature directories, computes and stores them when
they are missing, and applies the heads.

Used by `dualencoder.encoders.cache.embed_images` / `embed_texts`, so `evaluate.py` takes this
path by itself for a model whose towers are locked. The result equals running the towers
(up to float rounding of a different batch size): `tests/test_feature_eval.py` checks it.

Example:
```python
from dualencoder.encoders.locked import LockedHeads
from dualencoder.model.saving import load
heads = LockedHeads.of(load("runs/f8k/recipe/model"), feature_dirs=["runs/f8k/features"])
emb = heads.records_images("runs/f8k/records/dev", resize_method="bicubic")
```
"""

from __future__ import annotations

import os

import numpy as np

from dualencoder.model.encoding import encode_texts_by_length
from dualencoder.features import compute, keys, store


class LockedHeads:
    """The heads of one `DualEncoder`, or of an ensemble of them, over frozen towers.

    Build it with `LockedHeads.of(encoder)`, which returns None for any encoder this does not
    apply to (a trained image tower, an attention head that reads whole maps, a CLIP adapter,
    an ensemble with such a member). A member whose text tower was trained (LiT) runs that
    tower on the captions; its image features still come from the caches. Ensemble members are grouped by tower (and image size:
    a cross-resolution ensemble reads one feature file per size); each group's features are
    found or computed once and every member of the group applies its heads to them.

    Args:
        members: the `DualEncoder`s whose embeddings are computed; more than one are combined
            as the mean-cosine ensemble (`ensemble.combine`).
        groups: `{"image": [(key, member indices)], "text": [...]}` from
            `ensemble.group_towers` (every key set: locked towers, the weights digest first).
        feature_dirs: directories searched for cached tower features, in order.
        write_dir: where missing features are stored (None: not stored).
    """

    def __init__(self, members, groups, *, feature_dirs=(), write_dir=None):
        self.members = list(members)
        self.groups = groups
        self.feature_dirs = [d for d in feature_dirs if d]
        self.write_dir = write_dir

    @classmethod
    def of(cls, encoder, *, feature_dirs=(), write_dir=None):
        """`LockedHeads` for `encoder` (unwrapping `FrozenEncoder`), or None."""
        from dualencoder.encoders.ensemble import group_towers

        inner = getattr(encoder, "encoder", encoder)
        if hasattr(inner, "tower_groups"):  # an EnsembleEncoder: its towers are grouped
            members = inner.members
            groups = {k: inner.tower_groups(k) for k in ("image", "text")}
        else:
            members = [inner]
            groups = {k: group_towers(members, k) for k in ("image", "text")}
        if not all(_embeds_from_features(m) for m in members) or any(
                key is None for key, _ in groups["image"]):
            return None  # a trained image tower, an attention head, not a DualEncoder
        # a trained text tower (LiT: image locked, text tuned) runs on the captions itself
        return cls(members, groups, feature_dirs=feature_dirs, write_dir=write_dir)

    # ------------------------------------------------------------------ keys and files

    def _find(self, name: str):
        """The first readable cached file `name` in the feature directories, or None."""
        for d in self.feature_dirs + ([self.write_dir] if self.write_dir else []):
            path = os.path.join(d, name)
            arrays = store.read_npz(path)
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
            store.write_npz(path, arrays)
        return arrays, path, False

    # ------------------------------------------------------------------ embeddings

    def _combine(self, kind: str, features_of_group) -> np.ndarray:
        """Every member's heads on its group's features, combined in member order."""
        from dualencoder.encoders.ensemble import combine, head_embeddings

        parts = [None] * len(self.members)
        for key, idx in self.groups[kind]:
            # (tower weights digest or None for a trained tower, first member)
            feats = features_of_group(None if key is None else key[0], idx[0])
            for i in idx:
                parts[i] = head_embeddings(self.members[i], feats, kind)
        return parts[0] if len(parts) == 1 else combine(parts)

    @staticmethod
    def _paths(paths):
        return paths[0] if len(paths) == 1 else paths

    def records_images(self, records_dir: str, *, resize_method: str, batch_size: int = 32,
                       progress: bool = True) -> dict:
        """Embeddings of every image of `records_dir` in record order: {"embeddings",
        "image_index", "features_path" (a list with several image groups), "features_reused"}."""
        from records.schema import read_manifest

        total = int(read_manifest(records_dir)["num_records"])
        paths, reused, order = [], [], []

        def check(a):  # every record once, in record order
            return ("image_features" in a and "image_index" in a
                    and len(a["image_index"]) == len(a["image_features"]) == total)

        def group_features(digest, m):
            tower, size = self.members[m], int(self.members[m].image_size)
            name = "image-" + keys.image_key(digest, records_dir, image_size=size,
                                             resize_method=resize_method,
                                             precision=tower.image_tower.compute_dtype)
            arrays, path, hit = self._features(name + ".npz", lambda: compute.compute_image_features(
                tower, records_dir, image_size=size, resize_method=resize_method,
                batch_size=batch_size, progress=progress), check)
            paths.append(path), reused.append(hit)
            order.append(np.asarray(arrays["image_index"], np.int64))
            if not np.array_equal(order[-1], order[0]):
                raise ValueError(f"{records_dir}: cached image features {path} list the images "
                                 f"in another order than {paths[0]}")
            return np.asarray(arrays["image_features"], np.float32)

        emb = self._combine("image", group_features)
        return {"embeddings": emb, "image_index": order[0],
                "features_path": self._paths(paths), "features_reused": all(reused)}

    def records_captions(self, records_dir: str, texts, *, progress: bool = True):
        """Embeddings of `texts`, which must be every caption of `records_dir` in record order
        (`annotations.read_captions`): (embeddings, features_path, reused)."""
        paths, reused = [], []

        def check(a):
            return "text_features" in a and len(a["text_features"]) == len(texts)

        def group_features(digest, m):
            tower, cfg = self.members[m], self.members[m].model_config
            if digest is None:  # a trained text tower: its outputs are its own, not cached
                paths.append(None), reused.append(False)
                return encode_texts_by_length(tower, texts, progress=progress)
            name = "text-" + keys.text_key(digest, records_dir,
                                        sequence_length=int(cfg["sequence_length"]),
                                        pooling=cfg["text_pooling"],
                                        precision=tower.text_tower.compute_dtype)
            arrays, path, hit = self._features(name + ".npz", lambda: compute.compute_text_features(
                tower, records_dir, progress=progress), check)
            paths.append(path), reused.append(hit)
            return np.asarray(arrays["text_features"], np.float32)

        emb = self._combine("text", group_features)
        return emb, self._paths(paths), all(reused)

    def texts(self, texts, *, progress: bool = False) -> np.ndarray:
        """Embeddings of any texts: each text tower on length-sorted batches, then the heads."""
        texts = list(texts)
        return self._combine("text", lambda digest, m: encode_texts_by_length(
            self.members[m], texts, progress=progress))


def _embeds_from_features(model) -> bool:
    """A `DualEncoder` whose heads take pooled tower outputs (not an attention head)."""
    return (hasattr(model, "embed_from_features") and hasattr(model, "model_config")
            and model.model_config.get("head") != "attention")


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
