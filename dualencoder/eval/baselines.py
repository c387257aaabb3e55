"""Supervised baselines: a `keras.applications` classifier trained on class folders.

Two modes:
    - `linear`: the ImageNet (or given) backbone is frozen; its pooled features are
      computed once (and cached like embeddings) and a softmax layer is trained on them.
    - `finetune`: the softmax layer is first trained as in `linear` (a warm start), then
      the whole network is trained end to end with a small learning rate (batch-norm
      layers stay in inference mode).

Both hold out a stratified `validation_split` of the training folders and stop early on
validation loss (restoring the best weights). The test folders are only used for the
final report, which has the same metrics as a zero-shot report, so `evaluate.py compare`
can put Xception / EfficientNetB7 next to the dual encoders (Table 2 of the seed report).

Weights: `imagenet` (Keras downloads them; offline this fails with a message), a path to
no-top weights (`.weights.h5`, e.g. `../shared/weights/xception_imagenet_notop.weights.h5`),
or `none` (random init).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np

from dualencoder.eval.errors import EvaluationError
from dualencoder.eval.report import SUMMARY_KEYS, classification_section, header, write_report
from dualencoder.image_towers import image_tower_names, image_tower_spec

__all__ = ["resolve_arch", "check_arch", "FeatureEncoder", "run_baseline"]


def resolve_arch(arch: str):
    """The image tower row (`dualencoder.image_towers.ImageTowerSpec`) of `--arch`:
    a keras.applications name (case-insensitive: `xception`, `efficientnetb7`, `resnet50`,
    ...) or any registered image tower."""
    try:
        return image_tower_spec(arch)
    except ValueError:
        names = image_tower_names()
        raise EvaluationError(f"--arch {arch!r}: not a keras.applications model or registered "
                              f"image tower (case-insensitive: {', '.join(names)})") from None


def check_arch(arch: str, weights: str) -> None:
    """Validate `--arch` and `--weights` cheaply (before any data or model work)."""
    resolve_arch(arch)
    if weights not in ("imagenet", "none") and not os.path.isfile(weights):
        raise EvaluationError(f"--weights {weights!r}: not 'imagenet', 'none' or an existing "
                              "weights file")


def _frozen_tower(spec, weights: str, image_size: int):
    """The frozen `ImageTower` of `spec` (pooled features, preprocessing inside) with
    `weights`: `imagenet`, `none` or a no-top weights file; errors as `EvaluationError`s
    that name the flag to change."""
    from dualencoder.model.image_tower import ImageTower, load_weights_quietly

    name = spec.display
    try:
        tower = ImageTower(spec.name, weights="imagenet" if weights == "imagenet" else "none",
                           image_size=image_size, pooling="avg", trainable="none",
                           name=f"{spec.name}_features")
    except Exception as exc:  # offline: the download fails
        if weights != "imagenet":
            raise
        hint = (" (for Xception: ../shared/weights/xception_imagenet_notop.weights.h5)"
                if name == "Xception" else "")
        raise EvaluationError(f"cannot download ImageNet weights for {name} "
                              f"({type(exc).__name__}); pass --weights PATH to no-top "
                              f"weights{hint} or --weights none") from exc
    if weights not in ("imagenet", "none"):
        try:
            load_weights_quietly(tower.backbone, weights)
        except Exception as exc:
            raise EvaluationError(f"{weights}: cannot load into {name} without top ("
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
                                  ) from exc
    return tower


class FeatureEncoder:
    """A frozen image tower as an image encoder (`encode_images` → pooled features), so that
    `dualencoder.encoders.cache.embed_images` computes and caches baseline features.

    `tower` is the library's `ImageTower` (trainable="none"); `backbone` and `preprocess`
    are its backbone without pooling and its preprocessing (for fine-tuning)."""

    def __init__(self, arch, weights, image_size, seed=0):
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(seed)
        self.arch, self.weights, self.image_size, self.seed = arch, weights, int(image_size), seed
        spec = resolve_arch(arch)
        self.name = spec.display
        self.tower = _frozen_tower(spec, weights, self.image_size)
        self.backbone, self.preprocess = self.tower.backbone, self.tower.preprocess
        self._fn = tf.function(lambda x: self.tower(x, training=False), reduce_retracing=True)
        self._fp = None

    def encode_images(self, images):
        import tensorflow as tf
        return self._fn(tf.constant(np.asarray(images, np.float32))).numpy()

    def encode_texts(self, texts):  # pragma: no cover - not a text encoder
        raise NotImplementedError("baselines have no text tower")

    def fingerprint(self):
        if self._fp is None:
            h = hashlib.sha256(f"{self.name}|{self.image_size}|{self.weights}|"
                               f"{self.seed}".encode())
            if os.path.isfile(self.weights):
                st = os.stat(self.weights)
                h.update(f"{os.path.abspath(self.weights)}|{st.st_size}|{st.st_mtime_ns}".encode())
            self._fp = "baseline-" + h.hexdigest()[:16]
        return self._fp


def _head(num_classes, dim, seed):
    import keras

    inputs = keras.Input((dim,))
    x = keras.layers.Dropout(0.2, seed=seed)(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="head")


def _keras_verbose(progress: bool) -> int:
    """Keras `verbose`: its live progress bar on a terminal; one plain line per epoch when
    stdout is piped (the bar's carriage returns and backspaces would litter a log)."""
    if not progress:
        return 0
    return 1 if getattr(sys.stdout, "isatty", lambda: False)() else 2


def _callbacks(patience):
    import keras
    return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                          restore_best_weights=True)]


