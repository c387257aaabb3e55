"""Read records back in plain Python, checking every shard against the manifest.

`iter_records(dir)` yields one dict per image (`schema.decode_example_py`) in `image/index`
order. Each shard is checked against its manifest entry (size and sha256) before any of its
records is yielded: a damaged shard raises `RecordsError` naming it, or, with `skip_bad=True`,
every intact record is still yielded (each record has its own CRC) and the rest are counted in
`.stats`. The training pipeline reads the same shards with `tf.data` (`dualencoder/data/shards.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct

from records.schema import RecordsError, decode_example_py, read_manifest
from records.tfrecord_io import scan_records


@dataclasses.dataclass
class ReadStats:
    """What a reader saw: records yielded, records skipped, and the damaged shards."""

    records: int = 0
    skipped_records: int = 0
    bad_shards: list = dataclasses.field(default_factory=list)  # [{"name", "problem", "skipped"}]


def shard_problem(records_dir: str, entry: dict) -> tuple[bytes | None, str | None]:
    """Load a shard and compare it with its manifest entry.

    Returns:
        `(blob, problem)`: the shard's bytes (None if unreadable) and a description of what is
        wrong (None if the size and sha256 match the manifest).
    """
    path = os.path.join(records_dir, entry["name"])
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError as exc:
        return None, f"unreadable ({exc})"
    expected_bytes = entry.get("bytes")
    if expected_bytes is not None and len(blob) != expected_bytes:
        kind = "truncated" if len(blob) < expected_bytes else "longer than built"
        return blob, f"{kind}: {len(blob)} bytes, the manifest says {expected_bytes}"
    expected_sha = entry.get("sha256")
    if expected_sha and hashlib.sha256(blob).hexdigest() != expected_sha:
        return blob, "sha256 mismatch (content changed since the build)"
    if not expected_sha:
        return blob, None if all(r.problem is None for r in scan_records(blob)) else \
            "record checksum failure"
    return blob, None


def first_record_problem(blob: bytes) -> str | None:
    """The first framing or CRC problem in a shard's bytes (slow: pure-Python CRC)."""
    for rec in scan_records(blob):
        if rec.problem:
            return rec.problem
    return None


def split_records(blob: bytes) -> list[bytes]:
    """Split trusted (checksum-verified) TFRecord bytes into records, without CRC checks."""
    out, offset, size = [], 0, len(blob)
    while offset < size:
        if offset + 12 > size:
            raise ValueError(f"malformed framing: a record header at byte {offset} is cut off")
        (length,) = struct.unpack_from("<Q", blob, offset)
        start = offset + 12
        if start + length + 4 > size:
            raise ValueError(f"malformed framing: the record at byte {offset} runs past the end")
        out.append(blob[start:start + length])
        offset = start + length + 4
    return out


def salvage_shard(records_dir: str, entry: dict, blob: bytes | None = None) -> list[bytes]:
    """The serialized records of a damaged shard that are still intact, in order: each passes
    its CRC, parses as an example and carries the `image/index` its position implies. The
    rest of the manifest's `entry["records"]` are lost (count them as skipped)."""
    if blob is None:
        try:
            with open(os.path.join(records_dir, entry["name"]), "rb") as fh:
                blob = fh.read()
        except OSError:
            return []
    good = []
    for rec in scan_records(blob):
        if rec.data is None or rec.position >= entry["records"]:
            continue
        try:
            record = decode_example_py(rec.data)
        except Exception:  # noqa: BLE001 - any parse failure means a lost record
            continue
        if record["index"] == entry["first_index"] + rec.position:
            good.append(rec.data)
    return good


class RecordIterator:
    """Iterator over decoded records; see `iter_records`. `.stats` and `.manifest` are public."""

    def __init__(self, records_dir, skip_bad: bool = False):
        self.records_dir = os.fspath(records_dir)
        self.skip_bad = bool(skip_bad)
        self.manifest = read_manifest(self.records_dir)
        self.stats = ReadStats()
        self._gen = self._generate()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._gen)

    def _generate(self):
        for entry in self.manifest["shards"]:
            name = entry["name"]
            blob, problem = shard_problem(self.records_dir, entry)
            if problem is None:  # bytes as built; still, what was built may not parse
                try:
                    datas = split_records(blob)
                    if len(datas) != entry["records"]:
                        raise RecordsError(f"holds {len(datas)} records, the manifest says "
                                           f"{entry['records']}")
                    records = [self._decode(data, entry, position)
                               for position, data in enumerate(datas)]
                except (ValueError, RecordsError) as exc:  # RecordsError is a ValueError
                    problem = str(exc)
                else:
                    for record in records:
                        self.stats.records += 1
                        yield record
                    continue
            detail = first_record_problem(blob) if blob is not None else None
            message = (f"{self.records_dir}: shard {name} is damaged: {problem}"
                       + (f"; {detail}" if detail else "")
                       + ". Run `python -m records verify` and rebuild, or read with skip_bad.")
            if not self.skip_bad:
                raise RecordsError(message)
            good = 0
            for rec in scan_records(blob or b""):
                if rec.data is None or rec.position >= entry["records"]:
                    continue
                try:
                    record = self._decode(rec.data, entry, rec.position)
                except RecordsError:
                    continue
                good += 1
                self.stats.records += 1
                yield record
            skipped = max(entry["records"] - good, 0)
            self.stats.skipped_records += skipped
            self.stats.bad_shards.append({"name": name, "problem": message, "skipped": skipped})

    def _decode(self, data: bytes, entry: dict, position: int) -> dict:
        try:
            record = decode_example_py(data)
        except Exception as exc:
            raise RecordsError(f"{self.records_dir}: shard {entry['name']} record {position} does "
                               f"not parse as an example ({exc})") from exc
        expected = entry["first_index"] + position
        if record["index"] != expected:
            raise RecordsError(f"{self.records_dir}: shard {entry['name']} record {position} has "
                               f"image/index {record['index']}, expected {expected}")
        return record


def iter_records(records_dir, skip_bad: bool = False) -> RecordIterator:
    """Iterate over the decoded records of a records directory, in index order.

    Args:
        records_dir: a directory written by `build_records`.
        skip_bad: on a damaged shard, yield its intact records and count the rest in
            `.stats.skipped_records` / `.stats.bad_shards` instead of raising.

    Returns:
        A `RecordIterator` of dicts with `image_bytes`, `image_format`, `image_id`, `index`,
        `height`, `width`, `captions`, `label`, `source`; its `.stats` is a `ReadStats`.

    Raises:
        RecordsError: the manifest is missing or bad, or (without `skip_bad`) a shard is damaged;
            the message names the shard.

    Example:
    >>> it = iter_records("data/synth_train", skip_bad=True)
    >>> captions = [r["captions"] for r in it]
    >>> it.stats.skipped_records
    0
    """
    return RecordIterator(records_dir, skip_bad=skip_bad)
