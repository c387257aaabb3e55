"""Boundary caching: a tower trained above a boundary reads its frozen part's outputs from a
cache computed once. A cached run equals the same run with the frozen part run at every step
(losses per step, final weights), with gradient caching too, and resumes exactly."""

import os

import numpy as np
import pytest

from dualencoder.testing import tiny_locked_run_config
from test_train import final_weights, ledger

# head dropout off: the towers' own dropout is 0 in the tiny text tower, none in the tiny CNN
BASE = ["model.head_dropout=0", "run.ledger=true", "optim.epochs=2", "run.checkpoint_every=3",
        "optim.warmup_steps=2", "optim.lr=3e-3"]

SETTINGS = {  # name -> (image_trainable, text_trainable, expected plan)
    "text top-1": ("none", "1", ("pooled", "boundary")),
    "text all layers": ("none", "2", ("pooled", "boundary")),  # embeddings locked
    "image top block": ("1", "none", ("boundary", "pooled")),
    "both": ("1", "1", ("boundary", "boundary")),
    "text all, image locked (LiT)": ("none", "all", ("pooled", None)),
}


def cfg_of(records, image, text, *extra):
    return tiny_locked_run_config(*BASE, f"data.records={records}",
                                  f"model.image_trainable={image}",
                                  f"model.text_trainable={text}", *extra)


def run(cfg, workdir, **kwargs):
    from dualencoder.train.loop import train

    logs = []
    summary = train(cfg, str(workdir), log=logs.append, **kwargs)
    return summary, logs


