import json

import pytest

from dualencoder.config import Config, ConfigError


def test_defaults_are_valid_and_documented():
    cfg = Config()
    cfg.validate()
    d = cfg.to_dict()
    assert d["model"]["image_tower"] == "xception"
    assert d["model"]["embed_dim"] == 256
    assert d["model"]["init_logit_scale"] == pytest.approx(1 / 0.07)
    assert d["optim"]["plateau_factor"] == 0.2 and d["optim"]["plateau_patience"] == 3
    assert d["optim"]["early_stopping"] == 5


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optim": {"lr": 0.01}, "data": {"batch_size": 8}}))
    cfg = Config.from_sources(str(path), ["optim.lr=1e-4", "model.image_trainable=2",
                                          "run.jit_compile=true", "model.extra_loss=max_violation"])
    assert cfg.optim.lr == 1e-4
    assert cfg.data.batch_size == 8
    assert cfg.model.image_trainable == 2
    assert cfg.run.jit_compile is True
    assert cfg.model.extra_loss == "max_violation"
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("item, needle", [
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("nosection.x=1", "unknown key 'nosection.x'"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.batch_size=-3", "data.batch_size=-3"),
    ("data.batch_size=abc", "data.batch_size='abc' is not an integer"),
    ("run.precision=fp8", "run.precision='fp8'"),
    ("model.image_trainable=some", "model.image_trainable='some'"),
    ("optim.lr=0", "optim.lr=0"),
    ("no_equals_sign", "expected section.key=value"),
])
def test_bad_overrides_name_the_value(item, needle):
    with pytest.raises(ConfigError, match=None) as info:
        Config.from_sources(None, [item])
    assert needle in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_sources(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_sources(str(bad))
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"optimizer": {"lr": 1}}))
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        Config.from_sources(str(unknown))


def test_split_loss_accum_must_divide_batch():
    with pytest.raises(ConfigError, match="not divisible"):
        Config.from_sources(None, ["data.batch_size=10", "optim.split_loss_accum=3"])


def test_repo_configs_parse():
    import pathlib

    for path in sorted(pathlib.Path(__file__).resolve().parents[1].glob("configs/*.json")):
        Config.from_sources(str(path))


@pytest.mark.parametrize("item, needle", [
    ("optim.lr=1e308", "optim.lr=1e+308: must be > 0 and <= 1"),
    ("optim.lr=NaN", "optim.lr=nan: must be a finite number"),
    ("optim.weight_decay=Infinity", "optim.weight_decay=inf: must be a finite number"),
    ("optim.weight_decay=5", "optim.weight_decay=5.0: must be >= 0 and <= 1"),
    ("optim.plateau_factor=1", "optim.plateau_factor=1.0: must be > 0 and < 1"),
    ("model.head_dropout=1", "model.head_dropout=1.0: must be >= 0 and < 1"),
    ("model.init_logit_scale=0", "model.init_logit_scale=0.0: must be > 0"),
    ("model.init_logit_scale=500", "is above model.max_logit_scale"),
    ("optim.epochs=1e308", "optim.epochs=1e+308: too large"),
    ("run.seed=-1e12", "run.seed=-1e+12: too large"),
])
def test_numbers_out_of_range_are_refused_up_front(item, needle):
    with pytest.raises(ConfigError) as info:
        Config.from_sources(None, [item])
    assert needle in str(info.value)


@pytest.mark.parametrize("tower, low", [("xception", 71), ("inceptionv3", 75),
                                        ("efficientnetb0", 32), ("resnet50", 32), ("tiny", 8)])
def test_image_size_has_the_towers_minimum(tower, low):
    from dualencoder.config import min_image_size

    assert min_image_size(tower) == low
    sets = [f"model.image_tower={tower}"]
    assert Config.from_sources(None, sets + [f"model.image_size={low}"]).model.image_size == low
    with pytest.raises(ConfigError, match=f"model.image_size={low - 1}: {tower} needs at "
                                          f"least {low} px"):
        Config.from_sources(None, sets + [f"model.image_size={low - 1}"])


@pytest.mark.parametrize("content, needle", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "not a JSON text file"),
    (b"{\"optim\": {\"lr\": 1e-3,}}", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object of sections"),
    (b"\"model\"", "expected a JSON object of sections"),
    (b"{\"optim\": 3}", "section 'optim' must be a JSON object"),
])
def test_unreadable_config_files_are_config_errors(tmp_path, content, needle):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Config.from_sources(str(path))
    assert needle in str(info.value) and str(path) in str(info.value)


def test_every_key_has_a_description():
    import dataclasses

    for section in dataclasses.fields(Config):
        for field in dataclasses.fields(getattr(Config(), section.name)):
            text = field.metadata.get("help", "")
            assert len(text) > 8 and "\n" not in text, f"{section.name}.{field.name}"


def test_saved_config_is_the_base_under_file_and_overrides(tmp_path):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(Config.from_sources(None, [
        "model.embed_dim=32", "optim.lr=0.01", "data.batch_size=8"]).to_dict()))
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"optim": {"lr": 0.002}}))
    cfg = Config.from_sources(str(file), ["data.batch_size=4"], base=str(saved))
    assert (cfg.model.embed_dim, cfg.optim.lr, cfg.data.batch_size) == (32, 0.002, 4)
