"""retrieval.py (`dualencoder.cli.retrieval`): fake encoder, exit codes, real tiny models."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dualencoder.cli import retrieval
from dualencoder.search.errors import ImageAccessError
from dualencoder.search.index import EmbeddingIndex, normalize
from dualencoder.search.sources import decode_image
from test_index import FakeEncoder, make_images, write_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_model_dir(path, fingerprint=None):
    os.makedirs(path, exist_ok=True)
    meta = {"format": "fake"}
    if fingerprint:
        meta["fingerprint"] = fingerprint
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(meta, fh)
    open(os.path.join(path, "model.weights.h5"), "wb").close()
    return str(path)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A workdir with model/, an image folder and a built index; load_encoder gives fakes."""
    encoders = {"seed": 0, "loaded": []}

    def load(path, tower_precision="float32"):
        enc = FakeEncoder(seed=encoders["seed"])
        encoders["loaded"].append(path)
        return enc

    monkeypatch.setattr(retrieval, "load_encoder", load)
    work = tmp_path / "work"
    fake_model_dir(work / "model")
    images = tmp_path / "images"
    make_images(images, 9)
    out = tmp_path / "index"
    rc = retrieval.main(["index", "--model", str(work), "--images", str(images),
                         "--out", str(out), "--no-progress", "--chunk-size", "4"])
    assert rc == 0
    return {"tmp": tmp_path, "work": work, "images": images, "index": out, "enc": encoders}


def run(argv, capsys):
    rc = retrieval.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_index_and_search_commands(env, capsys):
    idx = str(env["index"])
    state = json.loads((env["index"] / "state.json").read_text())
    assert state["model_path"] == str(env["work"] / "model") and state["count"] == 9

    rc, out, err = run(["search", "--index", idx, "--query", "red car", "-k", "3", "--json"],
                       capsys)
    assert rc == 0, err
    data = json.loads(out)
    assert data["query"] == "red car" and len(data["results"]) == 3
    enc = FakeEncoder()
    index = EmbeddingIndex.open(idx)
    ref = index.search(enc.encode_texts(["red car"]), 3)[0]
    assert [r["path"] for r in data["results"]] == [h.path for h in ref]
    # The model came from the path recorded in the index.
    assert env["enc"]["loaded"][-1] == str(env["work"] / "model")

    rc, out, err = run(["search", "--index", idx, "--query", "red car", "-k", "2"], capsys)
    assert rc == 0 and out.splitlines()[1].split()[2] == ref[0].path

    query_image = env["images"] / index.paths[4]
    rc, out, err = run(["search", "--index", idx, "--image", str(query_image), "--json",
                        "--grid", str(env["tmp"] / "grid.png")], capsys)
    assert rc == 0, err
    data = json.loads(out)
    assert data["results"][0]["path"] == index.paths[4] and len(data["results"]) == 9
    from PIL import Image
    with Image.open(env["tmp"] / "grid.png") as grid:
        assert grid.size[0] > 300

    queries = env["tmp"] / "queries.txt"
    queries.write_text("red car\n\n  blue sky  \nnight street\n")
    rc, out, err = run(["search", "--index", idx, "--queries", str(queries), "-k", "2"], capsys)
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["query"] for x in lines] == ["red car", "blue sky", "night street"]
    assert lines[0]["results"] == data_results(ref[:2])


def data_results(hits):
    return [{"rank": r + 1, **h.to_dict()} for r, h in enumerate(hits)]


def test_update_command(env, capsys):
    make_images(env["images"], 2, start=20)
    os.remove(env["images"] / "img001.jpg")
    rc, out, err = run(["index", "--model", str(env["work"]), "--images", str(env["images"]),
                        "--out", str(env["index"]), "--update", "--no-progress"], capsys)
    assert rc == 0, err
    assert "10 images in the index (2 embedded now" in out and "1 removed" in out
    n_loaded = len(env["enc"]["loaded"])
    rc, out, err = run(["index", "--model", str(env["work"]), "--images", str(env["images"]),
                        "--out", str(env["index"]), "--no-progress"], capsys)
    one_line_error(rc, err, "--update")
    assert len(env["enc"]["loaded"]) == n_loaded  # refused before loading the model
    rc, out, err = run(["index", "--model", str(env["work"]), "--records", str(env["images"]),
                        "--out", str(env["tmp"] / "r"), "--no-progress"], capsys)
    one_line_error(rc, err, "no manifest.json")


