"""One training step of a tiny dual encoder under a tf.distribute strategy, for
tests/test_multidevice.py. Run as a separate process (device setup must precede TF start-up):

    python tests/multidevice_worker.py MODE OUT.json [WORKER_INDEX]

MODE: "single" (default strategy), "mirrored" (two logical CPU devices), "multi_worker"
(TF_CONFIG set by the caller; this process is worker WORKER_INDEX of two). Every mode runs
the same global batch through `dualencoder.train.step.make_train_step` and writes the loss and
a digest of the updated weights.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 8


def main(mode, out, worker=0):
    import numpy as np
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

    cfg = Config.from_sources(None, [
        "model.image_tower=tiny", "model.image_weights=none", "model.image_size=32",
        "model.text_tower=tiny", "model.embed_dim=16", "model.sequence_length=16",
        "model.head_dropout=0.0", f"data.batch_size={GLOBAL_BATCH}", "optim.warmup_steps=0",
        # BatchNorm statistics are per replica (as in any data-parallel run): keep the CNN's
        # BatchNorm in inference mode so one device and two see the same features.
        "model.image_trainable=none",
        "optim.lr=1e-2"])
    strategy = {"single": tf.distribute.get_strategy,
                "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}[mode]()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = setup.build(cfg)
        optimizer = setup.make_optimizer(cfg, steps_per_epoch=10)
        optimizer.build(model.trainable_variables)
    # Same initial weights and the same global batch in every mode (3 images x 2-3 captions,
    # so multi-positive targets cross the replica boundary).
    batch = tiny_batch(model, batch_size=GLOBAL_BATCH, seed=1, images_per_batch=3)
    batch = {k: tf.convert_to_tensor(v) for k, v in batch.items()
             if k in ("images", "token_ids", "padding_mask", "image_index")}

    def make(num_shards, index):
        part = {k: v[index::num_shards] for k, v in batch.items()}
        return tf.data.Dataset.from_tensors(part)

    if mode == "multi_worker":
        dataset = setup.distribute(strategy, make)
    else:
        dataset = strategy.experimental_distribute_dataset(make(1, 0))
    step = make_train_step(model, optimizer, strategy, cfg)
    metrics = step(next(iter(dataset)))
    weights = [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]
    with open(out, "w") as fh:
        json.dump({"loss": float(metrics["loss"]), "replicas": strategy.num_replicas_in_sync,
                   "worker": worker,
                   "weights": [float(np.sum(w)) for w in weights],
                   "weights_abs": [float(np.sum(np.abs(w))) for w in weights]}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
