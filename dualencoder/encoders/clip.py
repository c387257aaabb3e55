"""Pretrained CLIP (keras-hub) behind the Encoder protocol.

`CLIPEncoder("clip_vit_base_patch32")` loads a keras-hub CLIP preset — a
preset name (downloaded from Kaggle on first use, then cached by keras-hub)
or a local preset folder — and exposes `encode_images`, `encode_texts`,
`image_size` and `fingerprint()` like `DualEncoder`, so `evaluate.py
--model clip:PRESET` can run every evaluation on it.

Offline use: save a preset once on a machine with internet access, copy the
folder, and pass its path:

    python -c "import keras_hub as h; p='clip_vit_base_patch32'; d='clip_b32';
    h.models.CLIPBackbone.from_preset(p).save_to_preset(d);
    h.models.CLIPTokenizer.from_preset(p).save_to_preset(d);
    h.layers.CLIPImageConverter.from_preset(p).save_to_preset(d)"
    python evaluate.py zeroshot --model clip:clip_b32 --data DIR --out out

Images go in as raw pixels (0..255) at `image_size`; the preset's image
converter applies CLIP's mean/std normalisation (CLIP's standard constants
when the preset has no converter). Texts are lower-cased, BPE-tokenized and
packed to `sequence_length` (77) with start/end tokens.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

__all__ = ["CLIPEncoder", "ClipUnavailableError", "save_tiny_clip_preset", "CLIP_MEAN",
           "CLIP_STD"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipUnavailableError(RuntimeError):
    """The CLIP preset cannot be loaded (no network, no such preset or folder)."""


def _offline_help(preset: str) -> str:
    return (f"cannot load CLIP preset {preset!r} (offline or unknown preset). Provide a local "
            "keras-hub preset folder and pass --model clip:/path/to/folder; create it on a "
            "machine with internet: keras_hub.models.CLIPBackbone.from_preset(NAME)"
            ".save_to_preset(DIR), and the same for keras_hub.models.CLIPTokenizer and "
            "keras_hub.layers.CLIPImageConverter (see dualencoder/encoders/clip.py)")


class CLIPEncoder:
    """A keras-hub CLIP model with the Encoder protocol.

    Args:
        preset: a keras-hub preset name (e.g. `"clip_vit_base_patch32"`) or a local
            preset folder (with `config.json`, `model.weights.h5`, `tokenizer.json`).
        sequence_length: token sequence length (CLIP: 77).
        batch_size: images or texts per forward pass.

    Raises:
        ClipUnavailableError: the preset cannot be loaded; the message says how to
            provide a local preset.

    Example:
    >>> enc = CLIPEncoder("clip_vit_base_patch32")
    >>> img = enc.encode_images(np.zeros([2, enc.image_size, enc.image_size, 3]))
    >>> txt = enc.encode_texts(["a photo of a dog.", "a photo of a cat."])
    >>> (img @ txt.T).shape
    (2, 2)
    """

    def __init__(self, preset: str, *, sequence_length: int = 77, batch_size: int = 64):
        import keras_hub

        self.preset = preset
        self.sequence_length = int(sequence_length)
        self.batch_size = int(batch_size)
        local = os.path.isdir(preset)
        if not local and (os.sep in preset or preset.startswith(".")):
            raise ClipUnavailableError(f"{preset}: no such CLIP preset folder")
        try:
            self.backbone = keras_hub.models.CLIPBackbone.from_preset(preset)
            self.tokenizer = keras_hub.models.CLIPTokenizer.from_preset(preset)
        except Exception as exc:  # network, Kaggle, missing files: all mean "not available"
            if local:
                raise ClipUnavailableError(
                    f"{preset}: not a loadable keras-hub CLIP preset folder "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
            raise ClipUnavailableError(_offline_help(preset)) from exc
        self.image_size = int(self.backbone.vision_encoder.image_shape[0])
        try:
            self.image_converter = keras_hub.layers.CLIPImageConverter.from_preset(preset)
        except Exception:  # presets without a saved converter: CLIP's standard constants
            self.image_converter = keras_hub.layers.CLIPImageConverter(
                image_size=(self.image_size, self.image_size),
                scale=[1.0 / (255.0 * s) for s in CLIP_STD],
                offset=[-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)],
                interpolation="bicubic")
        self.packer = keras_hub.layers.StartEndPacker(
            start_value=self.tokenizer.start_token_id, end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id, sequence_length=self.sequence_length)
        self._fingerprint = None
        self._fns = {}

    def set_tower_precision(self, precision: str) -> None:
        """Run both encoders in `precision` ("float32" | "bfloat16"); embeddings stay
        float32."""
        import keras

        from dualencoder.model.tower_precision import set_layers_precision

        if keras.config.dtype_policy().compute_dtype == "float32":
            set_layers_precision(self.backbone._flatten_layers(include_self=True), precision)
            self._fns = {}

    # ------------------------------------------------------------------ encoding

    def _fn(self, kind):
        import tensorflow as tf

        if kind not in self._fns:
            if kind == "image":
                def fn(images):
                    x = self.image_converter(images)
                    emb = tf.cast(self.backbone.get_vision_embeddings(x), tf.float32)
                    return tf.math.l2_normalize(emb, axis=-1)
            else:
                def fn(token_ids):
                    emb = tf.cast(self.backbone.get_text_embeddings(token_ids), tf.float32)
                    return tf.math.l2_normalize(emb, axis=-1)
            self._fns[kind] = tf.function(fn, reduce_retracing=True)
        return self._fns[kind]

    def encode_images(self, images) -> np.ndarray:
        """L2-normalised embeddings of `[B, S, S, 3]` images with raw 0..255 pixels."""
        import tensorflow as tf

        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode_images expects [B, S, S, 3] images, got {images.shape}")
        fn = self._fn("image")
        out = [fn(tf.constant(images[i:i + self.batch_size])).numpy()
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros([0, self.embed_dim], np.float32)

    def encode_texts(self, texts) -> np.ndarray:
        """L2-normalised embeddings of a list of strings."""
        import tensorflow as tf

        if isinstance(texts, str):
            raise ValueError("encode_texts expects a list of strings, got a single str")
        texts = [str(t) for t in texts]
        fn = self._fn("text")
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = tf.strings.lower(tf.constant(texts[i:i + self.batch_size]))
            ids = self.packer(self.tokenizer(batch))
            out.append(fn(tf.cast(ids, tf.int32)).numpy())
        return np.concatenate(out) if out else np.zeros([0, self.embed_dim], np.float32)

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.projection_dim)

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> str:
        """`clip-` + a short hash of the preset: the files' contents for a local folder,
        the name and keras-hub version for a named preset."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            if os.path.isdir(self.preset):
                for name in sorted(os.listdir(self.preset)):
                    path = os.path.join(self.preset, name)
                    if os.path.isfile(path):
                        h.update(name.encode())
                        with open(path, "rb") as fh:
                            for block in iter(lambda: fh.read(1 << 22), b""):
                                h.update(block)
            else:
                import keras_hub
                h.update(json.dumps([self.preset, keras_hub.__version__]).encode())
            h.update(str(self.sequence_length).encode())
            self._fingerprint = "clip-" + h.hexdigest()[:16]
        return self._fingerprint


