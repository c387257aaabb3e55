"""The image tower table: every row's name, unknown names, and a backbone registered from
outside the library (here a tiny patch network) that trains, embeds, saves, passes the
config's size check and serves as a baseline like a built-in tower."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from dualencoder.config import Config, ConfigError, min_image_size
from dualencoder.eval.baselines import FeatureEncoder, resolve_arch
from dualencoder.eval.errors import EvaluationError
from dualencoder.model.image_tower import ImageTower
from dualencoder.image_towers import (DEFAULT_MIN_SIZE, ImageTowerSpec, image_tower_names,
                                            image_tower_spec, normalise_name,
                                            register_image_tower, unregister_image_tower)
from dualencoder.model.saving import load, save_model
from dualencoder.testing import tiny_batch, tiny_model


def _scale(x):
    return x / 255.0


def _build_patchnet(image_size, pretrained):
    """A ViT-shaped toy: 4 px patches embedded, then two residual MLP blocks named
    "layer1_*", "layer2_*"; output the patch grid `[B, S/4, S/4, 24]`."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(24, 4, strides=4, name="patch_embed")(inputs)
    for i in (1, 2):
        y = keras.layers.LayerNormalization(name=f"layer{i}_norm")(x)
        y = keras.layers.Dense(48, activation="gelu", name=f"layer{i}_mlp_in")(y)
        y = keras.layers.Dense(24, name=f"layer{i}_mlp_out")(y)
        x = keras.layers.Add(name=f"layer{i}_add")([x, y])
    return keras.Model(inputs, x, name="patchnet")


@pytest.fixture
def patchnet():
    spec = register_image_tower("Patch-Net", _build_patchnet, preprocess=_scale,
                                native_size=32, min_size=16, block_pattern=r"^layer(\d+)_")
    yield spec
    unregister_image_tower("patchnet")


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# ---------------------------------------------------------------- the table


def test_every_row_names_itself_and_resolves_without_building():
    names = image_tower_names()
    assert names[0] == "tiny" and len(names) == len(set(names)) > 40
    for name in names:
        spec = image_tower_spec(name)
        assert spec.name == name == normalise_name(spec.display)
        for spelling in (name.upper(), spec.display, f"{name[:3]}-{name[3:]}",
                         f"{name[:2]}_{name[2:]}"):
            assert image_tower_spec(spelling) is spec
        assert 1 <= spec.min_size <= spec.native_size
        assert min_image_size(name) == spec.min_size
        assert resolve_arch(spec.display) is spec
        if spec.from_keras_applications:
            assert callable(getattr(keras.applications, spec.backbone))
            assert callable(getattr(keras.applications, spec.preprocess).preprocess_input)
    assert (image_tower_spec("Xception").native_size, min_image_size("xception")) == (299, 71)
    assert image_tower_spec("efficientnet_b7").native_size == 600
    assert min_image_size("InceptionResNetV2") == 75 and min_image_size("tiny") == 8


def test_unknown_names_get_the_list_of_valid_ones():
    expected = ("Unknown image tower 'alexnet'; valid names (case-insensitive): tiny, "
                "convnextbase, convnextlarge, ")
    for call in (lambda: image_tower_spec("alexnet"),
                 lambda: ImageTower("alexnet", weights="none")):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(expected) and str(info.value).endswith(", xception")
        assert str(info.value).count(", ") == len(image_tower_names()) - 1
    with pytest.raises(EvaluationError, match="--arch 'alexnet': not a keras.applications "
                                              "model or registered image tower"):
        resolve_arch("alexnet")
    # the config leaves the name to the model builder; the size check uses the default
    assert min_image_size("alexnet") == DEFAULT_MIN_SIZE


def test_registration_is_checked(patchnet):
    assert patchnet.name == "patchnet" and patchnet.display == "patchnet"
    with pytest.raises(ValueError, match="'patchnet' is already registered"):
        register_image_tower("patch_net", _build_patchnet, preprocess=_scale)
    with pytest.raises(ValueError, match="min_size <= native_size"):
        register_image_tower("other", _build_patchnet, preprocess=_scale, native_size=8,
                             min_size=16)
    with pytest.raises(TypeError, match="preprocess"):
        register_image_tower("other", ImageTowerSpec(_build_patchnet, preprocess=3))
    assert "other" not in image_tower_names()
    replaced = register_image_tower("patchnet", patchnet, replace=True, min_size=20)
    assert image_tower_spec("PATCHNET") is replaced and min_image_size("patchnet") == 20


