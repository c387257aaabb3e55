"""Benchmark the evaluation code on this machine: prints a table and JSON.

Measures:
    1. zero-shot evaluation throughput (images/s, end to end from records with the tiny
       model: decode + encode + prompts + metrics + report; embedding cache off), on
       ../shared/data/cifar10_dev when present, else generated colour folders;
    2. image encoding throughput of the tiny image tower and of Xception at 299 px
       (random weights: same speed as ImageNet ones);
    3. retrieval evaluation time (both directions, Recall@1/5/10, ranks) for a
       5k-image x 25k-caption gallery of random normalised embeddings (D=256);
    4. peak memory of chunked retrieval on 100k x 500k random embeddings (D=256), in a
       child process whose RSS is sampled; by default the child is stopped after
       `--big-seconds` (memory reaches its steady state within the first blocks) and
       the total time is extrapolated from the measured block rate; `--big-full` runs it
       to the end.

    python bench/evaluate.py [--skip-xception] [--big-seconds 60] [--big-full] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import command_line, result_record, save_result  # noqa: E402
from records.machine import tensorflow_defaults  # noqa: E402

tensorflow_defaults()  # the programs' TensorFlow settings, before TensorFlow loads

import numpy as np  # noqa: E402

GiB = 1024 ** 3


def _random_gallery(n_img, n_txt, dim, seed=0, captions_per_image=5):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_img, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    owner = np.repeat(np.arange(n_img), captions_per_image)[:n_txt]
    txt = np.empty((n_txt, dim), np.float32)
    for a in range(0, n_txt, 50_000):  # in slices: no full-size temporaries
        part = img[owner[a:a + 50_000]] + 0.5 * rng.standard_normal(
            (len(owner[a:a + 50_000]), dim), dtype=np.float32)
        txt[a:a + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return img, txt, owner


def bench_retrieval(n_img=5000, n_txt=25000, dim=256):
    from dualencoder.eval import metrics

    img, txt, owner = _random_gallery(n_img, n_txt, dim)
    t = time.perf_counter()
    res = metrics.retrieval_metrics(img, txt, owner, ks=(1, 5, 10))
    seconds = time.perf_counter() - t
    return {"images": n_img, "captions": n_txt, "dim": dim, "seconds": seconds,
            "t2i_R@1": res["text_to_image"]["R@1"], "i2t_R@1": res["image_to_text"]["R@1"]}


def _big_child(n_img, n_txt, dim):
    """Runs in the child process: full-size chunked retrieval."""
    from dualencoder.eval import metrics

    img, txt, owner = _random_gallery(n_img, n_txt, dim)
    print("ready", flush=True)
    t = time.perf_counter()
    ir, tr = metrics.retrieval_ranks(img, txt, owner)
    print(json.dumps({"seconds": time.perf_counter() - t, "i2t_R@1": float(np.mean(ir <= 1))}),
          flush=True)


def bench_big_memory(n_img=100_000, n_txt=500_000, dim=256, seconds=60.0, full=False):
    import psutil

    # block rate, measured on one full-size block in this process
    img, txt, _ = _random_gallery(2048, 16384, dim, seed=1)
    t = time.perf_counter()
    for _ in range(3):
        sim = img @ txt.T
        np.count_nonzero(sim >= 0.1, axis=1)
        np.count_nonzero(sim >= 0.1, axis=0)
    per_block = (time.perf_counter() - t) / 3
    rows = -(-n_img // 2048)
    cols = -(-n_txt // 16384)
    blocks = rows * cols + rows + cols  # pass 2 + (about) the pass-1 diagonal blocks
    del img, txt, sim
    code = ("import importlib.util as u; "
            f"s = u.spec_from_file_location('bench_evaluate', {os.path.abspath(__file__)!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); "
            f"m._big_child({n_img}, {n_txt}, {dim})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    p = psutil.Process(proc.pid)
    peak = 0
    start = time.perf_counter()
    ready_at = None
    finished = None
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        try:
            peak = max(peak, p.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        for _key, _ in sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if line.startswith("ready"):
                ready_at = time.perf_counter()
            elif line.strip().startswith("{"):
                finished = json.loads(line)
        if proc.poll() is not None:
            break
        if not full and ready_at and time.perf_counter() - ready_at > seconds:
            proc.terminate()
            proc.wait()
            break
    ran = (time.perf_counter() - ready_at) if ready_at else 0.0
    return {"images": n_img, "captions": n_txt, "dim": dim, "peak_rss_gib": peak / GiB,
            "under_4_gib": peak < 4 * GiB, "completed": finished is not None,
            "ran_seconds": ran, "seconds": finished["seconds"] if finished else None,
            "estimated_total_seconds": per_block * blocks, "block_seconds": per_block,
            "blocks": blocks, "wall_s": time.perf_counter() - start}


def _color_folders(root, per_class=50):
    from PIL import Image

    rng = np.random.default_rng(0)
    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
              "yellow": (230, 220, 40)}
    for name, rgb in colors.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            px = np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(os.path.join(root, name, f"{i}.png"))
    return root


def bench_zeroshot(tmp):
    from dualencoder.encoders.load import load_encoder
    from dualencoder.eval.inputs import prepare_class_data
    from dualencoder.eval.zeroshot_eval import run_zeroshot
    from dualencoder.model.saving import save_model
    from dualencoder.testing import tiny_model

    shared = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10_dev")
    data_dir = shared if os.path.isdir(shared) else _color_folders(os.path.join(tmp, "colors"))
    model_dir = os.path.join(tmp, "work", "model")
    save_model(tiny_model(), model_dir)
    encoder, info = load_encoder(os.path.dirname(model_dir))
    data = prepare_class_data(data_dir, cache_dir=os.path.join(tmp, "cache"))
    t = time.perf_counter()
    rep = run_zeroshot(encoder, data, os.path.join(tmp, "zs"), model_info=info,
                       templates="clip80", cache_dir=False, progress=False)
    seconds = time.perf_counter() - t
    n = rep["metrics"]["num_examples"]
    return {"data": os.path.basename(data_dir), "images": n, "seconds": seconds,
            "images_per_second": n / seconds,
            "encode_images_per_second": rep["timing"]["images_per_second"],
            "image_size": info["image_size"], "templates": 80}


def bench_encoders(skip_xception=False):
    from dualencoder.testing import tiny_model

    out = {}
    rng = np.random.default_rng(0)
    model = tiny_model()
    x = rng.uniform(0, 255, (256, model.image_size, model.image_size, 3)).astype(np.float32)
    model.encode_images(x[:64])  # trace
    t = time.perf_counter()
    model.encode_images(x)
    out["tiny_images_per_second"] = len(x) / (time.perf_counter() - t)
    if not skip_xception:
        from dualencoder.eval.baselines import FeatureEncoder
        enc = FeatureEncoder("xception", "none", 299)
        x = rng.uniform(0, 255, (16, 299, 299, 3)).astype(np.float32)
        enc.encode_images(x[:16])  # trace
        t = time.perf_counter()
        enc.encode_images(x)
        out["xception299_images_per_second"] = len(x) / (time.perf_counter() - t)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-xception", action="store_true")
    p.add_argument("--skip-big", action="store_true")
    p.add_argument("--big-seconds", type=float, default=60.0)
    p.add_argument("--big-full", action="store_true")
    p.add_argument("--json", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    command = command_line(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["zeroshot"] = bench_zeroshot(tmp)
    results["encoders"] = bench_encoders(args.skip_xception)
    results["retrieval_5k_25k"] = bench_retrieval()
    if not args.skip_big:
        results["retrieval_100k_500k"] = bench_big_memory(seconds=args.big_seconds,
                                                          full=args.big_full)
    zs, enc, r5 = results["zeroshot"], results["encoders"], results["retrieval_5k_25k"]
    rows = [("zero-shot eval, end to end (tiny model, %s, %d imgs)" % (zs["data"], zs["images"]),
             f"{zs['images_per_second']:.1f} images/s"),
            ("  of which image encoding", f"{zs['encode_images_per_second'] or 0:.1f} images/s"),
            ("tiny image tower encoding", f"{enc['tiny_images_per_second']:.1f} images/s")]
    if "xception299_images_per_second" in enc:
        rows.append(("Xception 299 px encoding", f"{enc['xception299_images_per_second']:.2f} "
                     "images/s"))
    rows.append(("retrieval eval 5k x 25k (D=256)", f"{r5['seconds']:.2f} s"))
    if "retrieval_100k_500k" in results:
        big = results["retrieval_100k_500k"]
        rows.append(("retrieval 100k x 500k peak RSS", f"{big['peak_rss_gib']:.2f} GiB "
                     f"({'<' if big['under_4_gib'] else '>='} 4 GiB)"))
        rows.append(("retrieval 100k x 500k time", f"{big['seconds']:.0f} s" if big["completed"]
                     else f"~{big['estimated_total_seconds']:.0f} s (estimated; ran "
                          f"{big['ran_seconds']:.0f} s)"))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    record = result_record("evaluate", command, **results)
    print(json.dumps(record, indent=2))
    if args.json:
        save_result(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
