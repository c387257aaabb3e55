"""records: build / read / verify / CLI on tiny generated data (csv, jsonl, synthetic)."""

import json
import os

import pytest

from records.__main__ import main
from records.build import build_records
from records.reader import iter_records
from records.schema import MANIFEST_NAME, RecordsError, read_manifest
from records.tfrecord_io import scan_records
from records.verify import verify_records


@pytest.fixture
def csv_data(tmp_path, make_image):
    """3 images (2 JPEG, 1 PNG in a sub-folder) and a CSV with 6 rows."""
    a = make_image(tmp_path / "imgs" / "a.jpg", size=(30, 20))
    b = make_image(tmp_path / "imgs" / "sub" / "b.png", size=(16, 40), fmt="PNG")
    c = make_image(tmp_path / "imgs" / "c.jpg", size=(10, 10), color=(0, 0, 255))
    rows = ["image,caption", "imgs/a.jpg,a red box", 'imgs/sub/b.png,"a tall, red box"',
            "imgs/a.jpg,  a   second caption ", "imgs/c.jpg,a blue square",
            "imgs/sub/b.png,another", "imgs/a.jpg,third"]
    path = tmp_path / "captions.csv"
    path.write_text("\n".join(rows) + "\n")
    return path, {"imgs/a.jpg": a, "imgs/sub/b.png": b, "imgs/c.jpg": c}


def test_csv_round_trip_groups_captions_and_keeps_bytes(tmp_path, csv_data):
    path, files = csv_data
    out = tmp_path / "rec"
    manifest = build_records("csv", out, shard_size=2, path=str(path))
    recs = list(iter_records(out))
    assert [r["image_id"] for r in recs] == ["imgs/a.jpg", "imgs/sub/b.png", "imgs/c.jpg"]
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert recs[0]["captions"] == ["a red box", "a second caption", "third"]
    assert recs[1]["captions"] == ["a tall, red box", "another"]
    assert [r["image_format"] for r in recs] == ["jpeg", "png", "jpeg"]
    assert (recs[1]["height"], recs[1]["width"]) == (40, 16)
    for r in recs:  # stored as-is, no re-encoding
        assert r["image_bytes"] == files[r["image_id"]]
        assert r["source"] == "csv" and r["label"] == -1
    assert manifest == read_manifest(str(out))
    assert manifest["num_records"] == 3 and manifest["num_captions"] == 6
    # shards of 2 records: a.jpg (3 captions) + b.png (2), then c.jpg (1)
    assert [s["max_captions"] for s in manifest["shards"]] == [3, 1]
    assert [(s["name"], s["records"], s["first_index"]) for s in manifest["shards"]] == [
        ("shard-00000.tfrecord", 2, 0), ("shard-00001.tfrecord", 1, 2)]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in manifest["shards"])
    assert manifest["image_stats"]["max_height"] == 40
    assert manifest["image_stats"]["formats"] == {"jpeg": 2, "png": 1}
    assert manifest["build"]["args"]["shard_size"] == 2 and manifest["build"]["skipped"] == []
    assert manifest["class_names"] is None
    assert sorted(os.listdir(out)) == [MANIFEST_NAME, "shard-00000.tfrecord",
                                       "shard-00001.tfrecord"]
    report = verify_records(out)
    assert report["ok"] and report["num_records"] == 3 and report["num_captions"] == 6


def test_jsonl_round_trip(tmp_path, make_image):
    make_image(tmp_path / "x.jpg")
    make_image(tmp_path / "y.png", fmt="PNG")
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join([
        json.dumps({"image": "x.jpg", "caption": "one"}), "",
        json.dumps({"image": "y.png", "captions": ["two", "three"]}),
        json.dumps({"image": "x.jpg", "caption": "four"})]) + "\n")
    build_records("jsonl", tmp_path / "rec", path=str(path))
    recs = list(iter_records(tmp_path / "rec"))
    assert [(r["image_id"], r["captions"]) for r in recs] == [
        ("x.jpg", ["one", "four"]), ("y.png", ["two", "three"])]


def test_max_side_reencodes_only_large_images(tmp_path, make_image):
    big = make_image(tmp_path / "big.png", size=(300, 200), fmt="PNG")
    small = make_image(tmp_path / "small.jpg", size=(50, 40))
    make_image(tmp_path / "bitmap.bmp", size=(20, 20), fmt="BMP")
    (tmp_path / "c.csv").write_text("image,caption\nbig.png,a\nsmall.jpg,b\nbitmap.bmp,c\n")
    m = build_records("csv", tmp_path / "rec", max_side=100, path=str(tmp_path / "c.csv"))
    recs = {r["image_id"]: r for r in iter_records(tmp_path / "rec")}
    assert (recs["big.png"]["image_format"], recs["big.png"]["width"],
            recs["big.png"]["height"]) == ("jpeg", 100, 67)
    assert recs["big.png"]["image_bytes"] != big
    assert recs["small.jpg"]["image_bytes"] == small
    assert recs["bitmap.bmp"]["image_format"] == "jpeg"  # not JPEG/PNG: re-encoded
    assert m["image_stats"]["reencoded"] == 2


