"""Run configuration: typed sections, loading from TOML with validation, and saving the resolved form.

A config file holds any subset of the keys below; everything missing takes its default. Unknown
sections or keys, and values of the wrong type, raise :class:`SbdiffError` naming the key.

```toml
method = "sgm"          # sgm (dsb, sbfbsde, vsdm: later)
seed = 0
device = "cpu"

[data]
data = "checkerboard"   # built-in name or .npy/.npz/.csv path
prior = "gaussian"
n_samples = 50000       # size of a generated built-in set
normalize = true        # per-coordinate standardisation (likelihoods account for it)

[reference]
kind = "vp"             # brownian | vp | ve | ou, plus that reference's parameters
beta_min = 0.1
beta_max = 20.0

[model]
hidden = 256
blocks = 3
time_dim = 64
t_min = 0.001

[train]
steps = 20000           # 0: no step limit (then set max_minutes)
max_minutes = 0.0       # 0: no time limit
batch_size = 512
lr = 0.001
warmup = 200
ema_decay = 0.999
grad_clip = 1.0
log_every = 100

[sample]
nfe = 500
ode_solver = "heun"     # euler | heun | dopri5
```
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._utils import SbdiffError
from .references import make_reference

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "SampleConfig", "load_config",
           "save_config", "METHODS", "AVAILABLE_METHODS"]

METHODS = ("sgm", "dsb", "sbfbsde", "vsdm")
AVAILABLE_METHODS = ("sgm",)


@dataclass
class DataConfig:
    data: str = "checkerboard"
    prior: str = "gaussian"
    n_samples: int = 50_000
    normalize: bool = True


@dataclass
class ModelConfig:
    hidden: int = 256
    blocks: int = 3
    time_dim: int = 64
    t_min: float = 1e-3


@dataclass
class TrainConfig:
    steps: int = 20_000
    max_minutes: float = 0.0
    batch_size: int = 512
    lr: float = 2e-3
    warmup: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 100


@dataclass
class SampleConfig:
    nfe: int = 500
    ode_solver: str = "heun"


@dataclass
class Config:
    method: str = "sgm"
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    reference: dict = field(default_factory=lambda: {"kind": "vp"})
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> "Config":
        """Check values (not just types); resolve the reference's defaults. Returns ``self``."""
        if self.method not in METHODS:
            raise SbdiffError(f"unknown method '{self.method}'; choose from {', '.join(METHODS)}")
        if self.method not in AVAILABLE_METHODS:
            raise SbdiffError(f"method '{self.method}' is not available yet (available: {', '.join(AVAILABLE_METHODS)})")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise SbdiffError(f"unknown device '{self.device}'; choose cpu, cuda or auto")
        if self.data.prior != "gaussian":
            raise SbdiffError(f"prior '{self.data.prior}' is not available yet for method '{self.method}' (use gaussian)")
        params = dict(self.reference)
        kind = params.pop("kind", "vp")
        ref = make_reference(kind, **params)
        self.reference = {"kind": kind, **ref.params()}
        t = self.train
        for name in ("batch_size", "log_every"):
            if getattr(t, name) < 1:
                raise SbdiffError(f"train.{name} must be at least 1, got {getattr(t, name)}")
        for name in ("steps", "warmup"):
            if getattr(t, name) < 0:
                raise SbdiffError(f"train.{name} must be >= 0, got {getattr(t, name)}")
        if not (t.max_minutes >= 0 and math.isfinite(t.max_minutes)):
            raise SbdiffError(f"train.max_minutes must be a finite number >= 0, got {t.max_minutes}")
        if t.steps == 0 and t.max_minutes == 0:
            raise SbdiffError("set train.steps or train.max_minutes: with both 0 training would never stop")
        if not t.lr > 0:
            raise SbdiffError(f"train.lr must be positive, got {t.lr}")
        if not 0 <= t.ema_decay < 1:
            raise SbdiffError(f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
        if not t.grad_clip > 0:
            raise SbdiffError(f"train.grad_clip must be positive, got {t.grad_clip}")
        m = self.model
        if m.hidden < 1 or m.blocks < 0 or m.time_dim < 2:
            raise SbdiffError("model.hidden >= 1, model.blocks >= 0 and model.time_dim >= 2 are required")
        if not 0 <= m.t_min < ref.T:
            raise SbdiffError(f"model.t_min must lie in [0, T={ref.T}), got {m.t_min}")
        if self.data.n_samples < 2:
            raise SbdiffError(f"data.n_samples must be at least 2, got {self.data.n_samples}")
        if self.sample.nfe < 1:
            raise SbdiffError(f"sample.nfe must be at least 1, got {self.sample.nfe}")
        if self.sample.ode_solver not in ("euler", "heun", "dopri5"):
            raise SbdiffError(f"sample.ode_solver must be euler, heun or dopri5, got '{self.sample.ode_solver}'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig}


def _coerce(key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise SbdiffError(f"config key {key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SbdiffError(f"config key {key} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SbdiffError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise SbdiffError(f"config key {key} must be a string, got {value!r}")
    return value


def config_from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Overlay a nested dict (as read from TOML) onto ``base`` (default: the defaults)."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    top = {f.name for f in fields(Config)}
    for key, value in raw.items():
        if key not in top:
            raise SbdiffError(f"unknown config key '{key}'; accepted top-level keys: {', '.join(sorted(top))}")
        if key == "reference":
            if not isinstance(value, dict):
                raise SbdiffError("config key reference must be a table")
            ref = dict(value) if "kind" in value and value["kind"] != cfg.reference.get("kind") else {**cfg.reference, **value}
            cfg.reference = ref
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise SbdiffError(f"config key {key} must be a table [{key}]")
            section = getattr(cfg, key)
            names = {f.name for f in fields(section)}
            for sub, v in value.items():
                if sub not in names:
                    raise SbdiffError(f"unknown config key '{key}.{sub}'; accepted: {', '.join(sorted(names))}")
                setattr(section, sub, _coerce(f"{key}.{sub}", v, getattr(section, sub)))
        else:
            setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))
    return cfg


def load_config(path: str | Path) -> tuple[Config, dict[str, Any]]:
    """Read a TOML config; returns the config (defaults filled in) and the raw dict as read."""
    path = Path(path)
    if not path.is_file():
        raise SbdiffError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SbdiffError(f"{path}: invalid TOML ({err})") from None
    return config_from_dict(raw), raw


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise SbdiffError(f"cannot write non-finite value {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    raise SbdiffError(f"cannot write {type(value).__name__} to TOML")


def dumps_config(cfg: Config) -> str:
    """The resolved config as TOML text (readable back by :func:`load_config`)."""
    d = cfg.to_dict()
    lines = []
    for key, value in d.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in d.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config to ``path`` (TOML)."""
    Path(path).write_text(dumps_config(cfg))
