"""Tiny models and batches for tests (random init, CPU-fast, no downloads).

Example:
>>> from dualencoder.testing import tiny_model, tiny_batch
>>> model = tiny_model()                 # 32 px images, 2-layer BERT, 16-d
>>> batch = tiny_batch(model, batch_size=4)
>>> img_emb, txt_emb = model(batch)
"""

from __future__ import annotations

import numpy as np

__all__ = ["tiny_config", "tiny_model", "tiny_batch", "tiny_locked_run_config",
           "same_towers_new_heads", "TINY_CAPTIONS"]

TINY_CAPTIONS = (
    "a red circle",
    "a blue square on the left",
    "a green triangle at the top",
    "two yellow stars",
    "a small purple diamond",
    "a large orange cross in the middle",
    "a white circle on a black background",
    "a pink square below a gray star",
)


def tiny_config(**overrides):
    """A model config with tiny towers: "tiny" CNN at 32 px, "tiny" BERT
    (2 layers, hidden 32, tokenizer.tiny_vocabulary()), sequence length 16,
    16-d embeddings, no downloads. Keys of `config.ModelConfig` override."""
    config = {
        "image_tower": "tiny",
        "image_weights": "none",
        "image_size": 32,
        "text_tower": "tiny",
        "sequence_length": 16,
        "embed_dim": 16,
        "attention_heads": 4,
    }
    config.update(overrides)
    return config


def tiny_model(**overrides):
    """`build_model(tiny_config(**overrides))` (builds in well under 2 s)."""
    from dualencoder.model.dual_encoder import build_model

    return build_model(tiny_config(**overrides))


def tiny_locked_run_config(*sets):
    """A training `Config` with tiny towers, both locked, linear heads, batch 16 (the
    cached-feature path); `sets` are extra "section.key=value" overrides."""
    from dualencoder.config import Config

    return Config.from_sources(None, [
        "model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=24",
        "model.head=linear", "model.image_trainable=none", "model.text_trainable=none",
        "data.batch_size=16", "run.val_subset=0", *sets])


def same_towers_new_heads(source, target, seed=1, scale=0.2):
    """Give `target` the tower weights of `source` and random heads (normal, `scale`): two
    heads over the same towers, as in a LiT ensemble. Returns `target`."""
    for src, dst in zip(source.image_tower.weights + source.text_tower.weights,
                        target.image_tower.weights + target.text_tower.weights):
        dst.assign(src.numpy())
    rng = np.random.default_rng(seed)
    for w in target.image_head.weights + target.text_head.weights:
        w.assign(rng.normal(0, scale, w.shape).astype("float32"))
    return target


def tiny_batch(model, batch_size=4, seed=0, images_per_batch=None):
    """A random batch in the `data.pair_dataset` format for `model`.

    Args:
        model: a `DualEncoder` (its image size and tokenizer are used).
        batch_size: pairs in the batch.
        seed: NumPy seed.
        images_per_batch: distinct images; fewer than `batch_size` makes
            several captions of the same image (multi-positive batches).

    Returns:
        dict with `images` float32 [B,S,S,3] 0..255, `token_ids`,
        `padding_mask`, `image_index` int64 [B], `caption` (NumPy / tensors).
    """
    rng = np.random.default_rng(seed)
    n_images = images_per_batch or batch_size
    image_index = np.arange(batch_size, dtype=np.int64) % n_images
    size = model.image_size
    palette = rng.uniform(0, 255, size=(n_images, 1, 1, 3))
    noise = rng.uniform(-30, 30, size=(batch_size, size, size, 3))
    images = np.clip(palette[image_index] + noise, 0, 255).astype(np.float32)
    captions = [TINY_CAPTIONS[i % len(TINY_CAPTIONS)] for i in image_index]
    tokens = model.tokenizer(captions)
    return {
        "images": images,
        "token_ids": tokens["token_ids"],
        "padding_mask": tokens["padding_mask"],
        "image_index": image_index,
        "caption": np.array(captions),
    }
