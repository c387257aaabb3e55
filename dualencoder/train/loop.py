"""The training loop: one function, `train(config, workdir)`, readable in one screen.

The workdir implies resume: rerunning the same command continues from the newest intact
checkpoint, with the model, optimizer (incl. its step and learning-rate schedule), RNG states,
history and the data position (epoch, batch within the epoch) restored, so no example is seen
twice or skipped. Layout of a workdir:

    config.json        the resolved configuration (resume refuses an incompatible model section)
    checkpoints/       see `dualencoder.train.checkpoint`
    model/             the best model (selected on validation), `dualencoder.load`-able; with
                       frozen towers it is written once, when training ends, and until then
                       best_heads.npz holds the best epoch's other variables (a few MB instead
                       of rewriting a 174 MB model at every improving epoch)
    history.json       one row per epoch; curves.png beside it
    tensorboard/       TensorBoard logs
    features/          cached tower outputs (locked towers, and frozen parts below a boundary)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from dualencoder.arrays import read_npz, write_npz
from dualencoder.config import ARCHITECTURE_KEYS, Config, ConfigError
from dualencoder.model.saving import save_model
from dualencoder.model.tower_precision import tower_precision
from dualencoder.train.checkpoint import CheckpointError, CheckpointManager
from dualencoder.train.step import make_train_step
from records.files import write_json_atomic


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step range."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or `on_step` raising KeyboardInterrupt) during training; `step` is the last
    step done. The newest checkpoint is intact: rerunning the same command resumes."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


def train(cfg: Config, workdir: str, *, log=print, on_step=None) -> dict:
    """Train (or resume) in `workdir`; returns the final summary dict (also `summary.json`).

    Args:
        cfg: the resolved `Config`.
        workdir: the run folder; an existing run there is resumed.
        log: where progress lines go.
        on_step: optional `fn(state)` called after every step (tests inject faults with it).
    """
    import keras
    import tensorflow as tf

    from dualencoder.data import order as data_order
    from dualencoder.features.plan import plan_cache
    from dualencoder.train import setup, validation
    check_workdir_config(cfg, workdir, log=log)
    cached = plan_cache(cfg)  # which tower outputs come from caches; bad settings fail here
    records, val_records = setup.resolve_records(cfg, log=log)
    setup.check_training_pairs(cfg, records)  # before anything is written
    strategy = setup.make_strategy(cfg.run.strategy)
    model, optimizer = setup.model_and_optimizer(cfg, strategy, records, log=log)
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), cfg.to_dict())
    ckpts = CheckpointManager(os.path.join(workdir, "checkpoints"), cfg.run.keep_checkpoints)
    groups, frozen = checkpoint_groups(model, optimizer)
    state = resume(ckpts, groups, frozen, model, optimizer, workdir, log)

    cached, feature_dir, source = cached_source(cached, model, cfg, records, workdir, log)
    step_fn = make_train_step(model, optimizer, strategy, cfg)
    shards = setup.input_shards(strategy)
    steps_per_epoch = data_order.steps_per_epoch(records, cfg.data.batch_size // shards,
                                                 all_captions=cfg.data.all_captions,
                                                 num_shards=shards)
    max_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    ledger = os.path.join(workdir, "ledger.jsonl") if cfg.run.ledger else None
    val_cache: dict = {}  # frozen towers: validation features computed once per run
    plotted = (0.0, -1)  # (when, epochs drawn) of curves.png
    stop = state.get("stopped", False)
    try:
        while not stop and state["epoch"] < cfg.optim.epochs and (
            state["step"] < max_steps or state["step_in_epoch"]):  # or an epoch's end is due
            epoch, start = state["epoch"], state["step_in_epoch"]
            batches = training_batches(cfg, records, model, source, cached, strategy, shards,
                                       epoch=epoch, skip_batches=start)
            # a live bar on a terminal; in a log (not a TTY) one plain line when the epoch ends
            bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss", "temp", "lr"],
                                      verbose=1 if sys.stdout.isatty() else 2)
            bar.update(start)
            t0, sums, last_good = time.time(), {}, state["step"]
            lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            for batch in batches:
                if state["step"] >= max_steps:
                    break
                metrics = {k: float(v) for k, v in step_fn(batch).items()}
                state["step"] += 1
                state["step_in_epoch"] += 1
                if ledger:
                    append_ledger(ledger, state["step"], epoch, batch, metrics, strategy)
                check_finite(metrics["loss"], state["step"], last_good, epoch, ckpts)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
                bar.update(state["step_in_epoch"], [("loss", metrics["loss"]),
                                                    ("temp", metrics["temperature"]), ("lr", lr)])
                if state["step"] % 10 == 0:
                    write_scalars(tb, state["step"], {
                        **{f"train/{k}": v for k, v in metrics.items()}, "train/lr": lr})
                if cfg.run.checkpoint_every and state["step"] % cfg.run.checkpoint_every == 0:
                    ckpts.save(groups, state)
                    last_good = state["step"]
                if on_step is not None:
                    on_step(state)
            done = state["step_in_epoch"] - start
            row = {"epoch": epoch + 1, "step": state["step"],
                   "seconds": round(time.time() - t0, 2), "lr": lr,
                   **{f"train_{k}": v / max(done, 1) for k, v in sums.items()}}
            if val_records:
                row.update(validation.validate(model, cfg, val_records, tower_cache=val_cache,
                                               feature_dir=feature_dir, plan=cached, log=log))
            state["history"].append(row)
            stop = end_of_epoch(cfg, state, row, model, optimizer, workdir, log,
                                best_variables=groups["model"] if frozen else None)
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
            write_scalars(tb, state["step"], epoch_scalars(row))
            state["stopped"] = stop
            ckpts.save(groups, state)
            write_json_atomic(os.path.join(workdir, "history.json"), state["history"])
            # the curves every epoch, or every ~30 s when epochs are short (a plot costs ~1 s);
            # always once more when training ends (below)
            if time.time() - plotted[0] >= 30:
                validation.plot_curves(state["history"], os.path.join(workdir, "curves.png"))
                plotted = (time.time(), len(state["history"]))
    except KeyboardInterrupt as exc:
        raise exc if isinstance(exc, TrainingInterrupted) else TrainingInterrupted(
            state["step"]) from None
    if state["history"] and plotted[1] != len(state["history"]):
        validation.plot_curves(state["history"], os.path.join(workdir, "curves.png"))
    return finish(model, groups["model"], state, workdir, cached, cfg.run.tower_precision)


# --------------------------------------------------------------------------------------------
# The pieces of a step and of an epoch
# --------------------------------------------------------------------------------------------
def resume(ckpts, groups, frozen, model, optimizer, workdir: str, log) -> dict:
    """The training state of the newest intact checkpoint (logged), or a fresh one."""
    state = restore(ckpts, groups, frozen, model, optimizer) or {
        "step": 0, "epoch": 0, "step_in_epoch": 0, "history": [], "best": None,
        "bad_epochs": 0, "plateau_wait": 0}
    state["frozen_towers"] = frozen
    if state["step"]:
        log(f"resuming {workdir} from {state['checkpoint']}: epoch {state['epoch'] + 1}, "
            f"batch {state['step_in_epoch']} of the epoch, step {state['step']}")
    return state


def cached_source(plan, model, cfg, records, workdir, log):
    """`(plan, feature_dir, CachedPairs)` for the built model, or `(plan, None, None)` when
    nothing is cached (the plan checked against the model's boundaries)."""
    from dualencoder.features.pairs import CachedPairs
    from dualencoder.features.plan import check_boundaries

    plan = check_boundaries(plan, model, cfg, log=log)
    if not plan:
        return plan, None, None
    feature_dir = cfg.run.features_dir or os.path.join(workdir, "features")
    return plan, feature_dir, CachedPairs(model, cfg, records, feature_dir, plan=plan, log=log)


def training_batches(cfg, records, model, source, cached, strategy, shards, *, epoch,
                     skip_batches):
    """An epoch's (distributed) batches from batch `skip_batches` on."""
    import tensorflow as tf

    from dualencoder.train import setup

    if cached and cached.host_batches and strategy.num_replicas_in_sync == 1 and shards == 1:
        # one device, cached features: batches straight from the host arrays. (Tearing down a
        # tf.data iterator at every epoch's end stalled for up to 10 s on CPU.)
        return (tf.nest.map_structure(tf.convert_to_tensor, b)
                for b in source.host_batches(epoch, skip_batches=skip_batches))
    return setup.distribute(strategy, lambda num_shards, index: epoch_batches(
        cfg, records, model, source, cached, epoch=epoch, skip_batches=skip_batches,
        num_shards=num_shards, shard_index=index))


def epoch_batches(cfg, records, model, source, cached, *, epoch, skip_batches, num_shards=1,
                  shard_index=0):
    """One epoch's batches for this input worker: decoded pairs, or cached features."""
    from dualencoder.train import setup

    kwargs = dict(epoch=epoch, skip_batches=skip_batches, num_shards=num_shards,
                  shard_index=shard_index)
    images = None if cached and cached.host_batches else setup.train_dataset(
        cfg, records, model.tokenizer, **kwargs)
    return source.epoch(images=images, **kwargs) if cached else images


def append_ledger(path: str, step: int, epoch: int, batch, metrics: dict, strategy) -> None:
    """One line of `ledger.jsonl`: the step's image ids (every local replica's) and loss."""
    ids = [int(i) for part in strategy.experimental_local_results(batch["image_index"])
           for i in part.numpy()]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": step, "epoch": epoch + 1, "ids": ids,
                             "loss": metrics["loss"]}) + "\n")


