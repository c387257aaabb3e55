"""Class-folder image datasets (one sub-folder per class) for classification records.

    ROOT/<class>/<image>.jpg

Records carry `label` (index into the manifest's `class_names`) and no captions. Class names
are the folder names, optionally renamed by a class map: a JSON object `{"src": "dst"}` or a
text file of `src,dst` lines, or the name of a shipped map (`animals10`: the Italian folder
names of Kaggle's Animals-10 to English). `class_names` is sorted; two folders that map to the
same name are an error.

Example:
>>> build_records("folders", "data/animals", root="raw-img", class_map="animals10")
"""

from __future__ import annotations

import json
import os

from records.files import IMAGE_EXTENSIONS
from records.sources.base import Source, SourceItem, argument, records_error, require_dir

SHIPPED_MAPS = {"animals10": "animals10_map.json"}


def load_class_map(spec) -> dict:
    """Read a class map: a shipped name (`"animals10"`), a JSON file, or `src,dst` lines
    (`src=dst` and tab-separated lines too; `#` comments). Used by `records build folders`
    and by zero-shot evaluation (`dualencoder.eval.zeroshot.load_class_map`).

    Example:
    >>> load_class_map("animals10")["cane"]
    'dog'
    """
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    spec = os.fspath(spec)
    if spec in SHIPPED_MAPS:
        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", SHIPPED_MAPS[spec])
    elif os.path.isfile(spec):
        path = spec
    else:
        raise records_error(f"class map {spec!r}: neither a file nor a shipped map "
                            f"({', '.join(SHIPPED_MAPS)})")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise records_error(f"{path}: not a class map (not UTF-8 text: byte {exc.start} is "
                            f"{exc.object[exc.start:exc.start + 1]!r}); expected JSON or "
                            "'src,dst' lines") from None
    except OSError as exc:
        raise records_error(f"{path}: cannot read the class map ({exc.strerror or exc})") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise records_error(f"{path}: malformed JSON class map ({exc})") from exc
        if not all(isinstance(v, str) and v.strip() for v in data.values()):
            raise records_error(f"{path}: class map values must be non-empty strings")
        return {str(k): v.strip() for k, v in data.items()}
    mapping = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sep = next((c for c in ("\t", "=", ",") if c in line), None)
        parts = [p.strip() for p in line.split(sep, 1)] if sep else []
        if len(parts) != 2 or not all(parts):
            raise records_error(f"{path} line {n}: expected 'src,dst' (or 'src=dst', "
                                f"'src<TAB>dst'), got {line!r}")
        mapping[parts[0]] = parts[1]
    return mapping


class FoldersSource(Source):
    """One sub-folder per class; labels index the sorted (mapped) class names.

    Args:
        root: the directory holding the class folders.
        class_map: optional rename of folder names: a shipped map name (`"animals10"`), a path
            (JSON object or `src,dst` lines) or a dict.
        skip_bad: skip unreadable images instead of raising.
    """

    name = "folders"
    description = "class-folder images (ROOT/<class>/*.jpg) for classification"
    arguments = (
        argument("root", help="directory of class folders"),
        argument("--class-map", default=None,
                 help="rename classes: 'animals10' (shipped Italian->English map), a JSON file "
                      "or 'src,dst' lines"),
    )

    def __init__(self, *, root, class_map=None, skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.root = require_dir(root, "class-folder root")
        mapping = load_class_map(class_map) if class_map else {}
        folders = sorted(e.name for e in os.scandir(self.root)
                         if e.is_dir() and not e.name.startswith("."))
        if not folders:
            raise records_error(f"{self.root}: no class folders (expected ROOT/<class>/<image>)")
        by_name: dict[str, str] = {}
        for folder in folders:
            cls = mapping.get(folder, folder)
            if cls in by_name:
                raise records_error(f"{self.root}: folders {by_name[cls]!r} and {folder!r} both "
                                    f"map to class {cls!r}; fix the class map")
            by_name[cls] = folder
        self.class_names = sorted(by_name)
        self._folders = [(by_name[c], i) for i, c in enumerate(self.class_names)]
        self.info = {"root": self.root, "class_map": None if class_map is None else
                     (class_map if isinstance(class_map, str) else "custom"),
                     "folders": {c: by_name[c] for c in self.class_names},
                     "unused_map_keys": sorted(set(mapping) - set(folders))}

    def _items(self):
        for folder, label in self._folders:
            directory = os.path.join(self.root, folder)
            files = sorted(e.name for e in os.scandir(directory) if e.is_file()
                           and e.name.lower().endswith(IMAGE_EXTENSIONS))
            for file_name in files:
                yield SourceItem(f"{folder}/{file_name}", os.path.join(directory, file_name), [],
                                 label)