def assert_same_run(a, b, *, rtol):
    la, lb = ledger(a), ledger(b)
    assert [r["ids"] for r in la] == [r["ids"] for r in lb]
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=rtol)
    for x, y in zip(final_weights(a), final_weights(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_boundary_cached_run_equals_uncached(synthetic_records, tmp_path, monkeypatch, name):
    from dualencoder.features import compute

    image, text, plan = SETTINGS[name]
    monkeypatch.setattr(compute, "STATE_DTYPE", np.float32)  # exact, up to float rounding
    train = synthetic_records["train"]
    on = cfg_of(train, image, text, f"data.val_records={synthetic_records['val']}")
    off = cfg_of(train, image, text, "run.cache_features=off",
                 f"data.val_records={synthetic_records['val']}")
    cached, logs = run(on, tmp_path / "cached")
    assert cached["cached_features"] == ", ".join(
        f"{side} {kind}" for side, kind in zip(("image", "text"), plan) if kind)
    plain, _ = run(off, tmp_path / "plain")
    assert plain["cached_features"] is None
    assert_same_run(tmp_path / "cached", tmp_path / "plain", rtol=1e-4)
    for key in ("val_rsum", "val_loss"):  # validation read the same caches
        assert cached["history"][-1][key] == pytest.approx(plain["history"][-1][key],
                                                           rel=1e-3, abs=1e-3)
    names = os.listdir(tmp_path / "cached" / "features")
    assert any("-states-" in n for n in names) == ("boundary" in plan), names


def test_float16_states_stay_close(synthetic_records, tmp_path):
    """The default half-precision states: the same batches, losses within float16 rounding
    (weights drift a little further: Adam amplifies tiny gradient differences)."""
    train = synthetic_records["train"]
    run(cfg_of(train, "1", "1"), tmp_path / "cached")
    run(cfg_of(train, "1", "1", "run.cache_features=off"), tmp_path / "plain")
    a, b = ledger(tmp_path / "cached"), ledger(tmp_path / "plain")
    assert [r["ids"] for r in a] == [r["ids"] for r in b]
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=2e-3)


def test_gradient_caching_on_the_boundary_path(synthetic_records, tmp_path, monkeypatch):
    from dualencoder.features import compute

    monkeypatch.setattr(compute, "STATE_DTYPE", np.float32)
    train = synthetic_records["train"]
    # text top-1 (no BatchNorm): micro-batches of 4 give the full batch's gradient
    run(cfg_of(train, "none", "1"), tmp_path / "full")
    run(cfg_of(train, "none", "1", "optim.micro_batch=4"), tmp_path / "micro")
    assert_same_run(tmp_path / "micro", tmp_path / "full", rtol=1e-4)
    # the image block's BatchNorm sees micro-batches either way: cached equals uncached
    run(cfg_of(train, "1", "1", "optim.micro_batch=4"), tmp_path / "both")
    run(cfg_of(train, "1", "1", "optim.micro_batch=4", "run.cache_features=off"),
        tmp_path / "both_plain")
    assert_same_run(tmp_path / "both", tmp_path / "both_plain", rtol=1e-4)


def test_interrupted_boundary_run_resumes_exactly(synthetic_records, tmp_path):
    from dualencoder.train.loop import TrainingInterrupted

    train = synthetic_records["train"]
    cfg = cfg_of(train, "1", "2")
    run(cfg, tmp_path / "whole")

    def stop(state):
        if state["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        run(cfg, tmp_path / "cut", on_step=stop)
    _, logs = run(cfg, tmp_path / "cut")
    assert any("resuming" in line for line in logs)
    assert any("reusing cached caption states" in line for line in logs)
    assert_same_run(tmp_path / "cut", tmp_path / "whole", rtol=1e-5)


def test_cache_key_covers_the_boundary_and_nothing_else(synthetic_records, tmp_path):
    from dualencoder.features import compute
    from dualencoder.train import setup

    train, directory = synthetic_records["train"], str(tmp_path)
    logs = []
    model = setup.build(cfg_of(train, "1", "1"))
    a = compute.text_states(model, cfg_of(train, "1", "1"), train, directory, log=logs.append)
    # another seed, head or learning rate: the same cache
    # (tiny towers are random: the other run gets the same tower weights, as a pretrained
    # tower would have)
    other = cfg_of(train, "1", "1", "run.seed=7", "model.head=mlp", "optim.lr=1e-4")
    second = setup.build(other)
    for src, dst in zip(model.text_tower.weights, second.text_tower.weights):
        dst.assign(src.numpy())
    b = compute.text_states(second, other, train, directory, log=logs.append)
    assert a.path == b.path and "reusing" in logs[-1]
    # another boundary: another cache
    deeper = cfg_of(train, "1", "2")
    c = compute.text_states(setup.build(deeper), deeper, train, directory, log=logs.append)
    assert c.path != a.path
    # each distinct caption once, at its own length (no padding stored)
    starts, first = np.unique(a.index["start"], return_index=True)
    assert a.rows.shape[0] == int(a.index["length"][first].sum())
    assert a.index["length"].max() < 24 and a.rows.shape[0] < len(starts) * 24
    assert a.rows.dtype == np.float16


def test_damaged_state_cache_is_recomputed(synthetic_records, tmp_path):
    from dualencoder.features import compute
    from dualencoder.train import setup

    train = synthetic_records["train"]
    cfg = cfg_of(train, "1", "1")
    model = setup.build(cfg)
    first = compute.image_states(model, cfg, train, str(tmp_path), log=lambda *_: None)
    expected = np.array(first.rows)
    with open(os.path.join(first.path, "rows.bin"), "r+b") as fh:
        fh.truncate(100)
    logs = []
    again = compute.image_states(model, cfg, train, str(tmp_path), log=logs.append)
    assert len(logs) == 1 and "damaged; computing it again" in logs[0]
    np.testing.assert_array_equal(np.array(again.rows), expected)


def test_full_disk_leaves_nothing_behind(synthetic_records, tmp_path, monkeypatch):
    import errno

    from dualencoder.features import compute, store
    from dualencoder.train import setup

    train = synthetic_records["train"]
    cfg = cfg_of(train, "none", "1")
    model = setup.build(cfg)
    real_write = store.RowWriter._write_rows

    def full_after_first(self, data):  # the disk fills up after the first batch
        if self.written:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(store.RowWriter, "_write_rows", full_after_first)
    with pytest.raises(store.CacheWriteError, match="no space left on the device"):
        compute.text_states(model, cfg, train, str(tmp_path), log=lambda *_: None)
    assert os.listdir(tmp_path) == []  # no partial folder, no store
@pytest.mark.parametrize("key, value, needle", [
    ("model.text_trainable", "3", "text tower has 2 transformer layers"),
    ("model.image_trainable", "4", "has 3 blocks"),
])
def test_trainable_above_the_depth_is_one_error(key, value, needle):
    from dualencoder.train import setup

    with pytest.raises(ValueError, match=needle):
        setup.build(tiny_locked_run_config(f"{key}={value}"))


def test_cache_features_on_says_why_it_cannot():
    from dualencoder.config import ConfigError
    from dualencoder.features.plan import plan_cache

    with pytest.raises(ConfigError, match="nothing is frozen"):
        plan_cache(tiny_locked_run_config("model.image_trainable=all",
                                          "model.text_trainable=all",
                                          "run.cache_features=on"))
    with pytest.raises(ConfigError, match="data.augment=true"):
        plan_cache(tiny_locked_run_config("model.text_trainable=1", "data.augment=true",
                                          "run.cache_features=on"))
    plan = plan_cache(tiny_locked_run_config("model.text_trainable=1", "data.augment=true"))
    assert (plan.image, plan.text) == (None, "boundary")  # auto: augmented images run live
