"""Configs: defaults, TOML round trip, and clear errors for bad keys and values."""

import pytest

from sbdiff import SbdiffError
from sbdiff.config import Config, config_from_dict, dumps_config, load_config


def test_defaults_validate_and_resolve_reference():
    cfg = Config().validate()
    assert cfg.reference == {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "T": 1.0}


def test_roundtrip(tmp_path):
    cfg = config_from_dict({"seed": 3, "data": {"data": 'weird "name".npy'}, "train": {"lr": 2e-4},
                            "reference": {"kind": "ve", "sigma_max": 5}}).validate()
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(cfg))
    back, raw = load_config(path)
    assert back.validate() == cfg
    assert raw["reference"]["kind"] == "ve"


def test_changing_reference_kind_drops_old_parameters():
    base = Config().validate()
    cfg = config_from_dict({"reference": {"kind": "ou"}}, base).validate()
    assert cfg.reference["kind"] == "ou" and "beta_min" not in cfg.reference


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trian": {}}, "unknown config key 'trian'"),
        ({"train": {"stepz": 3}}, r"unknown config key 'train.stepz'"),
        ({"train": {"steps": "many"}}, "train.steps must be an integer"),
        ({"train": {"lr": True}}, "train.lr must be a number"),
        ({"data": {"normalize": 1}}, "data.normalize must be true or false"),
        ({"data": "x"}, r"must be a table \[data\]"),
        ({"reference": {"kind": "vp", "sigma": 1.0}}, "unknown parameter.*sigma.*for reference 'vp'"),
        ({"reference": {"kind": "foo"}}, "unknown reference 'foo'"),
        ({"method": "gan"}, "unknown method 'gan'"),
        ({"train": {"lr": -1.0}}, "train.lr must be positive"),
        ({"train": {"steps": 0}}, "set train.steps or train.max_minutes"),
        ({"train": {"ema_decay": 1.0}}, "ema_decay"),
        ({"model": {"t_min": 2.0}}, "t_min"),
        ({"sample": {"ode_solver": "rk45"}}, "ode_solver"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"data": {"prior": "moons"}}, "needs a bridge method"),
    ],
)
def test_bad_configs(raw, message):
    with pytest.raises(SbdiffError, match=message):
        config_from_dict(raw).validate()


def test_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("seed = = 3\n")
    with pytest.raises(SbdiffError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(SbdiffError, match="config file not found"):
        load_config(tmp_path / "none.toml")
