"""Image search with a trained dual encoder: build an embedding index, search it, serve it.

```
python retrieval.py index  --model WORKDIR --images DIR --out INDEX [--update] [--follow-links]
python retrieval.py index  --model WORKDIR --records DIR --out INDEX
python retrieval.py search --index INDEX --query "cars on the street at night" [-k 9] [--json]
                           [--grid out.png] [--backend exact|faiss]
python retrieval.py search --index INDEX --image query.jpg         # image -> image
python retrieval.py search --index INDEX --queries queries.txt     # one per line -> JSONL
python retrieval.py hubness --index INDEX --bank TRAIN_RECORDS|captions.txt [--bank-k 10]
python retrieval.py serve  --index INDEX [--host 127.0.0.1] [--port 8000]
```

`hubness` stores each indexed image's CSLS penalty against a bank of training captions; text
queries then rank by CSLS (`--no-csls` to rank by cosine). `index --update` recomputes the
penalties against the same bank (a warning says so when the bank is gone).

`--model` takes every model spec `evaluate.py` takes: a training workdir (containing `model/`), a
saved model folder, `ensemble:A,B,...` or `clip:PRESET`; `search` and `serve` default to the
model recorded in the index and refuse a model with another fingerprint.
Bad input prints one line `error: ...` and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dualencoder.encoders import load as model_specs
from dualencoder.model.tower_precision import TOWER_PRECISIONS
from dualencoder.search import server, store
from dualencoder.search.build import build_index, check_out
from dualencoder.search.errors import RetrievalError
from dualencoder.search.grid import save_grid
from dualencoder.search.hubness import add_hubness
from dualencoder.search.index import EmbeddingIndex, check_k, check_query
from dualencoder.search.sources import check_query_image, load_query_image, open_source
from records.cli import Parser, UsageError, output_dir, positive_int, report_error
from records.machine import tensorflow_defaults

EXIT_OK = 0


def load_encoder(spec, tower_precision="float32"):
    """Load the encoder for a model spec (tests replace this with a fake encoder)."""
    try:
        return model_specs.load_encoder(spec, tower_precision)[0]
    except model_specs.ModelSpecError as exc:  # e.g. a CLIP preset that does not load
        raise RetrievalError(str(exc)) from None


def _checked_spec(spec) -> dict:
    """`check_model_spec` with its error as a RetrievalError (no TensorFlow yet)."""
    try:
        return model_specs.check_model_spec(spec)
    except model_specs.ModelSpecError as exc:
        raise RetrievalError(str(exc)) from None


def _add_precision(p) -> None:
    p.add_argument("--tower-precision", choices=TOWER_PRECISIONS, default="float32",
                   help="the towers' compute precision (auto = bfloat16 where the device "
                        "computes it natively); embeddings are float32 either way, so an index "
                        "built in one precision answers queries encoded in another")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="retrieval.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("index", help="embed every image of a folder or records dir into an index")
    p.add_argument("--model", required=True,
                   help="training workdir, saved model folder, ensemble:A,B or clip:PRESET")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder, searched recursively")
    src.add_argument("--records", help="records directory (records/)")
    p.add_argument("--out", required=True, type=output_dir, help="index folder")
    p.add_argument("--update", action="store_true",
                   help="refresh a complete index: embed new/changed images, drop deleted ones "
                   "(and recompute its hubness penalties against their bank)")
    p.add_argument("--chunk-size", type=positive_int, default=512,
                   help="images per committed chunk")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--faiss", choices=["ivf", "hnsw"], default=None,
                   help="also build the faiss index (ivf recommended) and report its recall@10")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--follow-links", action="store_true",
                   help="also index images behind symbolic links that leave the --images folder "
                        "(skipped and counted by default)")
    _add_precision(p)

    p = sub.add_parser("search", help="top-k images for a text or image query")
    p.add_argument("--index", required=True, help="index folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="text query")
    q.add_argument("--image", help="query image file (image -> image search)")
    q.add_argument("--queries", help="file with one text query per line; JSONL output")
    p.add_argument("-k", type=str, default=None,
                   help="number of results (1 to the index size; default 9, or all if fewer)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--grid", help="also write the results as a PNG grid (single query)")
    p.add_argument("--backend", choices=["exact", "faiss"], default="exact")
    p.add_argument("--model", help="model to embed queries with (default: the index's model)")
    p.add_argument("--no-csls", action="store_true",
                   help="rank text queries by cosine even when the index has hubness penalties")
    _add_precision(p)

    p = sub.add_parser("hubness", help="store CSLS penalties against a bank of training captions")
    p.add_argument("--index", required=True, help="index folder (complete)")
    p.add_argument("--bank", required=True,
                   help="captioned records dir (e.g. the training records) or a text file with "
                        "one caption per line; not captions of the indexed photos themselves")
    p.add_argument("--bank-k", type=positive_int, default=10,
                   help="bank captions averaged per image (default 10)")
    p.add_argument("--model", help="the index's model (default: the one it records)")
    _add_precision(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("serve", help="JSON API and a web page over an index")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["exact", "faiss"], default="exact")
    p.add_argument("--model", help="model to embed queries with (default: the index's model)")
    p.add_argument("--no-csls", action="store_true",
                   help="rank text queries by cosine even when the index has hubness penalties")
    _add_precision(p)
    return parser


def _open_model(index, model_arg, tower_precision="float32"):
    """The encoder for `index`: `model_arg` or the spec the index records, checked to have
    the index's fingerprint (a saved model's recorded one before TensorFlow loads)."""
    spec = model_arg or index.model_path
    if not spec:
        raise RetrievalError(f"index {index.index_dir} records no model path; pass --model")
    info = _checked_spec(spec)
    if info["family"] == "ours":  # its recorded fingerprint is checked before TensorFlow loads
        store.check_saved_fingerprint(index.state, info["model_dir"], index.index_dir)
    encoder = load_encoder(spec, tower_precision)
    store.check_fingerprint(index.state, encoder, index.index_dir)
    return encoder


def _verify_records(path, flag="--records") -> None:
    """Check every shard's size and checksum the way training does, before embedding."""
    from records.schema import RecordsError  # noqa: PLC0415 (TensorFlow)
    from records.verify import verify_records  # noqa: PLC0415

    try:
        verify_records(path)
    except RecordsError as exc:
        raise RetrievalError(f"{flag} {path}: {exc}; rebuild it with `python -m records "
                             f"build ... --out {path}`") from None


