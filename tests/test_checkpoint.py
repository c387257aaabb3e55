import json
import os

import numpy as np
import pytest

from dualencoder.train.checkpoint import CheckpointError, CheckpointManager


class Var:
    """A stand-in for a Keras/TF variable: shape, numpy(), assign()."""

    def __init__(self, value):
        self.value = np.asarray(value, dtype=np.float32)

    @property
    def shape(self):
        return self.value.shape

    def numpy(self):
        return self.value.copy()

    def assign(self, value):
        assert value.shape == self.value.shape
        self.value = np.asarray(value, dtype=np.float32).copy()


def groups(seed):
    rng = np.random.default_rng(seed)
    return {"model": [Var(rng.normal(size=(3, 2))), Var(rng.normal(size=(2,)))],
            "optimizer": [Var(rng.normal(size=(4,)))]}


def values(g):
    return [v.value for k in sorted(g) for v in g[k]]


def test_round_trip_and_keep(tmp_path):
    m = CheckpointManager(str(tmp_path), keep=2)
    assert m.restore(groups(0)) is None
    saved = {}
    for step in (10, 20, 30):
        g = groups(step)
        m.save(g, {"step": step, "epoch": 0})
        saved[step] = values(g)
    assert m.checkpoints() == ["ckpt-00000020", "ckpt-00000030"]
    assert not os.path.exists(tmp_path / "ckpt-00000010")
    target = groups(99)
    state = m.restore(target)
    assert state["step"] == 30 and state["checkpoint"] == "ckpt-00000030"
    for a, b in zip(values(target), saved[30]):
        np.testing.assert_array_equal(a, b)


def test_damaged_newest_falls_back_with_warning(tmp_path):
    m = CheckpointManager(str(tmp_path), keep=2)
    g20, g30 = groups(20), groups(30)
    m.save(g20, {"step": 20})
    m.save(g30, {"step": 30})
    npz = tmp_path / "ckpt-00000030" / "variables.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    target = groups(0)
    with pytest.warns(UserWarning, match="ckpt-00000030 is damaged"):
        state = m.restore(target)
    assert state["step"] == 20
    for a, b in zip(values(target), values(g20)):
        np.testing.assert_array_equal(a, b)


def test_crash_during_save_keeps_pointer(tmp_path, monkeypatch):
    m = CheckpointManager(str(tmp_path), keep=2)
    m.save(groups(1), {"step": 10})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        m.save(groups(2), {"step": 20})
    monkeypatch.undo()
    assert json.loads((tmp_path / "checkpoint.json").read_text())["checkpoints"] == ["ckpt-00000010"]
    assert m.restore(groups(0))["step"] == 10


def test_incompatible_model_is_an_error(tmp_path):
    m = CheckpointManager(str(tmp_path))
    m.save(groups(1), {"step": 1})
    other = {"model": [Var(np.zeros((5, 2))), Var(np.zeros(2))], "optimizer": [Var(np.zeros(4))]}
    with pytest.raises(CheckpointError, match="different model configuration"):
        m.restore(other)
