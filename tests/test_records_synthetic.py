"""The synthetic default: determinism, held-out combinations, zero-shot split, captions."""

import io
import re
import time

import pytest
from PIL import Image

from records.build import build_records
from records.reader import iter_records
from records.schema import RecordsError, read_manifest
from records.sources.synthetic import CLASS_NAMES, COLORS, HELD_OUT, SHAPES, SyntheticSource
from records.verify import verify_records


def _shas(manifest):
    return [s["sha256"] for s in manifest["shards"]]


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    kw = dict(num_images=24, image_size=48, shard_size=10)
    a = build_records("synthetic", tmp_path / "a", seed=7, **kw)
    b = build_records("synthetic", tmp_path / "b", seed=7, **kw)
    c = build_records("synthetic", tmp_path / "c", seed=8, **kw)
    assert _shas(a) == _shas(b)
    assert all(x != y for x, y in zip(_shas(a), _shas(c)))
    val = SyntheticSource(num_images=3, seed=7, split="val").make_item(0)
    assert val.image != SyntheticSource(num_images=3, seed=7).make_item(0).image


def test_same_bytes_in_another_process(tmp_path):
    """Records (and so every cache keyed by their checksums) must not depend on the process:
    protobuf serialises the feature map in a per-process hash order unless asked not to."""
    import json
    import os
    import subprocess
    import sys

    shas = []
    for name in ("p1", "p2"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "records", "build", "synthetic", "--num-images",
                        "6", "--image-size", "32", "--out", str(out)], check=True,
                       capture_output=True, cwd=os.path.dirname(os.path.dirname(__file__)),
                       env={**os.environ, "PYTHONHASHSEED": name[-1]})
        shas.append(_shas(json.loads((out / "manifest.json").read_text())))
    assert shas[0] == shas[1]


def test_vocabulary_size():
    assert len(SHAPES) >= 6 and len(COLORS) >= 6 and len(CLASS_NAMES) == len(SHAPES) * len(COLORS)
    held = [h.split() for h in HELD_OUT]
    assert {c for c, _ in held} == set(COLORS) and {s for _, s in held} == set(SHAPES)


@pytest.mark.parametrize("split", ["train", "val"])
def test_captioned_splits_never_contain_held_out_combinations(split):
    src = SyntheticSource(num_images=400, image_size=64, seed=1, split=split)
    counts = {1: 0, 2: 0, 3: 0}
    for i in range(len(src)):
        scene = src.scene(i)
        combos = {f"{o['color']} {o['shape']}" for o in scene["objects"]}
        assert not combos & set(HELD_OUT), (i, combos)
        assert 3 <= len(scene["captions"]) <= 5
        assert len(set(scene["captions"])) == len(scene["captions"])
        for caption in scene["captions"]:
            assert not any(h in caption for h in HELD_OUT), caption
        counts[len(scene["objects"])] += 1
    assert all(n > 40 for n in counts.values()), counts


def test_captions_describe_the_scene():
    colors = "|".join(COLORS)
    relation = re.compile(rf"((?:{colors}) \w+) (to the left of|to the right of|above|below) "
                          rf"an? (?:(?:small|large) )?((?:{colors}) \w+)")
    src = SyntheticSource(num_images=200, seed=2)
    checked = 0
    for i in range(len(src)):
        scene = src.scene(i)
        objs = {f"{o['color']} {o['shape']}": o for o in scene["objects"]}
        for caption in scene["captions"]:
            mentioned = {c for c in CLASS_NAMES if c in caption}
            assert mentioned <= set(objs), (caption, set(objs))
            if len(objs) == 1:
                (o,) = scene["objects"]
                assert o["color"] in caption and o["shape"] in caption, caption
            for a, rel, b in relation.findall(caption):
                oa, ob = objs[a], objs[b]
                key = {"to the left of": ob["cx"] - oa["cx"],
                       "to the right of": oa["cx"] - ob["cx"],
                       "above": ob["cy"] - oa["cy"], "below": oa["cy"] - ob["cy"]}[rel]
                assert key > 0, (caption, oa, ob)
                checked += 1
    assert checked > 50


def test_zeroshot_split_is_class_folder_with_held_out(tmp_path):
    m = build_records("synthetic", tmp_path / "z", split="zeroshot", num_images=72, seed=0)
    assert m["class_names"] == list(CLASS_NAMES) and m["num_captions"] == 0
    info = m["source_info"]
    assert info["held_out"] == list(HELD_OUT)
    assert [m["class_names"][k] for k in info["held_out_labels"]] == list(HELD_OUT)
    recs = list(iter_records(tmp_path / "z"))
    labels = [r["label"] for r in recs]
    assert sorted(labels) == sorted(list(range(36)) * 2)  # balanced, every class incl. held-out
    assert all(r["captions"] == [] for r in recs)
    src = SyntheticSource(num_images=72, split="zeroshot")
    for i in (0, 5, 40):
        scene = src.scene(i)
        (obj,) = scene["objects"]
        assert f"{obj['color']} {obj['shape']}" == CLASS_NAMES[scene["label"]]


def test_image_size_and_format():
    item = SyntheticSource(num_images=1, image_size=96).make_item(0)
    image = Image.open(io.BytesIO(item.image))
    assert image.format == "JPEG" and image.size == (96, 96) and image.mode == "RGB"


def test_bad_options():
    with pytest.raises(RecordsError, match="unknown split 'test'"):
        SyntheticSource(split="test")
    with pytest.raises(RecordsError, match="image_size must be in 32..512"):
        SyntheticSource(image_size=8)
    with pytest.raises(RecordsError, match="held_out"):
        SyntheticSource(held_out=["pink star"])


def test_generation_is_fast():
    src = SyntheticSource(num_images=500, image_size=64)
    start = time.perf_counter()
    assert sum(1 for _ in src) == 500
    assert time.perf_counter() - start < 15  # ~1-2 ms per image; generous for a shared CPU


def test_session_fixture(synthetic_records):
    assert set(synthetic_records) == {"train", "val", "zeroshot"}
    assert verify_records(synthetic_records["train"])["num_records"] == 128
    assert read_manifest(synthetic_records["val"])["num_records"] == 64
    assert read_manifest(synthetic_records["zeroshot"])["class_names"] == list(CLASS_NAMES)
