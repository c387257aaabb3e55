"""Content keys of cached tower outputs.

A key hashes everything that changes the cached values and nothing else: the records'
shard checksums, the frozen part's weights, where the tower is cut (pooled output or the
boundary before the first trained layer/block), the image size and resize (images) or the
sequence length and pooling (captions), and the precision the tower ran in. A new seed, head
or learning rate reuses the cache; another boundary or precision does not.
"""

from __future__ import annotations

import hashlib
import json

from dualencoder.arrays import hash_arrays

FEATURES_VERSION = 1
BOUNDARY_VERSION = 1


def variables_digest(variables) -> str:
    """sha256 hex of a tower's weights (float32 bytes in order): a locked tower's identity."""
    return hash_arrays(hashlib.sha256(), variables, as_float32=True).hexdigest()


def records_digest(records: str, skip_bad: bool = False) -> dict:
    """What identifies a records directory's content: its shard checksums and record count;
    with `skip_bad`, also the intact records of each damaged shard (none damaged: the same
    digest as without, so intact records share one cache whatever `skip_bad` is)."""
    from records.schema import read_manifest

    manifest = read_manifest(records)
    out = {"shards": [sh.get("sha256") for sh in manifest["shards"]],
           "num_records": manifest["num_records"]}
    if skip_bad:
        from dualencoder.data.shards import salvaged_digests

        salvaged = salvaged_digests(records, manifest)
        if salvaged:
            out["salvaged"] = salvaged
    return out


def _hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def image_key(tower_digest: str, records: str, *, image_size: int, resize_method: str,
              view: int = 0, lowres: int = 0, boundary: str | None = None,
              precision: str = "float32", skip_bad: bool = False) -> str:
    """The key of an image tower's outputs on `records` (pooled, or at `boundary`); with
    `skip_bad`, on the intact records of damaged shards."""
    from dualencoder.data.decode import ANTIALIAS_MIN_SHRINK

    payload = {"version": FEATURES_VERSION, "kind": "image",
               **records_digest(records, skip_bad),
               "tower": tower_digest, "image_size": int(image_size), "resize": resize_method,
               "antialias_min_shrink": ANTIALIAS_MIN_SHRINK}
    if view:
        payload["view"] = int(view)
        if lowres:
            payload["lowres"] = int(lowres)
    if boundary is not None:
        payload.update(boundary=boundary, boundary_version=BOUNDARY_VERSION)
    if precision != "float32":  # float32 keys stay those of earlier caches
        payload["precision"] = precision
    return _hash(payload)


def text_key(tower_digest: str, records: str, *, sequence_length: int, pooling: str,
             boundary: int | None = None, precision: str = "float32",
             skip_bad: bool = False) -> str:
    """The key of a text tower's outputs on the captions of `records` (pooled, or the token
    states entering transformer layer `boundary`: pooling plays no part then)."""
    payload = {"version": FEATURES_VERSION, "kind": "text",
               **records_digest(records, skip_bad),
               "tower": tower_digest, "sequence_length": int(sequence_length)}
    if boundary is None:
        payload["pooling"] = pooling
    else:
        payload.update(boundary=int(boundary), boundary_version=BOUNDARY_VERSION)
    if precision != "float32":
        payload["precision"] = precision
    return _hash(payload)


def frozen_digest(tower) -> str:
    """The digest of the weights that produce a tower's cached outputs: every weight for a
    locked tower; for a cut tower only the frozen part's (the trained part's never enter)."""
    if getattr(tower, "boundary", None) is None:
        return variables_digest(tower.weights)
    return variables_digest(tower.lower_model.weights)
