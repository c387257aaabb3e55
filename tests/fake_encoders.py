"""Small deterministic encoders that follow the Encoder protocol, for evaluation tests."""

import os

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
          "yellow": (230, 220, 40)}
_AXES = ("red", "green", "blue", "yellow")


class ColorEncoder:
    """Images → their mean colour's similarity to four reference colours; texts → the colour
    words they contain. Zero-shot on solid-colour class folders is then (nearly) perfect."""

    image_size = 16

    def __init__(self, tag="color-v1"):
        self.tag = tag
        self.image_calls = 0

    def fingerprint(self):
        return self.tag

    def encode_images(self, images):
        self.image_calls += 1
        images = np.asarray(images, np.float32)
        assert images.shape[1:] == (self.image_size, self.image_size, 3), images.shape
        mean = images.reshape(len(images), -1, 3).mean(axis=1)
        ref = np.array([COLORS[c] for c in _AXES], np.float32)
        d = ((mean[:, None, :] - ref[None]) ** 2).sum(-1)
        emb = np.exp(-d / 2000.0) + 1e-3
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    def encode_texts(self, texts):
        out = np.full((len(texts), len(_AXES)), 1e-3, np.float32)
        for i, t in enumerate(texts):
            for j, c in enumerate(_AXES):
                if c in t:
                    out[i, j] = 1.0
            # templates change the embedding a little, deterministically
            out[i, len(t) % len(_AXES)] += 0.01
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_color_folders(root, per_class=6, classes=("red", "green", "blue"), size=20, seed=0,
                       bad=0):
    """ROOT/<colour>/<i>.png solid-ish colour images (plus `bad` unreadable files in the
    first class)."""
    rng = np.random.default_rng(seed)
    for c in classes:
        d = os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            px = np.clip(np.array(COLORS[c]) + rng.normal(0, 12, (size, size, 3)), 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(os.path.join(d, f"{i:03d}.png"))
    for i in range(bad):
        with open(os.path.join(root, classes[0], f"bad{i}.jpg"), "wb") as fh:
            fh.write(b"not an image at all")
    return root