# ---- integrity: flipped byte, truncation, missing manifest ------------------------------------

@pytest.fixture
def small_build(tmp_path):
    out = tmp_path / "rec"
    build_records("synthetic", out, shard_size=8, num_images=20, image_size=32, seed=3)
    return out


def test_flipped_byte_is_named_by_verify_and_reader(small_build):
    shard = small_build / "shard-00001.tfrecord"
    blob = bytearray(shard.read_bytes())
    blob[12 + 40] ^= 0xFF  # inside the data of the shard's first record
    shard.write_bytes(bytes(blob))
    with pytest.raises(RecordsError, match=r"shard-00001\.tfrecord.*sha256 mismatch"):
        verify_records(small_build)
    report = verify_records(small_build, raise_on_error=False)
    assert not report["ok"]
    assert [s["ok"] for s in report["shards"]] == [True, False, True]
    assert "record 0" in report["shards"][1]["problem"]
    with pytest.raises(RecordsError, match=r"shard shard-00001\.tfrecord is damaged"):
        list(iter_records(small_build))
    it = iter_records(small_build, skip_bad=True)
    indices = [r["index"] for r in it]
    assert indices == [i for i in range(20) if i != 8]
    assert it.stats.records == 19 and it.stats.skipped_records == 1
    assert [b["name"] for b in it.stats.bad_shards] == ["shard-00001.tfrecord"]


def test_truncated_shard_is_named(small_build):
    shard = small_build / "shard-00000.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-30])
    with pytest.raises(RecordsError, match=r"shard-00000\.tfrecord: truncated"):
        verify_records(small_build)
    with pytest.raises(RecordsError, match=r"shard-00000\.tfrecord.*truncated"):
        list(iter_records(small_build))
    it = iter_records(small_build, skip_bad=True)
    assert [r["index"] for r in it] == [i for i in range(20) if i != 7]
    assert it.stats.skipped_records == 1
    assert main(["verify", str(small_build)]) == 1


def test_missing_manifest_and_missing_shard(small_build, capsys):
    (small_build / "shard-00002.tfrecord").unlink()
    with pytest.raises(RecordsError, match="shard-00002.tfrecord listed in the manifest is miss"):
        verify_records(small_build)
    (small_build / MANIFEST_NAME).unlink()
    with pytest.raises(RecordsError, match="manifest missing"):
        verify_records(small_build)
    with pytest.raises(RecordsError, match="manifest missing"):
        iter_records(small_build)
    capsys.readouterr()
    assert main(["verify", str(small_build)]) == 1
    assert "manifest missing" in capsys.readouterr().err


# ---- atomic writes ---------------------------------------------------------------------------