def check_finite(loss: float, step: int, last_good: int, epoch: int, ckpts) -> None:
    """Raise `TrainingDiverged` when the loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss} between step {last_good + 1} and step {step} (epoch "
            f"{epoch + 1}); the last good checkpoint "
            f"{ckpts.checkpoints()[-1] if ckpts.checkpoints() else '(none)'} is kept. "
            "Lower optim.lr, use precision float32, or set optim.clipnorm.")


def epoch_scalars(row: dict) -> dict:
    """An epoch's history row as TensorBoard scalars (`epoch/<key>`)."""
    return {f"epoch/{k}": v for k, v in row.items()
            if isinstance(v, (int, float)) and k not in ("epoch", "step")}


def write_scalars(writer, step: int, values: dict) -> None:
    """TensorBoard scalars at `step`."""
    import tensorflow as tf

    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, value)


def end_of_epoch(cfg, state, row, model, optimizer, workdir, log, best_variables=None) -> bool:
    """Model selection, ReduceLROnPlateau and early stopping; returns True to stop.

    An improving epoch saves the model to `workdir/model`, or, given `best_variables` (the
    variables besides frozen towers), only those to `workdir/best_heads.npz`
    (`write_best_model` turns them into `workdir/model` when training ends)."""
    score = row.get("val_rsum", -row.get("val_loss", row.get("train_loss", 0.0)))
    row["selection_score"] = score
    improved = state["best"] is None or score > state["best"]["score"]
    if improved:
        state["best"] = {"epoch": row["epoch"], "score": score,
                         **{k: v for k, v in row.items() if k.startswith("val_")}}
        state["bad_epochs"] = state["plateau_wait"] = 0
        if best_variables is None:
            save_model(model, os.path.join(workdir, "model"))
        else:
            save_variables_atomic(os.path.join(workdir, BEST_HEADS), best_variables)
    else:
        state["bad_epochs"] += 1
        state["plateau_wait"] += 1
    summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                        if isinstance(v, float) and k != "lr")
    log(f"epoch {row['epoch']}: {summary}{'  (best so far)' if improved else ''}")
    if cfg.optim.schedule == "plateau" and state["plateau_wait"] >= cfg.optim.plateau_patience:
        new_lr = float(optimizer.learning_rate.numpy()) * cfg.optim.plateau_factor
        optimizer.learning_rate.assign(new_lr)
        state["plateau_wait"] = 0
        log(f"validation did not improve for {cfg.optim.plateau_patience} epochs: lr -> {new_lr:.3g}")
    if cfg.optim.early_stopping and state["bad_epochs"] >= cfg.optim.early_stopping:
        log(f"early stopping: no improvement for {state['bad_epochs']} epochs")
        return True
    return False