def run_baseline(train, test, out_dir, *, arch, weights="imagenet", mode="linear",
                 image_size=None, epochs=20, validation_split=0.2, patience=3,
                 resize="bicubic", batch_size=32, seed=0, cache_dir=None, progress=True,
                 learning_rate=1e-3, finetune_learning_rate=1e-5) -> dict:
    """Train and test a supervised classifier; writes the report like a zero-shot run.

    Args:
        train, test: `dualencoder.eval.inputs.ClassData` with the same classes.
        out_dir: report directory.
        arch: keras.applications name (or a registered image tower).
        weights: `imagenet`, a weights path, or `none`.
        mode: `linear` (frozen backbone) or `finetune` (end to end after a linear warm start).
        image_size: input side (default: the architecture's native size).
        epochs: maximum epochs per stage; early stopping on validation loss.
        validation_split: fraction of each training class held out for validation.
        patience: early-stopping patience (epochs).

    Returns:
        The report dict.
    """
    import keras

    from dualencoder.encoders.cache import embed_images
    from dualencoder.eval import metrics as M
    from dualencoder.eval import plots
    from dualencoder.eval.inputs import ensure_records
    from dualencoder.eval.softmax_probe import stratified_split

    if mode not in ("linear", "finetune"):
        raise EvaluationError(f"--mode {mode!r}: choose linear or finetune")
    spec = resolve_arch(arch)
    name = spec.display
    image_size = int(image_size or spec.native_size)
    ensure_records(train)
    ensure_records(test)
    keras.utils.set_random_seed(seed)
    enc = FeatureEncoder(arch, weights, image_size, seed=seed)
    t0 = time.perf_counter()
    tr = embed_images(enc, train.records_dir, resize_method=resize, batch_size=batch_size,
                      cache_dir=cache_dir, progress=progress)
    te = embed_images(enc, test.records_dir, resize_method=resize, batch_size=batch_size,
                      cache_dir=cache_dir, progress=progress)
    feature_s = time.perf_counter() - t0
    c = len(train.class_names)
    fit_idx, val_idx = stratified_split(tr["labels"], validation_split, seed)
    if len(val_idx) == 0:
        raise EvaluationError("the training folders are too small for a validation split")
    head = _head(c, tr["embeddings"].shape[1], seed)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    verbose = _keras_verbose(progress)
    t1 = time.perf_counter()
    hist = head.fit(tr["embeddings"][fit_idx], tr["labels"][fit_idx],
                    validation_data=(tr["embeddings"][val_idx], tr["labels"][val_idx]),
                    epochs=epochs, batch_size=batch_size, callbacks=_callbacks(patience),
                    verbose=verbose)
    history = {f"linear_{k}": [float(v) for v in vals] for k, vals in hist.history.items()}
    if mode == "linear":
        probs = head.predict(te["embeddings"], batch_size=256, verbose=0)
    else:
        probs, ft_hist = _finetune(enc, head, train, test, tr, te, fit_idx, val_idx, c,
                                   resize=resize, batch_size=batch_size, epochs=epochs,
                                   patience=patience, lr=finetune_learning_rate, seed=seed,
                                   verbose=verbose)
        history.update({f"finetune_{k}": [float(v) for v in vals]
                        for k, vals in ft_hist.items()})
    train_s = time.perf_counter() - t1
    pred = probs.argmax(axis=1)
    result = M.classification_metrics(te["labels"], pred, c, test.class_names, scores=probs)
    result["most_confused"] = M.most_confused_pairs(result["confusion_matrix"],
                                                    test.class_names)
    os.makedirs(out_dir, exist_ok=True)
    plots.plot_confusion_matrix(result["confusion_matrix"], test.class_names,
                                os.path.join(out_dir, "confusion_matrix.png"),
                                title=f"{name} ({mode}) confusion matrix — {test.name}")
    plots.plot_history(history, os.path.join(out_dir, "history.png"),
                       title=f"{name} ({mode}) training")
    model_info = {"spec": f"{name}:{weights}", "family": "baseline", "arch": spec.name,
                  "display": name, "mode": mode, "weights": weights,
                  "name": f"{name} ({mode})", "fingerprint": enc.fingerprint()}
    settings = {"mode": mode, "weights": weights, "image_size": image_size, "resize": resize,
                "epochs_max": epochs, "epochs_run": _epochs_run(history),
                "validation_split": validation_split, "patience": patience,
                "train": train.name, "train_images": int(len(fit_idx)),
                "validation_images": int(len(val_idx))}
    return _write_baseline_report(out_dir, result, model_info, settings, train, test, history,
                                  {"features_s": feature_s, "train_s": train_s})


