"""The Flickr8k recipe's pieces (docs/flickr8k.md): the configs resolve, and the cached-feature
validation of scripts/lit_train.py gives the numbers `runtime.validate` gives."""

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from dualencoder.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["flickr8k_lit.json", "coco_mini_lit.json"])
def test_recipe_configs_resolve(name):
    path = ROOT / "configs" / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    cfg = Config.from_sources(str(path))
    assert cfg.model.image_trainable == "none" and cfg.model.text_trainable == "none"
    assert cfg.model.head == "linear"


def test_cached_validation_matches_runtime_validate(synthetic_records, tmp_path):
    from dualencoder import runtime
    from lit_train import _cached_validate

    cfg = Config.from_sources(None, [
        "model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "model.head=linear", "model.image_trainable=none", "model.text_trainable=none",
        "data.batch_size=16", "run.val_subset=0"])
    model = runtime.build(cfg)
    val = synthetic_records["val"]
    expected = runtime.validate(model, cfg, val)
    got = _cached_validate(str(tmp_path), runtime.validate)(model, cfg, val)
    for key in [k for k in expected if k != "val_loss"]:
        assert got[key] == pytest.approx(expected[key], abs=1e-3), key
    assert np.isfinite(got["val_loss"])
    assert os.listdir(tmp_path)  # the val features were cached
