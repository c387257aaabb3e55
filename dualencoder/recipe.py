"""Recipes: a JSON file (configs/recipes/) declares a dataset (records source kind, root,
train/dev splits), a training config, the members (seeds x overrides, one head each,
evaluated as one ensemble), the evaluations and the output folder. `run_recipe` drives the
command-line programs (`python -m records build`, train.py, evaluate.py) as subprocesses,
skips what is done and writes OUT/REPORT.md and OUT/report.json. Stdlib only."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time


from dualencoder.recipe_file import (  # noqa: F401 (the recipe API in one place)
    DATASET_KINDS, EVALUATION_KINDS, RecipeError, apply_override, load_recipe, member_runs,
    validate)


def ensemble_name(recipe: dict) -> str:
    """The evaluation name: the single run's, else FIRST_ensN plus the other members' names
    (without FIRST's prefix), e.g. recipe_ens6_px224_lr32."""
    first, count = recipe["members"][0]["name"], len(member_runs(recipe))
    if count == 1:
        return first
    tags = [m["name"][len(first):] if m["name"].startswith(first) else "_" + m["name"]
            for m in recipe["members"][1:]]
    return f"{first}_ens{count}" + "".join(tags)


def evaluation_dir(recipe: dict, kind: str) -> str:
    """An evaluation's report folder under OUT/eval, e.g. recipe_ens6_px224_lr32_dev_csls."""
    return f"{ensemble_name(recipe)}_{EVALUATION_KINDS[kind][3](recipe['evaluations'][kind])}"


def model_spec(recipe: dict) -> str:
    paths = [os.path.join(recipe["out"], name) for name, _, _ in member_runs(recipe)]
    return paths[0] if len(paths) == 1 else "ensemble:" + ",".join(paths)


def commands(recipe: dict, project: str, python: str = sys.executable) -> list:
    """Every stage as (label, argv, done_marker): the marker file's presence skips it (None:
    always run; train.py resumes or finishes a workdir itself)."""
    out, ds = recipe["out"], recipe["dataset"]
    build_args, rec, stages = DATASET_KINDS[ds["kind"]][1], os.path.join(out, "records"), []
    for split, spec in ds["splits"].items():
        target = os.path.join(rec, split)
        stages.append((f"records {split}", [python, "-m", "records", "build", ds["kind"],
                                            *build_args(ds["root"], spec), "--out", target],
                       os.path.join(target, "manifest.json")))
    for name, _, sets in member_runs(recipe):
        argv = [python, os.path.join(project, "train.py"), "--records",
                os.path.join(rec, "train"), "--val-records", os.path.join(rec, "dev"),
                "--workdir", os.path.join(out, name), "--config", recipe["config"],
                "--set", f"run.features_dir={os.path.join(out, 'features')}"]
        argv += [arg for item in sets for arg in ("--set", item)]
        stages.append((f"train {name}", argv, None))
    evaluations = recipe.get("evaluations", {})
    for kind in (k for k in EVALUATION_KINDS if k in evaluations):
        target = os.path.join(out, "eval", evaluation_dir(recipe, kind))
        argv = [python, os.path.join(project, "evaluate.py"), kind, "--model", model_spec(recipe),
                *EVALUATION_KINDS[kind][2](evaluations[kind], rec), "--out", target,
                "--cache-dir", os.path.join(out, "eval_cache"), "--quiet"]
        precision = recipe.get("set", {}).get("run.tower_precision")
        if precision:  # the towers run as in training, so its feature caches serve
            argv += ["--tower-precision", precision]
        stages.append((f"eval {kind} {os.path.basename(target)}", argv,
                       os.path.join(target, "report.json")))
    return stages


def run_recipe(recipe: dict, recipe_path: str, project: str) -> str:
    """Run every stage not yet done (one progress line each; a child's output goes to
    OUT/logs/), append stage times to OUT/times.tsv, write the report (its path is
    returned). A failed stage raises RecipeError naming its log and the log's last line."""
    out, t_start = recipe["out"], time.time()
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
           "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",  # the cores are shared
           "PYTHONPATH": os.pathsep.join(filter(None, (project, os.environ.get("PYTHONPATH"))))}
    stages = []
    for label, argv, marker in commands(recipe, project):
        stamp = f"[{datetime.datetime.now():%H:%M:%S}] +{time.time() - t_start:.0f}s"
        if marker and os.path.exists(marker):
            print(f"{stamp}  {label}: kept ({os.path.dirname(marker)})")
            stages.append({"stage": label, "seconds": 0.0, "ran": False})
            continue
        log_path = os.path.join(out, "logs", label.replace(" ", "_") + ".log")
        t0 = time.time()
        print(f"{stamp}  {label} (log: {log_path}) ...", end="", flush=True)
        with open(log_path, "w", encoding="utf-8") as fh:
            code = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                  check=False).returncode
        seconds = time.time() - t0
        print(f" {'done' if code == 0 else 'FAILED'} in {seconds:.0f}s")
        if code != 0:
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                tail = [ln for ln in fh.read().replace("\r", "\n").splitlines() if ln.strip()]
            raise RecipeError(f"{label} failed (exit {code}; {log_path}): "
                              f"{(tail or ['(no output)'])[-1].strip()}")
        with open(os.path.join(out, "times.tsv"), "a", encoding="utf-8") as fh:
            fh.write(f"{datetime.datetime.now():%Y-%m-%dT%H:%M:%S}\t{label}\t{seconds:.0f}\n")
        stages.append({"stage": label, "seconds": round(seconds, 1), "ran": True})
    path = write_report(recipe, recipe_path, stages, time.time() - t_start)
    print(f"[{datetime.datetime.now():%H:%M:%S}] +{time.time() - t_start:.0f}s  wrote {path}")
    return path


