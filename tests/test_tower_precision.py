"""Tower passes in bfloat16 (`run.tower_precision`, `--tower-precision`): what `auto` picks,
bfloat16 compute on float32 weights for as long as it is asked for, float32 heads and
embeddings, and feature caches keyed by the precision that made them."""

import os

import numpy as np
import pytest

from dualencoder.model import tower_precision as tp
from dualencoder.testing import tiny_locked_run_config
from test_evaluate import tiny_workdir  # noqa: F401 (a fixture)


def test_auto_follows_native_bfloat16(monkeypatch):
    monkeypatch.setattr(tp, "native_bfloat16", lambda: "CPU amx_bf16")
    assert tp.resolve_tower_precision("auto") == "bfloat16"
    monkeypatch.setattr(tp, "native_bfloat16", lambda: "")
    assert tp.resolve_tower_precision("auto") == "float32"
    assert tp.resolve_tower_precision("bfloat16") == "bfloat16"


def test_auto_keeps_families_slower_in_bfloat16_on_float32(monkeypatch):
    class Tower:
        architecture = "efficientnetb0"

    monkeypatch.setattr(tp, "native_bfloat16", lambda: "CPU avx512_bf16")
    assert tp.resolve_tower_precision("auto", Tower()) == "float32"
    assert tp.resolve_tower_precision("bfloat16", Tower()) == "bfloat16"  # forced
    monkeypatch.setattr(tp, "native_bfloat16", lambda: "GPU /physical_device:GPU:0 ...")
    assert tp.resolve_tower_precision("auto", Tower()) == "bfloat16"
    with pytest.raises(ValueError, match="auto, float32, bfloat16"):
        tp.resolve_tower_precision("float16")


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch):
    import tensorflow as tf

    from records import machine

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the GPU decides here")
    monkeypatch.setattr(machine, "bf16_flags", lambda: [])
    assert tp.native_bfloat16() == ""
    monkeypatch.setattr(machine, "bf16_flags", lambda: ["amx_bf16", "avx512_bf16"])
    assert tp.native_bfloat16() == "CPU amx_bf16, avx512_bf16"


def test_bfloat16_passes_inside_the_block_only(tiny_model):
    x = np.random.RandomState(0).randint(0, 255, (4, 32, 32, 3)).astype("float32")
    texts = ["a dog runs", "a red circle on green grass"]
    image32, text32 = tiny_model.encode_images(x), tiny_model.encode_texts(texts)
    with tp.tower_precision(tiny_model, "bfloat16") as precision:
        assert precision == "bfloat16" == tiny_model.image_tower.compute_dtype
        image16, text16 = tiny_model.encode_images(x), tiny_model.encode_texts(texts)
        assert all(v.dtype == "float32" for v in tiny_model.weights)
    assert image16.dtype == np.float32 and text16.dtype == np.float32  # heads stay float32
    assert not np.array_equal(image16, image32)  # bfloat16 really ran
    assert np.min(np.sum(image16 * image32, axis=1)) > 0.999
    assert np.min(np.sum(text16 * text32, axis=1)) > 0.999
    assert tiny_model.image_tower.compute_dtype == "float32"
    np.testing.assert_array_equal(tiny_model.encode_images(x), image32)  # float32 again


@pytest.fixture
def tiny_model():
    from dualencoder.model.dual_encoder import build_model

    return build_model({"image_tower": "tiny", "image_weights": "none", "text_tower": "tiny",
                        "image_size": 32, "embed_dim": 16})


def test_feature_caches_are_keyed_by_precision(synthetic_records, tmp_path):
    from dualencoder.features import compute
    from dualencoder.train import setup

    train = synthetic_records["train"]
    cached, model = {}, None
    for precision in ("float32", "bfloat16", "float32"):
        cfg = tiny_locked_run_config(f"data.records={train}",
                                     f"run.tower_precision={precision}")
        model = model or setup.build(cfg)
        cached[precision] = compute.image_features(model, cfg, train, str(tmp_path),
                                                   log=lambda *a: None)["image_features"]
        assert model.image_tower.compute_dtype == "float32"  # only while caching
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2, names  # one cache per precision, reused
    a, b = cached["float32"], cached["bfloat16"]
    assert not np.array_equal(a, b)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


