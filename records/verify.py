"""Re-check a records directory against its manifest: sizes, sha256, record counts, indices."""

from __future__ import annotations

import os

from records.reader import first_record_problem, shard_problem, split_records
from records.schema import RecordsError, decode_example_py, read_manifest


def verify_records(records_dir, *, raise_on_error: bool = True) -> dict:
    """Check every shard of `records_dir` against `manifest.json`.

    For each shard: its size and sha256, the number of records and captions, and that
    `image/index` runs from the shard's `first_index` without gaps; then the manifest totals.

    Args:
        records_dir: a directory written by `build_records`.
        raise_on_error: raise on the first report with problems (default); with False the report
            is returned with `ok: False` and each shard's `problem`.

    Returns:
        `{"records_dir", "ok", "num_records", "num_captions", "shards": [{"name", "ok",
        "records", "captions", "problem"}], "problems": [str]}`.

    Raises:
        RecordsError: the manifest is missing or unreadable, or (with `raise_on_error`) a shard is
            bad; the message names every bad shard.

    Example:
    >>> report = verify_records("data/synth_train")
    >>> report["ok"], report["num_records"]
    (True, 2000)
    """
    records_dir = os.fspath(records_dir)
    manifest = read_manifest(records_dir)  # raises for a missing manifest or shard file
    shards, problems = [], []
    total_records = total_captions = 0
    next_index = 0
    for entry in manifest["shards"]:
        row = {"name": entry["name"], "ok": True, "records": 0, "captions": 0, "problem": None}
        blob, problem = shard_problem(records_dir, entry)
        if problem is None:
            problem = _check_contents(blob, entry, row, next_index)
        elif blob is not None:
            detail = first_record_problem(blob)
            problem += f"; {detail}" if detail else ""
        if problem:
            row.update(ok=False, problem=problem)
            problems.append(f"shard {entry['name']}: {problem}")
        total_records += row["records"]
        total_captions += row["captions"]
        next_index = entry["first_index"] + entry["records"]
        shards.append(row)
    if not problems:
        if total_records != manifest["num_records"]:
            problems.append(f"manifest num_records {manifest['num_records']} but the shards hold "
                            f"{total_records}")
        if "num_captions" in manifest and total_captions != manifest["num_captions"]:
            problems.append(f"manifest num_captions {manifest['num_captions']} but the shards "
                            f"hold {total_captions}")
    report = {"records_dir": records_dir, "ok": not problems, "num_records": total_records,
              "num_captions": total_captions, "shards": shards, "problems": problems}
    if problems and raise_on_error:
        raise RecordsError(f"{records_dir}: verification failed: " + "; ".join(problems))
    return report


def _check_contents(blob, entry, row, expected_first) -> str | None:
    if entry["first_index"] != expected_first:
        return f"first_index {entry['first_index']}, expected {expected_first}"
    try:
        datas = split_records(blob)
    except Exception as exc:  # struct errors on malformed framing
        return f"malformed framing ({exc})"
    for position, data in enumerate(datas):
        try:
            record = decode_example_py(data)
        except Exception as exc:
            return f"record {position} does not parse ({exc})"
        if record["index"] != entry["first_index"] + position:
            return (f"record {position} has image/index {record['index']}, expected "
                    f"{entry['first_index'] + position}")
        row["records"] += 1
        row["captions"] += len(record["captions"])
    if row["records"] != entry["records"]:
        return f"holds {row['records']} records, the manifest says {entry['records']}"
    if row["captions"] != entry["captions"]:
        return f"holds {row['captions']} captions, the manifest says {entry['captions']}"
    return None
