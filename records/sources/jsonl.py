"""A user JSON-lines file of image-caption objects; paths are relative to the file.

    {"image": "photos/a.jpg", "caption": "a dog on a beach"}
    {"image": "photos/a.jpg", "captions": ["a brown dog", "a dog running"]}

Lines naming the same image are grouped into one record. Blank lines are ignored.

Example:
>>> build_records("jsonl", "data/mine", path="my_captions.jsonl")
"""

from __future__ import annotations

import json
import os

from records.sources.base import Source, argument, grouped_items, require_file


class JsonlSource(Source):
    """Image-caption objects, one per line.

    Args:
        path: the `.jsonl` file.
        image_key: key of the image path (default `"image"`).
        caption_key: key of one caption (default `"caption"`); a list under `"captions"` (or
            under `caption_key` itself) is read as several captions.
        skip_bad: skip malformed lines, empty captions and missing images instead of raising.
    """

    name = "jsonl"
    description = "a JSON-lines file of {image, caption|captions} (paths relative to the file)"
    arguments = (
        argument("path", help="the .jsonl file"),
        argument("--image-key", default="image", help="image path key (default image)"),
        argument("--caption-key", default="caption",
                 help="caption key (default caption; a list under 'captions' is read too)"),
    )

    def __init__(self, *, path, image_key="image", caption_key="caption", skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.path = require_file(path, "JSONL file")
        self.image_key, self.caption_key = image_key, caption_key
        self.info = {"path": self.path}

    def _rows(self):
        name = os.path.basename(self.path)
        with open(self.path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, start=1):
                where = f"{name} line {n}"
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.bad(where, f"malformed JSON ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(self.image_key), str):
                    self.bad(where, f"expected an object with a string {self.image_key!r}")
                    continue
                value = obj.get(self.caption_key, obj.get("captions"))
                captions = value if isinstance(value, list) else [value]
                if value is None or not all(isinstance(c, str) for c in captions) or not captions:
                    self.bad(where, f"expected a string {self.caption_key!r} or a list of "
                             "strings 'captions'")
                    continue
                for caption in captions:
                    yield where, obj[self.image_key], caption

    def _items(self):
        return grouped_items(self, self._rows(), os.path.dirname(os.path.abspath(self.path)))
