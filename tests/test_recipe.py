"""The Flickr8k recipe's configs (docs/flickr8k.md) resolve to locked-tower LiT settings."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from dualencoder.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["flickr8k_lit.json", "coco_mini_lit.json"])
def test_recipe_configs_resolve(name):
    path = ROOT / "configs" / name
    cfg = Config.from_sources(str(path))
    assert cfg.model.image_trainable == "none" and cfg.model.text_trainable == "none"
    assert cfg.model.head == "linear"


def _tiny_coco(root, make_image):
    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
              "yellow": (230, 220, 30), "black": (10, 10, 10), "white": (245, 245, 245)}
    for split, count in (("train2017", 12), ("val2017", 10)):
        images, anns = [], []
        for i in range(count):
            name, rgb = list(colors.items())[i % len(colors)]
            fname = f"{i + 1:012d}.jpg"
            make_image(root / split / fname, size=(40 + i, 36), color=rgb)
            images.append({"id": i + 1, "file_name": fname})
            anns += [{"id": 100 * (i + 1) + j, "image_id": i + 1, "caption": text}
                     for j, text in enumerate((f"a {name} picture {i}", f"{name} colour"))]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns}))


def test_recipe_script_end_to_end_on_tiny_coco(tmp_path, make_image):
    """scripts/flickr8k.sh on a tiny COCO layout with tiny towers: two seeds plus two 40 px
    cross-resolution heads (trained on a second, low-res view: XRES_LOWRES defaults to 32),
    evaluated as one ensemble with CSLS against the train records."""
    _tiny_coco(tmp_path / "coco", make_image)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({
        "model": {"image_tower": "tiny", "image_weights": "none", "image_size": 32,
                  "image_trainable": "none", "text_tower": "tiny", "text_trainable": "none",
                  "sequence_length": 16, "embed_dim": 16, "head": "linear", "loss": "clip"},
        "data": {"batch_size": 8, "all_captions": True, "augment": False, "cached_views": 1},
        "optim": {"lr": 2e-3, "epochs": 2},
        "run": {"seed": 0, "val_subset": 0, "checkpoint_every": 0, "cache_features": "auto"}}))
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "DATASET": "coco",
           "COCO_DIR": str(tmp_path / "coco"), "OUT": str(out), "CONFIG": str(cfg),
           "SEEDS": "0 1", "XRES_SIZES": "40", "XRES_SEEDS": "0 3", "SKIP_ZEROSHOT": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "flickr8k.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((out / "eval" / "recipe_ens4_px40_lr32_dev_csls" / "report.json").read_text())
    assert [m["spec"] for m in rep["model"]["members"]] == [
        str(out / "recipe"), str(out / "recipe_seed1"), str(out / "recipe_px40_lr32"),
        str(out / "recipe_px40_lr32_seed3")]
    assert rep["settings"]["bank"]["num_images"] == 12 and "metrics_cosine" in rep
    # heads ran on training's cached features, one file per (tower, image size): the tiny
    # towers are random per seed, so (seed 0, 32 px), (seed 1, 32 px), (seed 0, 40 px),
    # (seed 3, 40 px)
    features = rep["timing"]["tower_features"]
    assert len(set(features)) == 4
    assert all(p.startswith(str(out / "features")) for p in features)
    report = (out / "REPORT.md").read_text()
    assert "(CSLS against the train records, k=10)" in report and "(plain cosine)" in report
    assert "| recipe_px40_lr32 | linear | clip | 40 | 2 (low-res 32 px) |" in report
    from records.machine import cpu_model

    assert f"cores of {cpu_model()};" in report
    cfg40 = json.loads((out / "recipe_px40_lr32" / "config.json").read_text())
    assert cfg40["data"]["cached_views"] == 2 and cfg40["data"]["lowres_size"] == 32
