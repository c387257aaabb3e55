"""evaluate.py: CLI errors exit 2 with one line; main([...]) end to end on tiny data."""

import json
import os

import numpy as np
import pytest

from dualencoder.cli import evaluate
from dualencoder.encoders.load import FrozenEncoder, load_encoder
from dualencoder.eval.compare import run_compare
from dualencoder.eval.evaluators import comparable_kinds
from dualencoder.eval.errors import EvaluationError
from dualencoder.eval.inputs import prepare_class_data
from dualencoder.eval.probes import run_linear_probe, run_prompt_tune
from dualencoder.eval.retrieval import check_bank
from dualencoder.eval.zeroshot_eval import run_zeroshot

from fake_encoders import ColorEncoder, make_color_folders


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A training workdir holding a saved tiny model in model/."""
    from dualencoder.model.saving import save_model
    from dualencoder.testing import tiny_model

    work = tmp_path_factory.mktemp("work")
    save_model(tiny_model(), str(work / "model"))
    return str(work)


def _error(capsys, argv):
    code = evaluate.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_usage_errors(capsys, tmp_path):
    _error(capsys, [])
    _error(capsys, ["zeroshot", "--data", "x", "--out", "o"])  # no --model
    _error(capsys, ["kshot", "--model", "m", "--train", "a", "--test", "b", "--out", "o",
                    "--shots", "0,2"])
    for steps in ("0", "100001", "many"):
        err = _error(capsys, ["prompt-tune", "--model", "m", "--train", "a", "--test", "b",
                              "--out", "o", "--shots", "2", "--steps", steps])
        assert "--steps" in err and repr(steps) in err, err


def test_input_errors_before_model_load(capsys, tmp_path, tiny_workdir):
    out = str(tmp_path / "out")
    colors = make_color_folders(str(tmp_path / "colors"), per_class=3)
    assert "no such model" in _error(capsys, ["zeroshot", "--model", str(tmp_path / "nope"),
                                              "--data", colors, "--out", out])
    assert "no such" in _error(capsys, ["zeroshot", "--model", tiny_workdir, "--data",
                                        str(tmp_path / "missing"), "--out", out])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no class folders" in _error(capsys, ["zeroshot", "--model", tiny_workdir, "--data",
                                                 str(empty), "--out", out])
    one = make_color_folders(str(tmp_path / "one"), per_class=2, classes=("red",))
    assert "only one class" in _error(capsys, ["zeroshot", "--model", tiny_workdir, "--data",
                                               one, "--out", out])
    (tmp_path / "emptyclass" / "a").mkdir(parents=True)
    make_color_folders(str(tmp_path / "emptyclass"), per_class=2, classes=("red",))
    assert "has no images" in _error(capsys, ["zeroshot", "--model", tiny_workdir, "--data",
                                              str(tmp_path / "emptyclass"), "--out", out])
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"red": "warm", "green": "warm"}))
    assert "duplicate class name" in _error(capsys, ["zeroshot", "--model", tiny_workdir,
                                                     "--data", colors, "--class-map", str(cmap),
                                                     "--out", out])
    assert "templates" in _error(capsys, ["zeroshot", "--model", tiny_workdir, "--data", colors,
                                          "--templates", "nonsense", "--out", out])
    assert "smallest" in _error(capsys, ["kshot", "--model", tiny_workdir, "--train", colors,
                                         "--test", colors, "--shots", "1,4", "--out", out])
    assert "smallest" in _error(capsys, ["prompt-tune", "--model", tiny_workdir, "--train",
                                         colors, "--test", colors, "--shots", "9", "--out", out])
    other = make_color_folders(str(tmp_path / "other"), per_class=2,
                               classes=("red", "blue"))
    assert "classes differ" in _error(capsys, ["linear-probe", "--model", tiny_workdir,
                                               "--train", colors, "--test", other, "--out", out])
    assert not os.path.exists(out)


def test_unreadable_images_error_or_skip(capsys, tmp_path, tiny_workdir):
    colors = make_color_folders(str(tmp_path / "bad"), per_class=3, bad=1)
    err = _error(capsys, ["zeroshot", "--model", tiny_workdir, "--data", colors,
                          "--out", str(tmp_path / "o1"), "--quiet"])
    assert "--skip-bad" in err
    # with skip_bad the image is skipped and counted (library call: no slow model load)
    data = prepare_class_data(colors, skip_bad=True)
    rep = run_zeroshot(FrozenEncoder(ColorEncoder(), "c"), data, str(tmp_path / "o2"),
                       model_info={"spec": "fake", "name": "fake"}, progress=False)
    rep = json.load(open(tmp_path / "o2" / "report.json"))
    assert rep["dataset"]["skipped_images"] == 1
    assert rep["metrics"]["num_examples"] == 9


def test_retrieval_k_larger_than_gallery(capsys, tmp_path, tiny_workdir):
    from records.build import build_records

    rec = str(tmp_path / "rec")
    build_records("synthetic", rec, num_images=6, image_size=32, seed=0)
    err = _error(capsys, ["retrieval", "--model", tiny_workdir, "--data", rec, "--ks", "1,10",
                          "--out", str(tmp_path / "o")])
    assert "larger than the gallery" in err


def test_retrieval_with_a_csls_bank(capsys, tmp_path, tiny_workdir):
    """--bank ranks by CSLS against training records; the report keeps the plain cosine
    numbers (equal to a run without a bank) and the CSLS ones equal a direct computation."""
    from dualencoder import csls as H
    from dualencoder.eval import metrics as M
    from dualencoder.data.annotations import read_captions
    from dualencoder.encoders.cache import embed_images, embed_texts
    from records.build import build_records

    gallery, bank = str(tmp_path / "gallery"), str(tmp_path / "bank")
    build_records("synthetic", gallery, num_images=12, image_size=32, seed=0)
    build_records("synthetic", bank, num_images=20, image_size=32, seed=1)
    out = tmp_path / "out"
    base = ["retrieval", "--model", tiny_workdir, "--data", gallery, "--ks", "1,5", "--quiet"]
    assert evaluate.main(base + ["--out", str(out / "cos")]) == 0
    assert evaluate.main(base + ["--bank", "records:" + bank, "--bank-k", "3",
                                 "--out", str(out / "csls")]) == 0
    cos = json.load(open(out / "cos" / "report.json"))
    rep = json.load(open(out / "csls" / "report.json"))
    assert rep["metrics_cosine"] == cos["metrics"]
    assert rep["metrics"] != rep["metrics_cosine"]  # this gallery's rankings do change
    assert rep["settings"]["bank"]["num_images"] == 20 and rep["settings"]["bank"]["k"] == 3
    assert rep["settings"]["similarity"].startswith("CSLS")

    encoder, _ = load_encoder(tiny_workdir)
    img = embed_images(encoder, gallery, resize_method="bicubic", progress=False)
    texts, owner = read_captions(gallery)
    txt = embed_texts(encoder, texts, progress=False)
    bank_img = embed_images(encoder, bank, resize_method="bicubic", progress=False)
    bank_txt = embed_texts(encoder, read_captions(bank)[0], progress=False)
    a, b = H.csls_embeddings(img["embeddings"], txt,
                             H.mean_topk_similarity(img["embeddings"], bank_txt, 3),
                             H.mean_topk_similarity(txt, bank_img["embeddings"], 3))
    row = {int(j): r for r, j in enumerate(img["image_index"])}
    want = M.retrieval_metrics(a, b, np.array([row[int(o)] for o in owner]), ks=(1, 5))
    for key in ("image_to_text", "text_to_image"):
        assert rep["metrics"][key]["R@1"] == pytest.approx(want[key]["R@1"])
        assert rep["metrics"][key]["mean_rank"] == pytest.approx(want[key]["mean_rank"])
    md = (out / "csls" / "report.md").read_text()
    assert "Plain cosine" in md and "- bank: path " in md and ", k 3" in md

    for args, msg in ((["--bank", gallery], "transductive"),
                      (["--bank", str(tmp_path / "nope")], "no such directory"),
                      (["--bank", str(tmp_path)], "not a records directory"),
                      (["--bank", bank, "--bank-k", "21"], "--bank-k 21")):
        assert msg in _error(capsys, base + args + ["--out", str(out / "bad")])
    # the library call checks the bank itself
    with pytest.raises(EvaluationError, match="nope: no such directory"):
        check_bank(str(tmp_path / "nope"), gallery, 3)
    assert not os.path.exists(out / "bad")


def test_main_end_to_end_on_tiny_data(capsys, tmp_path, tiny_workdir):
    from records.build import build_records

    colors = make_color_folders(str(tmp_path / "colors"), per_class=4)
    out = tmp_path / "reports"
    q = ["--quiet"]
    assert evaluate.main(["zeroshot", "--model", tiny_workdir, "--data", colors,
                          "--templates", "clip80", "--out", str(out / "zs")] + q) == 0
    rep = json.load(open(out / "zs" / "report.json"))
    assert rep["kind"] == "zeroshot" and rep["model"]["family"] == "ours"
    assert 0.0 <= rep["metrics"]["accuracy"] <= 1.0
    assert len(rep["confusion_matrix"]) == 3
    assert (out / "zs" / "predictions.png").stat().st_size > 0
    rec = str(tmp_path / "rec")
    build_records("synthetic", rec, num_images=12, image_size=32, seed=0)
    # --model accepts the saved model directory itself, not only the workdir
    assert evaluate.main(["retrieval", "--model", os.path.join(tiny_workdir, "model"),
                          "--data", rec, "--ks", "1,5",
                          "--out", str(out / "ret")] + q) == 0
    rep = json.load(open(out / "ret" / "report.json"))
    assert rep["metrics"]["text_to_image"]["num_queries"] == rep["dataset"]["num_captions"]
    assert 1 <= rep["metrics"]["image_to_text"]["median_rank"]
    assert (out / "ret" / "retrieval_examples.png").stat().st_size > 0

    assert evaluate.main(["kshot", "--model", tiny_workdir, "--train", colors, "--test", colors,
                          "--shots", "1,2", "--seeds", "2", "--out", str(out / "ks")] + q) == 0
    rep = json.load(open(out / "ks" / "report.json"))
    assert [r["shots"] for r in rep["curve"]] == [0, 1, 2]
    assert (out / "ks" / "kshot_curve.png").stat().st_size > 0
    # linear-probe and prompt-tune through the library with a fast fake encoder
    data = prepare_class_data(colors)
    enc = FrozenEncoder(ColorEncoder(), "color-v1")
    info = {"spec": "fake", "family": "ours", "name": "Our model (fake)"}
    rep = run_linear_probe(enc, data, data, str(out / "lp"), model_info=info, progress=False)
    assert rep["metrics"]["accuracy"] == 1.0
    rep = run_prompt_tune(enc, data, data, str(out / "pt"), model_info=info, shots=2,
                          steps=20, progress=False)
    assert len(rep["template_weights"]) == 80
    assert set(rep["comparison"]) == {"zero_shot", "prompt_tuned", "linear_probe_same_shots"}

    assert evaluate.main(["compare", str(out / "zs"), str(out / "lp"), str(out / "ks"),
                          str(out / "pt"), "--out", str(out / "cmp")]) == 0
    md = (out / "cmp" / "report.md").read_text()
    assert "| Target Dataset | Statistics |" in md and "Linear-probe accuracy" in md
    assert (out / "cmp" / "comparison.png").stat().st_size > 0
    assert "error" not in capsys.readouterr().err


def test_compare_layout_like_table2(tmp_path):
    def rep(d, kind, family, name, dataset, acc, **extra):
        os.makedirs(d, exist_ok=True)
        model = {"family": family, "name": name, **extra}
        body = {"kind": kind, "model": model, "dataset": {"name": dataset},
                "metrics": {"accuracy": acc, "precision": acc, "recall": acc, "f1": acc},
                "settings": {}}
        json.dump(body, open(os.path.join(d, "report.json"), "w"))
        return d

    dirs = [rep(tmp_path / "a", "zeroshot", "clip", "Pre-trained CLIP (b32)", "animals10", .98),
            rep(tmp_path / "b", "zeroshot", "ours", "Our model (run1)", "animals10", .59),
            rep(tmp_path / "c", "baseline", "baseline", "EfficientNetB7", "animals10", .97,
                arch="efficientnetb7", display="EfficientNetB7"),
            rep(tmp_path / "d", "baseline", "baseline", "Xception", "animals10", .44,
                arch="xception", display="Xception"),
            rep(tmp_path / "e", "zeroshot", "ours", "Our model (run1)", "custom", .86)]
    r = run_compare([str(d) for d in dirs], str(tmp_path / "cmp"), comparable_kinds())
    assert r["columns"] == ["Xception", "EfficientNetB7", "Our model (run1)",
                            "Pre-trained CLIP (b32)"]
    md = (tmp_path / "cmp" / "report.md").read_text().splitlines()
    header = [ln for ln in md if ln.startswith("| Target")][0]
    assert header.split("|")[3].strip() == "Xception"
    row = [ln for ln in md if "| animals10 | Test Accuracy (%)" in ln][0]
    assert [c.strip() for c in row.split("|")[3:7]] == ["44.00", "97.00", "59.00", "98.00"]
    custom = [ln for ln in md if "| custom | Test Accuracy (%)" in ln][0]
    assert [c.strip() for c in custom.split("|")[3:7]] == ["-", "-", "86.00", "-"]


def test_probe_recovers_separable_classes():
    from dualencoder.eval import softmax_probe as P

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    y = np.repeat(np.arange(4), 30)
    x = centers[y] + 0.3 * rng.normal(size=(120, 16))
    clf, info = P.fit_probe(x, y, 4)
    assert np.mean(clf.predict(x) == y) > 0.95
    assert info["search"] and info["l2"] in P.L2_GRID
    idx = P.balanced_sample(y, 3, seed=1, num_classes=4)
    assert np.bincount(y[idx]).tolist() == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="fewer than"):
        P.balanced_sample(y, 31, seed=0)


def test_baseline_errors(capsys, tmp_path):
    colors = make_color_folders(str(tmp_path / "colors"), per_class=5)
    out = tmp_path / "base"
    assert "not a keras.applications model" in _error(
        capsys, ["baseline", "--arch", "notanet", "--weights", "none", "--train", colors,
                 "--test", colors, "--out", str(out)])
    assert "weights" in _error(
        capsys, ["baseline", "--arch", "xception", "--weights", str(tmp_path / "no.h5"),
                 "--train", colors, "--test", colors, "--out", str(out)])
    assert not out.exists()


@pytest.mark.slow
def test_baseline_linear_cli(tmp_path):
    colors = make_color_folders(str(tmp_path / "colors"), per_class=5)
    out = tmp_path / "base"
    assert evaluate.main(["baseline", "--arch", "mobilenetv3small", "--weights", "none",
                          "--train", colors, "--test", colors, "--image-size", "32",
                          "--epochs", "3", "--mode", "linear", "--quiet",
                          "--out", str(out)]) == 0
    rep = json.load(open(out / "report.json"))
    assert rep["kind"] == "baseline" and rep["model"]["arch"] == "mobilenetv3small"
    assert rep["metrics"]["num_examples"] == 15 and len(rep["history"]["linear_loss"]) <= 3
    assert (out / "history.png").stat().st_size > 0


@pytest.mark.slow
def test_baseline_finetune(tmp_path, capsys):
    """No Keras warnings (input ran out of data, shuffle ignored); with progress and stdout
    piped, plain epoch lines (no carriage returns, backspaces or escape codes)."""
    import warnings

    from dualencoder.eval import baselines

    colors = make_color_folders(str(tmp_path / "colors"), per_class=5)
    data = prepare_class_data(colors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = baselines.run_baseline(data, data, str(tmp_path / "ft"), arch="MobileNetV3Small",
                                     weights="none", mode="finetune", image_size=32, epochs=2,
                                     patience=5, progress=True)
    assert "finetune_loss" in rep["history"] and rep["metrics"]["num_examples"] == 15
    assert len(rep["history"]["finetune_loss"]) == 2
    noisy = [str(w.message) for w in caught if "keras" in w.filename]
    assert not noisy, noisy
    out = capsys.readouterr().out
    assert "Epoch 2/2" in out and not any(c in out for c in "\r\b\x1b"), repr(out[-500:])


@pytest.mark.slow
def test_real_data_zeroshot_retrieval_and_xception_baseline(shared, tmp_path, tiny_workdir,
                                                            monkeypatch):
    """Real images from ../shared: cifar10_dev zero-shot, coco_mini retrieval, Xception
    linear baseline with the shared ImageNet weights (small input size to stay quick)."""
    monkeypatch.setenv("DUALENCODER_CACHE", str(tmp_path / "cache"))
    cifar = str(shared("data", "cifar10_dev"))
    coco = str(shared("data", "coco_mini"))
    weights = str(shared("weights", "xception_imagenet_notop.weights.h5"))
    out = tmp_path / "out"
    assert evaluate.main(["zeroshot", "--model", tiny_workdir, "--data", cifar, "--templates",
                          "clip80", "--out", str(out / "zs"), "--quiet"]) == 0
    rep = json.load(open(out / "zs" / "report.json"))
    assert rep["metrics"]["num_examples"] == 1000 and len(rep["most_confused"]) <= 10
    assert evaluate.main(["retrieval", "--model", tiny_workdir, "--data",
                          f"coco:{coco}:val2017", "--out", str(out / "ret"), "--quiet"]) == 0
    rep = json.load(open(out / "ret" / "report.json"))
    assert rep["dataset"]["num_images"] == 159
    assert evaluate.main(["baseline", "--arch", "xception", "--weights", weights, "--train",
                          cifar, "--test", cifar, "--image-size", "71", "--epochs", "2",
                          "--out", str(out / "base"), "--quiet"]) == 0
    rep = json.load(open(out / "base" / "report.json"))
    assert rep["metrics"]["accuracy"] > 0.2  # ImageNet features beat chance (0.1) easily


def test_baseline_below_the_architectures_minimum_size(capsys, tmp_path):
    err = _error(capsys, ["baseline", "--arch", "xception", "--weights", "none",
                          "--image-size", "16", "--train", str(tmp_path), "--test",
                          str(tmp_path), "--out", str(tmp_path / "out")])
    assert "--image-size 16: the xception baseline needs at least 71 px" in err, err
