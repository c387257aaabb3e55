"""Image-caption (or image-label) datasets that TFDS has already prepared in a data dir.

Reads with `download=False` from the user's `data_dir`, without decoding the images (the
encoded bytes are stored as they are). The image feature and the caption text feature are found
automatically (the first `Image` feature; a `Text` feature, a `Sequence` of `Text`, or a
`Sequence` of dicts holding a `Text` such as `coco_captions`' `captions/text`), or given as
`image_key` / `caption_key` (nested keys joined with "/"). A dataset with no text but a
`ClassLabel` (e.g. `cifar10`) gives class-folder records with `class_names`.

Example:
>>> build_records("tfds", "data/coco_tfds", dataset="coco_captions", split="val",
...               data_dir="~/tensorflow_datasets")
"""

from __future__ import annotations

import io
import os

from records.sources.base import Source, SourceItem, argument, clean_caption, records_error

_ID_KEYS = ("image/id", "image/filename", "image_id", "id", "file_name", "filename")


def _flatten(features, prefix=""):
    """(key path, feature) pairs, descending into FeaturesDict and Sequence features."""
    import tensorflow_datasets as tfds

    items = features.items() if isinstance(features, tfds.features.FeaturesDict) else []
    for key, feat in items:
        path = f"{prefix}{key}"
        if isinstance(feat, tfds.features.Sequence):
            inner = feat.feature
            if isinstance(inner, tfds.features.FeaturesDict):
                yield path, feat
                yield from _flatten(inner, path + "/")
            else:
                yield path, inner  # a sequence of plain features reads as a list of them
        else:
            yield path, feat
            if isinstance(feat, tfds.features.FeaturesDict):
                yield from _flatten(feat, path + "/")


def _get(example, path):
    """`example[path]`, or walk nested dicts for "a/b" (top-level keys may contain "/")."""
    path = path.rstrip("/")
    if path in example:
        return example[path]
    value = example
    for part in path.split("/"):
        value = value[part]
    return value


