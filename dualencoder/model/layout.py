"""The saved model folder's layout, readable without TensorFlow.

A saved model is a folder with `config.json` (format, version, the model's config and its
weights fingerprint), `model.weights.h5` and `vocab.txt`, written by
`dualencoder.model.saving.save_model`. A training workdir keeps its final model in `model/`.
"""

from __future__ import annotations

import json
import os

SAVE_FORMAT = "dualencoder"
SAVE_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
VOCAB_FILE = "vocab.txt"


def resolve_model_dir(path) -> str:
    """The saved model folder behind `path`: a training workdir's `model/` folder, else `path`
    itself when it holds `config.json`.

    Raises:
        ValueError: neither, naming what was expected.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "model", CONFIG_FILE)):  # a workdir (its own
        return os.path.join(path, "model")                       # config.json is training's)
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    if os.path.isdir(path):
        raise ValueError(f"{path}: no saved model here (expected {CONFIG_FILE} in it, or a "
                         "training workdir with model/; a run writes model/ when it ends)")
    raise ValueError(f"{path}: no such model folder or training workdir")


def saved_fingerprint(model_dir) -> str | None:
    """The weights fingerprint recorded in a saved model's config.json, if any."""
    try:
        with open(os.path.join(os.fspath(model_dir), CONFIG_FILE), encoding="utf-8") as fh:
            fp = json.load(fh).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return fp if isinstance(fp, str) and fp else None
