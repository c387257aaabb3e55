"""Helpers of the reliability suite: tiny-tower settings, readers for the audit trail
(ledger.jsonl) and checkpoints, and a CLI runner. The fixtures live in conftest.py."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = ["model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "data.batch_size=16", "run.checkpoint_every=2", "run.val_subset=64",
        "optim.warmup_steps=2", "run.ledger=true", "optim.epochs=2"]
STEPS_PER_EPOCH = 8  # 128 images / batch 16
NUM_IMAGES = 128


# Both towers cut at a boundary: their frozen parts' outputs are cached once and every step
# reads them (features.CachedPairs), the top block / layer and the heads train.
BOUNDARY = ["model.image_trainable=1", "model.text_trainable=1"]


def tiny_cfg(records, extra=()):
    from dualencoder.config import Config

    return Config.from_sources(None, TINY + [f"data.records={records}"] + list(extra))


def set_args(extra=()):
    """TINY (+ extra) as `--set` command-line arguments."""
    return [a for s in TINY + list(extra) for a in ("--set", s)]


def read_ledger(workdir):
    """All ledger rows in file order (a resumed run appends; redone steps appear twice)."""
    rows = []
    with open(os.path.join(workdir, "ledger.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
    return rows


def last_per_step(rows):
    """The last record of each step, in step order (what the model was finally trained on)."""
    steps = {}
    for row in rows:
        steps[row["step"]] = row
    return [steps[s] for s in sorted(steps)]


def checkpoint_names(workdir):
    with open(os.path.join(workdir, "checkpoints", "checkpoint.json"), encoding="utf-8") as fh:
        return json.load(fh)["checkpoints"]


def checkpoint_arrays(workdir, name=None):
    """{variable key: array} of a checkpoint (the newest the pointer lists by default)."""
    name = name or checkpoint_names(workdir)[-1]
    with np.load(os.path.join(workdir, "checkpoints", name, "variables.npz")) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(a, b, rtol=1e-5, atol=1e-6):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def assert_ledgers_match(rows, reference_rows, loss_rtol=1e-5):
    """Same ids at every step as the reference, each image exactly once per epoch."""
    got, ref = last_per_step(rows), last_per_step(reference_rows)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    assert [r["ids"] for r in got] == [r["ids"] for r in ref]
    assert [r["epoch"] for r in got] == [r["epoch"] for r in ref]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=loss_rtol)
    for epoch in sorted({r["epoch"] for r in got}):
        ids = [i for r in got if r["epoch"] == epoch for i in r["ids"]]
        assert sorted(ids) == list(range(NUM_IMAGES)), f"epoch {epoch}: not each image once"


def quiet(*_):
    pass


def run_cli(args, *, timeout=300, env=None):
    """`python <args>` from the repository root; returns the CompletedProcess."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow",
                "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
