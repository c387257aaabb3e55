"""records sources: coco, flickr, folders, tfds on tiny generated data and the shared real sets."""

import io
import json

import numpy as np
import pytest

from records.__main__ import main
from records.build import build_records
from records.reader import iter_records
from records.schema import RecordsError
from records.sources.folders import load_class_map
from records.verify import verify_records


# ---- coco ------------------------------------------------------------------------------------

def _coco(tmp_path, make_image, split="val2014", annotations=None):
    root = tmp_path / "coco"
    for i in (1, 2, 3):
        make_image(root / split / f"COCO_{split}_{i:012d}.jpg", size=(20 + i, 10))
    images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg"} for i in (1, 2, 3)]
    anns = annotations or [
        {"id": 10, "image_id": 2, "caption": "two a"}, {"id": 11, "image_id": 1, "caption": "one"},
        {"id": 12, "image_id": 2, "caption": " two  b\n"}]
    (root / "annotations").mkdir()
    (root / "annotations" / f"captions_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns}))
    return root


def test_coco_round_trip_2014_names(tmp_path, make_image):
    root = _coco(tmp_path, make_image)
    m = build_records("coco", tmp_path / "rec", root=str(root), split="val2014")
    recs = list(iter_records(tmp_path / "rec"))
    assert [(r["image_id"], r["captions"], r["width"]) for r in recs] == [
        ("1", ["one"], 21), ("2", ["two a", "two b"], 22)]  # image 3 has no caption
    assert m["source_info"]["images_without_captions"] == 1
    assert m["source"] == "coco" and m["num_captions"] == 3


@pytest.mark.parametrize("ann, pattern", [
    ({"id": 77, "image_id": 9, "caption": "x"}, r"captions_val2014\.json annotation id 77: "
                                                r"refers to unknown image_id 9"),
    ({"id": 78, "image_id": 1, "caption": "  "}, r"annotation id 78: empty caption"),
])
def test_coco_bad_annotations(tmp_path, make_image, ann, pattern):
    root = _coco(tmp_path, make_image, annotations=[{"id": 1, "image_id": 1, "caption": "a"}, ann])
    with pytest.raises(RecordsError, match=pattern):
        build_records("coco", tmp_path / "rec", root=str(root), split="val2014")
    m = build_records("coco", tmp_path / "rec", root=str(root), split="val2014", skip_bad=True)
    assert m["num_records"] == 1 and len(m["build"]["skipped"]) == 1


def test_coco_missing_split_and_image(tmp_path, make_image):
    root = _coco(tmp_path, make_image)
    with pytest.raises(RecordsError, match=r"captions_train2017\.json.*splits found: val2014"):
        build_records("coco", tmp_path / "rec", root=str(root))
    (root / "val2014" / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(RecordsError, match=r"image id 2: image file missing"):
        build_records("coco", tmp_path / "rec", root=str(root), split="val2014")


def test_coco_mini_train(shared, tmp_path):
    root = shared("data", "coco_mini")
    m = build_records("coco", tmp_path / "rec", root=str(root), split="train2017", max_side=96)
    assert m["num_records"] == 80 and m["num_captions"] >= 5 * 80 - 10
    assert m["image_stats"]["max_height"] <= 96 and m["image_stats"]["max_width"] <= 96
    assert verify_records(tmp_path / "rec")["ok"]


@pytest.mark.slow
def test_coco_mini_val_cli(shared, tmp_path):
    root = shared("data", "coco_mini")
    assert main(["build", "coco", str(root), "--split", "val2017", "--out",
                 str(tmp_path / "rec")]) == 0
    recs = list(iter_records(tmp_path / "rec"))
    assert len(recs) == 159 and all(r["captions"] for r in recs)
    assert max(max(r["height"], r["width"]) for r in recs) <= 320


# ---- flickr ----------------------------------------------------------------------------------

def _flickr(tmp_path, make_image):
    root = tmp_path / "flickr"
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_image(root / "Images" / name)
    (root / "captions.txt").write_text(
        "image,caption\na.jpg,A dog , running .\na.jpg,a dog\nb.jpg,a cat\nc.jpg,a cow\n"
        "b.jpg,\"a cat, sitting\"\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("b.jpg\na.jpg\n")
    return root


def test_flickr_round_trip_with_split(tmp_path, make_image):
    root = _flickr(tmp_path, make_image)
    build_records("flickr", tmp_path / "all", root=str(root))
    assert [r["image_id"] for r in iter_records(tmp_path / "all")] == ["a.jpg", "b.jpg", "c.jpg"]
    build_records("flickr", tmp_path / "rec", root=str(root),
                  split_file=str(root / "splits" / "train.txt"))
    recs = list(iter_records(tmp_path / "rec"))
    assert [(r["image_id"], r["captions"]) for r in recs] == [
        ("a.jpg", ["A dog , running .", "a dog"]), ("b.jpg", ["a cat", "a cat, sitting"])]


def test_flickr_bad_input(tmp_path, make_image):
    root = _flickr(tmp_path, make_image)
    (root / "splits" / "train.txt").write_text("b.jpg\nzzz.jpg\n")
    with pytest.raises(RecordsError, match=r"train\.txt line 2: image 'zzz\.jpg' has no captions"):
        build_records("flickr", tmp_path / "rec", root=str(root),
                      split_file=str(root / "splits" / "train.txt"))
    (root / "Images" / "c.jpg").unlink()
    with pytest.raises(RecordsError, match=r"captions\.txt line 5: image file missing"):
        build_records("flickr", tmp_path / "rec", root=str(root))
    (root / "captions.txt").write_text("file,text\na.jpg,x\n")
    with pytest.raises(RecordsError, match=r"captions\.txt line 1: expected the header"):
        build_records("flickr", tmp_path / "rec", root=str(root))


def test_flickr8k_dev_subset(shared, tmp_path):
    root = shared("data", "flickr8k")
    names = (root / "splits" / "Flickr_8k.devImages.txt").read_text().split()[:24]
    split = tmp_path / "dev24.txt"
    split.write_text("\n".join(names) + "\n")
    m = build_records("flickr", tmp_path / "rec", root=str(root), split_file=str(split),
                      shard_size=10)
    assert m["num_records"] == 24 and m["num_captions"] == 24 * 5
    assert sorted(r["image_id"] for r in iter_records(tmp_path / "rec")) == sorted(names)
    assert m["image_stats"]["max_height"] == 224


@pytest.mark.slow
def test_flickr8k_dev_split(shared, tmp_path):
    root = shared("data", "flickr8k")
    assert main(["build", "flickr", str(root), "--split-file",
                 str(root / "splits" / "Flickr_8k.devImages.txt"), "--max-side", "128",
                 "--out", str(tmp_path / "rec")]) == 0
    report = verify_records(tmp_path / "rec")
    assert report["num_records"] == 1000 and report["num_captions"] == 5000


# ---- folders ---------------------------------------------------------------------------------

def test_folders_with_animals10_map(tmp_path, make_image):
    root = tmp_path / "raw-img"
    for folder, n in (("gatto", 2), ("cane", 3), ("unmapped", 1)):
        for k in range(n):
            make_image(root / folder / f"{k}.jpeg")
    (root / "gatto" / "notes.txt").write_text("not an image")
    m = build_records("folders", tmp_path / "rec", root=str(root), class_map="animals10")
    assert m["class_names"] == ["cat", "dog", "unmapped"] and m["num_captions"] == 0
    recs = list(iter_records(tmp_path / "rec"))
    assert [(r["image_id"], r["label"]) for r in recs] == [
        ("gatto/0.jpeg", 0), ("gatto/1.jpeg", 0), ("cane/0.jpeg", 1), ("cane/1.jpeg", 1),
        ("cane/2.jpeg", 1), ("unmapped/0.jpeg", 2)]
    assert all(r["captions"] == [] for r in recs)
    assert load_class_map("animals10") == {
        "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly",
        "gallina": "chicken", "gatto": "cat", "mucca": "cow", "pecora": "sheep",
        "ragno": "spider", "scoiattolo": "squirrel"}


def test_folders_map_file_and_duplicate_classes(tmp_path, make_image):
    root = tmp_path / "img"
    make_image(root / "a" / "x.png", fmt="PNG")
    make_image(root / "b" / "y.jpg")
    lines = tmp_path / "map.txt"
    lines.write_text("# src,dst\na,apple\n")
    m = build_records("folders", tmp_path / "rec", root=str(root), class_map=str(lines))
    assert m["class_names"] == ["apple", "b"]
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"a": "same", "b": "same"}))
    with pytest.raises(RecordsError, match=r"folders 'a' and 'b' both map to class 'same'"):
        build_records("folders", tmp_path / "rec2", root=str(root), class_map=str(dup))
    with pytest.raises(RecordsError, match=r"class map 'nosuchmap'"):
        build_records("folders", tmp_path / "rec2", root=str(root), class_map="nosuchmap")


