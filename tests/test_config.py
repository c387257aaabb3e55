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
