"""recipe.py and dualencoder/recipe.py: the shipped recipe files reproduce the Flickr8k
recipe (six heads, their workdirs and overrides, the evaluations), bad recipe files stop
with one line naming the file and the field, the report takes the dataset's name and counts
from the recipe and the records, and the whole command runs end to end on tiny data."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from dualencoder import recipe as R
from dualencoder.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
LOWRES = ["model.image_size=224", "data.cached_views=2", "data.lowres_size=32"]


@pytest.mark.parametrize("name", ["flickr8k_lit.json", "coco_mini_lit.json"])
def test_recipe_configs_resolve(name):
    path = ROOT / "configs" / name
    cfg = Config.from_sources(str(path))
    assert cfg.model.image_trainable == "none" and cfg.model.text_trainable == "none"
    assert cfg.model.head == "linear"


def _shipped(name):
    recipe = json.loads((RECIPES / f"{name}.json").read_text())
    R.validate(recipe, name, check_paths=False)
    return recipe


def test_coco_mini_is_the_six_head_recipe():
    recipe = _shipped("coco_mini")
    assert R.member_runs(recipe) == [
        ("recipe", 0, ["run.seed=0"]), ("recipe_seed1", 1, ["run.seed=1"]),
        ("recipe_seed2", 2, ["run.seed=2"]),
        ("recipe_px224_lr32", 0, ["run.seed=0"] + LOWRES),
        ("recipe_px224_lr32_seed1", 1, ["run.seed=1"] + LOWRES),
        ("recipe_px224_lr32_seed2", 2, ["run.seed=2"] + LOWRES)]
    assert R.ensemble_name(recipe) == "recipe_ens6_px224_lr32"
    assert R.evaluation_dir(recipe, "retrieval") == "recipe_ens6_px224_lr32_dev_csls"


def test_the_flickr8k_recipe_tunes_the_text_tower_in_bfloat16_where_native():
    """Three 299 px heads with MiniLM's top layer tuned from cached token states at lr 1e-3
    (chosen on dev: docs/flickr8k.md), beside the three low-res 224 px heads; tower passes
    and the tuned layer in bfloat16 where the machine computes it natively."""
    recipe = _shipped("flickr8k")
    towers = ["run.tower_precision=auto"]
    tuned = ["model.text_trainable=1", "optim.tower_lr_mult=0.5", "optim.tower_weight_decay=0.01",
             "run.precision=auto"] + towers
    assert R.member_runs(recipe) == [
        ("text_top1", 0, ["run.seed=0"] + tuned), ("text_top1_seed1", 1, ["run.seed=1"] + tuned),
        ("text_top1_seed2", 2, ["run.seed=2"] + tuned),
        ("recipe_px224_lr32", 0, ["run.seed=0"] + LOWRES + towers),
        ("recipe_px224_lr32_seed1", 1, ["run.seed=1"] + LOWRES + towers),
        ("recipe_px224_lr32_seed2", 2, ["run.seed=2"] + LOWRES + towers)]
    assert R.evaluation_dir(recipe, "retrieval") == "text_top1_ens6_recipe_px224_lr32_dev_csls"


def test_the_coco_recipe_tunes_the_text_tower_from_cached_states():
    """Full COCO on one GPU: MiniLM's top layer tuned (LiT) on cached Xception features and
    cached token states, batches of 4,096 in micro-batches of 1,024, beside the low-res heads."""
    recipe = _shipped("coco")
    tuned = ["model.text_trainable=1", "optim.tower_lr_mult=0.5", "optim.tower_weight_decay=0.01",
             "optim.micro_batch=1024", "data.batch_size=4096"]
    lowres = LOWRES + ["data.batch_size=4096"]
    assert R.member_runs(recipe) == [
        ("text_top1", 0, ["run.seed=0"] + tuned), ("text_top1_seed1", 1, ["run.seed=1"] + tuned),
        ("text_top1_seed2", 2, ["run.seed=2"] + tuned),
        ("recipe_px224_lr32", 0, ["run.seed=0"] + lowres),
        ("recipe_px224_lr32_seed1", 1, ["run.seed=1"] + lowres),
        ("recipe_px224_lr32_seed2", 2, ["run.seed=2"] + lowres)]


def test_flickr8k_commands():
    recipe = _shipped("flickr8k")
    stages = R.commands(recipe, "/p", python="py")
    labels = [s[0] for s in stages]
    assert labels[:3] == ["records train", "records dev", "train text_top1"]
    assert labels[-2:] == ["eval retrieval text_top1_ens6_recipe_px224_lr32_dev_csls",
                           "eval zeroshot text_top1_ens6_recipe_px224_lr32_cifar10"]
    f8k = "../shared/data/flickr8k"
    assert stages[0][1] == ["py", "-m", "records", "build", "flickr", f8k, "--split-file",
                            f"{f8k}/splits/Flickr_8k.trainImages.txt", "--out",
                            "runs/flickr8k/records/train"]
    assert stages[0][2] == "runs/flickr8k/records/train/manifest.json"
    assert stages[5][1] == [
        "py", "/p/train.py", "--records", "runs/flickr8k/records/train", "--val-records",
        "runs/flickr8k/records/dev", "--workdir", "runs/flickr8k/recipe_px224_lr32",
        "--config", "configs/flickr8k_lit.json", "--set", "run.features_dir=runs/flickr8k/features",
        "--set", "run.seed=0", "--set", LOWRES[0], "--set", LOWRES[1], "--set", LOWRES[2],
        "--set", "run.tower_precision=auto"]
    assert stages[5][2] is None  # train.py resumes or keeps a workdir itself
    model = "ensemble:" + ",".join(f"runs/flickr8k/{n}" for n, _, _ in R.member_runs(recipe))
    # the evaluations run the towers in the training's precision: its feature caches serve
    assert stages[-2][1] == [
        "py", "/p/evaluate.py", "retrieval", "--model", model, "--data",
        "records:runs/flickr8k/records/dev", "--bank", "runs/flickr8k/records/train", "--out",
        "runs/flickr8k/eval/text_top1_ens6_recipe_px224_lr32_dev_csls", "--cache-dir",
        "runs/flickr8k/eval_cache", "--quiet", "--tower-precision", "auto"]
    assert stages[-1][1][2:6] == ["zeroshot", "--model", model, "--data"]
    assert stages[-1][1][6:9] == ["../shared/data/cifar10_dev", "--templates", "clip80"]


def test_overrides():
    recipe = _shipped("flickr8k")
    for item in ("members=[{\"name\": \"abl\", \"seeds\": [0]}]", "evaluations.zeroshot=null",
                 "evaluations.retrieval.bank=null", "set.model.extra_loss=max_violation",
                 "dataset.root=/data/f8k"):
        R.apply_override(recipe, item)
    R.validate(recipe, "f", check_paths=False)
    assert R.member_runs(recipe) == [("abl", 0, ["run.seed=0", "run.tower_precision=auto",
                                                 "model.extra_loss=max_violation"])]
    assert R.evaluation_dir(recipe, "retrieval") == "abl_dev"
    assert list(recipe["evaluations"]) == ["retrieval"] and recipe["dataset"]["root"] == "/data/f8k"
    R.apply_override(recipe, "members.0.seeds=[4,5]")
    assert [r[0] for r in R.member_runs(recipe)] == ["abl", "abl_seed5"]
    with pytest.raises(R.RecipeError, match="expected key=value"):
        R.apply_override(recipe, "members")
    with pytest.raises(R.RecipeError, match="not an index"):
        R.apply_override(recipe, "members.7.seeds=[1]")


@pytest.mark.parametrize("item, message", [
    ("bogus=1", "f.json: bogus: unknown key"),
    ("dataset.kind=tfds", "f.json: dataset.kind: 'tfds' is not one of flickr, coco"),
    ("dataset.splits.dev.split_file=x", "f.json: dataset.splits.dev.split_file: unknown key"),
    ("dataset.splits.test={\"split\": \"test2017\"}", "f.json: dataset.splits.test: unknown"),
    ("members.0.seeds=[0,0]", "f.json: members.0.seeds: [0, 0]: expected distinct integers"),
    ("members.1.seeds=[-1]", "f.json: members.1.seeds: [-1]: expected distinct integers"),
    ("members.1.seeds=\"0 1\"", "f.json: members.1.seeds: '0 1': expected distinct"),
    ("members.1.name=recipe", "f.json: members: two members share the workdir name 'recipe'"),
    ("members.1.name=a/b", "f.json: members.1.name: 'a/b' is not a folder name"),
    ("members.1.set.image_size=3", "f.json: members.1.set.image_size: expected a \"section.key\""),
    ("members.1.sets={}", "f.json: members.1.sets: unknown key"),
    ("members=[]", "f.json: members: expected a non-empty list"),
    ("evaluations.linear_probe={}", "f.json: evaluations.linear_probe: unknown key"),
    ("evaluations.retrieval.bank=test", "f.json: evaluations.retrieval.bank: 'test' is not a"),
    ("config=null", "f.json: config: missing"),
])
def test_bad_recipe_fields(tmp_path, item, message):
    path = tmp_path / "f.json"
    path.write_text((RECIPES / "coco_mini.json").read_text())
    with pytest.raises(R.RecipeError) as err:
        R.load_recipe(str(path), [item])
    assert str(err.value).replace(str(tmp_path) + os.sep, "").startswith(message), err.value


def _cli(*args, cwd=ROOT, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "recipe.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_errors_are_one_line_exit_2(tmp_path):
    proc = _cli(str(RECIPES / "coco.json"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [(
        f"error: {RECIPES / 'coco.json'}: dataset.root: not set: give the coco root with "
        "--set dataset.root=DIR")]
    proc = _cli(str(RECIPES / "coco_mini.json"), "--dry-run", cwd=tmp_path)  # no ../shared here
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert ("dataset.root: dataset folder ../shared/data/coco_mini does not exist (../shared "
            "holds the shared data beside the project" in proc.stderr)
    assert "--set dataset.root=DIR" in proc.stderr
    for args in ([], ["x.json", "--bogus"], [str(tmp_path / "missing.json")]):
        proc = _cli(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("error: ")


def _fake_run(out, recipe, counts):
    for split, (images, captions) in counts.items():
        (out / "records" / split).mkdir(parents=True)
        (out / "records" / split / "manifest.json").write_text(json.dumps(
            {"num_records": images, "num_captions": captions}))
    for name, seed, _ in R.member_runs(recipe):
        (out / name).mkdir()
        (out / name / "summary.json").write_text(json.dumps({
            "best": {"epoch": 2, "val_i2t_r1": 30.14, "val_rsum": 300.0},
            "history": [{"epoch": 2, "train_temperature": 0.06284}]}))
        (out / name / "config.json").write_text(json.dumps({
            "model": {"head": "linear", "loss": "clip", "image_size": 299},
            "data": {"batch_size": 128}, "run": {"seed": seed}}))


@pytest.mark.parametrize("name, title, counts", [
    ("coco_mini", "COCO mini (MS-COCO 2017 subset)", {"train": (80, 400), "dev": (159, 795)}),
    ("flickr8k", "Flickr8k", {"train": (6000, 30000), "dev": (1000, 5000)})])
def test_report_names_the_dataset_and_counts_its_records(tmp_path, name, title, counts):
    recipe = _shipped(name)
    recipe["out"] = str(tmp_path)
    recipe["members"] = [dict(recipe["members"][0], name="recipe")]
    _fake_run(tmp_path, recipe, counts)
    stages = [{"stage": "records train", "seconds": 0.0, "ran": False},
              {"stage": "train recipe", "seconds": 12.3, "ran": True}]
    report = pathlib.Path(R.write_report(recipe, f"{name}.json", stages, 42.0)).read_text()
    (ti, tc), (di, dc) = counts["train"], counts["dev"]
    assert report.startswith(f"# {title} recipe — report\n")
    assert f"train split ({ti:,} images, {tc:,} captions)" in report
    assert f"({di:,} images, {dc:,} captions)" in report
    assert ("Flickr8k" in report) == (name == "flickr8k")
    assert "| recipe_seed2 | linear | clip | 299 | 1 | 128 |" in report
    assert "30.1 | — | — | — | — | — | 300.0 |" in report
    assert "| records train | kept |" in report and "| train recipe | 12 |" in report
    assert "- retrieval: not run" in report
    assert ("- zeroshot: not run" in report) == (name == "flickr8k")
    js = json.loads((tmp_path / "report.json").read_text())
    assert js["dataset"]["name"] == title and js["dataset"]["splits"]["dev"] == {
        "images": di, "captions": dc}
    assert [m["run"] for m in js["members"]] == ["recipe", "recipe_seed1", "recipe_seed2"]


def _tiny_coco(root, make_image):
    colors = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
              "yellow": (230, 220, 30), "black": (10, 10, 10), "white": (245, 245, 245)}
    for split, count in (("train2017", 12), ("val2017", 10)):
        images, anns = [], []
        for i in range(count):
            name, rgb = list(colors.items())[i % len(colors)]
            fname = f"{i + 1:012d}.jpg"
            make_image(root / split / fname, size=(40 + i, 36), color=rgb)
            images.append({"id": i + 1, "file_name": fname})
            anns += [{"id": 100 * (i + 1) + j, "image_id": i + 1, "caption": text}
                     for j, text in enumerate((f"a {name} picture {i}", f"{name} colour"))]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns}))


def test_recipe_end_to_end_on_tiny_coco(tmp_path, make_image):
    """recipe.py on a tiny COCO layout with tiny towers: two seeds plus two 40 px
    cross-resolution heads trained on a second, low-res 32 px view, evaluated as one
    ensemble with CSLS against the train records."""
    _tiny_coco(tmp_path / "coco", make_image)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({
        "model": {"image_tower": "tiny", "image_weights": "none", "image_size": 32,
                  "image_trainable": "none", "text_tower": "tiny", "text_trainable": "none",
                  "sequence_length": 16, "embed_dim": 16, "head": "linear", "loss": "clip"},
        "data": {"batch_size": 8, "all_captions": True, "augment": False, "cached_views": 1},
        "optim": {"lr": 2e-3, "epochs": 2},
        "run": {"seed": 0, "val_subset": 0, "checkpoint_every": 0, "cache_features": "auto"}}))
    recipe = json.loads((RECIPES / "coco.json").read_text())
    recipe.update(config=str(cfg), set={}, dataset={**recipe["dataset"], "name": "Tiny COCO"})
    recipe["members"] = [{"name": "recipe", "seeds": [0, 1]}, {
        "name": "recipe_px40_lr32", "seeds": [0, 3],
        "set": {"model.image_size": 40, "data.cached_views": 2, "data.lowres_size": 32}}]
    path = tmp_path / "tiny_recipe.json"
    path.write_text(json.dumps(recipe))
    out = tmp_path / "out"
    args = [str(path), "--out", str(out), "--set", f"dataset.root={tmp_path / 'coco'}"]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 7 + 1  # a line per stage
    rep = json.loads((out / "eval" / "recipe_ens4_px40_lr32_dev_csls" / "report.json").read_text())
    assert [m["spec"] for m in rep["model"]["members"]] == [
        str(out / "recipe"), str(out / "recipe_seed1"), str(out / "recipe_px40_lr32"),
        str(out / "recipe_px40_lr32_seed3")]
    assert rep["settings"]["bank"]["num_images"] == 12 and "metrics_cosine" in rep
    # heads ran on training's cached features, one file per (tower, image size): the tiny
    # towers are random per seed, so (seed 0, 32 px), (seed 1, 32 px), (seed 0, 40 px),
    # (seed 3, 40 px)
    features = rep["timing"]["tower_features"]
    assert len(set(features)) == 4
    assert all(p.startswith(str(out / "features")) for p in features)
    report = (out / "REPORT.md").read_text()
    assert report.startswith("# Tiny COCO recipe — report")
    assert "train split (12 images, 24 captions)" in report and "(10 images, 20 captions)" in report
    assert "(CSLS against the train records, k=10)" in report and "(plain cosine)" in report
    assert "| recipe_px40_lr32 | linear | clip | 40 | 2 (low-res 32 px) |" in report
    assert "Flickr8k" not in report and "- zeroshot: not in this recipe" in report
    from records.machine import cpu_model

    assert f"cores of {cpu_model()};" in report
    cfg40 = json.loads((out / "recipe_px40_lr32" / "config.json").read_text())
    assert cfg40["data"]["cached_views"] == 2 and cfg40["data"]["lowres_size"] == 32
    summary = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in summary["stages"] if s["ran"]][-1].startswith("eval retrieval")
    # idempotent: records and the evaluation are kept on a rerun
    proc = _cli(*args, "--dry-run", cwd=tmp_path)
    kept = [ln for ln in proc.stdout.splitlines() if ln.endswith("(done: kept)")]
    assert proc.returncode == 0 and len(kept) == 3, proc.stdout


@pytest.mark.slow
def test_coco_mini_recipe_on_shared(tmp_path, shared):
    """The shipped coco_mini recipe on ../shared (Xception weights, MiniLM; minutes)."""
    shared("data", "coco_mini")
    shared("weights", "xception_imagenet_notop.weights.h5")
    # the whole recipe: minutes alone, far longer on a machine shared with other runs
    proc = _cli(str(RECIPES / "coco_mini.json"), "--out", str(tmp_path / "out"), timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert report.startswith("# COCO mini (MS-COCO 2017 subset) recipe — report")
    assert "train split (80 images," in report and "(159 images," in report
    assert "(CSLS against the train records, k=10)" in report


def _runnable_recipe(tmp_path):
    """The Flickr8k recipe over a stand-in dataset folder (its inputs exist, nothing else)."""
    root = tmp_path / "flickr"
    (root / "splits").mkdir(parents=True)
    for name in ("captions.txt", "splits/Flickr_8k.trainImages.txt",
                 "splits/Flickr_8k.devImages.txt"):
        (root / name).write_text("")
    (tmp_path / "cifar").mkdir()
    recipe = json.loads((RECIPES / "flickr8k.json").read_text())
    recipe.update(config=str(ROOT / "configs" / "flickr8k_lit.json"), out=str(tmp_path / "out"))
    recipe["dataset"]["root"] = str(root)
    recipe["evaluations"]["zeroshot"]["data"] = str(tmp_path / "cifar")
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe))
    return str(path)


@pytest.mark.parametrize("item, message", [
    ("members.1.set.optim.lr=abc", "member recipe_px224_lr32: optim.lr='abc' is not a number"),
    ("set.optim.lr=abc", "member text_top1: optim.lr='abc' is not a number"),
    ("members.0.set.optim.bogus=1", "member text_top1: unknown key 'optim.bogus'"),
    ("set.run.tower_precision=fp8", "member text_top1: run.tower_precision"),
])
def test_member_settings_are_resolved_before_anything_runs(tmp_path, item, message):
    path = _runnable_recipe(tmp_path)
    R.load_recipe(path)  # the stand-in is valid as it is
    with pytest.raises(R.RecipeError) as err:
        R.load_recipe(path, [item])
    assert str(err.value).startswith(f"{path}: {message}"), err.value


def test_recipe_file_that_is_no_object_or_binary_config(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(R.RecipeError, match="expected a JSON object of recipe fields"):
        R.load_recipe(str(listed))
    path = _runnable_recipe(tmp_path)
    binary = tmp_path / "config.bin"
    binary.write_bytes(b"\x00\xff\xfe" * 10)
    with pytest.raises(R.RecipeError, match="member text_top1: .*not a JSON text file"):
        R.load_recipe(path, [f"config={binary}"])
    with pytest.raises(R.RecipeError, match="out: .* is a file"):
        R.load_recipe(path, [f"out={binary}"])