# --------------------------------------------------------------------------------------------
# The best model of a run with frozen towers
# --------------------------------------------------------------------------------------------
BEST_HEADS = "best_heads.npz"


def finish(model, variables, state: dict, workdir: str, cached, tower_setting="float32") -> dict:
    """The run's final model in `workdir/model` (the best epoch's, or the last model when
    nothing was validated) and its summary (returned, and written to `summary.json`)."""
    write_best_model(model, variables, workdir)
    # again here: an interruption may fall between the last checkpoint and its history write
    write_json_atomic(os.path.join(workdir, "history.json"), state["history"])
    if not os.path.exists(os.path.join(workdir, "model", "config.json")):
        save_model(model, os.path.join(workdir, "model"))  # no validation: keep the last model
    with tower_precision(model, tower_setting) as precision:  # what the caches were made in
        precision = precision if cached else None
    summary = {"workdir": workdir, "steps": state["step"], "epochs": state["epoch"],
               "best": state["best"], "history": state["history"],
               "cached_features": cached.describe() if cached else None,
               "tower_precision": precision}
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary


def save_variables_atomic(path: str, variables) -> None:
    """The values of `variables` (in order) to an .npz at `path`, via a temporary file."""
    import numpy as np

    write_npz(path, {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)})


def write_best_model(model, variables, workdir: str) -> None:
    """If `workdir/best_heads.npz` exists (frozen towers: the best epoch's other variables),
    load it into `model`, save `workdir/model` and remove the file. The model then holds the
    best epoch's weights. Runs when training ends, also after a resume of a finished run, so
    an interruption between the two leaves nothing half done."""
    path = os.path.join(workdir, BEST_HEADS)
    if not os.path.exists(path):
        return
    stored = read_npz(path)
    if stored is None:
        raise CheckpointError(f"{path}: unreadable (damaged); delete it and retrain")
    values = [stored[f"v{i:05d}"] for i in range(len(stored))]
    shapes = [tuple(v.shape) for v in variables]
    if len(values) != len(variables) or [tuple(v.shape) for v in values] != shapes:
        raise CheckpointError(f"{path}: {len(values)} arrays that do not fit the model's "
                              f"{len(variables)} variables; delete it and retrain")
    for variable, value in zip(variables, values):
        variable.assign(value)
    save_model(model, os.path.join(workdir, "model"))
    os.remove(path)


