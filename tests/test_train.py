"""train.py and the training loop: CLI validation, exact resume, cached-feature equivalence,
learning on the synthetic scenes. Tiny towers throughout (dualencoder.testing)."""

import json
import os

import numpy as np
import pytest

from dualencoder.cli import train as train_cli
from dualencoder.config import Config

TINY = ["model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "data.batch_size=16", "run.checkpoint_every=2", "run.val_subset=64",
        "optim.warmup_steps=2", "run.ledger=true"]


def tiny_cfg(records, val=None, extra=()):
    sets = TINY + [f"data.records={records}"] + ([f"data.val_records={val}"] if val else [])
    return Config.from_sources(None, sets + list(extra))


def ledger(workdir):
    """Each step's ids and loss; a step redone after a resume keeps its last record."""
    steps = {}
    with open(os.path.join(workdir, "ledger.jsonl")) as fh:
        for line in fh:
            row = json.loads(line)
            steps[row["step"]] = row
    return [steps[s] for s in sorted(steps)]


def final_weights(workdir):
    import dualencoder

    model = dualencoder.load(os.path.join(workdir, "model"))
    return [np.asarray(v) for v in model.weights]


# ----------------------------------------------------------------------------------------
# CLI validation: exit code 2 with a message naming the bad value, before training starts
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--set", "data.batch_size=0"], "data.batch_size=0"),
    (["--batch-size", "-4"], "data.batch_size=-4"),
    (["--set", "optim.nope=1"], "unknown key 'optim.nope'"),
    (["--records", "/nonexistent/records", "--workdir", "w"], "/nonexistent/records"),
    (["--records", "x"], "--workdir is required"),
    (["--config", "/nonexistent.json"], "/nonexistent.json"),
])
def test_cli_rejects_bad_input(argv, needle, capsys):
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err
    assert len(err.splitlines()) == 1


def test_cli_rejects_unknown_tower_and_bad_records(synthetic_records, tmp_path, capsys):
    argv = ["--records", synthetic_records["train"], "--workdir", str(tmp_path / "w")]
    sets = [a for s in TINY for a in ("--set", s)]
    assert train_cli.main(argv + sets + ["--set", "model.image_tower=notanet"]) == 2
    assert "notanet" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_cli.main(["--records", str(empty), "--workdir", str(tmp_path / "w2")] + sets) == 2
    assert "manifest" in capsys.readouterr().err


