"""Hubness penalties of an index: each photo's mean cosine to its nearest captions of a bank
of training captions, stored beside the index so that text queries rank by CSLS
(`retrieval.py hubness`; the measure itself is `dualencoder.csls`). An update of the
index recomputes them against the same bank (`refresh_hubness`), so CSLS outlives updates.

Example:
```python
info = add_hubness("runs/idx", encoder, "runs/flickr8k/records/train", k=10)
EmbeddingIndex.open("runs/idx").search(queries, 9, csls=True)
```
"""

from __future__ import annotations

import os

import numpy as np

from dualencoder.csls import mean_topk_similarity
from dualencoder.search.errors import RetrievalError
from dualencoder.search.index import EmbeddingIndex, normalize
from dualencoder.search.store import (check_fingerprint, load_index_penalties, read_state,
                                      save_index_penalties)


def read_bank_captions(bank) -> list[str]:
    """The captions of a CSLS bank: a captioned records directory (every caption, in record
    order) or a UTF-8 text file with one caption per line."""
    bank = os.fspath(bank)
    if os.path.isdir(bank):
        if not os.path.isfile(os.path.join(bank, "manifest.json")):
            raise RetrievalError(f"--bank {bank}: a folder without manifest.json; give a records "
                                 "directory (`python -m records build ...`) or a text file "
                                 "with one caption per line")
        from dualencoder.data.annotations import read_captions  # noqa: PLC0415 (imports TensorFlow)

        texts = read_captions(bank)[0]
    elif os.path.isfile(bank):
        try:
            with open(bank, encoding="utf-8") as fh:
                texts = [line.strip() for line in fh if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise RetrievalError(f"cannot read --bank {bank}: {exc}") from exc
    else:
        raise RetrievalError(f"--bank {bank} does not exist")
    if not texts:
        raise RetrievalError(f"--bank {bank} holds no captions")
    return texts


def add_hubness(index_dir, encoder, bank, *, k: int = 10, progress: bool = True) -> dict:
    """Compute and store every indexed image's hubness penalty r(image): its mean cosine to
    its `k` nearest captions of `bank` (training captions, not the photos' own), so that text
    queries rank by CSLS (`EmbeddingIndex.search(..., csls=True)`).

    Args:
        index_dir: a complete index.
        encoder: the index's model (its fingerprint is checked).
        bank: a captioned records directory or a text file with one caption per line.
        k: bank neighbours averaged (1 to the number of bank captions).
        progress: progress bar while the captions are embedded.

    Returns:
        `{"path", "images", "bank_captions", "k", "mean_penalty"}`.
    """
    from dualencoder.encoders.cache import embed_texts  # noqa: PLC0415

    index = EmbeddingIndex.open(index_dir)
    check_fingerprint(index.state, encoder, index.index_dir)
    texts = read_bank_captions(bank)
    if not 1 <= int(k) <= len(texts):
        raise RetrievalError(f"--bank-k {k}: must be between 1 and the bank's {len(texts)} "
                             "captions")
    records = bank if os.path.isdir(bank) else None
    bank_emb = normalize(embed_texts(encoder, texts, progress=progress, cache_dir=False,
                                     desc="encoding bank captions", records_dir=records))
    penalty = np.empty(len(index), np.float32)
    for start in range(0, len(index), 65536):  # float32 copies of one block at a time
        rows = normalize(index.embeddings[start:start + 65536])
        penalty[start:start + len(rows)] = mean_topk_similarity(rows, bank_emb, int(k))
    path = save_index_penalties(index.index_dir, penalty, state=index.state, k=int(k),
                                bank=os.path.abspath(bank), num_captions=len(texts))
    return {"path": path, "images": len(index), "bank_captions": len(texts), "k": int(k),
            "mean_penalty": float(penalty.mean())}


def refresh_hubness(index_dir, encoder, *, progress: bool = True) -> dict | None:
    """Recompute an index's hubness penalties after an update, against the bank and `k` they
    were computed with (recorded beside them), when they are no longer current.

    Returns:
        `add_hubness`'s dict plus `"bank"`, or None when the index has no penalties or they
        are current.

    Raises:
        RetrievalError: the recorded bank is gone or cannot be read; the message says that
            text queries rank by cosine until `retrieval.py hubness` runs again.
    """
    index_dir = os.path.abspath(os.fspath(index_dir))
    state = read_state(index_dir)
    penalty, meta, _ = load_index_penalties(index_dir, state) if state else (None, None, None)
    if meta is None or penalty is not None:
        return None
    bank, k = meta.get("bank"), int(meta.get("k", 10))
    redo = (f"text queries rank by cosine until `retrieval.py hubness --index {index_dir} "
            "--bank BANK` recomputes them")
    if not bank or not os.path.exists(bank):
        raise RetrievalError(f"the hubness penalties (CSLS) of {index_dir} were not recomputed "
                             f"for the updated index: their bank {bank} is gone; {redo}")
    try:
        if os.path.isfile(os.path.join(bank, "manifest.json")):
            from records.schema import RecordsError  # noqa: PLC0415
            from records.verify import verify_records  # noqa: PLC0415

            try:
                verify_records(bank)
            except RecordsError as exc:
                raise RetrievalError(str(exc)) from None
        info = add_hubness(index_dir, encoder, bank, k=k, progress=progress)
    except RetrievalError as exc:
        raise RetrievalError(f"the hubness penalties (CSLS) of {index_dir} were not recomputed "
                             f"for the updated index against their bank {bank} ({exc}); "
                             f"{redo}") from None
    return {**info, "bank": bank}
