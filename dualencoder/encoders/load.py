"""One loader for every model spec the programs accept.

A spec is one of:
- a saved model folder (`config.json` + `model.weights.h5` + vocabulary, written by
  `dualencoder.model.saving.save_model`),
- a training workdir (its `model/` folder is loaded),
- `ensemble:A,B[,...]`: the mean-cosine ensemble of two or more such models
  (`dualencoder.encoders.ensemble`),
- `clip:PRESET`: a pretrained CLIP from keras-hub (a preset name, or a local preset folder).

`check_model_spec` validates a spec without loading anything heavy (no TensorFlow), so the
programs fail fast on a typo; `load_encoder` returns a `FrozenEncoder` (the Encoder protocol:
`encode_images`, `encode_texts`, `image_size`, `fingerprint()`) and a description.

Example:
```python
from dualencoder.encoders.load import load_encoder
encoder, info = load_encoder("ensemble:runs/a,runs/b")
scores = encoder.encode_images(images) @ encoder.encode_texts(["a dog"]).T
```
"""

from __future__ import annotations

import os

from dualencoder.model.layout import resolve_model_dir

__all__ = ["ModelSpecError", "check_model_spec", "load_encoder", "absolute_spec", "FrozenEncoder"]


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable; the message is one line for the user."""


def _short(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


def _check_ensemble(spec: str) -> dict:
    parts = [p for p in spec[len("ensemble:"):].split(",") if p]
    if len(parts) < 2:
        raise ModelSpecError(f"--model {spec}: an ensemble needs at least two models, "
                             "e.g. ensemble:runs/a,runs/b")
    members = [check_model_spec(p) for p in parts]
    if any(m["family"] == "ensemble" for m in members):
        raise ModelSpecError(f"--model {spec}: ensembles do not nest")
    return {"spec": spec, "family": "ensemble", "members": members,
            "name": "Ensemble of " + ", ".join(_short(p) for p in parts)}


def _check_clip(spec: str) -> dict:
    preset = spec[len("clip:"):]
    if not preset:
        raise ModelSpecError("--model clip: needs a preset, e.g. clip:clip_vit_base_patch32")
    if (os.sep in preset or preset.startswith(".")) and not os.path.isdir(preset):
        raise ModelSpecError(f"{preset}: no such CLIP preset folder")
    return {"spec": spec, "family": "clip", "preset": preset,
            "name": f"Pre-trained CLIP ({_short(preset)})"}


def _check_saved(spec: str) -> dict:
    if not os.path.exists(spec):
        raise ModelSpecError(f"--model {spec}: no such model directory (a training workdir "
                             "with model/, a saved model directory, ensemble:A,B or "
                             "clip:PRESET)")
    try:
        model_dir = resolve_model_dir(spec)
    except ValueError as exc:
        raise ModelSpecError(f"--model {exc}") from None
    return {"spec": spec, "family": "ours", "model_dir": model_dir,
            "name": f"Our model ({_short(spec)})"}


def check_model_spec(spec: str) -> dict:
    """Validate a model spec without loading anything heavy.

    Returns:
        A dict with `spec`, `family` ("ours", "ensemble" or "clip"), `name` (for reports)
        and `model_dir` (ours), `members` (ensemble) or `preset` (clip).

    Raises:
        ModelSpecError: naming what is wrong and what a spec can be.
    """
    spec = os.fspath(spec)
    if spec.startswith("ensemble:"):
        return _check_ensemble(spec)
    if spec.startswith("clip:"):
        return _check_clip(spec)
    return _check_saved(spec)


def load_encoder(spec: str, tower_precision: str = "float32"):
    """Load the encoder for a model spec.

    `tower_precision`: "float32", "bfloat16" or "auto" (`dualencoder.model.tower_precision`):
    the towers' compute precision; heads and embeddings stay float32.

    Returns:
        `(encoder, info)`: a `FrozenEncoder`, and `check_model_spec`'s dict with
        `fingerprint`, `image_size` and `tower_precision` (the one used) added.

    Raises:
        ModelSpecError: a bad spec, or files that do not load (naming the file).
    """
    from dualencoder.model.tower_precision import resolve_tower_precision

    info = check_model_spec(spec)
    if info["family"] == "ensemble":
        from dualencoder.encoders.ensemble import EnsembleEncoder

        loaded = [load_encoder(m["spec"], tower_precision)[0] for m in info["members"]]
        try:
            inner = EnsembleEncoder([m.encoder for m in loaded])
        except ValueError as exc:
            raise ModelSpecError(f"--model {spec}: {exc}") from exc
        dirs = list(dict.fromkeys(d for m in loaded for d in m.feature_dirs))
        encoder = FrozenEncoder(inner, inner.fingerprint(), feature_dirs=dirs)
        encoder.tower_precision = "; ".join(dict.fromkeys(m.tower_precision for m in loaded))
    elif info["family"] == "clip":
        from dualencoder.encoders.clip import CLIPEncoder, ClipUnavailableError

        try:
            inner = CLIPEncoder(info["preset"])
        except ClipUnavailableError as exc:
            raise ModelSpecError(str(exc)) from exc
        inner.set_tower_precision(resolve_tower_precision(tower_precision))
        encoder = _frozen(inner, [])
        encoder.tower_precision = resolve_tower_precision(tower_precision)
    else:
        from dualencoder.encoders.locked import model_feature_dirs
        from dualencoder.model.saving import load
        from dualencoder.model.tower_precision import set_tower_precision, tower_precision_of

        try:
            inner = load(info["model_dir"])
        except (OSError, ValueError) as exc:
            raise ModelSpecError(str(exc).splitlines()[0]) from exc
        set_tower_precision(inner, tower_precision)
        encoder = _frozen(inner, model_feature_dirs(info["spec"]))
        encoder.tower_precision = tower_precision_of(inner)
    info["fingerprint"] = encoder.fingerprint()
    info["tower_precision"] = encoder.tower_precision
    info["image_size"] = int(encoder.image_size)
    return encoder, info


def _frozen(encoder, feature_dirs):
    from dualencoder.encoders.cache import encoder_fingerprint

    return FrozenEncoder(encoder, encoder_fingerprint(encoder), feature_dirs=feature_dirs)


class FrozenEncoder:
    """An Encoder whose weights will not change: the fingerprint is computed once.

    `DualEncoder.fingerprint()` hashes every weight (seconds for big models) and evaluation
    and indexing ask for it several times (image cache, text cache, report, index state).

    Args:
        encoder: the wrapped Encoder.
        fingerprint: its fingerprint (or None: no caching).
        feature_dirs: where its training cached locked-tower features (see
            `dualencoder.encoders.locked`).
    """

    def __init__(self, encoder, fingerprint, feature_dirs=()):
        self.encoder = encoder
        self._fingerprint = fingerprint
        self.feature_dirs = list(feature_dirs)
        self.image_size = int(encoder.image_size)
        self.tower_precision = "float32"  # the towers' compute precision (load_encoder)

    def fingerprint(self):
        return self._fingerprint

    def encode_images(self, images):
        return self.encoder.encode_images(images)

    def encode_texts(self, texts):
        return self.encoder.encode_texts(texts)


def absolute_spec(spec: str) -> str:
    """`spec` with every folder in it made absolute, so a spec recorded in an index or report
    loads from any working directory. Saved models resolve to their `model/` folder."""
    spec = os.fspath(spec)
    if spec.startswith("ensemble:"):
        parts = [p for p in spec[len("ensemble:"):].split(",") if p]
        return "ensemble:" + ",".join(absolute_spec(p) for p in parts)
    if spec.startswith("clip:"):
        preset = spec[len("clip:"):]
        local = os.sep in preset or preset.startswith(".") or os.path.isdir(preset)
        return "clip:" + (os.path.abspath(preset) if local else preset)
    try:
        return os.path.abspath(resolve_model_dir(spec))
    except ValueError:
        return os.path.abspath(spec)