def _byte_alphabet() -> list:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def save_tiny_clip_preset(path: str, *, image_size: int = 32, dim: int = 16,
                          projection_dim: int = 8, seed: int = 0) -> str:
    """Write a tiny randomly initialised CLIP as a local keras-hub preset (for tests).

    The vocabulary is byte-level (every byte, alone and word-final) plus a few merges,
    so any text tokenizes. Loads with `CLIPEncoder(path)`.
    """
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    chars = _byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["a t</w>", "o f</w>", "t h", "th e</w>", "c at</w>", "d o", "do g</w>"]
    for merge in merges:  # each merge joins two known tokens into a new one
        left, right = merge.split(" ")
        assert left in tokens and right in tokens, merge
        tokens.append(left + right)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the largest id: CLIP pools at argmax(token_ids)
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocab, merges=merges)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8, hidden_dim=dim, num_layers=1, num_heads=2, intermediate_dim=2 * dim,
        image_shape=(image_size, image_size, 3))
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=len(vocab), embedding_dim=dim, hidden_dim=dim, num_layers=1,
        num_heads=2, intermediate_dim=2 * dim, max_sequence_length=77)
    backbone = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text,
                                             projection_dim=projection_dim)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(image_size, image_size), scale=[1.0 / (255.0 * s) for s in CLIP_STD],
        offset=[-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)], interpolation="bicubic")
    os.makedirs(path, exist_ok=True)
    backbone.save_to_preset(path)
    tokenizer.save_to_preset(path)
    converter.save_to_preset(path)
    return path
