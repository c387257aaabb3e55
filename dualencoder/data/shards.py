"""The shards of a records directory as `tf.data` record streams.

`checked_paths` checks each shard against its manifest entry first (strict: a damaged shard
raises `RecordsError` naming it; `skip_bad`: it is replaced by a salvaged copy of its intact
records). `record_stream` reads shards record by record, interleaved deterministically.
"""

from __future__ import annotations

import os
import sys
import tempfile

import tensorflow as tf

from records import schema
from records.reader import salvage_shard, shard_problem

_SALVAGED: dict = {}  # (path, size, mtime_ns, sha256) -> path of the shard's intact records


def checked_paths(records_dir, manifest, *, skip_bad):
    """Shard paths in manifest order, each checked against its manifest entry first.

    Strict (`skip_bad=False`): a shard whose size differs from the manifest (truncated, or
    bytes appended) raises `RecordsError` naming it; a same-size corruption is what
    `records verify` (run before training unless `data.verify=false`) catches.
    `skip_bad=True`: each shard is hashed once per process; a damaged one is replaced by a
    salvaged copy holding exactly its intact records (see `records.reader.salvage_shard`).
    """
    paths = []
    for entry in manifest["shards"]:
        path = os.path.join(records_dir, entry["name"])
        try:
            st = os.stat(path)
        except OSError as exc:
            raise schema.RecordsError(f"{records_dir}: shard {entry['name']} is unreadable "
                                      f"({exc.strerror or exc})") from exc
        if not skip_bad:
            _check_size(records_dir, entry, st.st_size)
            paths.append(path)
            continue
        key = (path, st.st_size, st.st_mtime_ns, entry.get("sha256"))
        if key not in _SALVAGED:
            _SALVAGED[key] = _intact_copy(records_dir, entry, path)
        paths.append(_SALVAGED[key])
    return paths


def readable_paths(records_dir, manifest):
    """Shard paths in manifest order, each damaged shard that `skip_bad` reading has salvaged
    in this process replaced by its intact copy (nothing is hashed here): counting through
    them counts what a `skip_bad` pass reads."""
    out = []
    for entry, path in zip(manifest["shards"], schema.shard_paths(records_dir, manifest)):
        try:
            st = os.stat(path)
        except OSError:
            out.append(path)
            continue
        out.append(_SALVAGED.get((path, st.st_size, st.st_mtime_ns, entry.get("sha256")), path))
    return out


def _check_size(records_dir, entry, size):
    """Strict mode: a shard whose size differs from the manifest's raises `RecordsError`."""
    expected = entry.get("bytes") or None  # 0/absent: not recorded
    if expected is not None and size != expected:
        kind = "truncated" if size < expected else "longer than built"
        raise schema.RecordsError(
            f"{records_dir}: shard {entry['name']} is damaged ({kind}: {size} "
            f"bytes, the manifest says {expected}). Run `python -m records verify` and "
            "rebuild, or set skip_bad to read its intact records.")


def _intact_copy(records_dir, entry, path):
    """`path` when the shard is intact, else the path of a temporary shard holding exactly
    its intact records (a warning names the damage)."""
    blob, problem = shard_problem(records_dir, entry)
    if problem is None:
        return path
    good = salvage_shard(records_dir, entry, blob)
    folder = tempfile.mkdtemp(prefix="dualencoder-salvaged-")
    out = os.path.join(folder, entry["name"])
    with tf.io.TFRecordWriter(out) as writer:
        for data in good:
            writer.write(data)
    print(f"warning: {records_dir}: shard {entry['name']} is damaged ({problem}); reading its "
          f"{len(good)} intact records of {entry['records']}", file=sys.stderr, flush=True)
    return out


def salvaged_digests(records_dir, manifest) -> dict:
    """`{shard name: sha256 of its intact records}` of each damaged shard as `skip_bad` reads
    it (`{}` when every shard is intact): what identifies the records a `skip_bad` reader
    sees beyond the manifest's checksums."""
    from records.files import sha256_file

    out = {}
    for entry, path in zip(manifest["shards"],
                           checked_paths(records_dir, manifest, skip_bad=True)):
        if os.path.abspath(path) != os.path.abspath(os.path.join(records_dir, entry["name"])):
            out[entry["name"]] = sha256_file(path)
    return out


def record_stream(paths, *, interleave: int, tolerant: bool = False, offsets=None):
    """Serialized records of `paths`, interleaved record by record, deterministic.

    `offsets` (one int per path): shard `i` is read from record `offsets[i]` to its end and
    then from its start, so which records of different shards arrive side by side changes with
    the offsets (each record still comes exactly once).
    `tolerant`: a shard's framing error ends that shard instead of the whole stream (each
    shard stops at its first damaged record; `checked_paths` salvages the rest)."""
    if offsets is None:
        offsets = [0] * len(paths)
    files = tf.data.Dataset.from_tensor_slices((paths, tf.constant(offsets, tf.int64)))
    cycle = max(1, min(interleave, len(paths)))

    def read(f, offset):
        def part(ds):
            return ds.ignore_errors() if tolerant else ds

        return part(tf.data.TFRecordDataset(f).skip(offset)).concatenate(
            part(tf.data.TFRecordDataset(f).take(offset)))

    if cycle == 1:
        return files.flat_map(read)
    return files.interleave(
        read, cycle_length=cycle,
        block_length=1, num_parallel_calls=min(cycle, 4), deterministic=True)


def dataset_options():
    """The options of every dataset the pipeline returns: deterministic order, parallel maps."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options
