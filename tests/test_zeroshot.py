"""Zero-shot logic: templates, class maps, prompt ensembles, evaluation, prompt tuning."""

import json
import os

import numpy as np
import pytest

from dualencoder.eval import zeroshot as Z

from fake_encoders import ColorEncoder, make_color_folders


def test_clip80_templates_are_80_distinct_with_one_slot():
    t = Z.load_templates("clip80")
    assert len(t) == 80 and len(set(t)) == 80
    assert all(x.count("{}") == 1 for x in t)
    assert "a photo of a {}." in t and "itap of my {}." in t
    assert Z.load_templates("simple") == ["a photo of a {}."]


def test_template_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# comment\n\na sketch of a {}.\nthe {} itself\n")
    assert Z.load_templates(str(f)) == ["a sketch of a {}.", "the {} itself"]
    f.write_text("no slot here\n")
    with pytest.raises(ValueError, match="exactly once"):
        Z.load_templates(str(f))
    with pytest.raises(ValueError, match="not 'simple'"):
        Z.load_templates("nope")


def test_class_maps(tmp_path):
    assert Z.load_class_map("animals10")["scoiattolo"] == "squirrel"
    j = tmp_path / "m.json"
    j.write_text(json.dumps({"a": "apple"}))
    assert Z.load_class_map(str(j)) == {"a": "apple"}
    t = tmp_path / "m.txt"
    t.write_text("a=apple\nb,banana\n")
    assert Z.load_class_map(str(t)) == {"a": "apple", "b": "banana"}
    assert Z.apply_class_map(["a", "c"], {"a": "apple"}) == ["apple", "c"]
    with pytest.raises(ValueError, match="duplicate class name"):
        Z.apply_class_map(["a", "b"], {"a": "x", "b": "X"})


def test_prompt_ensemble_is_normalised_mean_of_normalised():
    enc = ColorEncoder()
    templates = ["a photo of a {}.", "a {} thing"]
    got = Z.class_text_embeddings(enc, ["red", "dark_blue"], templates)
    raw = enc.encode_texts(["a photo of a red.", "a red thing"])
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    want = raw.mean(0) / np.linalg.norm(raw.mean(0))
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    # underscores read as spaces in prompts
    per_t = Z.template_text_embeddings(enc, ["dark_blue"], ["{}"])
    np.testing.assert_allclose(per_t[0, 0], enc.encode_texts(["dark blue"])[0], rtol=1e-6)


def test_evaluate_zero_shot_on_synthetic_embeddings():
    rng = np.random.default_rng(0)
    cls = np.eye(3, 8, dtype=np.float32)
    labels = np.repeat(np.arange(3), 20)
    img = cls[labels] + rng.normal(0, 0.05, (60, 8)).astype(np.float32)
    img[:5] = cls[1]  # five class-0 images look like class 1
    r = Z.evaluate_zero_shot(img, labels, cls, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(55 / 60)
    assert r["top5_accuracy"] is None  # 3 classes: top-5 would be 100% whatever the model
    assert r["most_confused"][0]["a"] == "a" and r["most_confused"][0]["b"] == "b"
    assert r["most_confused"][0]["confusion_rate"] == pytest.approx(5 / 40)


def test_top5_only_with_more_than_five_classes():
    rng = np.random.default_rng(1)
    for classes, has_top5 in ((5, False), (6, True)):
        cls = np.eye(classes, 8, dtype=np.float32)
        labels = np.repeat(np.arange(classes), 4)
        img = cls[labels] + rng.normal(0, 0.05, (len(labels), 8)).astype(np.float32)
        r = Z.evaluate_zero_shot(img, labels, cls, [str(i) for i in range(classes)])
        assert (r["top5_accuracy"] is not None) == has_top5


def test_prompt_tuner_progress_lines_when_piped(capsys):
    per_t = np.stack([np.eye(3, 6, dtype=np.float32)] * 2)
    labels = np.arange(3)
    Z.PromptTuner(per_t, steps=20).fit(np.eye(3, 6), labels)
    assert capsys.readouterr().err == ""  # quiet by default (--quiet)
    Z.PromptTuner(per_t, steps=20).fit(np.eye(3, 6), labels, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("prompt tuning: 20/20 step (100%) in ")
    assert lines[0].startswith("prompt tuning: 2/20 step (10%), ") and ", loss " in lines[-1]
    assert all("\x1b" not in line and "\r" not in line for line in lines)


def test_step_progress_is_a_bar_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    report = Z.step_progress(5, "tuning", stream=stream)
    for _ in range(5):
        report(0.5)
    report(None)
    assert "tuning" in stream.getvalue() and "\r" in stream.getvalue()


def test_prompt_tuner_starts_at_zero_shot_and_learns_weights():
    # Two templates: template 0 describes the classes, template 1 is misleading.
    d = 6
    good = np.eye(3, d, dtype=np.float32)
    bad = np.roll(good, 1, axis=0)
    per_t = np.stack([good, bad])
    tuner = Z.PromptTuner(per_t, steps=150, learning_rate=0.1)
    np.testing.assert_allclose(tuner.class_embeddings(),
                               Z.class_text_embeddings(None, None, None, per_template=per_t),
                               rtol=1e-6)
    labels = np.repeat(np.arange(3), 4)
    x = good[labels] + 0.05
    tuner.fit(x, labels)
    w = tuner.template_weights
    assert w[0] > 0.6 and w.sum() == pytest.approx(1.0)
    assert tuner.history[-1] < tuner.history[0]
    assert (tuner.predict_scores(x).argmax(1) == labels).all()


def test_run_zeroshot_end_to_end_with_fake_encoder(tmp_path):
    from dualencoder.eval.inputs import prepare_class_data
    from dualencoder.eval.zeroshot_eval import run_zeroshot

    root = make_color_folders(str(tmp_path / "colors"), per_class=5)
    data = prepare_class_data(root, cache_dir=str(tmp_path / "cache"))
    enc = ColorEncoder()
    out = str(tmp_path / "out")
    info = {"spec": "fake", "family": "ours", "name": "fake"}
    rep = run_zeroshot(enc, data, out, model_info=info, templates="clip80",
                       cache_dir=str(tmp_path / "cache"), progress=False)
    assert rep["metrics"]["accuracy"] == 1.0
    assert rep["metrics"]["num_examples"] == 15
    for f in ("report.json", "report.md", "confusion_matrix.png", "predictions.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    loaded = json.load(open(os.path.join(out, "report.json")))
    assert loaded["settings"]["num_templates"] == 80
    assert [c["name"] for c in loaded["per_class"]] == ["blue", "green", "red"]
    assert loaded["metrics"]["chance_accuracy"] == pytest.approx(1 / 3)
    assert "top5_accuracy" not in loaded["metrics"]
    md = open(os.path.join(out, "report.md")).read()
    assert "| Chance level (1/3 classes) | 33.33 |" in md and "Top-5" not in md
    # Second run reads the embedding cache: the encoder sees no images.
    enc2 = ColorEncoder()
    run_zeroshot(enc2, data, str(tmp_path / "out2"), model_info=info,
                 cache_dir=str(tmp_path / "cache"), progress=False)
    assert enc2.image_calls == 0