def test_help_config_lists_every_key(capsys):
    assert train_cli.main(["--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("model.image_tower", "optim.lr", "data.batch_size", "run.precision"):
        assert key in out
    lines = out.splitlines()
    # every key is followed by its description (indented deeper than the key)
    keys = [i for i, line in enumerate(lines) if line.startswith("  ") and " = " in line
            and not line.startswith("      ")]
    assert len(keys) == sum(len(vars(getattr(Config(), s))) for s in vars(Config()))
    for i in keys:
        assert lines[i + 1].startswith("      ") and len(lines[i + 1].strip()) > 8, lines[i]
    assert '  optim.lr = 0.001' in out and "AdamW peak learning rate" in out


# ----------------------------------------------------------------------------------------
# Exact resume
# ----------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


@pytest.mark.parametrize("locked", [[], ["model.image_trainable=none",
                                         "model.text_trainable=none"]])
def test_resume_is_exact(synthetic_records, tmp_path, locked):
    from dualencoder.train.loop import train

    records = synthetic_records["train"]
    extra = ["optim.epochs=2", "model.head_dropout=0.1"] + locked
    straight = str(tmp_path / "straight")
    train(tiny_cfg(records, extra=extra), straight, log=lambda *_: None)

    resumed = str(tmp_path / "resumed")

    def crash_at_step_11(state):
        if state["step"] == 11:  # mid-epoch 2 (8 steps per epoch); last checkpoint at step 10
            raise Interrupt()

    with pytest.raises(Interrupt):
        train(tiny_cfg(records, extra=extra), resumed, log=lambda *_: None,
              on_step=crash_at_step_11)
    lines = []
    train(tiny_cfg(records, extra=extra), resumed, log=lines.append)
    assert any("resuming" in str(line) and "step 10" in str(line) for line in lines)

    a, b = ledger(straight), ledger(resumed)
    assert [r["ids"] for r in a] == [r["ids"] for r in b]
    ids_epoch1 = [i for r in a if r["epoch"] == 1 for i in r["ids"]]
    assert len(ids_epoch1) == len(set(ids_epoch1))  # each image at most once per epoch
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
    for x, y in zip(final_weights(straight), final_weights(resumed)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    if locked:  # checkpoints leave the frozen towers out, and record their digests
        import dualencoder

        model = dualencoder.load(os.path.join(resumed, "model"))
        ckpt = os.path.join(resumed, "checkpoints", "ckpt-00000016")
        with np.load(os.path.join(ckpt, "variables.npz")) as f:
            stored = sum(k.startswith("model/") for k in f.files)
        towers = len(model.image_tower.weights) + len(model.text_tower.weights)
        assert stored == len(model.variables) - towers > 0
        with open(os.path.join(ckpt, "state.json")) as fh:
            assert set(json.load(fh)["frozen_towers"]) == {"image_tower", "text_tower"}


def test_frozen_towers_write_the_best_epoch_once(synthetic_records, tmp_path):
    """With frozen towers an improving epoch stores only the heads (best_heads.npz); the
    model folder is written once, at the end, with the best epoch's weights, also when the
    run was interrupted after its best epoch and resumed."""
    import dualencoder
    from dualencoder.train import validation
    from dualencoder.train.loop import BEST_HEADS, train

    extra = ["model.image_trainable=none", "model.text_trainable=none", "optim.epochs=4",
             "optim.schedule=plateau", "optim.lr=0.3", "model.head_dropout=0.0"]
    cfg = tiny_cfg(synthetic_records["train"], synthetic_records["val"], extra)
    straight = str(tmp_path / "straight")
    summary = train(cfg, straight, log=lambda *_: None)
    best = summary["best"]["epoch"]
    last = summary["history"][-1]["val_rsum"]
    assert 1 < best < summary["epochs"] and last < summary["best"]["val_rsum"], \
        summary["history"]  # the last epoch is worse than the best one
    assert not os.path.exists(os.path.join(straight, BEST_HEADS))
    model = dualencoder.load(os.path.join(straight, "model"))
    again = validation.validate(model, cfg, synthetic_records["val"], log=lambda *_: None)
    assert again["val_rsum"] == pytest.approx(summary["best"]["val_rsum"], abs=1e-6)

    resumed = str(tmp_path / "resumed")

    def crash_after_best(state):
        if state["epoch"] == best and state["step_in_epoch"] == 1:
            raise Interrupt()

    with pytest.raises(Interrupt):
        train(cfg, resumed, log=lambda *_: None, on_step=crash_after_best)
    assert os.path.exists(os.path.join(resumed, BEST_HEADS))
    assert not os.path.exists(os.path.join(resumed, "model"))
    train(cfg, resumed, log=lambda *_: None)
    assert not os.path.exists(os.path.join(resumed, BEST_HEADS))
    for x, y in zip(final_weights(straight), final_weights(resumed)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_resume_refuses_other_frozen_towers(synthetic_records, tmp_path):
    from dualencoder.train.checkpoint import CheckpointError
    from dualencoder.train.loop import train

    cfg = tiny_cfg(synthetic_records["train"], extra=[
        "model.image_trainable=none", "model.text_trainable=none", "optim.max_steps=2"])
    workdir = str(tmp_path / "w")
    train(cfg, workdir, log=lambda *_: None)
    state_path = os.path.join(workdir, "checkpoints", "ckpt-00000002", "state.json")
    with open(state_path) as fh:
        state = json.load(fh)
    state["frozen_towers"]["image_tower"] = "0" * 64  # as if trained from other weights
    with open(state_path, "w") as fh:
        json.dump(state, fh)
    with pytest.raises(CheckpointError, match="frozen towers' weights differ"):
        train(cfg, workdir, log=lambda *_: None)


def test_incompatible_workdir_is_refused(synthetic_records, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    base = ["--records", synthetic_records["train"], "--workdir", workdir, "--set",
            "optim.max_steps=1"] + [a for s in TINY for a in ("--set", s)]
    assert train_cli.main(base) == 0
    assert train_cli.main(base + ["--set", "model.embed_dim=32"]) == 2
    err = capsys.readouterr().err
    assert "incompatible config" in err and "model.embed_dim" in err



def test_rerun_in_a_workdir_defaults_to_its_saved_config(synthetic_records, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    first = ["--records", synthetic_records["train"], "--workdir", workdir, "--set",
             "optim.max_steps=1"] + [a for s in TINY for a in ("--set", s)]
    assert train_cli.main(first) == 0
    # the original flags need not be repeated: --records and --workdir, or --workdir alone
    assert train_cli.main(["--records", synthetic_records["train"], "--workdir", workdir]) == 0
    assert train_cli.main(["--workdir", workdir, "--set", "optim.max_steps=2"]) == 0
    with open(os.path.join(workdir, "summary.json")) as fh:
        assert json.load(fh)["steps"] == 2
    with open(os.path.join(workdir, "config.json")) as fh:
        assert json.load(fh)["model"]["embed_dim"] == 16
    capsys.readouterr()
    # an explicit setting that changes the model is refused, naming only that key
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": {"embed_dim": 32, "image_size": 32}}))
    assert train_cli.main(["--workdir", workdir, "--config", str(other)]) == 2
    err = capsys.readouterr().err
    assert "model.embed_dim: 16 -> 32" in err and err.count(" -> ") == 1


# ----------------------------------------------------------------------------------------
# Cached-feature fast path
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("locked, mode", [
    (["model.image_trainable=none", "model.text_trainable=none"], "image pooled, text pooled"),
    (["model.text_trainable=none"], "text pooled"),
])
def test_cached_features_match_uncached(synthetic_records, tmp_path, locked, mode):
    from dualencoder.train.loop import train

    records = synthetic_records["train"]
    extra = locked + ["optim.max_steps=6", "model.head_dropout=0.0"]
    runs = {}
    for cache in ("auto", "off"):
        workdir = str(tmp_path / cache)
        summary = train(tiny_cfg(records, extra=extra + [f"run.cache_features={cache}"]),
                        workdir, log=lambda *_: None)
        assert summary["cached_features"] == (mode if cache == "auto" else None)
        runs[cache] = ledger(workdir)
    assert [r["ids"] for r in runs["auto"]] == [r["ids"] for r in runs["off"]]
    np.testing.assert_allclose([r["loss"] for r in runs["auto"]],
                               [r["loss"] for r in runs["off"]], rtol=1e-4, atol=1e-5)
    assert os.listdir(tmp_path / "auto" / "features")


# ----------------------------------------------------------------------------------------
# It learns
# ----------------------------------------------------------------------------------------
def test_synthetic_training_beats_chance(tmp_path_factory):
    from dualencoder.train.loop import train
    from records.build import build_records

    root = tmp_path_factory.mktemp("learn")
    build_records("synthetic", str(root / "train"), num_images=512, image_size=64, seed=0)
    build_records("synthetic", str(root / "val"), num_images=128, image_size=64, seed=1,
                  split="val")
    cfg = tiny_cfg(str(root / "train"), str(root / "val"),
                   extra=["optim.epochs=5", "optim.lr=3e-3", "run.checkpoint_every=0",
                          "run.ledger=false", "data.batch_size=32", "model.embed_dim=32",
                          "run.val_subset=128", "optim.warmup_steps=5"])
    summary = train(cfg, str(root / "w"), log=lambda *_: None)
    history = summary["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
    assert history[-1]["train_i2t_acc"] > 3 * history[0]["train_i2t_acc"]
    # Held-out images: chance Recall@1+5+10 summed over both directions is 2 * 16/128 = 25%.
    assert summary["best"]["val_rsum"] > 45.0
    assert os.path.exists(root / "w" / "curves.png")
    with open(root / "w" / "history.json") as fh:
        assert len(json.load(fh)) == 5


@pytest.mark.parametrize("extra", [
    ["optim.split_loss_accum=2"],
    ["optim.micro_batch=4"],
    pytest.param(["run.jit_compile=true", "optim.split_loss_accum=2"], marks=pytest.mark.slow),
    pytest.param(["run.jit_compile=true", "optim.micro_batch=4"], marks=pytest.mark.slow),
], ids=["split_loss_accum", "micro_batch", "xla+split_loss_accum", "xla+micro_batch"])
def test_xla_and_gradient_accumulation(synthetic_records, tmp_path, extra):
    """`--jit-compile`, `optim.split_loss_accum` and `optim.micro_batch` run through the same
    step (strings stay out)."""
    import warnings

    from dualencoder.train.loop import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XLA without a GPU warns
        summary = train(tiny_cfg(synthetic_records["train"], extra=extra + ["optim.max_steps=2"]),
                        str(tmp_path / "w"), log=lambda *_: None)
    rows = ledger(str(tmp_path / "w"))
    assert summary["steps"] == 2 and len(rows) == 2
    assert all(np.isfinite(r["loss"]) and len(r["ids"]) == 16 for r in rows)


def test_training_output_is_plain_when_not_a_terminal(synthetic_records, tmp_path, capsys):
    """A log (stdout/stderr not a TTY) gets whole lines: no ANSI codes, no carriage returns
    (Keras' live progress bar and the feature-caching bars are for terminals)."""
    from dualencoder.train.loop import train

    cfg = tiny_cfg(synthetic_records["train"], extra=[
        "optim.epochs=1", "model.image_trainable=none", "model.text_trainable=none"])
    train(cfg, str(tmp_path / "w"))
    captured = capsys.readouterr()
    for stream in (captured.out, captured.err):
        assert "\x1b[" not in stream and "\r" not in stream and "\b" not in stream, stream[:300]
    assert "8/8" in captured.out and "epoch 1:" in captured.out


def test_tower_functions_trace_once_per_model(synthetic_records):
    """Validation, feature caching and the report share one compiled text function per
    model, so repeated embedding passes do not retrace it."""
    import logging

    from dualencoder.model.encoding import tower_functions
    from dualencoder.train import setup, validation

    cfg = tiny_cfg(synthetic_records["train"])
    model = setup.build(cfg)
    assert tower_functions(model)[1] is tower_functions(model)[1]
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for _ in range(6):
            validation.embed_records(model, synthetic_records["val"], image_size=32,
                                     resize_method="bicubic")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if "retracing" in m], messages
