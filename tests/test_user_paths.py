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
