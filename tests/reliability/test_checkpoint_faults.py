"""Checkpoints under faults, inside a real (tiny) training run: a crash while one is being
written, a damaged newest checkpoint, and a NaN loss."""

import hashlib
import json
import math
import os
import shutil
import types

import numpy as np
import pytest

from faultkit import (assert_ledgers_match, assert_same_arrays, checkpoint_arrays,
                      checkpoint_names, read_ledger, tiny_cfg)


class InjectedCrash(OSError):
    pass


def _lines():
    lines = []
    return lines, lambda *a: lines.append(" ".join(str(x) for x in a))


def _resumed_from(lines):
    hits = [line for line in lines if line.startswith("resuming")]
    assert len(hits) == 1, lines
    return hits[0]


def _digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


# ------------------------------------------------------------------------------------------
# Crash while a checkpoint is being written
# ------------------------------------------------------------------------------------------
def _crash_in_savez(monkeypatch, at_call):
    """The `at_call`-th checkpoint's variables.npz gets half its bytes, then the save raises."""
    from dualencoder.train import checkpoint

    calls = {"n": 0}

    def savez(fh, **arrays):
        calls["n"] += 1
        if calls["n"] != at_call:
            return np.savez(fh, **arrays)
        import io
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise InjectedCrash("disk full (injected while writing variables.npz)")

    proxy = types.SimpleNamespace(**{k: getattr(np, k) for k in ("asarray", "load")})
    proxy.savez = savez
    monkeypatch.setattr(checkpoint, "np", proxy)


def _crash_before_pointer(monkeypatch, at_call):
    """The `at_call`-th checkpoint is complete and renamed, then the pointer update raises."""
    from dualencoder.train import checkpoint

    real = checkpoint.files.write_json_atomic
    calls = {"n": 0}

    def write(path, payload, **options):
        if os.path.basename(path) == checkpoint.POINTER:
            calls["n"] += 1
            if calls["n"] == at_call:
                raise InjectedCrash("killed before the pointer was replaced (injected)")
        return real(path, payload, **options)

    monkeypatch.setattr(checkpoint.files, "write_json_atomic", write)


@pytest.mark.parametrize("crash", [
    "in_savez",
    pytest.param("before_pointer", marks=pytest.mark.slow),
])
def test_crash_while_writing_checkpoint(reference_run, tmp_path, monkeypatch, crash):
    from dualencoder.train.loop import train

    workdir = str(tmp_path / "run")
    # checkpoints at steps 2, 4, 6, ...: the third (step 6) crashes midway
    (_crash_in_savez if crash == "in_savez" else _crash_before_pointer)(monkeypatch, 3)
    with pytest.raises(InjectedCrash):
        train(tiny_cfg(reference_run["records"]), workdir, log=lambda *_: None)
    monkeypatch.undo()

    # The pointer still names the previous complete checkpoints, which are intact.
    assert checkpoint_names(workdir) == ["ckpt-00000002", "ckpt-00000004"]
    for name in checkpoint_names(workdir):
        folder = os.path.join(workdir, "checkpoints", name)
        state = json.load(open(os.path.join(folder, "state.json")))
        assert state["variables_sha256"] == _digest(folder)["variables.npz"]
    if crash == "in_savez":
        assert not os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-00000006"))

    # what a process killed mid-save leaves behind (its pid no longer exists)
    orphan = os.path.join(workdir, "checkpoints", ".ckpt-00000006.tmp-999999999")
    os.makedirs(orphan)
    lines, log = _lines()
    train(tiny_cfg(reference_run["records"]), workdir, log=log)
    assert "from ckpt-00000004" in _resumed_from(lines)
    assert not os.path.exists(orphan)
    rows = read_ledger(workdir)
    redone = [r["step"] for r in rows[6:]][:2]
    assert [r["step"] for r in rows[:6]] == [1, 2, 3, 4, 5, 6] and redone == [5, 6]
    assert len(rows) == 16 + 2  # exactly one checkpoint interval (2 steps) done twice
    assert_ledgers_match(rows, reference_run["ledger"])
    assert_same_arrays(checkpoint_arrays(workdir), reference_run["final"])
    leftovers = [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if ".tmp" in n]
    assert not leftovers, leftovers