# ---------------------------------------------------------------- a registered tower


def test_config_checks_a_registered_towers_minimum(patchnet):
    sets = ["model.image_tower=Patch_Net"]
    assert Config.from_sources(None, sets + ["model.image_size=16"]).model.image_size == 16
    with pytest.raises(ConfigError, match="model.image_size=15: Patch_Net needs at least 16 px"):
        Config.from_sources(None, sets + ["model.image_size=15"])
    with pytest.raises(ValueError, match="the patchnet image tower needs at least 16 px"):
        ImageTower("patchnet", weights="none", image_size=12)


def test_a_registered_tower_trains_embeds_and_saves(patchnet, tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_model(image_tower="patchnet", image_trainable=1)
    tower = model.image_tower
    assert tower.output_dim == 24 and tower.boundary == "layer1_add"
    assert {w.path.split("/")[0] for w in tower.trainable_weights} == {
        "layer2_norm", "layer2_mlp_in", "layer2_mlp_out"}
    # the preprocessing is the registered one: pixels scaled inside the tower
    x = _images()
    np.testing.assert_allclose(tower(x), tower.backbone(x / 255.0).numpy().mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)

    batches = [tiny_batch(model, batch_size=8, seed=s, images_per_batch=4) for s in range(3)]
    keys = ("images", "token_ids", "padding_mask", "image_index", "caption")
    ds = tf.data.Dataset.from_tensor_slices({k: np.stack([b[k] for b in batches]) for k in keys})
    before = [w.numpy().copy() for w in tower.trainable_weights]
    frozen = [w.numpy().copy() for w in tower.non_trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(ds, epochs=2, verbose=0, shuffle=False).history
    assert np.all(np.isfinite(history["loss"]))
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, tower.trainable_weights))
    for a, w in zip(frozen, tower.non_trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())

    emb = model.encode_images(x)
    assert emb.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    loaded = load(save_model(model, str(tmp_path / "saved")))
    assert loaded.image_tower.architecture == "patchnet"
    np.testing.assert_allclose(loaded.encode_images(x), emb, rtol=1e-5, atol=1e-6)


def test_a_registered_tower_serves_as_a_baseline(patchnet):
    enc = FeatureEncoder("Patch-Net", "none", 32)
    assert isinstance(enc.tower, ImageTower) and enc.tower.frozen and enc.name == "patchnet"
    x = _images()
    np.testing.assert_allclose(enc.encode_images(x), enc.tower(x), rtol=1e-5, atol=1e-6)
    assert enc.fingerprint() == FeatureEncoder("patchnet", "none", 32).fingerprint()
    assert enc.fingerprint() != FeatureEncoder("patchnet", "none", 36).fingerprint()


# ---------------------------------------------------------------- baselines on ImageTower


def test_baseline_features_keep_their_error_messages(monkeypatch, tmp_path, patchnet):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example/xception_notop.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "Xception", offline)
    with pytest.raises(EvaluationError, match=r"cannot download ImageNet weights for Xception "
                                              r".*--weights PATH.*--weights none"):
        FeatureEncoder("xception", "imagenet", 71)
    path = str(tmp_path / "patchnet.weights.h5")
    _build_patchnet(32, False).save_weights(path)
    with pytest.raises(EvaluationError, match="cannot load into MobileNetV3Small without top"):
        FeatureEncoder("mobilenetv3small", path, 32)
    # the file fits the architecture it came from
    enc = FeatureEncoder("patchnet", path, 32)
    reference = _build_patchnet(32, False)
    reference.load_weights(path)
    x = _images()
    np.testing.assert_allclose(enc.encode_images(x), reference(x / 255.0).numpy().mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)


def test_keras_size_warning_of_pretrained_mobilenets_is_held_back(monkeypatch):
    real = keras.applications.MobileNetV3Small

    def warns(**kwargs):
        warnings.warn("`input_shape` is undefined or non-square, or `rows` is not 224. Weights "
                      "for input shape (224, 224) will be loaded as the default.")
        return real(**{**kwargs, "weights": None})

    monkeypatch.setattr(keras.applications, "MobileNetV3Small", warns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tower = ImageTower("mobilenetv3small", weights="imagenet", image_size=32,
                           trainable="none")
    assert tower.output_dim == 576
    assert not [str(w.message) for w in caught if "input_shape" in str(w.message)]
