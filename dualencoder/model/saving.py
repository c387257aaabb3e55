"""A `DualEncoder` in a self-contained folder: `save_model(model, path)` and `load(path)`.

The folder (`config.json`, `model.weights.h5`, `vocab.txt`; see `dualencoder.model.layout`)
loads without the original presets or weight files: the config is the model's portable config
and the weights fingerprint in `config.json` is checked on load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras

from dualencoder.model.dual_encoder import DualEncoder
from dualencoder.model.tower_precision import tower_precision_of
from dualencoder.model.layout import (CONFIG_FILE, SAVE_FORMAT, SAVE_FORMAT_VERSION, VOCAB_FILE,
                                      WEIGHTS_FILE)

__all__ = ["save_model", "load"]


def save_model(model: DualEncoder, path) -> str:
    """Save `model` to folder `path` atomically: config.json, model.weights.h5, vocab.txt.

    The folder is written under a temporary name beside `path` and renamed into place
    (replacing an existing save), so a crash never leaves a half-written model at `path`. It
    loads with `load(path)` without the original presets or weight files.

    Returns:
        `path` (absolute).
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        model.tokenizer.save_vocabulary(tmp)
        config = model.portable_config()
        config["text_tower"]["vocabulary"] = VOCAB_FILE
        meta = {
            "format": SAVE_FORMAT,
            "format_version": SAVE_FORMAT_VERSION,
            "config": config,
            "fingerprint": model.fingerprint(),
            "files": [CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE],
            "keras_version": keras.__version__,
            # what it was trained/saved in (loading picks its own: `tower_precision`)
            "precision": {"policy": keras.config.dtype_policy().name,
                          "towers": tower_precision_of(model)},
        }
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        backup = None
        if os.path.exists(path):
            backup = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(backup)
            os.rename(path, backup)
        os.rename(tmp, path)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path):
    """Load a `DualEncoder` saved with `save_model(model, path)`, or the `model/` of a training
    workdir `path`.

    Raises:
        ValueError: when `path` is not a complete, consistent save (missing
            files, unparsable config.json, weights that do not fit, or a
            fingerprint mismatch), naming the problem.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "model", CONFIG_FILE)):  # a training workdir
        path = os.path.join(path, "model")
    expected = f"a folder with {CONFIG_FILE}, {WEIGHTS_FILE} and {VOCAB_FILE} written by save_model"
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such model folder (expected {expected})")
    config_path = os.path.join(path, CONFIG_FILE)
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE) if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise ValueError(f"{path}: missing {missing} (expected {expected})")
    try:
        with open(config_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_path}: unreadable or not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SAVE_FORMAT or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{config_path}: not a DualEncoder config (expected {expected})")
    if meta.get("format_version", 0) > SAVE_FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {meta['format_version']} is newer than this "
            f"code supports ({SAVE_FORMAT_VERSION})"
        )
    config = meta["config"]
    text = config.get("text_tower")
    if isinstance(text, dict) and text.get("vocabulary"):
        text["vocabulary"] = os.path.join(path, text["vocabulary"])
    try:
        model = DualEncoder(**config)
    except Exception as exc:
        raise ValueError(f"{config_path}: cannot rebuild the model ({exc.__class__.__name__}: {exc})") from exc
    weights_path = os.path.join(path, WEIGHTS_FILE)
    try:
        model.load_weights(weights_path)
    except Exception as exc:
        raise ValueError(
            f"{weights_path}: the weights do not fit the saved config ({exc.__class__.__name__}: {exc})"
        ) from exc
    saved = meta.get("fingerprint")
    if saved is not None and saved != model.fingerprint():
        raise ValueError(
            f"{path}: fingerprint mismatch after loading (saved {saved}, loaded "
            f"{model.fingerprint()}): the weights or vocabulary were changed or corrupted"
        )
    return model