def _load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):  # missing or unfinished
        return None


def _member_row(out: str, name: str) -> dict | None:
    summary = _load(os.path.join(out, name, "summary.json")) or {}
    cfg, best = _load(os.path.join(out, name, "config.json")) or {}, summary.get("best")
    if not best:
        return None
    temp = next((r.get("train_temperature") for r in summary.get("history") or []
                 if r.get("epoch") == best.get("epoch")), None)
    m, d, o = cfg.get("model", {}), cfg.get("data", {}), cfg.get("optim", {})
    loss = m.get("loss", "") + (f"+{m['extra_loss']}×{m.get('extra_loss_weight')}"
                                if m.get("extra_loss") else "")
    views = str(d.get("cached_views", 1)) + (f" (low-res {d['lowres_size']} px)"
                                             if d.get("lowres_size") else "")
    return {"run": name, "head": m.get("head"), "loss": loss, "px": m.get("image_size"),
            "views": views, "batch": d.get("batch_size"), "lr": o.get("lr"),
            "wd": o.get("weight_decay"), "seed": cfg.get("run", {}).get("seed"),
            "best epoch": best.get("epoch"), "temp": temp if temp is None else round(temp, 4),
            "dev": {k: best.get(f"val_{k}") for k in DEV_KEYS}}


COLUMNS = ("run", "head", "loss", "px", "views", "batch", "lr", "wd", "seed", "best epoch", "temp")
DEV_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _retrieval_lines(report: dict, rel: str, spec: dict) -> list:
    tables = [("", report["metrics"])]
    if "metrics_cosine" in report:
        k = report["settings"]["bank"]["k"]
        tables = [(f" (CSLS against the {spec.get('bank')} records, k={k})", report["metrics"]),
                  (" (plain cosine)", report["metrics_cosine"])]
    lines = []
    for how, mt in tables:
        for k, lab in (("image_to_text", "image→text"), ("text_to_image", "text→image")):
            lines.append(f"- dev {lab}{how}: " + ", ".join(
                f"{r} {100 * mt[k][r]:.1f}" for r in ("R@1", "R@5", "R@10")))
    lines.append(f"- retrieval grid (text queries → top-5 dev images): {rel}/"
                 "retrieval_examples.png")
    return lines


