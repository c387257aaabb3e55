"""The Flickr8k recipe's configs (docs/flickr8k.md) resolve to locked-tower LiT settings."""

import pathlib

import pytest

from dualencoder.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["flickr8k_lit.json", "coco_mini_lit.json"])
def test_recipe_configs_resolve(name):
    path = ROOT / "configs" / name
    cfg = Config.from_sources(str(path))
    assert cfg.model.image_trainable == "none" and cfg.model.text_trainable == "none"
    assert cfg.model.head == "linear"
