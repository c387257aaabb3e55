"""Gradient caching (`optim.micro_batch`, dualencoder/grad_cache.py): one cached step's
parameter gradients equal the full-batch step's for every loss, with dropout replayed and with
a BatchNorm tower (against a reference that normalises per micro-batch); BatchNorm statistics
and seeds end where one pass leaves them; a 20-step run (and its resume) equals the plain
full-batch run; two replicas under MirroredStrategy equal one device; the old split-loss
accumulation is not the same thing. Tiny towers (dualencoder.testing).

Run as a script, this file is the two-device worker (device setup must precede TF start-up):
    python tests/test_grad_cache.py single|mirrored OUT.json
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train import final_weights, ledger

B = 16  # pairs per test batch
K = 4  # micro-batches: M = B / 4


def _build(**overrides):
    from dualencoder.testing import tiny_model

    import keras

    keras.utils.set_random_seed(0)
    return tiny_model(**{"head_dropout": 0.0, "image_trainable": "none", **overrides})


def _batch(model, seed=0):
    import tensorflow as tf

    from dualencoder.testing import tiny_batch

    # 6 images for 16 captions: multi-positive groups that cross micro-batch boundaries
    batch = tiny_batch(model, batch_size=B, seed=seed, images_per_batch=6)
    return {k: tf.convert_to_tensor(v) for k, v in batch.items() if k != "caption"}


def reference_gradients(model, batch, chunks=1):
    """The plain step's gradients under one tape: the towers run on `chunks` consecutive
    slices (1 = the whole batch at once), the loss on the concatenated embeddings."""
    import tensorflow as tf

    from dualencoder.model.training_step import embed_batch

    @tf.function
    def fn(batch):
        with tf.GradientTape() as tape:
            size = B // chunks
            outs = [embed_batch(model, {k: v[i * size:(i + 1) * size] for k, v in batch.items()})
                    for i in range(chunks)]
            img = tf.concat([o[0] for o in outs], 0)
            txt = tf.concat([o[1] for o in outs], 0)
            loss, _ = model.compute_contrastive_loss(img, txt, batch["image_index"])
        grads = tape.gradient(loss, model.trainable_variables)
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                for g, v in zip(grads, model.trainable_variables)], loss

    grads, loss = fn(batch)
    return [g.numpy() for g in grads], float(loss)


def cached(model, batch, k=K):
    import tensorflow as tf

    from dualencoder.train.grad_cache import cached_gradients

    fn = tf.function(lambda b: cached_gradients(model, b, k))
    grads, metrics = fn(batch)
    return [g.numpy() for g in grads], float(metrics["loss"])


def assert_same_gradients(got, want, rtol=1e-5):
    assert len(got) == len(want)
    scale = max(float(np.max(np.abs(w))) for w in want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6 * scale)


def snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


# ----------------------------------------------------------------------------------------
# One step's gradients
# ----------------------------------------------------------------------------------------
LOSSES = {"clip": {}, "soft": {"loss": "soft"}, "siglip": {"loss": "siglip"},
          "clip+max_violation": {"extra_loss": "max_violation", "extra_loss_weight": 0.5}}


@pytest.mark.parametrize("name", list(LOSSES))
def test_cached_gradients_equal_full_batch(name):
    model = _build(**LOSSES[name])
    batch = _batch(model)
    want, want_loss = reference_gradients(model, batch)
    got, got_loss = cached(model, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert_same_gradients(got, want)
    # the loss's own variables (temperature, SigLIP bias) get their gradient from step 2
    names = [v.path for v in model.trainable_variables]
    for i, path in enumerate(names):
        if "logit" in path:
            assert abs(got[i]) > 0, path
    assert model.text_tower.trainable_variables  # the text tower is trained


def test_dropout_is_replayed():
    """With dropout in the heads, pass 2 draws pass 1's masks (same seeds per micro-batch),
    and the seeds end where one pass over the micro-batches leaves them."""
    model = _build(head_dropout=0.3)
    batch = _batch(model)
    from dualencoder.train.grad_cache import state_variables

    seeds = [v for v in state_variables(model) if "seed" in v.path]
    assert seeds, "the mlp heads have Dropout layers"
    start = snapshot(seeds)
    want, want_loss = reference_gradients(model, batch, chunks=K)
    after_reference = snapshot(seeds)
    assert any((a != b).any() for a, b in zip(start, after_reference))
    for v, value in zip(seeds, start):
        v.assign(value)
    got, got_loss = cached(model, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert_same_gradients(got, want)
    for a, b in zip(snapshot(seeds), after_reference):
        np.testing.assert_array_equal(a, b)
    # the masks matter: other draws give another gradient
    other, _ = reference_gradients(model, batch, chunks=K)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(other, want))


def test_batchnorm_tower_normalises_per_micro_batch():
    """A trained CNN with BatchNorm: the gradient of the reference that runs the tower per
    micro-batch (what caching computes), and moving statistics updated once per
    micro-batch, as that single pass leaves them."""
    model = _build(image_trainable="all", head_dropout=0.1)
    batch = _batch(model)
    from dualencoder.train.grad_cache import state_variables

    state = state_variables(model)
    bn = [v for v in state if "moving" in v.path]
    assert len(bn) == 6  # 3 BatchNorm layers of the tiny CNN
    start = snapshot(state)
    want, want_loss = reference_gradients(model, batch, chunks=K)
    after_reference = snapshot(state)
    for v, value in zip(state, start):
        v.assign(value)
    got, got_loss = cached(model, batch)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    assert_same_gradients(got, want)
    for a, b, v in zip(snapshot(state), after_reference, state):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=v.path)
    moved = [not np.allclose(a, b) for a, b, v in zip(after_reference, start, state)
             if "moving" in v.path]
    assert all(moved)
    # and normalising the whole batch at once is another function (documented)
    for v, value in zip(state, start):
        v.assign(value)
    whole, _ = reference_gradients(model, batch, chunks=1)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(whole, want))


def test_split_loss_accumulation_is_not_the_full_batch_gradient():
    """The old behaviour (a loss per micro-batch) gives another gradient: each caption sees
    only its micro-batch's negatives."""
    import tensorflow as tf

    from dualencoder.model.training_step import embed_batch

    model = _build()
    batch = _batch(model)
    want, _ = reference_gradients(model, batch)
    m = B // K
    with tf.GradientTape() as tape:
        total = 0.0
        for i in range(K):
            part = {k: v[i * m:(i + 1) * m] for k, v in batch.items()}
            img, txt = embed_batch(model, part)
            total += model.compute_contrastive_loss(img, txt, part["image_index"])[0] / K
    split = [tf.zeros_like(v).numpy() if g is None else tf.convert_to_tensor(g).numpy()
             for g, v in zip(tape.gradient(total, model.trainable_variables),
                             model.trainable_variables)]
    got, _ = cached(model, batch)
    assert_same_gradients(got, want)
    with pytest.raises(AssertionError):
        assert_same_gradients(split, want, rtol=1e-3)


