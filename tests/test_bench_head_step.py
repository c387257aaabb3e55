"""bench/head_step.py and its reference loss (bench/reference/clip_loss_explicit.py), and
bench/onednn.py's child measurement: the benchmarks run and time what they say they time."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bench.reference.clip_loss_explicit import clip_loss_explicit  # noqa: E402
from dualencoder import losses  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("index", [None, [3, 1, 3, 3, 0, 1, 7, 0]])
def test_explicit_reference_equals_product_loss_and_gradients(index):
    rng = np.random.default_rng(4)
    img = tf.math.l2_normalize(tf.constant(rng.normal(size=(8, 6)), tf.float32), -1)
    txt = tf.math.l2_normalize(tf.constant(rng.normal(size=(8, 6)), tf.float32), -1)
    ids = tf.range(8) if index is None else tf.constant(index)

    def both(fn):
        with tf.GradientTape() as tape:
            tape.watch([img, txt])
            loss = fn(img, txt)
        return float(loss), [g.numpy() for g in tape.gradient(loss, [img, txt])]

    want, want_grads = both(lambda i, t: clip_loss_explicit(i, t, 9.0, ids))
    got, got_grads = both(lambda i, t: losses.clip_loss(
        i, t, 9.0, image_index=None if index is None else ids))
    assert got == pytest.approx(want, rel=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_head_step_bench_writes_its_table_and_json(tmp_path):
    out = tmp_path / "head_step.json"
    done = subprocess.run([sys.executable, "bench/head_step.py", "--batch", "40", "--rounds",
                           "2", "--steps", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"explicit", "product", "explicit_xla", "product_xla"}
    assert result["batch"] == 40 and result["cpu"] and result["benchmark"] == "head_step"
    assert result["cores"] >= 1 and isinstance(result["bf16_flags"], list) and result["date"]
    # every variant starts from the same weights and features: the same first loss
    first = [r["first_loss"] for r in rows.values()]
    assert max(first) - min(first) < 1e-4 * abs(first[0])
    assert all(len(r["rounds_s_per_step"]) == 2 and r["median_s_per_step"] > 0
               for r in rows.values())
    assert "product" in done.stdout and "vs explicit" in done.stdout


@pytest.mark.parametrize("flag", ["0", "1"])
def test_onednn_child_runs_with_the_requested_kernels(flag):
    import os

    spec = json.dumps({"size": 32, "images": 32, "tower": "tiny"})
    done = subprocess.run([sys.executable, "bench/onednn.py", "--child", spec],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) == {"onednn", "img_per_s", "user_s", "sys_s", "minor_faults"}
    assert result["onednn"] is (flag == "1")  # TensorFlow's own state, not the variable
    assert result["img_per_s"] > 0 and result["user_s"] >= 0


@pytest.mark.parametrize("script, args, message", [
    ("head_step.py", ["--batch", "3"], "--batch: expected at least 5"),
    ("head_step.py", ["--steps", "0"], "--steps: expected a positive integer"),
    ("onednn.py", ["--images", "40"], "--images: expected a multiple of 32"),
    ("onednn.py", ["--rounds", "0"], "--rounds: expected a positive integer"),
])
def test_bench_bad_arguments_exit_2_and_write_nothing(tmp_path, script, args, message):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, f"bench/{script}", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-1000:]
    assert not out.exists()


def test_onednn_names_a_failed_measurement(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "bench/onednn.py", "--tower", "nope", "--rounds", "1",
                           "--sizes", "32", "--images", "32", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "error: the measurement of nope at 32 px" in done.stderr
    assert "Unknown image tower 'nope'" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