# --------------------------------------------------------------------------------------------
# Workdir compatibility
# --------------------------------------------------------------------------------------------
def checkpoint_groups(model, optimizer):
    """What a checkpoint stores: every variable except those of frozen towers (they never
    change; a locked Xception is 180 MB per checkpoint), and the frozen towers' digests,
    checked on resume."""
    from dualencoder.features.keys import variables_digest

    frozen, skip = {}, set()
    for name in ("image_tower", "text_tower"):
        tower = getattr(model, name)
        if getattr(tower, "frozen", False) and not tower.trainable_weights:
            frozen[name] = variables_digest(tower.weights)
            skip.update(id(v) for v in tower.weights)
    variables = [v for v in model.variables if id(v) not in skip]
    return {"model": variables, "optimizer": optimizer.variables}, frozen


def restore(ckpts, groups, frozen, model, optimizer):
    """`ckpts.restore` for `checkpoint_groups`; checkpoints written before frozen towers were
    left out (every model variable) still restore."""
    try:
        state = ckpts.restore(groups)
    except CheckpointError as exc:
        if not frozen:
            raise
        try:
            state = ckpts.restore({"model": model.variables, "optimizer": optimizer.variables})
        except CheckpointError:
            raise exc from None
    if state is not None and state.get("frozen_towers", frozen) != frozen:
        raise CheckpointError(
            f"{ckpts.directory}: the frozen towers' weights differ from those the checkpoint "
            f"was trained with ({sorted(state['frozen_towers'])}): another weights file or "
            "preset than when this workdir was started; resume with the same towers or use a "
            "new workdir")
    return state


def check_workdir_config(cfg: Config, workdir: str, *, log=print) -> None:
    """Refuse to resume a workdir whose run used another model configuration; a `warning:`
    line (to `log`) names the data, optim and run settings that changed."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); use a new --workdir or delete it") from exc
    new = cfg.to_dict()
    diffs = [f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {value!r}"
             for section in ARCHITECTURE_KEYS for key, value in new[section].items()
             if old.get(section, {}).get(key) != value]
    if diffs:
        raise ConfigError(f"{workdir} holds a run with an incompatible config ("
                          + "; ".join(diffs) + "). Use a new --workdir, or the old settings.")
    for section in ("data", "optim", "run"):
        changed = [k for k, v in new[section].items() if old.get(section, {}).get(k) != v]
        if changed:
            log(f"warning: resuming {workdir} with changed {section} settings: "
                + ", ".join(changed))