@pytest.mark.parametrize("trainable", [("none", "1"), ("1", "none")])
def test_boundary_states_in_bfloat16_train_in_float32(synthetic_records, tmp_path, trainable):
    from dualencoder.train.loop import train

    image, text = trainable
    cfg = tiny_locked_run_config(f"data.records={synthetic_records['train']}",
                                 f"model.image_trainable={image}",
                                 f"model.text_trainable={text}", "optim.max_steps=3",
                                 "run.tower_precision=bfloat16")
    summary = train(cfg, str(tmp_path / "run"), log=lambda *a: None)
    assert summary["tower_precision"] == "bfloat16" and "boundary" in summary["cached_features"]
    assert all(np.isfinite(h["train_loss"]) for h in summary["history"])
    assert any("-states-" in n for n in os.listdir(tmp_path / "run" / "features"))


def test_loaded_encoders_run_their_towers_in_the_precision_asked(tiny_workdir):
    from dualencoder.encoders.cache import encoder_fingerprint
    from dualencoder.encoders.load import load_encoder

    plain, plain_info = load_encoder(tiny_workdir)
    bf16, info = load_encoder(tiny_workdir, "bfloat16")
    assert (plain_info["tower_precision"], info["tower_precision"]) == ("float32", "bfloat16")
    assert bf16.encoder.image_tower.compute_dtype == "bfloat16"
    # the same model (an index built in one precision answers queries in the other) ...
    assert bf16.fingerprint() == plain.fingerprint()
    # ... whose cached evaluation embeddings are kept apart
    assert encoder_fingerprint(bf16) != encoder_fingerprint(plain)
    x = np.random.RandomState(1).randint(0, 255, (3, bf16.image_size, bf16.image_size, 3))
    a, b = plain.encode_images(x), bf16.encode_images(x)
    assert b.dtype == np.float32 and np.min(np.sum(a * b, axis=1)) > 0.999


@pytest.mark.parametrize("micro_batch", [0, 4])
def test_mixed_bfloat16_training_keeps_heads_and_loss_float32(synthetic_records, tmp_path,
                                                            micro_batch):
    """run.precision=mixed_bfloat16 (no loss scaling), on the boundary-cached path with and
    without gradient caching: finite losses, float32 heads, temperature and loss."""
    import keras

    from dualencoder.train import setup
    from dualencoder.train.loop import train

    cfg = tiny_locked_run_config(f"data.records={synthetic_records['train']}",
                                 "model.text_trainable=1", "optim.max_steps=3",
                                 "run.precision=mixed_bfloat16",
                                 f"optim.micro_batch={micro_batch}")
    try:
        summary = train(cfg, str(tmp_path / "run"), log=lambda *a: None)
        assert summary["tower_precision"] == "bfloat16"
        assert all(np.isfinite(h["train_loss"]) for h in summary["history"])
        model = setup.build(cfg)
        tokens = model.tokenizer(["a dog"])
        assert model.text_tower.compute_dtype == "bfloat16"
        assert all(v.dtype == "float32" for v in model.trainable_variables)
        emb = model.embed_from_features(model.image_tower(np.zeros((1, 32, 32, 3))),
                                        model.text_tower(tokens))
        assert all(e.dtype == "float32" for e in emb) and model.logit_scale.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


def test_training_precision_auto(monkeypatch):
    import keras

    from dualencoder.train import setup

    try:
        for native, policy in (("CPU amx_bf16", "mixed_bfloat16"), ("", "float32")):
            monkeypatch.setattr(tp, "native_bfloat16", lambda native=native: native)
            setup.set_precision("auto")
            assert keras.config.dtype_policy().name == policy
    finally:
        keras.config.set_dtype_policy("float32")


def test_saved_model_records_its_precision(tiny_model, tmp_path):
    import json

    from dualencoder.model.saving import save_model

    with tp.tower_precision(tiny_model, "bfloat16"):
        save_model(tiny_model, str(tmp_path / "bf16"))
    save_model(tiny_model, str(tmp_path / "fp32"))
    meta = {n: json.loads((tmp_path / n / "config.json").read_text())["precision"]
            for n in ("bf16", "fp32")}
    assert meta == {"bf16": {"policy": "float32", "towers": "bfloat16"},
                    "fp32": {"policy": "float32", "towers": "float32"}}
