"""What a new user runs into on the way from records to a search page: damaged records with
locked towers, progress output in logs, warnings on stderr, and an index update keeping its
hubness correction. Tiny towers throughout."""

import json
import os
import shutil

import pytest

from dualencoder.cli import train as train_cli
from dualencoder.config import Config

TINY = ["model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "data.batch_size=16", "optim.warmup_steps=2", "optim.epochs=2", "run.ledger=true"]
LOCKED = ["model.image_trainable=none", "model.text_trainable=none"]
DAMAGED = "shard-00001.tfrecord"  # records 32..63; the flipped byte is inside record 32


def set_args(settings):
    return [a for s in settings for a in ("--set", s)]


def ledger(workdir):
    with open(os.path.join(workdir, "ledger.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from records.build import build_records

    out = tmp_path_factory.mktemp("pristine") / "rec"
    build_records("synthetic", out, shard_size=32, num_images=128, image_size=32, seed=0)
    return out


@pytest.fixture
def damaged(pristine, tmp_path):
    """The pristine records with one byte flipped in record 32's data."""
    out = tmp_path / "rec"
    shutil.copytree(pristine, out)
    path = out / DAMAGED
    blob = path.read_bytes()
    path.write_bytes(blob[:52] + bytes([blob[52] ^ 0xFF]) + blob[53:])
    return str(out)


# ------------------------------------------------------------------------------------------
# Damaged records with locked towers (the cached-feature path)
# ------------------------------------------------------------------------------------------
def test_skip_bad_with_locked_towers_trains_on_the_intact_records(damaged, tmp_path, capfd):
    from dualencoder.train.loop import train

    runs = {}
    for name, extra in (("cached", []), ("streamed", ["run.cache_features=off"])):
        cfg = Config.from_sources(None, TINY + LOCKED + extra + [
            f"data.records={damaged}", "data.skip_bad=true"])
        workdir = str(tmp_path / name)
        summary = train(cfg, workdir, log=lambda *_: None)
        runs[name] = (summary, ledger(workdir))
    assert runs["cached"][0]["cached_features"] == "image pooled, text pooled"
    assert runs["streamed"][0]["cached_features"] is None
    rows = runs["cached"][1]
    # 127 intact records: 7 whole batches of 16 in each of the 2 epochs, none cut short
    assert len(rows) == 14 and runs["cached"][0]["steps"] == 14
    for epoch in (1, 2):
        ids = [i for r in rows if r["epoch"] == epoch for i in r["ids"]]
        assert len(ids) == len(set(ids)) == 7 * 16 and 32 not in ids
    # the feature pass and the training order skip the same records as the streaming path
    assert [r["ids"] for r in rows] == [r["ids"] for r in runs["streamed"][1]]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in runs["streamed"][1]],
                                                      rel=1e-4)
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if DAMAGED in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")
    assert "31 intact records of 32" in warnings[0]
    assert "WARNING:tensorflow" not in err


def test_train_cli_damaged_records_error_says_how_to_go_on(damaged, tmp_path, capfd):
    argv = ["--records", damaged, "--workdir", str(tmp_path / "w")] + set_args(TINY + LOCKED)
    assert train_cli.main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert DAMAGED in err and "--set data.skip_bad=true" in err
    assert "python -m records build" in err

    assert train_cli.main(argv + ["--set", "data.skip_bad=true"]) == 0
    out, err = capfd.readouterr()
    assert "trained 14 steps" in out
    assert "Traceback" not in err and "WARNING:tensorflow" not in err
    assert [line for line in err.splitlines() if DAMAGED in line] == [
        f"warning: {damaged}: shard {DAMAGED} is damaged (sha256 mismatch (content changed "
        "since the build)); reading its 31 intact records of 32"]


# ------------------------------------------------------------------------------------------
# Progress in logs and pipes: plain lines, no carriage returns
# ------------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_in_a_log_is_a_few_plain_lines():
    import io

    from records.progress import LineProgress, progress_bar, track

    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(100, desc="embedding", unit="img", stream=stream, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "embedding: 10/100 img (10%), 10.0 s"
    assert len(lines) == 10 and lines[-1] == "embedding: 100/100 img (100%) in 100.0 s"
    # fast progress: at most one line every few seconds, whatever the tenths say
    stream, clock = io.StringIO(), Clock()
    bar = LineProgress(1000, desc="x", unit="img", stream=stream, clock=clock)
    for _ in range(1000):
        clock.now += 1 / 128
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == ["x: 400/1000 img (40%), 3.1 s",
                                              "x: 800/1000 img (80%), 6.2 s",
                                              "x: 1000/1000 img (100%) in 7.8 s"]
    # a quick pass says nothing, nor does one that fails
    stream = io.StringIO()
    assert list(track(range(5), desc="quick", stream=stream)) == list(range(5))
    with pytest.raises(KeyError):
        with progress_bar(10, desc="failing", stream=stream, min_interval=0) as bar:
            bar.update(1)
            raise KeyError("x")
    assert stream.getvalue() == "failing: 1/10 it (10%), 0.0 s\n"
    assert "\r" not in stream.getvalue()


def test_progress_on_a_terminal_is_a_live_bar():
    import io

    from records.progress import track

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    assert list(track(range(3), desc="live", stream=stream)) == [0, 1, 2]
    assert "live" in stream.getvalue() and "\r" in stream.getvalue()


def test_evaluate_and_index_write_no_carriage_returns_into_a_pipe(tmp_path, capfd,
                                                                   monkeypatch, pristine):
    from dualencoder.cli import evaluate, retrieval
    from dualencoder.model.saving import save_model
    from dualencoder.testing import tiny_model

    work = tmp_path / "work"
    save_model(tiny_model(), str(work / "model"))
    assert evaluate.main(["retrieval", "--model", str(work), "--data", f"records:{pristine}",
                          "--out", str(tmp_path / "ev"), "--cache-dir",
                          str(tmp_path / "cache")]) == 0
    assert retrieval.main(["index", "--model", str(work), "--records", str(pristine),
                           "--out", str(tmp_path / "idx")]) == 0
    out, err = capfd.readouterr()
    assert "\r" not in err and "\x1b[" not in err, err[:500]
    assert "indexed" in out


# ------------------------------------------------------------------------------------------
# Warnings are the program's own lines, not Python's or TensorFlow's
# ------------------------------------------------------------------------------------------
def test_resume_with_changed_settings_is_a_plain_warning_line(pristine, tmp_path, capfd):
    import warnings

    from dualencoder.train.loop import train

    base = TINY + LOCKED + [f"data.records={pristine}", "optim.epochs=1"]
    workdir = str(tmp_path / "w")
    train(Config.from_sources(None, base), workdir, log=lambda *_: None)
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(Config.from_sources(None, base + ["optim.epochs=2", "optim.lr=0.002"]), workdir,
              log=lines.append)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], caught
    assert f"warning: resuming {workdir} with changed optim settings: lr, epochs" in lines
    assert "UserWarning" not in capfd.readouterr().err


def test_jit_compile_without_a_gpu_is_a_plain_warning_line(pristine):
    import warnings

    import tensorflow as tf

    from dualencoder.train import setup

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("the warning is for machines without a GPU")
    cfg = Config.from_sources(None, TINY + LOCKED + [f"data.records={pristine}",
                                                     "run.jit_compile=true"])
    lines = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup.model_and_optimizer(cfg, tf.distribute.get_strategy(), str(pristine),
                                  log=lines.append)
    assert not [w for w in caught if "jit_compile" in str(w.message)]
    assert [line for line in lines if line.startswith("warning: run.jit_compile=true")]


# ------------------------------------------------------------------------------------------
# CSLS outlives an index update
# ------------------------------------------------------------------------------------------
def test_update_keeps_csls_and_the_server_follows(tmp_path, monkeypatch):
    from dualencoder.search import service as service_lib
    from dualencoder.search.build import build_index
    from dualencoder.search.hubness import add_hubness
    from dualencoder.search.index import EmbeddingIndex
    from test_index import FakeEncoder, make_images

    monkeypatch.setattr(service_lib, "FULL_CHECK_SECONDS", 0.0)
    images, out, bank = tmp_path / "images", tmp_path / "index", tmp_path / "bank.txt"
    make_images(images, 6)
    bank.write_text("red car\nblue sky\na dog\nnight street\n")
    enc = FakeEncoder()
    build_index(enc, out, images=images, progress=False)
    add_hubness(out, enc, str(bank), k=2, progress=False)
    logged = []
    service = service_lib.RetrievalService(EmbeddingIndex.open(out), enc, log=logged.append)
    assert service.info()["similarity"] == "csls"

    make_images(images, 2, start=30)
    report = build_index(enc, out, images=images, update=True, progress=False)
    assert report.hubness["images"] == 8 and report.hubness_problem is None
    assert "hubness penalties recomputed" in report.summary()
    res = service.search(q="red car", k=100)
    assert res["count"] == 8 and res["similarity"] == "csls"
    assert service.info()["similarity"] == "csls"

    # the bank gone: the update reports it, the server logs it and ranks by cosine ...
    bank.rename(tmp_path / "moved.txt")
    make_images(images, 1, start=40)
    report = build_index(enc, out, images=images, update=True, progress=False)
    assert report.hubness is None and f"bank {bank} is gone" in report.hubness_problem
    assert service.search(q="red car", k=100)["similarity"] == "cosine"
    assert logged[-2].endswith("9 images, text queries by cosine")
    assert logged[-1].startswith("warning: ") and "hubness" in logged[-1]
    # ... until `retrieval.py hubness` writes penalties for this generation: CSLS again
    add_hubness(out, enc, str(tmp_path / "moved.txt"), k=2, progress=False)
    assert service.search(q="red car", k=100)["similarity"] == "csls"
    assert logged[-1].endswith("9 images, text queries by CSLS")
