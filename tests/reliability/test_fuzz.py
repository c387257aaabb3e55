"""Bounded fuzzing: random bytes into the records readers, random strings into the CLIs.
Nothing may hang or crash; the only failures allowed are the documented clear ones
(`RecordsError`, exit status 1 for a failed verify, exit status 2 with one `error:` line)."""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from records.build import build_records
from records.reader import iter_records
from records.schema import MANIFEST_NAME, RecordsError, read_manifest
from records.tfrecord_io import scan_records
from records.verify import verify_records

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
N = 12


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "rec"
    build_records("synthetic", out, shard_size=6, num_images=N, image_size=32, seed=1)
    return out


def _as_built(folder, blob):
    """`folder` holding one shard of `blob`, with a manifest claiming 3 records and matching
    the bytes' size and sha256 (so readers must really parse them)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    with open(os.path.join(folder, "shard-00000.tfrecord"), "wb") as fh:
        fh.write(blob)
    manifest = {"schema_version": 1, "source": "fuzz", "num_records": 3, "num_captions": 3,
                "class_names": None, "image_stats": {}, "build": {},
                "shards": [{"name": "shard-00000.tfrecord", "records": 3, "captions": 3,
                            "first_index": 0, "bytes": len(blob),
                            "sha256": hashlib.sha256(blob).hexdigest()}]}
    with open(os.path.join(folder, MANIFEST_NAME), "w") as fh:
        json.dump(manifest, fh)
    return folder


def _read_all(folder, expected_total):
    try:
        list(iter_records(folder))
    except RecordsError:
        pass
    it = iter_records(folder, skip_bad=True)
    indices = [r["index"] for r in it]
    assert len(indices) == len(set(indices))
    assert it.stats.records + it.stats.skipped_records == expected_total
    report = verify_records(folder, raise_on_error=False)
    assert isinstance(report["ok"], bool)
    return indices


@FUZZ
@given(blob=st.binary(max_size=400))
def test_random_bytes_as_a_shard(blob):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _as_built(os.path.join(tmp, "rec"), blob)
        assert all(r.position >= 0 for r in scan_records(blob))
        _read_all(folder, 3)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
                      min_size=1, max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 10**6)), tail=st.binary(max_size=40))
def test_random_damage_to_a_real_shard(pristine, edits, cut, tail):
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "rec")
        shutil.copytree(pristine, folder)
        path = os.path.join(folder, "shard-00001.tfrecord")
        blob = bytearray(open(path, "rb").read())
        for pos, data in edits:
            pos %= len(blob)
            blob[pos:pos + len(data)] = data
        if cut is not None:
            blob = blob[:cut % (len(blob) + 1)]
        open(path, "wb").write(bytes(blob) + tail)
        indices = _read_all(folder, N)
        assert set(range(6)) <= set(indices) <= set(range(N))  # the intact shard is whole


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10**6), data=st.binary(min_size=1, max_size=64),
       cut=st.booleans())
def test_random_damage_training_pipeline_skip_bad(pristine, pos, data, cut):
    from dualencoder.data import pipeline as data_lib
    from dualencoder.model.tokenizer import Tokenizer, tiny_vocabulary

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "rec")
        shutil.copytree(pristine, folder)
        path = os.path.join(folder, "shard-00000.tfrecord")
        blob = bytearray(open(path, "rb").read())
        pos %= len(blob)
        blob[pos:pos + len(data)] = data
        if cut:
            blob = blob[:pos + 1]
        open(path, "wb").write(bytes(blob))
        expected = sorted(r["index"] for r in iter_records(folder, skip_bad=True))
        ds = data_lib.pair_dataset(folder, image_size=8, batch_size=1, skip_bad=True,
                                   tokenizer=Tokenizer(tiny_vocabulary(), sequence_length=8))
        ids = sorted(int(i) for b in ds for i in b["image_index"].numpy())
        # a record can pass its CRC yet hold an undecodable image: dropped, never a crash
        assert set(ids) <= set(expected) and set(range(6, N)) <= set(ids)


@FUZZ
@given(text=st.one_of(st.text(max_size=200),
                      st.fixed_dictionaries({
                          "schema_version": st.sampled_from([1, 1, 2, "1"]),
                          "source": st.text(max_size=5),
                          "num_records": st.one_of(st.integers(-2, 5), st.text(max_size=3)),
                          "shards": st.lists(st.one_of(
                              st.fixed_dictionaries({"name": st.one_of(
                                  st.sampled_from(["shard-00000.tfrecord", "..", "../x", ""]),
                                  st.integers()),
                                  "records": st.one_of(st.integers(-1, 4), st.none()),
                                  "first_index": st.integers(-1, 3)}),
                              st.integers(), st.text(max_size=4)), max_size=3)}).map(json.dumps),
                      st.dictionaries(st.text(max_size=12),
                                      st.one_of(st.integers(), st.text(max_size=8), st.none(),
                                                st.lists(st.integers(), max_size=3)),
                                      max_size=5).map(json.dumps)))
def test_random_manifest(pristine, text):
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(pristine / "shard-00000.tfrecord", tmp)  # a real shard to point at
        with open(os.path.join(tmp, MANIFEST_NAME), "w", encoding="utf-8") as fh:
            fh.write(text)
        for call in (read_manifest, verify_records, lambda d: list(iter_records(d))):
            try:
                call(tmp)
            except RecordsError:
                pass


# ------------------------------------------------------------------------------------------
# CLIs, in process (no TensorFlow work is reachable with these arguments)
# ------------------------------------------------------------------------------------------
def _run(main, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def _one_error_line(rc, err, codes=(2,)):
    assert rc in codes, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


WORDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=30)
KEYS = st.one_of(st.sampled_from(["optim.lr", "data.batch_size", "model.image_tower",
                                  "run.seed", "optim.epochs", "model.embed_dim", "run.nope",
                                  "model", "", "data.augment", "model.image_trainable"]),
                 WORDS)


@FUZZ
@given(key=KEYS, value=WORDS, flag=st.sampled_from(["--set", "--epochs", "--batch-size",
                                                    "--config", "--precision"]))
def test_train_cli_random_strings(tmp_path, key, value, flag):
    from dualencoder.cli import train

    assume("records" not in key and "cache_dir" not in key and "features_dir" not in key)
    extra = [flag, f"{key}={value}" if flag == "--set" else value]
    rc, err = _run(train.main, ["--records", "/nonexistent/fuzz", "--workdir",
                                str(tmp_path / "w")] + extra)
    _one_error_line(rc, err)
    assert not (tmp_path / "w").exists()


@FUZZ
@given(k=WORDS, query=WORDS, index=st.booleans())
def test_retrieval_cli_random_strings(tmp_path_factory, k, query, index):
    import numpy as np

    from dualencoder.cli import retrieval
    from dualencoder.search.store import write_embeddings_index

    folder = tmp_path_factory.getbasetemp() / "fuzz-index"
    if not folder.exists():
        write_embeddings_index(folder, np.eye(5, 8, dtype=np.float32),
                               [f"p{i}.jpg" for i in range(5)], fingerprint="x")
    where = str(folder) if index else "/nonexistent/" + "x"
    rc, err = _run(retrieval.main, ["search", "--index", where, "--query", query, "-k", k])
    _one_error_line(rc, err)  # no model recorded in the index: never reaches a model


@FUZZ
@given(ks=WORDS, batch=WORDS, model=WORDS, command=st.sampled_from(["retrieval", "zeroshot"]))
def test_evaluate_cli_random_strings(tmp_path, ks, batch, model, command):
    from dualencoder.cli import evaluate

    argv = [command, "--model", "/nonexistent/" + model, "--data", str(tmp_path),
            "--out", str(tmp_path / "out"), "--batch-size", batch]
    if command == "retrieval":
        argv += ["--ks", ks]
    rc, err = _run(evaluate.main, argv)
    _one_error_line(rc, err)


@FUZZ
@given(path=WORDS, command=st.sampled_from(["verify", "inspect"]))
def test_records_cli_random_strings(tmp_path, path, command):
    from records.__main__ import main

    rc, err = _run(main, [command, str(tmp_path / "nope") + path])
    _one_error_line(rc, err, codes=(1, 2))
