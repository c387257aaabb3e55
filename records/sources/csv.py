"""A user CSV of (image path, caption) rows; paths are relative to the CSV file.

    image,caption
    photos/a.jpg,a dog on a beach
    photos/a.jpg,a brown dog running      <- same image: grouped into one record

Example:
>>> build_records("csv", "data/mine", path="my_captions.csv")
"""

from __future__ import annotations

import csv
import os

from records.sources.base import (Source, argument, grouped_items, records_error,
                                  require_file)


class CsvSource(Source):
    """Image-caption rows from a CSV file with a header.

    Args:
        path: the CSV file.
        image_column: header of the image path column (default `"image"`).
        caption_column: header of the caption column (default `"caption"`).
        delimiter: field separator (default `","`).
        skip_bad: skip malformed rows, empty captions and missing images instead of raising.
    """

    name = "csv"
    description = "a CSV of image,caption rows (paths relative to the file)"
    arguments = (
        argument("path", help="the CSV file (with a header)"),
        argument("--image-column", default="image", help="image path column (default image)"),
        argument("--caption-column", default="caption",
                 help="caption column (default caption)"),
        argument("--delimiter", default=",", help="field separator (default ,)"),
    )

    def __init__(self, *, path, image_column="image", caption_column="caption", delimiter=",",
                 skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.path = require_file(path, "CSV file")
        self.image_column, self.caption_column, self.delimiter = (image_column, caption_column,
                                                                  delimiter)
        self.info = {"path": self.path}

    def _rows(self):
        name = os.path.basename(self.path)
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as fh:
                reader = csv.reader(fh, delimiter=self.delimiter)
                header = next(reader, None)
                if header is None:
                    raise records_error(
                        f"{self.path}: empty CSV file (expected a header "
                        f"{self.image_column}{self.delimiter}{self.caption_column})")
                header = [h.strip() for h in header]
                missing = [c for c in (self.image_column, self.caption_column) if c not in header]
                if missing:
                    raise records_error(f"{self.path} line 1: header {header} lacks column(s) "
                                        f"{missing}")
                i_img, i_cap = header.index(self.image_column), header.index(self.caption_column)
                for row in reader:
                    where = f"{name} line {reader.line_num}"
                    if not row:
                        continue
                    if len(row) != len(header):
                        self.bad(where, f"malformed row: {len(row)} fields, the header has "
                                 f"{len(header)} ({row!r})")
                        continue
                    yield where, row[i_img], row[i_cap]
        except csv.Error as exc:
            raise records_error(f"{self.path}: malformed CSV ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise records_error(f"{self.path}: not UTF-8 text ({exc})") from exc

    def _items(self):
        return grouped_items(self, self._rows(), os.path.dirname(os.path.abspath(self.path)))