def cmd_index(args) -> int:
    info = _checked_spec(args.model)  # fail fast, before TensorFlow
    for flag, path in (("--images", args.images), ("--records", args.records)):
        if path is not None and not os.path.isdir(path):
            raise RetrievalError(f"{flag} {path} is not a folder")
    open_source("images" if args.images else "records", args.images or args.records)
    check_out(args.out, args.images)
    if args.records is not None:
        _verify_records(args.records)
    state = store.read_state(args.out) if os.path.isdir(args.out) else None
    if state is not None:
        if info["family"] == "ours":
            store.check_saved_fingerprint(state, info["model_dir"], args.out)
        if state["complete"] and not args.update:
            raise RetrievalError(
                f"index {args.out} already exists and is complete; pass --update to add "
                "new/changed images and drop deleted ones")
    encoder = load_encoder(args.model, args.tower_precision)
    report = build_index(
        encoder, args.out, images=args.images, records=args.records, model_path=args.model,
        update=args.update, chunk_size=args.chunk_size, batch_size=args.batch_size,
        dtype=args.dtype, progress=not args.no_progress, follow_links=args.follow_links)
    for entry in report.skipped:
        print(f"skipped unreadable image {entry['path']}: {entry['error']}", file=sys.stderr)
    print(report.summary())
    if report.hubness_problem:
        print("warning: " + report.hubness_problem, file=sys.stderr)
    if args.faiss:
        EmbeddingIndex.open(args.out).searcher("faiss", kind=args.faiss)
    return EXIT_OK


def _results(hits):
    return [{"rank": r + 1, **h.to_dict()} for r, h in enumerate(hits)]


