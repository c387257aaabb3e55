"""Reference: the input pipeline of the keras-io example "Natural language image search with a
Dual Encoder" (Khalid Salama, 2021), re-implemented here from its description for benchmarks.

What the example does, and what this module reproduces:

* one `tf.train.Example` per (image, caption) *pair*, holding the caption and the raw JPEG
  bytes of the image (so an image with 5 captions is stored, read and decoded 5 times per
  epoch), written to TFRecord files of a fixed number of examples;
* `read_example`: `parse_single_example`, `decode_jpeg(channels=3)` and `tf.image.resize` to
  the tower size (bilinear, the default) every epoch;
* `get_dataset`: `TFRecordDataset(list_files(pattern))`, `map(read_example,
  num_parallel_calls=AUTOTUNE, deterministic=False)`, `shuffle(batch_size * 10)`,
  `prefetch(AUTOTUNE)`, `batch(batch_size)` in that order;
* the text went through a TF-Hub BERT preprocessing layer inside the model, on the batch of
  caption strings. For a like-for-like cost, `tokenize_fn` (a keras-hub WordPiece tokenizer +
  packer here) is applied to each batch as a last `map`.

This is a benchmark baseline only; the project's pipeline is `dualencoder.data.pipeline`.
"""

from __future__ import annotations

import os

import tensorflow as tf

FEATURES = {
    "caption": tf.io.FixedLenFeature([], tf.string),
    "raw_image": tf.io.FixedLenFeature([], tf.string),
}


def _bytes_feature(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def write_pair_records(pairs, out_dir: str, examples_per_file: int = 2000) -> list[str]:
    """Write `(image_bytes, caption)` pairs, one example per pair, as the example did.

    Args:
        pairs: iterable of `(jpeg_bytes, caption_str)`.
        out_dir: output folder (created).
        examples_per_file: examples per TFRecord file.

    Returns:
        The list of written file paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths, writer, count = [], None, 0
    for image_bytes, caption in pairs:
        if writer is None or count == examples_per_file:
            if writer is not None:
                writer.close()
            paths.append(os.path.join(out_dir, f"pairs-{len(paths):03d}.tfrecord"))
            writer, count = tf.io.TFRecordWriter(paths[-1]), 0
        example = tf.train.Example(features=tf.train.Features(feature={
            "caption": _bytes_feature(caption.encode("utf-8")),
            "raw_image": _bytes_feature(image_bytes),
        }))
        writer.write(example.SerializeToString())
        count += 1
    if writer is not None:
        writer.close()
    return paths


def get_dataset(file_pattern: str, batch_size: int, image_size: int, tokenize_fn=None):
    """The example's `get_dataset`, with the tower size as a parameter and batch tokenization.

    Args:
        file_pattern: glob of the pair TFRecord files.
        batch_size: int.
        image_size: int, square output size.
        tokenize_fn: optional callable on a string tensor `[B]` returning a dict of tensors.

    Returns:
        A `tf.data.Dataset` of dicts `image` float32 `[B, S, S, 3]`, `caption` and the
        tokenizer outputs.
    """

    def read_example(example):
        features = tf.io.parse_single_example(example, FEATURES)
        raw_image = features.pop("raw_image")
        features["image"] = tf.image.resize(
            tf.image.decode_jpeg(raw_image, channels=3), size=(image_size, image_size))
        return features

    ds = (tf.data.TFRecordDataset(tf.data.Dataset.list_files(file_pattern))
          .map(read_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
          .shuffle(batch_size * 10)
          .prefetch(buffer_size=tf.data.AUTOTUNE)
          .batch(batch_size))
    if tokenize_fn is not None:
        def add_tokens(batch):
            return {**batch, **tokenize_fn(batch["caption"])}

        ds = ds.map(add_tokens, num_parallel_calls=tf.data.AUTOTUNE)
    return ds


def keras_hub_bert_preprocessor(vocab_path: str, sequence_length: int):
    """A keras-hub BERT WordPiece tokenizer + `[CLS]/[SEP]` packer (the TF-Hub preprocessor's job)."""
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab_path, lowercase=True)
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length, start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id, pad_value=tokenizer.pad_token_id,
        return_padding_mask=True)

    def tokenize(texts):
        ids, mask = packer(tokenizer(texts))
        return {"token_ids": ids, "padding_mask": mask}

    return tokenize
