"""Records to training batches: the epoch order, image decoding, the tf.data pipeline."""