def test_faiss_backend_command(env, capsys):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    rc, out, err = run(["search", "--index", str(env["index"]), "--query", "red car", "-k", "3",
                        "--backend", "faiss", "--json"], capsys)
    assert rc == 0, err
    assert "recall@10 vs exact" in err
    assert (env["index"] / "faiss.json").exists()
    exact = json.loads(run(["search", "--index", str(env["index"]), "--query", "red car",
                            "-k", "3", "--json"], capsys)[1])
    assert [r["id"] for r in json.loads(out)["results"]] == [r["id"] for r in exact["results"]]


def one_line_error(rc, err, needle):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_bad_input_exit_codes(env, capsys):
    idx = str(env["index"])
    loaded = env["enc"]["loaded"]
    n_loaded = len(loaded)
    cases = [
        (["search", "--index", idx, "--query", "   "], "empty query"),
        (["search", "--index", idx, "--query", "car", "-k", "0"], "k must be"),
        (["search", "--index", idx, "--query", "car", "-k", "x"], "k must be"),
        (["search", "--index", str(env["tmp"] / "nope"), "--query", "car"], "does not exist"),
        (["search", "--index", idx, "--image", str(env["tmp"] / "missing.jpg")], "cannot read"),
        (["search", "--index", idx], "one of the arguments"),
        (["search", "--index", idx, "--query", "car", "--model", str(env["tmp"])], "--model"),
        (["index", "--model", str(env["tmp"] / "nomodel"), "--images", str(env["images"]),
          "--out", str(env["tmp"] / "i2")], "--model"),
        (["index", "--model", str(env["work"]), "--images", str(env["tmp"] / "noimages"),
          "--out", str(env["tmp"] / "i2")], "not a folder"),
        (["frobnicate"], "invalid choice"),
    ]
    bad_image = env["tmp"] / "bad.jpg"
    bad_image.write_bytes(b"definitely not a jpeg")
    cases.append((["search", "--index", idx, "--image", str(bad_image)], "unreadable image"))
    empty = env["tmp"] / "empty.txt"
    empty.write_text("\n \n")
    cases.append((["search", "--index", idx, "--queries", str(empty)], "holds no query"))
    for argv, needle in cases:
        rc, out, err = run(argv, capsys)
        one_line_error(rc, err, needle)
    # None of these got as far as loading a model.
    assert len(loaded) == n_loaded


def test_fingerprint_mismatch_and_missing_chunk(env, capsys):
    idx = str(env["index"])
    # A saved model whose config.json records another fingerprint: refused before loading.
    other = fake_model_dir(env["tmp"] / "other", fingerprint="0123456789abcdef")
    n_loaded = len(env["enc"]["loaded"])
    rc, out, err = run(["search", "--index", idx, "--query", "car", "--model", other], capsys)
    one_line_error(rc, err, "different model")
    assert len(env["enc"]["loaded"]) == n_loaded
    # A model without a recorded fingerprint is checked once loaded.
    env["enc"]["seed"] = 3
    rc, out, err = run(["search", "--index", idx, "--query", "car"], capsys)
    one_line_error(rc, err, "different model")
    env["enc"]["seed"] = 0
    os.remove(env["index"] / "chunk-00001.npz")
    rc, out, err = run(["search", "--index", idx, "--query", "car"], capsys)
    one_line_error(rc, err, "missing 1 chunk file")