# ------------------------------------------------------------------------------------------
# Newest checkpoint's bytes overwritten
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", [
    "variables.npz",
    pytest.param("state.json", marks=pytest.mark.slow),
])
def test_damaged_newest_checkpoint_falls_back(reference_run, tmp_path, victim):
    from dualencoder.train.loop import train

    workdir = str(tmp_path / "run")
    shutil.copytree(reference_run["workdir"], workdir)
    newest = os.path.join(workdir, "checkpoints", checkpoint_names(workdir)[-1])
    assert newest.endswith("ckpt-00000016")
    path = os.path.join(newest, victim)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:  # overwrite the middle third with random bytes
        fh.seek(size // 3)
        fh.write(np.random.default_rng(0).bytes(size // 3))

    lines, log = _lines()
    with pytest.warns(UserWarning, match=r"checkpoint ckpt-00000016 is damaged"):
        train(tiny_cfg(reference_run["records"]), workdir, log=log)
    assert "from ckpt-00000014" in _resumed_from(lines)
    rows = read_ledger(workdir)
    assert [r["step"] for r in rows[16:]] == [15, 16]  # only the lost interval is redone
    assert_ledgers_match(rows, reference_run["ledger"])
    assert_same_arrays(checkpoint_arrays(workdir), reference_run["final"])


# ------------------------------------------------------------------------------------------
# NaN loss
# ------------------------------------------------------------------------------------------
def test_nan_loss_stops_keeps_last_good_checkpoint_and_restart_works(reference_run, tmp_path,
                                                                     monkeypatch):
    from dualencoder.train import loop as trainer

    nan_from = 7  # checkpoints at 2, 4, 6: the last good one is step 6
    real_make = trainer.make_train_step

    def make_poisoned(model, optimizer, strategy, cfg):
        real_step = real_make(model, optimizer, strategy, cfg)
        calls = {"n": 0}

        def step(batch):
            calls["n"] += 1
            if calls["n"] >= nan_from:  # real divergence: NaN inputs -> NaN loss and weights
                batch = dict(batch, images=batch["images"] * float("nan"))
            return real_step(batch)

        return step

    monkeypatch.setattr(trainer, "make_train_step", make_poisoned)
    workdir = str(tmp_path / "run")
    good = os.path.join(workdir, "checkpoints", "ckpt-00000006")
    written = {}

    def on_step(state):
        if state["step"] == 6:  # right after ckpt-00000006 was saved
            written.update(_digest(good))

    with pytest.raises(trainer.TrainingDiverged,
                       match=r"between step 7 and step 7 \(epoch 1\).*ckpt-00000006 is kept"):
        trainer.train(tiny_cfg(reference_run["records"]), workdir, log=lambda *_: None,
                      on_step=on_step)
    monkeypatch.undo()

    assert checkpoint_names(workdir) == ["ckpt-00000004", "ckpt-00000006"]
    assert written and _digest(good) == written  # neither overwritten nor deleted
    assert all(np.isfinite(a).all() for a in checkpoint_arrays(workdir).values())
    rows = read_ledger(workdir)
    assert rows[-1]["step"] == 7 and math.isnan(rows[-1]["loss"])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
        "checkpoint.json", "ckpt-00000004", "ckpt-00000006"]

    lines, log = _lines()
    trainer.train(tiny_cfg(reference_run["records"]), workdir, log=log)
    assert "from ckpt-00000006" in _resumed_from(lines)
    assert_ledgers_match(read_ledger(workdir), reference_run["ledger"])
    assert_same_arrays(checkpoint_arrays(workdir), reference_run["final"])