def _text_queries(args) -> list[str] | None:
    """The text queries of `search` (checked), or None for an image query (checked to decode)."""
    if args.query is not None:
        return [check_query(args.query)]
    if args.queries is None:
        check_query_image(args.image)
        return None
    try:
        with open(args.queries, encoding="utf-8") as fh:
            texts = [line.strip() for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise RetrievalError(f"cannot read --queries {args.queries}: {exc}") from exc
    if not texts:
        raise RetrievalError(f"--queries {args.queries} holds no query")
    if args.grid:
        raise RetrievalError("--grid draws one query; not with --queries")
    return texts


def cmd_search(args) -> int:
    k = check_k(args.k) if args.k is not None else 9
    texts = _text_queries(args)
    index = EmbeddingIndex.open(args.index)
    if args.k is not None and k > len(index):
        raise RetrievalError(f"-k {k} is larger than the index ({len(index)} images)")
    if args.backend == "faiss":
        index.searcher("faiss")  # build/load (and report recall) before the model loads
    encoder = _open_model(index, args.model, args.tower_precision)
    if texts is None:
        queries = encoder.encode_images(load_query_image(args.image, encoder.image_size)[None])
    else:
        queries = encoder.encode_texts(texts)
    csls = texts is not None and not args.no_csls and index.has_csls
    if texts is not None and not args.no_csls and index.hubness_problem:
        print("warning: " + index.hubness_problem, file=sys.stderr)
    similarity = "csls" if csls else "cosine"
    all_hits = index.search(queries, k, backend=args.backend, csls=csls)
    labels = texts if texts is not None else [args.image]
    if args.queries is not None:
        for text, hits in zip(labels, all_hits):
            print(json.dumps({"query": text, "similarity": similarity,
                              "results": _results(hits)}))
        return EXIT_OK
    hits = all_hits[0]
    if args.json:
        key = "query" if texts is not None else "image"
        print(json.dumps({key: labels[0], "k": k, "backend": args.backend,
                          "similarity": similarity, "results": _results(hits)}, indent=1))
    else:
        how = (f"CSLS against {index.hubness['num_captions']} bank captions, "
               f"k={index.hubness['k']}" if csls else "cosine")
        print(f"top {len(hits)} for {labels[0]!r} ({args.backend}, {how}, "
              f"{len(index)} images):")
        for r, hit in enumerate(hits):
            print(f"{r + 1:4d}  {hit.score:7.4f}  {hit.path}")
    if args.grid:
        save_grid(index, hits, args.grid, title=labels[0])
        print(f"wrote {args.grid}", file=sys.stderr)
    return EXIT_OK


def cmd_hubness(args) -> int:
    index = EmbeddingIndex.open(args.index)
    if not os.path.exists(args.bank):  # fail fast, before TensorFlow
        raise RetrievalError(f"--bank {args.bank} does not exist")
    if os.path.isfile(os.path.join(args.bank, "manifest.json")):  # records: verified as usual
        _verify_records(args.bank, "--bank")
    encoder = _open_model(index, args.model, args.tower_precision)
    info = add_hubness(args.index, encoder, args.bank, k=args.bank_k,
                       progress=not args.no_progress)
    print(f"hubness penalties of {info['images']} images against {info['bank_captions']} bank "
          f"captions (k={info['k']}, mean {info['mean_penalty']:.4f}) -> {info['path']}; text "
          "queries now rank by CSLS")
    return EXIT_OK


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise RetrievalError(f"--port {args.port} is not a port number")
    index = EmbeddingIndex.open(args.index)
    index.searcher(args.backend)
    encoder = _open_model(index, args.model, args.tower_precision)
    if not args.no_csls and index.hubness_problem:
        print("warning: " + index.hubness_problem, file=sys.stderr)
    service = server.RetrievalService(index, encoder, backend=args.backend,
                                      csls=not args.no_csls, log=_log)
    service.warmup()
    return server.serve(service, host=args.host, port=args.port)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input)."""
    tensorflow_defaults()  # before TensorFlow loads
    try:
        args = build_parser().parse_args(argv)
        command = {"index": cmd_index, "search": cmd_search, "hubness": cmd_hubness,
                   "serve": cmd_serve}[args.command]
        return command(args)
    except (UsageError, RetrievalError) as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("error: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