class TfdsSource(Source):
    """A prepared TFDS dataset mapped to the records schema.

    Args:
        dataset: the TFDS name, optionally with config/version (`"coco_captions/2017"`).
        data_dir: the TFDS data directory holding the prepared dataset.
        split: the TFDS split (`"train"`, `"val"`, `"train[:1000]"`, ...).
        image_key: the image feature (default: found automatically).
        caption_key: the caption text feature, nested keys joined with "/" (default: found).
        label_key: a `ClassLabel` feature, for classification datasets (default: found when
            there is no caption feature).
        id_key: a feature giving each image's id (default: `image/id`, `image/filename`, ...
            if present, else `<split>-<n>`).
        skip_bad: skip examples with no usable caption instead of raising.
    """

    name = "tfds"
    description = "a dataset TFDS has already prepared (read with download=False)"
    arguments = (
        argument("dataset", help="TFDS name, e.g. coco_captions or coco_captions/2017"),
        argument("--data-dir", default=None, help="TFDS data dir holding the prepared dataset"),
        argument("--split", default="train", help="TFDS split (default train)"),
        argument("--image-key", default=None, help="image feature (default: found)"),
        argument("--caption-key", default=None,
                 help="caption text feature, nested keys joined by / (default: found, e.g. "
                      "captions/text)"),
        argument("--label-key", default=None,
                 help="ClassLabel feature for classification data"),
        argument("--id-key", default=None, help="feature giving image ids (default: found)"),
    )

    def __init__(self, *, dataset, data_dir=None, split="train", image_key=None, caption_key=None,
                 label_key=None, id_key=None, skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        import tensorflow_datasets as tfds

        self.dataset, self.split = dataset, split
        self.data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else None
        try:
            builder = tfds.builder(dataset, data_dir=self.data_dir)
        except Exception as exc:
            raise records_error(f"tfds dataset {dataset!r}: {exc}") from exc
        flat = dict(_flatten(builder.info.features))
        self.image_key = image_key or next(
            (k for k, f in flat.items() if isinstance(f, tfds.features.Image) and "/" not in k),
            None)
        if self.image_key not in flat or not isinstance(flat[self.image_key], tfds.features.Image):
            raise records_error(f"tfds dataset {dataset!r}: no image feature {self.image_key!r}; "
                                f"features: {sorted(flat)}")
        texts = [k for k, f in flat.items() if _is_text(f)
                 and not any(k.endswith(i) for i in _ID_KEYS)]
        texts.sort(key=lambda k: ("caption" not in k, k.count("/"), k))
        self.caption_key = caption_key or (texts[0] if texts else None)
        if self.caption_key is not None and self.caption_key not in flat:
            raise records_error(f"tfds dataset {dataset!r}: no caption feature "
                                f"{self.caption_key!r}; text features: {texts}")
        self.label_key = label_key
        if self.caption_key is None and label_key is None:
            self.label_key = next((k for k, f in flat.items()
                                   if isinstance(f, tfds.features.ClassLabel) and "/" not in k),
                                  None)
            if self.label_key is None:
                raise records_error(f"tfds dataset {dataset!r}: found neither a caption text "
                                    f"feature nor a ClassLabel; features: {sorted(flat)}")
        if self.label_key is not None:
            feat = flat.get(self.label_key)
            if not isinstance(feat, tfds.features.ClassLabel):
                raise records_error(f"tfds dataset {dataset!r}: {self.label_key!r} is not a "
                                    "ClassLabel feature")
            self.class_names = list(feat.names)
        self.id_key = id_key or next((k for k in _ID_KEYS if k in flat), None)
        self.info = {"dataset": dataset, "split": split, "data_dir": self.data_dir,
                     "image_key": self.image_key, "caption_key": self.caption_key,
                     "label_key": self.label_key, "id_key": self.id_key}

    def _load(self):
        import tensorflow_datasets as tfds

        try:
            return tfds.load(self.dataset, split=self.split, data_dir=self.data_dir,
                             download=False, shuffle_files=False,
                             decoders={self.image_key: tfds.decode.SkipDecoding()})
        except Exception as exc:
            raise records_error(
                f"tfds dataset {self.dataset!r} split {self.split!r} could not be read from "
                f"data_dir {self.data_dir or '(TFDS default)'} with download=False ({exc}). "
                "Prepare it first (tfds build / download_and_prepare) or pass --data-dir.") from exc

    def _items(self):
        import tensorflow_datasets as tfds

        for n, example in enumerate(tfds.as_numpy(self._load())):
            image_id = _text(_get(example, self.id_key)) if self.id_key else f"{self.split}-{n}"
            where = f"tfds {self.dataset} {self.split} example {n} (id {image_id})"
            captions = []
            if self.caption_key:
                raw = _get(example, self.caption_key)
                values = raw.tolist() if hasattr(raw, "tolist") else raw
                values = values if isinstance(values, list) else [values]
                captions = [c for c in (clean_caption(_text(v)) for v in values) if c]
                if not captions:
                    self.bad(where, "no non-empty caption")
                    continue
            label = int(_get(example, self.label_key)) if self.label_key else -1
            yield SourceItem(image_id, _image_bytes(_get(example, self.image_key)), captions,
                             label)


def _is_text(feature) -> bool:
    """A `Text` feature or a scalar string `Tensor` feature (as in `coco_captions`)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Text):
        return True
    if isinstance(feature, (tfds.features.Image, tfds.features.ClassLabel)):
        return False
    return (isinstance(feature, tfds.features.Tensor) and feature.tf_dtype == tf.string
            and tuple(feature.shape) == ())


def _text(value) -> str:
    if hasattr(value, "item"):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _image_bytes(value) -> bytes:
    """Encoded bytes as stored by TFDS; a decoded array (some mocks) is encoded as PNG."""
    if isinstance(value, bytes):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    from PIL import Image
    import numpy as np

    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