# ----------------------------------------------------------------------------------------
# The training step and the training loop
# ----------------------------------------------------------------------------------------
# The step-level comparisons train the text tower's top layer, not its embedding tables: the
# plain step hands Keras the tables' gradients as IndexedSlices, and with a token repeated in
# the batch AdamW then squares each slice before summing them (second moment) and
# clip_by_global_norm takes the norm of the slices, not of their sum; the cached step (like
# split-loss accumulation) sums gradients densely first. The gradient tests above cover the
# whole text tower.
TEXT = "model.text_trainable=1"


def _cfg(*sets):
    from dualencoder.config import Config

    return Config.from_sources(None, [
        "model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "model.head_dropout=0.0", "model.image_trainable=none", f"data.batch_size={B}",
        "optim.warmup_steps=0", "optim.lr=1e-2", TEXT, *sets])


def _steps(cfg, batches):
    """Build from seed 0, run `make_train_step` over `batches`; (losses, weights)."""
    import keras
    import tensorflow as tf

    from dualencoder.train import setup
    from dualencoder.train.step import make_train_step

    setup.set_precision(cfg.run.precision)
    try:
        keras.utils.set_random_seed(0)
        model = setup.build(cfg)
        optimizer = setup.make_optimizer(cfg, steps_per_epoch=10)
        optimizer.build(model.trainable_variables)
        step = make_train_step(model, optimizer, tf.distribute.get_strategy(), cfg)
        losses = [float(step(b)["loss"]) for b in batches]
        return losses, snapshot(model.trainable_variables)
    finally:
        setup.set_precision("float32")


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_train_step_with_micro_batches_equals_full_batch(precision):
    model = _build()
    batches = [_batch(model, seed=s) for s in range(3)]
    sets = [f"run.precision={precision}", "optim.clipnorm=1.0"]
    plain, plain_w = _steps(_cfg(*sets), batches)
    micro, micro_w = _steps(_cfg(*sets, f"optim.micro_batch={B // K}"), batches)
    rtol = 1e-5 if precision == "float32" else 1e-3
    np.testing.assert_allclose(micro, plain, rtol=rtol)
    for a, b in zip(micro_w, plain_w):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_twenty_step_run_equals_full_batch_and_resumes(synthetic_records, tmp_path):
    """`train()` with optim.micro_batch=4 at batch 16: the same data order, losses and final
    weights as the plain batch-16 run, over 20 steps; interrupted and resumed, the same again."""
    from dualencoder.config import Config
    from dualencoder.train.loop import train

    class Interrupt(Exception):
        pass

    def cfg(*extra):
        return Config.from_sources(None, [
            "model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
            "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
            "model.image_trainable=none", "model.head_dropout=0.0", "run.cache_features=off", TEXT,
            f"data.batch_size={B}", "run.checkpoint_every=5", "run.val_subset=0",
            "optim.warmup_steps=2", "optim.max_steps=20", "optim.epochs=3", "run.ledger=true",
            f"data.records={synthetic_records['train']}", *extra])

    quiet = dict(log=lambda *_: None)
    runs = {}
    for name, extra in [("plain", []), ("micro", ["optim.micro_batch=4"])]:
        train(cfg(*extra), str(tmp_path / name), **quiet)
        runs[name] = ledger(str(tmp_path / name))

    def crash(state):
        if state["step"] == 12:
            raise Interrupt()

    with pytest.raises(Interrupt):
        train(cfg("optim.micro_batch=4"), str(tmp_path / "resumed"), on_step=crash, **quiet)
    train(cfg("optim.micro_batch=4"), str(tmp_path / "resumed"), **quiet)
    runs["resumed"] = ledger(str(tmp_path / "resumed"))

    assert len(runs["plain"]) == 20
    for name in ("micro", "resumed"):
        assert [r["ids"] for r in runs[name]] == [r["ids"] for r in runs["plain"]]
    plain_loss = [r["loss"] for r in runs["plain"]]
    np.testing.assert_allclose([r["loss"] for r in runs["micro"]], plain_loss, rtol=1e-4)
    np.testing.assert_allclose([r["loss"] for r in runs["resumed"]],
                               [r["loss"] for r in runs["micro"]], rtol=1e-5)
    for a, b in zip(final_weights(str(tmp_path / "micro")), final_weights(str(tmp_path / "plain"))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(final_weights(str(tmp_path / "resumed")), final_weights(str(tmp_path / "micro"))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_locked_towers_on_cached_features_equal_full_batch(synthetic_records, tmp_path,
                                                           monkeypatch):
    """Both towers locked, heads trained on cached tower features (the LiT path): micro-batches
    of 4 give the plain batch-16 run's data order, losses and final weights."""
    from dualencoder.testing import tiny_locked_run_config
    from dualencoder.train import grad_cache
    from dualencoder.train.loop import train

    made = []
    original = grad_cache.make_replica_step
    monkeypatch.setattr(grad_cache, "make_replica_step",
                        lambda *a, **k: made.append(a[2].optim.micro_batch) or original(*a, **k))
    runs = {}
    for name, extra in [("plain", []), ("micro", ["optim.micro_batch=4"])]:
        cfg = tiny_locked_run_config(
            f"data.records={synthetic_records['train']}", "optim.max_steps=12",
            "optim.epochs=2", "optim.warmup_steps=2", "run.ledger=true",
            "run.checkpoint_every=0", f"run.features_dir={tmp_path / 'features'}", *extra)
        summary = train(cfg, str(tmp_path / name), log=lambda *_: None)
        assert summary["cached_features"] == "image pooled, text pooled"
        runs[name] = ledger(str(tmp_path / name))
    assert made == [4]  # the micro-batched run took the gradient-caching step
    assert len(runs["plain"]) == 12
    assert [r["ids"] for r in runs["micro"]] == [r["ids"] for r in runs["plain"]]
    np.testing.assert_allclose([r["loss"] for r in runs["micro"]],
                               [r["loss"] for r in runs["plain"]], rtol=1e-5)
    for a, b in zip(final_weights(str(tmp_path / "micro")), final_weights(str(tmp_path / "plain"))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
def test_config_keys():
    from dualencoder.config import Config, ConfigError
    from dualencoder.train.grad_cache import micro_batches

    with pytest.raises(ConfigError, match="optim.micro_batch=M.*optim.split_loss_accum=N"):
        Config.from_sources(None, ["optim.grad_accum=4"])
    with pytest.raises(ConfigError, match="does not divide data.batch_size=64"):
        Config.from_sources(None, ["optim.micro_batch=24"])
    with pytest.raises(ConfigError, match="exclude each other"):
        Config.from_sources(None, ["optim.micro_batch=16", "optim.split_loss_accum=2"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        Config.from_sources(None, ["optim.micro_batch=-1"])
    cfg = Config.from_sources(None, ["data.batch_size=48", "optim.micro_batch=8"])
    assert micro_batches(cfg) == 6 and micro_batches(cfg, replicas=2) == 3
    with pytest.raises(ConfigError, match="per-replica batch.*24 pairs each"):
        micro_batches(Config.from_sources(None, ["data.batch_size=48",
                                                 "optim.micro_batch=16"]), replicas=2)


# ----------------------------------------------------------------------------------------
# Two replicas
# ----------------------------------------------------------------------------------------
def _run_worker(mode, out):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), mode, str(out)], env=env,
                          timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_mirrored_cached_step_equals_single_device_full_batch(tmp_path):
    single = _run_worker("single", tmp_path / "single.json")
    mirrored = _run_worker("mirrored", tmp_path / "mirrored.json")
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["micro_batches"] == 2 and single["micro_batches"] == 0
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["weights"], single["weights"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mirrored["weights_abs"], single["weights_abs"], rtol=1e-5,
                               atol=1e-5)


def _worker(mode, out):
    """Two steps on one global batch of 8 (3 images): "single" plain full batch on one
    device; "mirrored" two logical CPUs, micro-batches of 2 (2 per replica)."""
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from dualencoder.train import setup
    from dualencoder.config import Config
    from dualencoder.testing import tiny_batch
    from dualencoder.train.step import make_train_step

    micro = 2 if mode == "mirrored" else 0
    cfg = Config.from_sources(None, [
        "model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "model.head_dropout=0.0", "data.batch_size=8", "optim.warmup_steps=0",
        "model.image_trainable=none", "optim.lr=1e-2", f"optim.micro_batch={micro}", TEXT])
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored"
                else tf.distribute.get_strategy())
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = setup.build(cfg)
        optimizer = setup.make_optimizer(cfg, steps_per_epoch=10)
        optimizer.build(model.trainable_variables)
    batch = tiny_batch(model, batch_size=8, seed=1, images_per_batch=3)
    batch = {k: tf.convert_to_tensor(v) for k, v in batch.items() if k != "caption"}
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat(2))
    step = make_train_step(model, optimizer, strategy, cfg)
    losses = [float(step(b)["loss"]) for b in dataset]
    weights = [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]
    with open(out, "w") as fh:
        json.dump({"losses": losses, "replicas": strategy.num_replicas_in_sync,
                   "micro_batches": micro and 8 // strategy.num_replicas_in_sync // micro,
                   "weights": [float(np.sum(w)) for w in weights],
                   "weights_abs": [float(np.sum(np.abs(w))) for w in weights]}, fh)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _worker(sys.argv[1], sys.argv[2])
