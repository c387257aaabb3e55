"""MS-COCO captions in the official layout.

    ROOT/annotations/captions_<split>.json   ("images": [{id, file_name}], "annotations":
                                              [{id, image_id, caption}])
    ROOT/<split>/<file_name>                 (or ROOT/images/<split>/<file_name>)

with `split` e.g. `train2017`, `val2017`, `train2014`, `val2014`. One record per image that has
captions (images without any caption are left out and counted in `source_info`).

Example:
>>> build_records("coco", "data/coco_val", root="../shared/data/coco_mini", split="val2017")
"""

from __future__ import annotations

import json
import os

from records.sources.base import (Source, SourceItem, SpecData, argument, clean_caption,
                                  records_error, require_dir)


class CocoSource(Source):
    """COCO caption annotations plus the split's image folder.

    Args:
        root: the COCO directory (holding `annotations/`).
        split: e.g. `"train2017"`, `"val2017"`, `"train2014"` (default `"train2017"`).
        annotations: path of the captions json, if not `ROOT/annotations/captions_<split>.json`.
        images_dir: the image folder, if not `ROOT/<split>` (or `ROOT/images/<split>`).
        skip_bad: skip bad annotations and images instead of raising.
    """

    name = "coco"
    description = "MS-COCO captions in the official layout (annotations/captions_<split>.json)"
    arguments = (
        argument("root", help="COCO directory holding annotations/ and <split>/"),
        argument("--split", default="train2017",
                 help="train2017, val2017, train2014, ... (default train2017)"),
        argument("--annotations", default=None,
                 help="captions json (default ROOT/annotations/captions_<split>.json)"),
        argument("--images-dir", default=None, help="image folder (default ROOT/<split>)"),
    )
    spec_syntax = "coco:DIR:SPLIT"
    recipe_split_keys = frozenset({"split"})

    def __init__(self, *, root, split="train2017", annotations=None, images_dir=None,
                 skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.root = require_dir(root, "COCO root")
        self.split = split
        self.annotations = os.fspath(annotations) if annotations else os.path.join(
            self.root, "annotations", f"captions_{split}.json")
        if not os.path.isfile(self.annotations):
            found = _annotated_splits(os.path.join(self.root, "annotations"))
            hint = f"; splits found: {', '.join(found)}" if found else ""
            raise records_error(f"{self.annotations}: COCO caption annotations not found{hint}")
        if images_dir:
            self.images_dir = require_dir(images_dir, "COCO image folder")
        else:
            candidates = [os.path.join(self.root, split), os.path.join(self.root, "images", split)]
            existing = [c for c in candidates if os.path.isdir(c)]
            if not existing:
                raise records_error(f"{candidates[0]}: COCO image folder for split {split!r} not "
                                    "found (pass images_dir / --images-dir)")
            self.images_dir = existing[0]
        self.info = {"split": split, "annotations": self.annotations,
                     "images_dir": self.images_dir}

    @classmethod
    def from_spec(cls, rest: str) -> SpecData:
        """`DIR:SPLIT`: the COCO folder and a split whose caption annotations it holds; the
        data is named `coco-<split>` and its cached build is keyed by `DIR/annotations`."""
        root, _, split = rest.partition(":")
        if not os.path.isdir(root):
            raise records_error(f"{root}: no such directory ({cls.spec_syntax})")
        if not split:
            raise records_error(f"coco data needs a split: {cls.spec_syntax} (e.g. val2017)")
        annotations = os.path.join(root, "annotations")
        wanted = os.path.join(annotations, f"captions_{split}.json")
        if not os.path.isfile(wanted):
            found = _annotated_splits(annotations)
            there = (f"splits found: {', '.join(found)}" if found else
                     f"no captions_<split>.json in {annotations}")
            raise records_error(f"{wanted}: no such COCO annotation file for split {split!r} "
                                f"({there})")
        return SpecData({"root": root, "split": split}, f"coco-{split}", annotations)

    @staticmethod
    def recipe_build_args(root: str, split: dict) -> list:
        return [root, "--split", split["split"]]

    @staticmethod
    def recipe_inputs(root: str, split: dict) -> list:
        return [os.path.join(root, "annotations", f"captions_{split['split']}.json"),
                os.path.join(root, split["split"])]

    def _load(self):
        name = os.path.basename(self.annotations)
        try:
            with open(self.annotations, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise records_error(f"{self.annotations}: unreadable COCO annotations ({exc})") from exc
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise records_error(f"{self.annotations}: not a COCO captions file (needs 'images' and "
                                "'annotations')")
        images = {}
        for k, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                self.bad(f"{name} images[{k}]", "image entry lacks 'id' or 'file_name'")
                continue
            images[img["id"]] = img["file_name"]
        captions: dict = {}
        for k, ann in enumerate(data["annotations"]):
            ann_id = ann.get("id", k) if isinstance(ann, dict) else k
            where = f"{name} annotation id {ann_id}"
            if not isinstance(ann, dict) or "image_id" not in ann:
                self.bad(where, "annotation lacks 'image_id'")
                continue
            if ann["image_id"] not in images:
                self.bad(where, f"refers to unknown image_id {ann['image_id']}")
                continue
            text = clean_caption(ann.get("caption") or "")
            if not text:
                self.bad(where, f"empty caption for image_id {ann['image_id']}")
                continue
            captions.setdefault(ann["image_id"], []).append(text)
        self.info["images_without_captions"] = len(images) - len(captions)
        return images, captions

    def _items(self):
        images, captions = self._load()
        for image_id, file_name in images.items():  # annotation-file order
            if image_id not in captions:
                continue
            path = os.path.join(self.images_dir, file_name)
            if not os.path.isfile(path):
                self.bad(f"{os.path.basename(self.annotations)} image id {image_id}",
                         f"image file missing: {path}")
                continue
            yield SourceItem(str(image_id), path, captions[image_id], -1)


def _annotated_splits(annotations: str) -> list:
    """The splits with a `captions_<split>.json` in the folder `annotations`, sorted."""
    try:
        names = os.listdir(annotations)
    except OSError:
        return []
    return sorted(f[len("captions_"):-len(".json")] for f in names
                  if f.startswith("captions_") and f.endswith(".json"))