def _epochs_run(history) -> dict:
    """Epochs each stage ran (`linear`, `finetune`), from the training losses."""
    return {k.split("_")[0]: len(v) for k, v in history.items()
            if k.endswith("_loss") and not k.startswith(("linear_val", "finetune_val"))}


def _write_baseline_report(out_dir, result, model_info, settings, train, test, history,
                           timing) -> dict:
    report = {"kind": "baseline", "model": model_info, "dataset": test.info(),
              "train_dataset": train.info(), "settings": settings,
              "metrics": {k: result[k] for k in SUMMARY_KEYS},
              "per_class": result["per_class"], "confusion_matrix": result["confusion_matrix"],
              "most_confused": result["most_confused"], "history": history, "timing": timing,
              "figures": ["confusion_matrix.png", "history.png"]}
    md = "\n\n".join([
        header(f"Supervised baseline {model_info['name']} — {test.name}", model_info,
               test.info(), settings),
        classification_section(result, test.class_names),
        "![confusion matrix](confusion_matrix.png)\n\n![training history](history.png)"])
    return write_report(out_dir, report, md)


def _finetune(enc, head, train, test, tr, te, fit_idx, val_idx, num_classes, *, resize,
              batch_size, epochs, patience, lr, seed, verbose):
    """End-to-end training of backbone + warm-started head on decoded images."""
    import keras
    import tensorflow as tf

    from dualencoder.data import pipeline as D

    size = enc.image_size
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Lambda(enc.preprocess, name="preprocess")(inputs)
    enc.backbone.trainable = True
    x = enc.backbone(x, training=False)
    outputs = head(keras.layers.GlobalAveragePooling2D(name="pool")(x))
    model = keras.Model(inputs, outputs, name=f"{enc.name}_classifier")
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    def subset(records_dir, indices, shuffle):
        wanted = tf.constant(np.asarray(indices, np.int64))
        ds = D.image_dataset(records_dir, image_size=size, batch_size=64,
                             resize_method=resize).unbatch()
        ds = ds.filter(lambda e: tf.reduce_any(tf.equal(wanted, e["image_index"])))
        # a filtered dataset's length is unknown; told it, Keras knows where an epoch ends
        # (instead of warning that the input "ran out of data")
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(indices)))
        ds = ds.map(lambda e: (e["images"], e["label"]))
        if shuffle:
            ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    fit_ds = subset(train.records_dir, tr["image_index"][fit_idx], True)
    val_ds = subset(train.records_dir, tr["image_index"][val_idx], False)
    hist = model.fit(fit_ds, validation_data=val_ds, epochs=epochs, shuffle=False,  # fit_ds is
                     callbacks=_callbacks(patience), verbose=verbose)           # shuffled
    test_ds = D.image_dataset(test.records_dir, image_size=size, batch_size=64,
                              resize_method=resize).unbatch()
    test_ds = test_ds.apply(tf.data.experimental.assert_cardinality(len(te["image_index"])))
    test_ds = test_ds.map(lambda e: e["images"]).batch(batch_size)
    probs = model.predict(test_ds, verbose=0)
    return probs, hist.history
