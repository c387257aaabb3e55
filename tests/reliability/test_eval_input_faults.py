"""Bad evaluation input: damaged records, the wrong kind of records, a missing COCO split, a
garbage class map, an unreadable image, a file where the records should go. Each is one
`error:` line (exit 2) that names what is wrong, before any model is loaded."""

import json
import os
import shutil

import pytest

from dualencoder.cli import evaluate
from records.__main__ import main as records_main
from records.build import build_records

DAMAGED = "shard-00001.tfrecord"


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Captioned records (3 shards), class-folder records (2 shards) and a saved tiny model."""
    from dualencoder.model.saving import save_model
    from dualencoder.testing import tiny_model

    root = tmp_path_factory.mktemp("eval-faults")
    build_records("synthetic", root / "captions", shard_size=8, num_images=20, image_size=32,
                  seed=3)
    build_records("synthetic", root / "classes", shard_size=40, num_images=72, image_size=32,
                  seed=3, split="zeroshot")
    save_model(tiny_model(), str(root / "work" / "model"))
    return {"captions": root / "captions", "classes": root / "classes",
            "model": str(root / "work")}


def damage(records_dir, how):
    path = records_dir / DAMAGED
    blob = path.read_bytes()
    blob = blob[:-30] if how == "truncated" else blob[:52] + bytes([blob[52] ^ 0xFF]) + blob[53:]
    path.write_bytes(blob)


def one_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def run(capsys, built, tmp_path, *argv):
    out = tmp_path / "out"
    err = one_error(capsys, evaluate.main([*argv, "--model", built["model"], "--out", str(out),
                                           "--quiet"]))
    assert not out.exists()
    return err


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_retrieval_on_damaged_records_names_the_shard(built, tmp_path, capsys, how):
    records = tmp_path / "rec"
    shutil.copytree(built["captions"], records)
    damage(records, how)
    err = run(capsys, built, tmp_path, "retrieval", "--data", f"records:{records}", "--ks", "1")
    assert DAMAGED in err and "records verify" in err, err
    # the same for a --bank
    err = run(capsys, built, tmp_path, "retrieval", "--data", str(built["captions"]), "--ks", "1",
              "--bank", str(records))
    assert DAMAGED in err, err


def test_zeroshot_on_damaged_class_records_names_the_shard(built, tmp_path, capsys):
    records = tmp_path / "rec"
    shutil.copytree(built["classes"], records)
    damage(records, "flipped")
    err = run(capsys, built, tmp_path, "zeroshot", "--data", str(records))
    assert DAMAGED in err, err


def test_retrieval_on_class_folder_records_says_no_captions(built, tmp_path, capsys):
    err = run(capsys, built, tmp_path, "retrieval", "--data", f"records:{built['classes']}")
    assert "no captions" in err and "zeroshot" in err and "gallery" not in err, err


def test_missing_coco_split_names_the_file_and_the_splits(built, tmp_path, capsys):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "captions_val2017.json").write_text(json.dumps(
        {"images": [], "annotations": []}))
    err = run(capsys, built, tmp_path, "retrieval", "--data", f"coco:{coco}:val2099")
    assert "captions_val2099.json" in err and "val2017" in err, err
    assert "--skip-bad" not in err, err


def test_garbage_class_map_names_the_file(built, tmp_path, capsys):
    garbage = tmp_path / "garbage.map"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    err = run(capsys, built, tmp_path, "zeroshot", "--data", str(built["classes"]),
              "--class-map", str(garbage))
    assert str(garbage) in err, err


def test_unreadable_image_names_the_image(built, tmp_path, capsys, make_image):
    folders = tmp_path / "folders"
    for cls in ("a", "b"):
        make_image(folders / cls / "0.jpg")
    (folders / "a" / "bad.jpg").write_bytes(b"not an image")
    err = run(capsys, built, tmp_path, "zeroshot", "--data", str(folders))
    assert str(folders) in err and "a/bad.jpg" in err and "--skip-bad" in err, err
    assert "BytesIO" not in err and " at 0x" not in err, err


def test_records_build_into_a_file(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    err = one_error(capsys, records_main(["build", "synthetic", "--out", str(a_file),
                                          "--num-images", "4"]))
    assert str(a_file) in err and "not a directory" in err, err
    err = one_error(capsys, records_main(["build", "synthetic", "--out", str(a_file / "sub"),
                                          "--num-images", "4"]))
    assert str(a_file) in err, err
    assert a_file.read_text() == "x"
    assert not os.path.exists(a_file / "sub")
