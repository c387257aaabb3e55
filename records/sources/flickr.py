"""Flickr8k / Flickr30k in the Kaggle layout, with an optional split list.

    ROOT/captions.txt   CSV with header `image,caption` (one row per caption)
    ROOT/Images/*.jpg

The original Flickr8k token file (`Flickr8k.token.txt`: `name.jpg#0<TAB>caption`) is read too
when given as `captions`. A split list (`Flickr_8k.trainImages.txt` style: one file name per
line) keeps only the images it names; a name it lists that has no captions is bad input.

Example:
>>> build_records("flickr", "data/flickr8k_train", root="../shared/data/flickr8k",
...               split_file="../shared/data/flickr8k/splits/Flickr_8k.trainImages.txt")
"""

from __future__ import annotations

import csv
import os

from records.sources.base import (Source, SpecData, argument, grouped_items, records_error,
                                  require_dir, require_file)


class FlickrSource(Source):
    """Flickr captions file plus image folder.

    Args:
        root: the dataset directory.
        captions: the captions file (default `ROOT/captions.txt`).
        images_dir: the image folder (default `ROOT/Images`, or `ROOT/images`).
        split_file: optional list of image file names to keep, one per line.
        skip_bad: skip bad rows and images instead of raising.
    """

    name = "flickr"
    description = "Flickr8k/30k Kaggle layout (captions.txt 'image,caption' + Images/)"
    arguments = (
        argument("root", help="dataset directory"),
        argument("--split-file", default=None,
                 help="list of image names to keep, one a line (e.g. Flickr_8k.trainImages.txt)"),
        argument("--captions", default=None,
                 help="captions file (default ROOT/captions.txt; a Flickr8k.token.txt is read "
                      "too)"),
        argument("--images-dir", default=None, help="image folder (default ROOT/Images)"),
    )
    spec_syntax = "flickr:DIR[:SPLITFILE]"
    recipe_split_keys = frozenset({"split_file"})

    def __init__(self, *, root, captions=None, images_dir=None, split_file=None, skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.root = require_dir(root, "Flickr root")
        self.captions = require_file(captions or os.path.join(self.root, "captions.txt"),
                                     "Flickr captions file")
        if images_dir is None:
            images_dir = next((p for p in (os.path.join(self.root, "Images"),
                                           os.path.join(self.root, "images")) if os.path.isdir(p)),
                              os.path.join(self.root, "Images"))
        self.images_dir = require_dir(images_dir, "Flickr image folder")
        self.split_file = require_file(split_file, "split list") if split_file else None
        self.info = {"captions": self.captions, "images_dir": self.images_dir,
                     "split_file": self.split_file}

    @classmethod
    def from_spec(cls, rest: str) -> SpecData:
        """`DIR[:SPLITFILE]`: the dataset folder and an optional split list (a path, or a name
        inside DIR); the data is named `flickr8k[-<split>]`, e.g. `flickr8k-devImages`."""
        root, _, split = rest.partition(":")
        if not os.path.isdir(root):
            raise records_error(f"{root}: no such directory ({cls.spec_syntax})")
        if split and not os.path.isfile(split):
            if not os.path.isfile(os.path.join(root, split)):
                raise records_error(f"{split}: no such split file")
            split = os.path.join(root, split)
        options = {"root": root}
        name = "flickr8k"
        if split:
            options["split_file"] = split
            parts = os.path.basename(split).split(".")
            name += f"-{parts[-2] if len(parts) > 1 else parts[0]}"
        return SpecData(options, name, root)

    @staticmethod
    def recipe_build_args(root: str, split: dict) -> list:
        return [root, "--split-file", os.path.join(root, split["split_file"])]

    @staticmethod
    def recipe_inputs(root: str, split: dict) -> list:
        return [os.path.join(root, "captions.txt"), os.path.join(root, split["split_file"])]

    def _rows(self):
        name = os.path.basename(self.captions)
        with open(self.captions, encoding="utf-8", newline="") as fh:
            if name.endswith(".token.txt"):
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    if "\t" not in line:
                        self.bad(f"{name} line {n}", "expected 'image#k<TAB>caption'")
                        continue
                    key, caption = line.rstrip("\n").split("\t", 1)
                    yield f"{name} line {n}", key.split("#", 1)[0], caption
                return
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
                raise records_error(f"{self.captions} line 1: expected the header 'image,caption', "
                                    f"got {header!r}")
            for row in reader:
                where = f"{name} line {reader.line_num}"
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) < 2:
                    self.bad(where, f"malformed row {row!r} (expected image,caption)")
                    continue
                # Kaggle files leave commas inside captions unquoted: keep them.
                yield where, row[0], ",".join(row[1:])

    def _items(self):
        rows = self._rows()
        if not self.split_file:
            yield from grouped_items(self, rows, self.images_dir)
            return
        with open(self.split_file, encoding="utf-8") as fh:
            wanted = [line.strip() for line in fh if line.strip()]
        keep, mentioned = set(wanted), set()

        def kept(rows):
            for row in rows:
                image = row[1].strip()
                if image in keep:
                    mentioned.add(image)
                    yield row

        yield from grouped_items(self, kept(rows), self.images_dir)
        split_name = os.path.basename(self.split_file)
        for n, image in enumerate(wanted, start=1):
            if image not in mentioned:
                self.bad(f"{split_name} line {n}", f"image {image!r} has no captions in "
                         f"{os.path.basename(self.captions)}")
