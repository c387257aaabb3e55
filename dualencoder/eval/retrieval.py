"""The retrieval evaluator: image↔text Recall@K over the whole gallery of a captioned records
directory, by plain cosine or by CSLS against a bank of training data
(`dualencoder.csls`), with a figure of example text queries and their top images.
`check_bank` validates a bank cheaply, before any model is loaded."""

from __future__ import annotations

import os
import time

import numpy as np

from dualencoder.eval import metrics as M
from dualencoder.eval import plots
from dualencoder.eval.errors import EvaluationError
from dualencoder.eval.inputs import is_records_dir, load_images
from dualencoder.eval.report import header, pct, write_report

__all__ = ["run_retrieval", "check_bank"]


def run_retrieval(encoder, records_dir: str, out_dir: str, *, model_info: dict, name=None,
                  ks=(1, 5, 10), resize="bicubic", batch_size=64, cache_dir=None,
                  num_examples=4, top=5, progress=True, image_chunk=2048, text_chunk=16384,
                  seed=0, data_info=None, bank=None, bank_k=10) -> dict:
    """Image↔text retrieval over the whole gallery of a captioned records directory.

    With `bank` (a captioned records directory of *training* data, never the gallery),
    rankings use CSLS against that bank (`dualencoder.csls`): each gallery image is
    penalised by its mean cosine to its `bank_k` nearest bank captions, each gallery caption
    by its mean cosine to its `bank_k` nearest bank images. The report's `metrics` are then
    the CSLS numbers and `metrics_cosine` the plain cosine ones.
    """
    from dualencoder import csls as H

    if bank is not None:
        check_bank(bank, records_dir, bank_k)
    embed = dict(resize=resize, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    gallery = _embed_gallery(encoder, records_dir, **embed)
    owner = gallery["owner"]

    def rank(img, txt):
        try:
            return M.retrieval_metrics(img, txt, owner, ks=ks, image_chunk=image_chunk,
                                       text_chunk=text_chunk, progress=progress)
        except ValueError as exc:
            raise EvaluationError(str(exc)) from exc

    t2 = time.perf_counter()
    img, txt = gallery["images"]["embeddings"], gallery["texts"]
    cosine, t_bank, bank_info = None, 0.0, None
    if bank is not None:
        t_b = time.perf_counter()
        bank_img, bank_txt, bank_info = _embed_bank(encoder, bank, bank_k, **embed)
        t_bank = time.perf_counter() - t_b
        cosine = rank(img, txt)
        img, txt = H.csls_embeddings(img, txt, H.mean_topk_similarity(img, bank_txt, bank_k),
                                     H.mean_topk_similarity(txt, bank_img, bank_k))
    result = rank(img, txt)
    t_search = time.perf_counter() - t2 - t_bank
    os.makedirs(out_dir, exist_ok=True)
    _plot_examples(records_dir, gallery, img, txt, os.path.join(out_dir, "retrieval_examples.png"),
                   num_examples=num_examples, top=top, seed=seed, csls=bank is not None)
    dataset = {"name": name or os.path.basename(os.path.normpath(records_dir)),
               "path": os.path.abspath(records_dir), "num_images": result["num_images"],
               "num_captions": result["num_captions"],
               "captions_dropped": gallery["captions_dropped"], **(data_info or {})}
    settings = {"resize": resize, "image_size": int(encoder.image_size), "ks": list(ks),
                "ties": result["ties"], "similarity": "cosine (dot of L2-normalised embeddings)"}
    if bank is not None:
        settings["similarity"] = (f"CSLS, k={bank_k}: 2 cos - r(image) - r(caption), r = mean "
                                  f"cosine to the k nearest of the bank's other modality")
        settings["bank"] = bank_info
    emb = gallery["images"]
    report = {"kind": "retrieval", "model": model_info, "dataset": dataset,
              "settings": settings,
              "metrics": {"image_to_text": result["image_to_text"],
                          "text_to_image": result["text_to_image"]},
              "timing": {"encode_images_s": gallery["encode_images_s"],
                         "encode_texts_s": gallery["encode_texts_s"],
                         "search_s": t_search, "bank_s": t_bank,
                         "embeddings_cached": bool(emb.get("cached")),
                         "tower_features": emb.get("tower_features")},
              "figures": ["retrieval_examples.png"]}
    tables = [("", result)]
    if cosine is not None:
        report["metrics_cosine"] = {"image_to_text": cosine["image_to_text"],
                                    "text_to_image": cosine["text_to_image"]}
        tables = [(f"CSLS against the bank (k={bank_k}; {bank_info['num_images']} images, "
                   f"{bank_info['num_captions']} captions of {bank}):", result),
                  ("Plain cosine, for comparison:", cosine)]
    md = "\n\n".join([
        header(f"Retrieval — {dataset['name']}", model_info, dataset, settings),
        f"Gallery: {result['num_images']} images, {result['num_captions']} captions. "
        "Image → text is a hit when any of the image's own captions is in the top K. "
        "Ties count against the query (pessimistic).",
        *[_recall_table(title, res, ks) for title, res in tables], "## Examples",
        "![text queries and their top images](retrieval_examples.png)"])
    return write_report(out_dir, report, md)


def _embed_gallery(encoder, records_dir, *, resize, batch_size, cache_dir, progress) -> dict:
    """Image and caption embeddings of the gallery. Captions of skipped images are dropped;
    `owner` is the gallery row of each kept caption's image."""
    from dualencoder.data import annotations as D
    from dualencoder.encoders.cache import embed_images, embed_texts

    texts, owner = D.read_captions(records_dir)
    if not texts:
        raise EvaluationError(f"{records_dir}: no captions; retrieval needs captioned records")
    t0 = time.perf_counter()
    emb = embed_images(encoder, records_dir, resize_method=resize, batch_size=batch_size,
                       cache_dir=cache_dir, progress=progress)
    t_img = time.perf_counter() - t0
    # Gallery rows follow emb["image_index"]; map captions' image/index to rows.
    row_of = np.full(int(max(emb["image_index"].max(), owner.max())) + 1, -1, np.int64)
    row_of[emb["image_index"]] = np.arange(len(emb["image_index"]))
    g = row_of[owner]
    keep = g >= 0  # captions of skipped images cannot be scored
    texts_kept = [t for t, k in zip(texts, keep) if k]
    t1 = time.perf_counter()
    txt = embed_texts(encoder, texts_kept, cache_dir=cache_dir, progress=progress,
                      desc="encoding captions",
                      records_dir=records_dir if bool(keep.all()) else None)
    return {"images": emb, "texts": txt, "captions": texts_kept, "owner": g[keep],
            "captions_dropped": int((~keep).sum()), "encode_images_s": t_img,
            "encode_texts_s": time.perf_counter() - t1}


def _embed_bank(encoder, bank, bank_k, *, resize, batch_size, cache_dir, progress):
    """`(image embeddings, caption embeddings, description)` of a CSLS bank."""
    from dualencoder.data import annotations as D
    from dualencoder.encoders.cache import embed_images, embed_texts

    bank_img = embed_images(encoder, bank, resize_method=resize, batch_size=batch_size,
                            cache_dir=cache_dir, progress=progress)["embeddings"]
    bank_texts, _ = D.read_captions(bank)
    bank_txt = embed_texts(encoder, bank_texts, cache_dir=cache_dir, progress=progress,
                           desc="encoding bank captions", records_dir=bank)
    info = {"path": os.path.abspath(bank), "num_images": int(len(bank_img)),
            "num_captions": int(len(bank_txt)), "k": int(bank_k)}
    return bank_img, bank_txt, info


def _plot_examples(records_dir, gallery, img, txt, path, *, num_examples, top, seed, csls):
    """Example text queries with their top images, by the scores that ranked (CSLS with a
    bank)."""
    captions, owner, index = gallery["captions"], gallery["owner"], gallery["images"][
        "image_index"]
    rng = np.random.default_rng(seed)
    qs = np.sort(rng.choice(len(captions), size=min(num_examples, len(captions)),
                            replace=False))
    sims = txt[qs] @ img.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :top]
    images = load_images(records_dir, index[np.unique(order)], 128)
    plots.plot_retrieval_examples(
        [captions[q] for q in qs],
        [[images[int(index[j])] for j in row] for row in order],
        [[int(j) == int(owner[q]) for j in row] for q, row in zip(qs, order)],
        path, scores=[[float(sims[r, j]) for j in row] for r, row in enumerate(order)],
        title="Text → image: top results per query"
              + (" (CSLS scores against the bank)" if csls else ""))


