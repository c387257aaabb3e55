"""CLIP adapter on a tiny random local keras-hub preset; offline error message."""

import json
import os

import numpy as np
import pytest

from dualencoder.cli import evaluate
from dualencoder.eval.compare import column_of

from fake_encoders import make_color_folders


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    from dualencoder.encoders.clip import save_tiny_clip_preset

    return save_tiny_clip_preset(str(tmp_path_factory.mktemp("clip") / "tiny_clip"))


def test_tiny_preset_satisfies_the_encoder_protocol(tiny_preset):
    from dualencoder.encoders.clip import CLIPEncoder

    enc = CLIPEncoder(tiny_preset)
    assert enc.image_size == 32
    rng = np.random.default_rng(0)
    img = enc.encode_images(rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.uint8))
    txt = enc.encode_texts(["a photo of a cat.", "A photo of the dog.", "zebra"])
    assert img.shape == (3, 8) and txt.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    # lower-casing: case does not change the embedding; different texts differ
    np.testing.assert_allclose(enc.encode_texts(["a photo of the dog."])[0], txt[1], atol=1e-6)
    assert not np.allclose(txt[0], txt[2])
    # deterministic, and batching does not change results
    enc.batch_size = 1
    np.testing.assert_allclose(enc.encode_texts(["zebra"])[0], txt[2], atol=1e-5)
    fp = enc.fingerprint()
    assert fp.startswith("clip-") and fp == CLIPEncoder(tiny_preset).fingerprint()


def test_offline_named_preset_gives_a_clear_message(monkeypatch):
    from dualencoder.encoders import clip as clip_adapter

    import keras_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.CLIPBackbone, "from_preset", no_network)
    with pytest.raises(clip_adapter.ClipUnavailableError, match="local keras-hub preset"):
        clip_adapter.CLIPEncoder("clip_vit_base_patch32")


def test_missing_preset_folder_exits_2(capsys, tmp_path):
    code = evaluate.main(["zeroshot", "--model", f"clip:{tmp_path}/nope", "--data",
                          str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no such CLIP preset folder" in capsys.readouterr().err


def test_zeroshot_cli_with_clip_preset(tiny_preset, tmp_path, monkeypatch):
    monkeypatch.setenv("DUALENCODER_CACHE", str(tmp_path / "cache"))
    colors = make_color_folders(str(tmp_path / "colors"), per_class=3)
    out = tmp_path / "zs"
    assert evaluate.main(["zeroshot", "--model", f"clip:{tiny_preset}", "--data", colors,
                          "--out", str(out), "--quiet"]) == 0
    rep = json.load(open(out / "report.json"))
    assert rep["model"]["family"] == "clip" and rep["model"]["fingerprint"].startswith("clip-")
    assert rep["metrics"]["num_examples"] == 9
    assert os.path.isfile(out / "confusion_matrix.png")
    # the run lands in the Pre-trained column of compare
    key, label = column_of(rep)
    assert label.startswith("Pre-trained CLIP")
