"""Interrupted at every step boundary of a short run, the rerun finishes where the
uninterrupted run does: same ledger, same weights, same validation history.

24 images, batch 8 (3 steps an epoch), 2 epochs, a mid-epoch checkpoint after every step. One
run is interrupted at every checkpoint save in turn — a KeyboardInterrupt just before (or, in
the other test, just after) each save: mid-epoch saves and epoch-end saves, so also between an
epoch's last mid-epoch save and its epoch-end save, where validation runs — and started again
in the same workdir after each interruption. Every rerun resumes from the newest checkpoint
(it repeats at most the one step whose save was cut off), and the run that finishes matches
the uninterrupted one.
"""

import json
import os

import numpy as np
import pytest

from faultkit import checkpoint_arrays, last_per_step, quiet, read_ledger, tiny_cfg

EXTRA = ["data.batch_size=8", "run.checkpoint_every=1", "optim.epochs=2", "run.val_subset=16"]
SAVES = 2 * 3 + 2  # a save after every step, and one at each epoch's end


@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    from records.build import build_records

    root = tmp_path_factory.mktemp("resume_every_step")
    dirs = {}
    for split, count in (("train", 24), ("val", 16)):
        build_records("synthetic", str(root / split), num_images=count, image_size=32, seed=3,
                      split=split)
        dirs[split] = str(root / split)
    return dirs


def _cfg(records):
    return tiny_cfg(records["train"], EXTRA + [f"data.val_records={records['val']}"])


def _history(workdir):
    with open(os.path.join(workdir, "history.json"), encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in json.load(fh)]


@pytest.fixture(scope="module")
def uninterrupted(small_records, tmp_path_factory):
    from dualencoder.train.loop import train

    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    train(_cfg(small_records), workdir, log=quiet)
    return {"ledger": last_per_step(read_ledger(workdir)), "final": checkpoint_arrays(workdir),
            "history": _history(workdir)}


@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupt_at_every_checkpoint_in_turn_then_resume(small_records, uninterrupted, tmp_path,
                                                           monkeypatch, when):
    from dualencoder.train import loop
    from dualencoder.train.checkpoint import CheckpointManager

    original, count = CheckpointManager.save, {"saved": 0, "stop_at": 0}

    def interrupting_save(self, *args, **kwargs):
        if when == "before" and count["saved"] + 1 == count["stop_at"]:
            raise KeyboardInterrupt
        out = original(self, *args, **kwargs)
        count["saved"] += 1
        if when == "after" and count["saved"] == count["stop_at"]:
            raise KeyboardInterrupt
        return out

    workdir = str(tmp_path / "run")
    monkeypatch.setattr(CheckpointManager, "save", interrupting_save)
    rows = 0
    for save in range(1, SAVES + 1):
        count["stop_at"] = save
        with pytest.raises(loop.TrainingInterrupted):
            loop.train(_cfg(small_records), workdir, log=quiet)
        ran, rows = len(read_ledger(workdir)) - rows, len(read_ledger(workdir))
        assert ran <= 2, f"the rerun stopped at save {save} ran {ran} steps: it did not resume"
    assert count["saved"] == SAVES - (when == "before")
    count["stop_at"] = 0
    loop.train(_cfg(small_records), workdir, log=quiet)
    assert count["saved"] == SAVES

    got = last_per_step(read_ledger(workdir))
    assert [r["ids"] for r in got] == [r["ids"] for r in uninterrupted["ledger"]]
    np.testing.assert_allclose([r["loss"] for r in got],
                               [r["loss"] for r in uninterrupted["ledger"]], rtol=1e-5)
    final = checkpoint_arrays(workdir)
    assert sorted(final) == sorted(uninterrupted["final"])
    for key, value in final.items():
        np.testing.assert_allclose(value, uninterrupted["final"][key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    # validation of every epoch as in the uninterrupted run (training-loss means may differ:
    # the sums of an epoch's steps before the interruption are not checkpointed)
    history, want = _history(workdir), uninterrupted["history"]
    assert [r["epoch"] for r in history] == [r["epoch"] for r in want]
    for got_row, want_row in zip(history, want):
        for key in (k for k in want_row if k.startswith("val_")):
            assert got_row[key] == pytest.approx(want_row[key], rel=1e-4, abs=1e-4), key