def test_exception_mid_build_leaves_no_manifest_nor_partial_shard(tmp_path, monkeypatch):
    import records.images

    out = tmp_path / "rec"
    real = records.images.prepare_image
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(records.images, "prepare_image", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_records("synthetic", out, shard_size=4, num_images=20, image_size=32)
    names = sorted(os.listdir(out))
    assert MANIFEST_NAME not in names
    assert names == ["shard-00000.tfrecord", "shard-00001.tfrecord"]  # complete ones only
    for name in names:
        recs = list(scan_records((out / name).read_bytes()))
        assert len(recs) == 4 and all(r.problem is None for r in recs)
    with pytest.raises(RecordsError, match="manifest missing"):
        read_manifest(str(out))

    monkeypatch.setattr(records.images, "prepare_image", real)
    m = build_records("synthetic", out, shard_size=4, num_images=20, image_size=32)
    assert m["num_records"] == 20 and len(m["shards"]) == 5
    assert verify_records(out)["ok"]
    # A smaller rebuild into the same directory drops the shards it no longer lists.
    build_records("synthetic", out, shard_size=4, num_images=6, image_size=32)
    assert sorted(os.listdir(out)) == [MANIFEST_NAME, "shard-00000.tfrecord",
                                       "shard-00001.tfrecord"]
    assert verify_records(out)["num_records"] == 6


# ---- bad input -------------------------------------------------------------------------------

@pytest.fixture
def bad_csv(tmp_path, make_image):
    make_image(tmp_path / "ok.jpg")
    (tmp_path / "broken.jpg").write_bytes(make_image(tmp_path / "tmp.jpg", size=(64, 64))[:200])
    (tmp_path / "tmp.jpg").unlink()
    rows = ["image,caption", "ok.jpg,fine", "ok.jpg,", "missing.jpg,where is it",
            "ok.jpg,too,many", "broken.jpg,cut short"]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("drop, pattern", [
    (None, r"bad\.csv line 3: empty caption for image 'ok\.jpg'"),
    ({3}, r"bad\.csv line 5: malformed row: 3 fields"),
    ({3, 5}, r"bad\.csv line 4: image file missing: .*missing\.jpg"),
    ({3, 4, 5}, r"image 'broken\.jpg'.*unreadable image"),
])
def test_bad_csv_input_names_file_and_row(bad_csv, tmp_path, drop, pattern):
    lines = bad_csv.read_text().splitlines()
    fixed = [("ok.jpg,fixed" if n in (drop or ()) else line) for n, line in enumerate(lines, 1)]
    bad_csv.write_text("\n".join(fixed) + "\n")  # line numbers stay put
    with pytest.raises(RecordsError, match=pattern):
        build_records("csv", tmp_path / "rec", path=str(bad_csv))
    assert not (tmp_path / "rec" / MANIFEST_NAME).exists()


def test_skip_bad_skips_and_reports(bad_csv, tmp_path, capsys):
    m = build_records("csv", tmp_path / "rec", skip_bad=True, path=str(bad_csv))
    assert m["num_records"] == 1 and m["num_captions"] == 1
    wheres = [s["where"] for s in m["build"]["skipped"]]
    assert wheres[:3] == ["bad.csv line 3", "bad.csv line 5", "bad.csv line 4"]
    assert "broken.jpg" in wheres[3] and m["build"]["num_skipped"] == 4
    assert main(["build", "csv", str(bad_csv), "--out", str(tmp_path / "r2"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 images" in out and "skipped 4 bad input(s)" in out and "line 5" in out


def test_malformed_jsonl_line(tmp_path, make_image):
    make_image(tmp_path / "x.jpg")
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "x.jpg", "caption": "ok"}\n{"image": "x.jpg", caption}\n')
    with pytest.raises(RecordsError, match=r"c\.jsonl line 2: malformed JSON"):
        build_records("jsonl", tmp_path / "rec", path=str(path))
    path.write_text('{"image": "x.jpg", "caption": ""}\n')
    with pytest.raises(RecordsError, match=r"c\.jsonl line 1: empty caption"):
        build_records("jsonl", tmp_path / "rec", path=str(path))


# ---- CLI -------------------------------------------------------------------------------------

def test_cli_build_verify_inspect(tmp_path, capsys):
    out = tmp_path / "rec"
    assert main(["build", "synthetic", "--out", str(out), "--num-images", "12",
                 "--image-size", "32", "--shard-size", "5"]) == 0
    assert "wrote 12 images" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    assert "ok: 12 records" in capsys.readouterr().out
    png = tmp_path / "sheet.png"
    assert main(["inspect", str(out), "--out", str(png), "--num-images", "4"]) == 0
    text = capsys.readouterr().out
    assert "images: 12" in text and "source: synthetic" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_exit_2_with_one_line(tmp_path, bad_csv, capsys):
    assert main(["build", "csv", str(bad_csv), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "bad.csv line 3" in err
    assert main(["build", "coco", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "COCO root not found" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    for argv in (["build"], ["build", "synthetic"], ["frobnicate"],
                 ["build", "synthetic", "--out", "x", "--num-images", "0"],
                 ["build", "synthetic", "--out", "x", "--split", "test"]):
        assert main(argv) == 2, argv
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main(["build", "folders", "--help"]) == 0
    assert "--class-map" in capsys.readouterr().out


def test_contact_sheet_spreads_over_classes_and_marks_cut_captions(tmp_path, make_image):
    from records.inspect import contact_sheet, sample_records, title_lines

    for cls, count in (("a", 8), ("b", 8), ("c", 1)):  # label order a, b, c; records grouped
        for i in range(count):
            make_image(tmp_path / "raw" / cls / f"{i}.png", fmt="PNG")
    out = tmp_path / "rec"
    build_records("folders", out, root=str(tmp_path / "raw"))
    assert [r["label"] for r in sample_records(out, 6)] == [0, 1, 2, 0, 1, 0]
    assert [r["label"] for r in sample_records(out, 2)] == [0, 1]  # more classes than images
    png = tmp_path / "sheet.png"
    assert contact_sheet(out, png, num_images=6) == os.fspath(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    record = {"captions": ["a short one", "word " * 30], "label": -1, "image_id": "x"}
    lines = title_lines(record, [])
    assert lines[0] == "a short one" and len(lines) == 3
    assert lines[-1].endswith("…") and not lines[0].endswith("…")
    assert title_lines({"captions": [], "label": 1, "image_id": "x"}, ["a", "b"]) == ["[b]"]
