"""`retrieval.py index` on awkward inputs: symbolic links, an --out inside the photo folder,
damaged chunk files, damaged records shards (fake encoder: no TensorFlow for the image cases)."""

import os

import pytest

from dualencoder.cli import retrieval
from dualencoder.search.build import build_index
from dualencoder.search.errors import RetrievalError
from dualencoder.search.index import EmbeddingIndex
from test_index import FakeEncoder, make_images
from test_retrieval import fake_model_dir


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setattr(retrieval, "load_encoder", lambda path, *precision: FakeEncoder())
    work = tmp_path / "work"
    fake_model_dir(work / "model")

    def run(argv, capsys):
        rc = retrieval.main(["index", "--model", str(work), "--no-progress", *argv])
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    return run


def one_error_line(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _linked_folder(tmp_path):
    """photos/: 2 real images, 3 file links to elsewhere/, 1 linked sub-folder (2 images)."""
    elsewhere, photos = tmp_path / "elsewhere", tmp_path / "photos"
    rels = make_images(elsewhere, 5)
    make_images(photos, 2, start=20)
    for rel in rels[:3]:
        os.symlink(elsewhere / rel, photos / f"link-{os.path.basename(rel)}")
    make_images(tmp_path / "other", 2, start=30)
    os.symlink(tmp_path / "other", photos / "linked-dir")
    return photos


def test_links_leaving_the_folder_are_counted_and_followed_on_request(tmp_path, cli, capsys):
    photos = _linked_folder(tmp_path)
    rc, out, err = cli(["--images", str(photos), "--out", str(tmp_path / "i1")], capsys)
    assert rc == 0, err
    assert "2 images in the index" in out and "0 unreadable skipped" in out
    assert "3 links leaving the folder skipped; --follow-links to include them" in out
    assert "1 linked sub-folder skipped (linked-dir)" in out
    assert len(EmbeddingIndex.open(tmp_path / "i1")) == 2

    rc, out, err = cli(["--images", str(photos), "--out", str(tmp_path / "i2"),
                        "--follow-links"], capsys)
    assert rc == 0, err
    assert "7 images in the index" in out and "--follow-links" not in out
    index = EmbeddingIndex.open(tmp_path / "i2")
    assert sorted(p for p in index.paths if p.startswith("link-")) == [
        "link-img000.png", "link-img001.jpg", "link-img002.bmp"]
    assert {p for p in index.paths if p.startswith("linked-dir/")} == {
        "linked-dir/img031.webp", "linked-dir/sub/img030.bmp"}
    for i in range(len(index)):  # served through the links, as listed
        assert index.image_bytes(i)[0]
    # An update keeps following links (recorded in the index).
    rc, out, err = cli(["--images", str(photos), "--out", str(tmp_path / "i2"),
                        "--update", "--follow-links"], capsys)
    assert rc == 0 and "7 images in the index" in out and "0 embedded now" in out


def test_follow_links_survives_a_link_cycle(tmp_path):
    photos = tmp_path / "photos"
    make_images(photos, 2)
    os.symlink(photos, photos / "loop")
    report = build_index(FakeEncoder(), tmp_path / "i", images=photos, follow_links=True,
                         progress=False)
    assert report.total == 2


@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_inside_the_images_folder_is_refused(tmp_path, cli, capsys, where):
    photos = tmp_path / "photos"
    make_images(photos, 3)
    out = photos if where == "same" else photos / "sub" / "index"
    rc, _, err = cli(["--images", str(photos), "--out", str(out)], capsys)
    one_error_line(rc, err, "--out", "inside the --images folder")
    assert not (photos / "state.json").exists() and not (photos / "sub" / "index").exists()


def test_a_garbage_chunk_is_reported_as_damaged(tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "index"
    make_images(photos, 5)
    build_index(FakeEncoder(), out, images=photos, chunk_size=2, progress=False)
    for garbage in (b"\x80\x04garbage" * 50, b"PK\x03\x04" + b"\0" * 30):
        (out / "chunk-00001.npz").write_bytes(garbage)
        with pytest.raises(RetrievalError) as info:
            EmbeddingIndex.open(out)
        message = str(info.value)
        assert "chunk file" in message and "chunk-00001.npz is damaged" in message
        assert "rebuild with retrieval.py index" in message and "pickle" not in message
    rc = retrieval.main(["search", "--index", str(out), "--query", "car"])
    one_error_line(rc, capsys.readouterr().err, "chunk-00001.npz is damaged")


@pytest.fixture
def records(tmp_path):
    build = pytest.importorskip("records.build")
    path = tmp_path / "records"
    build.build_records("synthetic", str(path), num_images=6, image_size=40, seed=0,
                        shard_size=3)
    shards = sorted(n for n in os.listdir(path) if n.endswith(".tfrecord"))
    return path, shards


def test_records_with_a_flipped_byte_are_refused(tmp_path, cli, capsys, records):
    path, shards = records
    shard = path / shards[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc, _, err = cli(["--records", str(path), "--out", str(tmp_path / "i")], capsys)
    one_error_line(rc, err, shards[1])
    assert not (tmp_path / "i" / "state.json").exists()


def test_records_with_a_truncated_shard_are_refused(tmp_path, cli, capsys, records):
    path, shards = records
    shard = path / shards[0]
    shard.write_bytes(shard.read_bytes()[:-37])
    rc, _, err = cli(["--records", str(path), "--out", str(tmp_path / "i")], capsys)
    one_error_line(rc, err, shards[0])
    assert "Traceback" not in err and "DecodeError" not in err