def _recall_table(title, result, ks) -> str:
    rows = ["| Direction | " + " | ".join(f"R@{k} %" for k in ks) + " | Median rank | "
            "Mean rank | Queries |", "|---|" + "---:|" * (len(ks) + 3)]
    for label, key in (("Image → text", "image_to_text"), ("Text → image", "text_to_image")):
        r = result[key]
        rows.append(f"| {label} | " + " | ".join(pct(r[f'R@{k}']) for k in ks)
                    + f" | {r['median_rank']:.1f} | {r['mean_rank']:.1f} | "
                    f"{r['num_queries']} |")
    return (title + "\n\n" if title else "") + "\n".join(rows)


def check_bank(bank: str, records_dir, k: int) -> None:
    """A CSLS bank must be a captioned records directory other than the evaluated one, with at
    least `k` images and `k` captions; raises EvaluationError naming what is wrong."""
    from records import schema

    if not is_records_dir(bank):
        what = "not a records directory (no manifest.json)" if os.path.isdir(bank) \
            else "no such directory"
        raise EvaluationError(f"{bank}: {what}; the CSLS bank is the training records "
                              "(`python -m records build`)")
    manifest = schema.read_manifest(bank)
    if not manifest.get("num_captions"):
        raise EvaluationError(f"{bank}: no captions; the CSLS bank needs captioned records")
    if int(k) < 1 or int(k) > min(int(manifest["num_records"]), int(manifest["num_captions"])):
        raise EvaluationError(f"--bank-k {k}: must be between 1 and the bank's "
                              f"{manifest['num_records']} images / {manifest['num_captions']} "
                              "captions")
    if records_dir is not None:
        def shards(path):
            return sorted(s.get("sha256") for s in schema.read_manifest(path)["shards"])
        if (os.path.realpath(bank) == os.path.realpath(records_dir)
                or shards(bank) == shards(records_dir)):
            raise EvaluationError(f"{bank}: the CSLS bank is the evaluated gallery itself; use "
                                  "the training records (a bank built from the queries would "
                                  "be transductive)")