def _zeroshot_lines(report: dict, rel: str, spec: dict) -> list:
    m, s = report.get("metrics", {}), report.get("settings", {})
    top5 = f", top-5 {100 * m['top5_accuracy']:.1f}%" if "top5_accuracy" in m else ""
    return [(f"- zero-shot {spec.get('title', 'zeroshot')} ({m.get('num_examples', 0):,} images, "
             f"resized {s.get('resize')} to {s.get('image_size')} px, {s.get('templates')} "
             f"templates): top-1 {100 * m.get('accuracy', float('nan')):.1f}%{top5} ({rel})")]


REPORT_LINES = {"retrieval": _retrieval_lines, "zeroshot": _zeroshot_lines}  # per kind


def write_report(recipe: dict, recipe_path: str, stages: list, wall: float) -> str:
    """Write OUT/REPORT.md and OUT/report.json; return the REPORT.md path. The dataset's
    name comes from the recipe, its image and caption counts from the records manifests."""
    from records.machine import cpu_model  # stdlib only

    out, ds = recipe["out"], recipe["dataset"]
    splits = {s: {"images": m.get("num_records"), "captions": m.get("num_captions")}
              for s in ds["splits"] for m in [_load(os.path.join(
                  out, "records", s, "manifest.json")) or {}]}
    counts = {s: f"{c['images'] or 0:,} images, {c['captions'] or 0:,} captions"
              for s, c in splits.items()}
    names = [n for n, _, _ in member_runs(recipe)]
    others = sorted(n for n in os.listdir(out) if n not in names
                    and os.path.isfile(os.path.join(out, n, "summary.json")))
    rows = [r for r in (_member_row(out, n) for n in names + others) if r]
    cpu = cpu_model()
    lines = [f"# {ds['name']} recipe — report", "",
             (f"Written by `recipe.py {recipe_path}` (this invocation: {wall:.0f} s wall on "
             f"{os.cpu_count()} cores of {cpu}; stage times below and in {out}/times.tsv). "
             f"Training config {recipe['config']}; {ds['name']} train split ({counts['train']})"
             f", dev split only for selection and evaluation ({counts['dev']}); no test split "
             "is used. Numbers are the best epoch selected on dev val_rsum."), "",
             "| " + " | ".join(COLUMNS) + " | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum |",
             "|---" * 3 + "|---:" * 15 + "|"]
    lines += ["| " + " | ".join([str(r[k]) for k in COLUMNS] + [
        "—" if v is None else f"{v:.1f}" for v in r["dev"].values()]) + " |" for r in rows]
    lines += ["", f"## Evaluation of `{ensemble_name(recipe)}` (evaluate.py)", ""]
    evals, evaluations = {}, recipe.get("evaluations", {})
    for kind in EVALUATION_KINDS:
        rel = kind in evaluations and os.path.join("eval", evaluation_dir(recipe, kind))
        rep = evals[kind] = rel and _load(os.path.join(out, rel, "report.json"))
        lines += REPORT_LINES[kind](rep, rel, evaluations[kind]) if rep else [
            f"- {kind}: {'not run' if rel else 'not in this recipe'}"]
    lines += ["", (f"Training curves: {names[0]}/curves.png (loss, temperature, in-batch "
              "accuracy, dev Recall@K per epoch).")]
    lines += ["", "## Stage times (this invocation; kept = done before)", "", "| stage | s |",
              "|---|---:|"]
    lines += [f"| {s['stage']} | {s['seconds']:.0f} |" if s["ran"] else
              f"| {s['stage']} | kept |" for s in stages]
    lines.append(f"| **total** | {wall:.0f} |")
    summary = {"recipe": recipe, "recipe_file": recipe_path, "wall_s": round(wall, 1),
               "machine": {"cpu": cpu, "cores": os.cpu_count()}, "dataset": {
                   "name": ds["name"], "kind": ds["kind"], "root": ds.get("root"),
                   "splits": splits}, "stages": stages, "members": rows,
               "ensemble": ensemble_name(recipe), "evaluations": {k: v and {
                   key: v.get(key) for key in ("metrics", "metrics_cosine", "settings")}
                   for k, v in evals.items() if k in evaluations}}
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    with open(os.path.join(out, "REPORT.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return os.path.join(out, "REPORT.md")