def test_cli_process_exit_code_without_tensorflow(tmp_path):
    code = ("import sys, retrieval; rc = retrieval.main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "search", "--index", str(tmp_path / "x"),
                           "--query", "car"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: index folder"), proc.stderr


def test_real_tiny_model_index_and_search(tmp_path, capsys, synthetic_records):
    """The real `DualEncoder` (tiny towers) through save_model, index, search and its fingerprint;
    hubness penalties against the captions of a records bank."""
    testing = pytest.importorskip("dualencoder.testing")
    from dualencoder.model.saving import save_model

    model = testing.tiny_model()
    work = tmp_path / "work"
    save_model(model, str(work / "model"))
    images = tmp_path / "images"
    make_images(images, 5)
    write_image(str(images / "big.png"), seed=1, size=90)  # resized to the model's image size
    out = tmp_path / "index"
    rc = retrieval.main(["index", "--model", str(work), "--images", str(images), "--out",
                         str(out), "--no-progress", "--faiss", "hnsw"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    state = json.loads((out / "state.json").read_text())
    assert state["fingerprint"] == model.fingerprint() and state["count"] == 6
    rc = retrieval.main(["search", "--index", str(out), "--query", "a red circle", "-k", "2",
                         "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    data = json.loads(cap.out)
    index = EmbeddingIndex.open(out)
    ref = index.search(model.encode_texts(["a red circle"]), 2)[0]
    assert [r["id"] for r in data["results"]] == [h.id for h in ref]
    px = decode_image((images / index.paths[0]).read_bytes(), model.image_size)
    np.testing.assert_allclose(index.embeddings[0], model.encode_images(px[None])[0], atol=3e-3)

    from dualencoder import csls as hubness
    from dualencoder.data.annotations import read_captions

    bank = synthetic_records["train"]
    rc = retrieval.main(["hubness", "--index", str(out), "--bank", bank, "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    captions = read_captions(bank)[0]
    index = EmbeddingIndex.open(out)
    assert index.hubness["num_captions"] == len(captions) and index.hubness["k"] == 10
    want = hubness.mean_topk_similarity(normalize(index.embeddings),
                                        normalize(model.encode_texts(captions)), 10)
    np.testing.assert_allclose(index.penalty, want, atol=2e-3)

    import shutil

    damaged = tmp_path / "damaged_bank"
    shutil.copytree(bank, damaged)
    shard = sorted(p for p in damaged.iterdir() if p.name != "manifest.json"
                   and p.stat().st_size > 100)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rc = retrieval.main(["hubness", "--index", str(out), "--bank", str(damaged),
                         "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: --bank {damaged}") and "\n" not in err, err


def test_records_source_index_and_serve_bytes(tmp_path, capsys, monkeypatch):
    """`--records DIR`: every record is embedded, named "<shard>#<index>", and served by id."""
    build = pytest.importorskip("records.build")
    from records.reader import iter_records

    records = tmp_path / "records"
    build.build_records("synthetic", str(records), num_images=7, image_size=40, seed=0,
                        shard_size=3)
    monkeypatch.setattr(retrieval, "load_encoder", lambda path, *precision: FakeEncoder())
    work = tmp_path / "work"
    fake_model_dir(work / "model")
    out = tmp_path / "index"
    argv = ["index", "--model", str(work), "--records", str(records), "--out", str(out),
            "--no-progress", "--chunk-size", "2"]
    assert retrieval.main(argv) == 0
    index = EmbeddingIndex.open(out)
    assert len(index) == 7 and all("#" in p for p in index.paths)
    by_index = {r["index"]: r["image_bytes"] for r in iter_records(str(records))}
    for i, path in enumerate(index.paths):
        data, name = index.image_bytes(i)
        assert name == path and data == by_index[int(path.rsplit("#", 1)[1])]
    enc = FakeEncoder()
    first = decode_image(by_index[0], enc.image_size)
    row = index.paths.index(next(p for p in index.paths if p.endswith("#0")))
    np.testing.assert_allclose(index.embeddings[row], enc.encode_images(first[None])[0], atol=2e-3)
    # Nothing to do on update; refused entry names never touch the file system.
    assert retrieval.main(argv + ["--update"]) == 0
    assert "0 embedded now" in capsys.readouterr().out
    for bad in ["../manifest.json#0", "shard#x", "nope.tfrecord#1",
                index.paths[0].rsplit("#", 1)[0] + "#99"]:
        with pytest.raises(ImageAccessError):
            index.source.read_bytes(bad)


def test_serve_command_wires_the_server(env, capsys, monkeypatch):
    from dualencoder.search import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda service, host, port: seen.update(
        service=service, host=host, port=port) or 0)
    rc, out, err = run(["serve", "--index", str(env["index"]), "--port", "0"], capsys)
    assert rc == 0 and seen["host"] == "127.0.0.1" and seen["port"] == 0
    assert len(seen["service"].index) == 9
    rc, out, err = run(["serve", "--index", str(env["index"]), "--port", "70000"], capsys)
    one_line_error(rc, err, "not a port number")


def test_hubness_command_makes_text_search_csls(env, capsys):
    from dualencoder import csls as hubness

    idx = str(env["index"])
    bank = env["tmp"] / "bank.txt"
    captions = ["red car on a street", "blue sky", "a dog in the grass", "night street",
                "green field", "red red red", "people walking"]
    bank.write_text("\n".join(captions) + "\n\n")
    rc, out, err = run(["hubness", "--index", idx, "--bank", str(bank), "--bank-k", "3",
                        "--no-progress"], capsys)
    assert rc == 0, err
    assert "9 images against 7 bank captions (k=3" in out
    enc = FakeEncoder()
    index = EmbeddingIndex.open(idx)
    emb = normalize(index.embeddings)
    want_pen = hubness.mean_topk_similarity(emb, enc.encode_texts(captions), 3)
    np.testing.assert_allclose(index.penalty, want_pen, atol=1e-3)  # float16 embeddings

    def search(*extra):
        rc, out, err = run(["search", "--index", idx, "--query", "red car", "-k", "9", "--json",
                            *extra], capsys)
        assert rc == 0, err
        return json.loads(out), err

    data, _ = search()
    q = enc.encode_texts(["red car"])[0]
    csls = emb @ q - 0.5 * index.penalty
    assert data["similarity"] == "csls"
    assert [r["id"] for r in data["results"]] == list(np.argsort(-csls, kind="stable"))
    plain, _ = search("--no-csls")
    assert plain["similarity"] == "cosine"
    assert [r["id"] for r in plain["results"]] == list(np.argsort(-(emb @ q), kind="stable"))
    # image queries are not penalised
    rc, out, err = run(["search", "--index", idx, "--image", str(env["images"] / index.paths[2]),
                        "--json"], capsys)
    assert rc == 0 and json.loads(out)["similarity"] == "cosine"

    # an update recomputes the penalties against the same bank: CSLS stays
    make_images(env["images"], 1, start=30)
    rc, out, err = run(["index", "--model", str(env["work"]), "--images", str(env["images"]),
                        "--out", idx, "--update", "--no-progress"], capsys)
    assert rc == 0 and "hubness penalties recomputed against the 7 captions" in out, err
    data, err = search()
    assert data["similarity"] == "csls" and "warning:" not in err
    updated = EmbeddingIndex.open(idx)
    assert len(updated) == 10
    np.testing.assert_allclose(updated.penalty, hubness.mean_topk_similarity(
        normalize(updated.embeddings), enc.encode_texts(captions), 3), atol=1e-3)
    # with the bank gone, the update says so, and text queries rank by cosine
    bank.rename(env["tmp"] / "bank-moved.txt")
    make_images(env["images"], 1, start=40)
    rc, out, err = run(["index", "--model", str(env["work"]), "--images", str(env["images"]),
                        "--out", idx, "--update", "--no-progress"], capsys)
    assert rc == 0 and err.startswith("warning: ") and f"bank {bank} is gone" in err, err
    data, err = search()
    assert data["similarity"] == "cosine" and "warning:" in err and "retrieval.py hubness" in err
    (env["tmp"] / "bank-moved.txt").rename(bank)

    one_line_error(*run(["hubness", "--index", idx, "--bank", str(env["tmp"] / "nope.txt")],
                        capsys)[::2], "does not exist")
    one_line_error(*run(["hubness", "--index", idx, "--bank", str(bank), "--bank-k", "8",
                         "--no-progress"], capsys)[::2], "between 1 and the bank's 7")
    (env["tmp"] / "empty.txt").write_text("\n \n")
    one_line_error(*run(["hubness", "--index", idx, "--bank", str(env["tmp"] / "empty.txt"),
                         "--no-progress"], capsys)[::2], "holds no captions")
    one_line_error(*run(["hubness", "--index", idx, "--bank", str(env["images"]),
                         "--no-progress"], capsys)[::2], "without manifest.json")


# --------------------------------------------------------------------------------------------
# Photo search with an ensemble: the index records the spec and ranks like evaluate.py would


ENSEMBLE_QUERIES = ["a red circle", "two yellow stars", "a large orange cross in the middle"]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """Two tiny models over the same towers with different heads, saved to `models/a` and
    `models/b`, and an image folder (real TensorFlow, no fakes)."""
    from dualencoder.model.saving import save_model
    from dualencoder.testing import same_towers_new_heads, tiny_model

    root = tmp_path_factory.mktemp("ensemble")
    a = tiny_model(image_trainable="none", text_trainable="none", head="linear")
    b = same_towers_new_heads(a, tiny_model(image_trainable="none", text_trainable="none",
                                            head="linear"))
    save_model(a, str(root / "models" / "a"))
    save_model(b, str(root / "models" / "b"))
    images = root / "images"
    rels = make_images(images, 8)
    return {"root": root, "images": images, "query": rels[4]}


def ensemble_ranking(spec, images, texts, query_image):
    """Cosine rankings (ids in sorted-path order, best first) and scores computed directly
    from `load_encoder(spec)`: text queries and one image query against every image."""
    from dualencoder.encoders.load import load_encoder

    encoder, _ = load_encoder(spec)
    paths = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
    pixels = np.stack([decode_image((images / p).read_bytes(), encoder.image_size)
                       for p in paths])
    gallery = normalize(encoder.encode_images(pixels))
    queries = normalize(np.concatenate([
        encoder.encode_texts(texts),
        encoder.encode_images(decode_image(query_image.read_bytes(), encoder.image_size)[None]),
    ]))
    scores = queries @ gallery.T
    order = np.argsort(-scores, axis=1, kind="stable")
    return paths, [[paths[i] for i in row] for row in order], np.take_along_axis(scores, order, 1)


def assert_same_ranking(got, paths, want, want_scores, atol=1e-4):
    """Each result list ranks every image as `want` does, with the same scores: the order is
    compared exactly where the reference scores differ by more than `atol` (images whose
    scores tie within it may come in either order)."""
    assert len(got) == len(want)
    for results, ranking, scores in zip(got, want, want_scores):
        reference = dict(zip(ranking, scores))
        assert sorted(r["path"] for r in results) == sorted(paths)
        np.testing.assert_allclose([r["score"] for r in results], scores, atol=atol)
        np.testing.assert_allclose([reference[r["path"]] for r in results], scores, atol=atol)
        if np.diff(-scores).min() > 2 * atol:  # no near-ties: the very same order
            assert [r["path"] for r in results] == ranking


def test_ensemble_index_ranks_like_the_ensemble_and_reloads_from_its_spec(
        ensemble_run, tmp_path, capsys, monkeypatch):
    """`index --model ensemble:A,B` (relative folders), then `search` and `serve` from another
    working directory: the model is reloaded from the absolute spec recorded in state.json and
    every ranking equals the ensemble's own cosine ranking (what evaluate.py ranks by)."""
    root, images = ensemble_run["root"], ensemble_run["images"]
    out = tmp_path / "index"
    monkeypatch.chdir(root)
    rc = retrieval.main(["index", "--model", "ensemble:models/a,models/b", "--images", "images",
                         "--out", str(out), "--dtype", "float32", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    spec = f"ensemble:{root / 'models' / 'a'},{root / 'models' / 'b'}"
    assert json.loads((out / "state.json").read_text())["model_path"] == spec

    query_image = images / ensemble_run["query"]
    paths, want, want_scores = ensemble_ranking(spec, images, ENSEMBLE_QUERIES, query_image)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative spec would not load from here
    queries_file = elsewhere / "queries.txt"
    queries_file.write_text("\n".join(ENSEMBLE_QUERIES[1:]) + "\n")
    rc, out_text, err = run(["search", "--index", str(out), "--query", ENSEMBLE_QUERIES[0],
                             "--json", "-k", "8"], capsys)
    assert rc == 0, err
    got = [json.loads(out_text)["results"]]
    rc, out_text, err = run(["search", "--index", str(out), "--queries", str(queries_file),
                             "--json", "-k", "8"], capsys)
    assert rc == 0, err
    got += [json.loads(line)["results"] for line in out_text.splitlines()]
    rc, out_text, err = run(["search", "--index", str(out), "--image", str(query_image),
                             "--json", "-k", "8"], capsys)
    assert rc == 0, err
    got.append(json.loads(out_text)["results"])
    assert_same_ranking(got, paths, want, want_scores)
    assert want[-1][0] == ensemble_run["query"]  # the query image finds itself first
    _, _, one_member = ensemble_ranking(str(root / "models" / "a"), images, ENSEMBLE_QUERIES,
                                        query_image)
    assert np.abs(np.sort(one_member, 1) - np.sort(want_scores, 1)).max() > 1e-3  # not model A

    from dualencoder.search import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda service, host, port: seen.update(
        service=service) or 0)
    rc, _, err = run(["serve", "--index", str(out), "--port", "0"], capsys)
    assert rc == 0, err
    service = seen["service"]
    image_id = service.index.paths.index(ensemble_run["query"])
    served = [service.search(q=text, k=8)["results"] for text in ENSEMBLE_QUERIES]
    served.append(service.search(image_id=image_id, k=8)["results"])
    assert_same_ranking(served, paths, want, want_scores)


def test_bad_ensemble_and_clip_specs_fail_before_tensorflow(tmp_path):
    """`ensemble:` with one model and `clip:` without a preset: one `error:` line, exit 2,
    TensorFlow never imported (index, search and serve)."""
    from dualencoder.search.store import write_embeddings_index

    idx = tmp_path / "index"
    write_embeddings_index(idx, np.eye(3, 8, dtype=np.float32), ["a.png", "b.png", "c.png"],
                           fingerprint="x")
    images = tmp_path / "images"
    make_images(images, 2)
    cases = [
        (["index", "--model", "ensemble:onlyone", "--images", str(images), "--out",
          str(tmp_path / "i1")], "at least two models"),
        (["index", "--model", "clip:", "--images", str(images), "--out", str(tmp_path / "i2")],
         "needs a preset"),
        (["search", "--index", str(idx), "--query", "a dog", "--model", "ensemble:onlyone"],
         "at least two models"),
        (["search", "--index", str(idx), "--query", "a dog", "--model", "clip:"],
         "needs a preset"),
        (["serve", "--index", str(idx), "--model", "clip:"], "needs a preset"),
    ]
    code = ("import contextlib, io, json, sys, retrieval\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        rc = retrieval.main(argv)\n"
            "    print(json.dumps({'rc': rc, 'err': err.getvalue(),\n"
            "                      'tf': 'tensorflow' in sys.modules}))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([a for a, _ in cases])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(cases), proc.stderr
    for (argv, needle), row in zip(cases, rows):
        lines = row["err"].strip().splitlines()
        assert row["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, row)
        assert needle in lines[0] and not row["tf"], (argv, row)
    assert not (tmp_path / "i1").exists() and not (tmp_path / "i2").exists()


def test_unloadable_clip_preset_is_one_error_line(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "photos"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.jpg")
    code = retrieval.main(["index", "--model", "clip:no_such_preset", "--images", str(images),
                           "--out", str(tmp_path / "index")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot load CLIP preset") and "\n" not in err