def test_cifar10_dev_subset(shared, tmp_path):
    src = shared("data", "cifar10_dev")
    root = tmp_path / "cifar3"
    for cls in ("cat", "dog", "ship"):
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).iterdir())[:8]:
            (root / cls / f.name).symlink_to(f)
    m = build_records("folders", tmp_path / "rec", root=str(root))
    assert m["class_names"] == ["cat", "dog", "ship"] and m["num_records"] == 24
    assert m["image_stats"]["max_height"] == 32


@pytest.mark.slow
def test_cifar10_dev_all(shared, tmp_path):
    m = build_records("folders", tmp_path / "rec", root=str(shared("data", "cifar10_dev")))
    assert m["num_records"] == 1000 and len(m["class_names"]) == 10


# ---- tfds ------------------------------------------------------------------------------------

def _png(width):
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, 16), (width * 5, 0, 0)).save(out, "PNG")
    return out.getvalue()


def test_tfds_coco_captions_mocked(tmp_path):
    """coco_captions' real feature spec; examples from mock_data (encoded, as SkipDecoding)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        assert "image" in (decoders or {})  # the image is read undecoded

        def gen():
            for i in range(3):
                yield {"image": _png(20 + i), "image/id": 100 + i, "image/filename": f"{i}.jpg",
                       "captions": {"id": np.array([1, 2]),
                                    "text": np.array([f"a cat {i}".encode(), b" "])}}
        spec = {"image": tf.TensorSpec([], tf.string), "image/id": tf.TensorSpec([], tf.int64),
                "image/filename": tf.TensorSpec([], tf.string),
                "captions": {"id": tf.TensorSpec([None], tf.int64),
                             "text": tf.TensorSpec([None], tf.string)}}
        return tf.data.Dataset.from_generator(gen, output_signature=spec)

    with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset,
                                policy=tfds.testing.MockPolicy.USE_CODE):
        m = build_records("tfds", tmp_path / "rec", dataset="coco_captions",
                          data_dir=str(tmp_path / "tfds"), split="val")
    info = m["source_info"]
    assert (info["image_key"], info["caption_key"], info["id_key"]) == (
        "image", "captions/text", "image/id")
    recs = list(iter_records(tmp_path / "rec"))
    assert [(r["image_id"], r["captions"], r["width"], r["image_format"]) for r in recs] == [
        ("100", ["a cat 0"], 20, "png"), ("101", ["a cat 1"], 21, "png"),
        ("102", ["a cat 2"], 22, "png")]


def test_tfds_prepared_dataset_offline(tmp_path):
    """A real (tiny) prepared TFDS dataset, read back with download=False."""
    import tensorflow_datasets as tfds

    class RecordsTestTinyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "caption": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(names=["x", "y"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield i, {"image": np.full((10, 12 + i, 3), 40 * i, np.uint8),
                          "caption": [f"cap {i}", "more"], "label": i % 2}

    data_dir = tmp_path / "tfds"
    RecordsTestTinyCaptions(data_dir=str(data_dir)).download_and_prepare()
    m = build_records("tfds", tmp_path / "rec", dataset="records_test_tiny_captions",
                      data_dir=str(data_dir))
    recs = sorted(iter_records(tmp_path / "rec"), key=lambda r: r["width"])
    assert [(r["captions"], r["width"], r["height"]) for r in recs] == [
        ([f"cap {i}", "more"], 12 + i, 10) for i in range(4)]
    assert m["source_info"]["caption_key"] == "caption"
    m = build_records("tfds", tmp_path / "rec2", dataset="records_test_tiny_captions",
                      data_dir=str(data_dir), caption_key=None, label_key="label")
    assert m["class_names"] == ["x", "y"]
    with pytest.raises(RecordsError, match=r"could not be read .*download=False"):
        build_records("tfds", tmp_path / "rec3", dataset="records_test_tiny_captions",
                      data_dir=str(tmp_path / "empty"))
