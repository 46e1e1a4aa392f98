"""Run configuration: typed sections, loading from TOML with validation, and saving the resolved form.

A config file holds any subset of the keys below; everything missing takes its default. Unknown
sections or keys, and values of the wrong type, raise :class:`SbdiffError` naming the key.

```toml
method = "sgm"          # sgm | dsb | vsdm | sbfbsde
seed = 0
device = "cpu"

[data]
data = "checkerboard"   # built-in name or .npy/.npz/.csv path
prior = "gaussian"
n_samples = 50000       # size of a generated built-in set
normalize = true        # per-coordinate standardisation of vectors (likelihoods account for it)
image_shape = "auto"    # auto | none | CxHxW ("1x8x8"); auto: digits and rank-3/4 .npy/.npz are images
                        # (auto also applies IMAGE_DEFAULTS: batch_size 128, ema_decay 0.995, to keys left at default)
dequantize = "auto"     # images: auto (uniform when integer-valued) | uniform | none
levels = 0              # images: quantisation levels L (0: from the data; uint8 256, digits 17)
max_value = 0.0         # images: value of the top level (0: from the data; integers L-1, floats 1)

[reference]
kind = "vp"             # brownian | vp | ve | ou, plus that reference's parameters
beta_min = 0.1
beta_max = 20.0

[model]
hidden = 256
blocks = 3
time_dim = 64
t_min = 0.001
net = "auto"            # auto (unet for images, mlp for vectors) | mlp | unet
unet_channels = 32      # U-Net width at the finest resolution
unet_mult = "1,2"       # width multipliers per resolution (8x8 -> 4x4)
unet_res_blocks = 1     # residual blocks per resolution
unet_attention = false  # self-attention at the coarsest resolution
unet_dropout = 0.0

[train]
steps = 20000           # 0: no step limit (then set max_minutes)
max_minutes = 0.0       # 0: no time limit
batch_size = 512
lr = 0.001
warmup = 200
ema_decay = 0.999
grad_clip = 1.0
log_every = 100
checkpoint_every = 1000 # steps between checkpoints (0: none; one is always written at the end)
checkpoint_minutes = 10.0  # minutes between checkpoints (0: none)
max_nonfinite = 5       # NaN/inf loss or gradients: steps in a row skipped before stopping (0: stop at once)
shards = 1              # the global batch is computed as this many equal shards (DDP: a multiple of the world size)
world_size = 1          # recorded by the trainer: processes that trained the run (torchrun)
precision = "fp32"      # fp32 | bf16 (autocast of the losses' forward pass; for GPUs)
compile = false         # torch.compile the networks (needs a C++ compiler on CPU)

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

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "SampleConfig", "DSBConfig", "VSDMConfig", "SBFBSDEConfig",
           "load_config", "save_config"]


@dataclass
class DataConfig:
    data: str = "checkerboard"
    prior: str = "gaussian"
    n_samples: int = 50_000
    normalize: bool = True
    image_shape: str = "auto"
    dequantize: str = "auto"
    levels: int = 0
    max_value: float = 0.0

    def shape(self) -> tuple[int, int, int] | None:
        """The resolved image shape ``(C, H, W)``, or ``None`` for vector data."""
        if self.image_shape in ("none", "auto"):
            return None
        return tuple(int(v) for v in self.image_shape.split("x"))


@dataclass
class ModelConfig:
    hidden: int = 256
    blocks: int = 3
    time_dim: int = 64
    t_min: float = 1e-3
    net: str = "auto"
    unet_channels: int = 32
    unet_mult: str = "1,2"
    unet_res_blocks: int = 1
    unet_attention: bool = False
    unet_dropout: float = 0.0

    def mult(self) -> tuple[int, ...]:
        """``unet_mult`` as a tuple of ints."""
        return tuple(int(v) for v in self.unet_mult.split(","))


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
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 10.0
    max_nonfinite: int = 5
    shards: int = 1
    world_size: int = 1
    precision: str = "fp32"
    compile: bool = False


@dataclass
class SampleConfig:
    nfe: int = 500
    ode_solver: str = "heun"


@dataclass
class DSBConfig:
    """Settings of ``method = "dsb"`` (DESIGN §4.2; De Bortoli et al. 2021, Alg. 1)."""

    iterations: int = 6          # IPF iterations (each: one decoder and one encoder half-bridge); 0: until the budget ends
    half_steps: int = 5000       # optimiser steps per half-bridge (6 x 5000: 55k steps, ~9 min on 2 cores at d = 16)
    first_steps: int = 0         # steps of the first decoder half-bridge (iteration 0, the reference's reversal); 0: half_steps
    num_steps: int = 50          # discretisation steps N of the chains (20 -> 50: C_sigma err 9.6 -> 6.2 % on the d = 5 Gaussian bridge)
    schedule: str = "symmetric"  # symmetric (small steps at both ends) | uniform
    gamma_ratio: float = 0.1     # symmetric: smallest / largest step
    cache_size: int = 10000      # trajectories held in the cache
    cache_refresh: int = 1000    # optimiser steps between cache refreshes (0: once per half-bridge)
    lr_final: float = 0.05       # the learning rate decays (cosine) to lr_final * train.lr over each half-bridge


@dataclass
class VSDMConfig:
    """Settings of ``method = "vsdm"`` (DESIGN §4.4; Deng et al. 2024; docs/vsdm.md).

    The encoder ``dX = −½β(t) D_t X dt + √β(t) dW`` starts at ``D = I`` (the VP reference: the first
    ``warmup`` steps are SGM) and is updated every ``interval`` decoder steps by one stochastic-
    approximation step ``θ ← θ − η_n ∇J(θ)`` with ``η_n = sa_lr·n^(−sa_decay)`` on the encoder-side loss
    ``J`` of DESIGN §2 evaluated on ``paths`` decoder trajectories.
    """

    encoder: str = "auto"        # auto (diagonal for images, full for vectors) | full (D = exp(S), S symmetric) | diagonal | isotropic (D = e^s I)
    time_varying: bool = False   # D_t = I − c(t)(I − D), c(t) = exp(MLP(t)) (the reference code's A_t = A·exp(MLP(t)))
    warmup: int = 1000           # decoder steps before the first encoder update
    interval: int = 500          # decoder steps between encoder updates
    freeze: int = 0              # step from which the encoder stays fixed (0: never)
    sa_lr: float = 0.5           # first step size η_1 of η_n = sa_lr·n^(−sa_decay), n = 1, 2, … the update count
    sa_decay: float = 0.6        # 0 (constant) or in (0.5, 1] (Robbins–Monro: Σ η_n = ∞, Σ η_n² < ∞)
    sa_iters: int = 1            # gradient steps per update on the same decoder paths
    interact: float = 0.75       # ζ, weight of the divergence term of J (reference code's interact_coef; 1: DESIGN §2 exactly)
    paths: int = 256             # decoder trajectories per update, started from the reference prior N(0, I)
    path_steps: int = 100        # stochastic-Heun steps of those trajectories
    hidden: int = 32             # width of c(t)'s MLP (time_varying)


@dataclass
class SBFBSDEConfig:
    """Settings of ``method = "sbfbsde"`` (DESIGN §4.3; Chen, Liu, Theodorou 2022; docs/presets.md)."""

    schedule: str = "alternating"  # alternating (half-bridges, SB-FBSDE eqs. 18-19) | joint (eq. 16; Gaussian prior only)
    iterations: int = 0          # decoder phases (IPF iterations); 0: alternate until the budget ends
    half_steps: int = 2000       # optimiser steps per phase
    first_steps: int = 0         # steps of the first decoder phase (the warm start); 0: half_steps (joint: DSM steps before it)
    encoder_steps: int = 0       # steps per encoder phase; 0: half_steps
    freeze_encoder: int = 3      # fit the encoder in this many phases only, then the decoder trains to the end; 0: never
    warm_start: str = "dsm"      # dsm (first decoder phase by DSM with the reference encoder: the SGM preset) | none
    num_steps: int = 50          # steps K of the time grid of the simulated paths
    grid: str = "auto"           # auto (uniform for bridges, quadratic for the Gaussian prior) | uniform | quadratic
    divergence: str = "auto"     # auto (exact for d <= 2, else hutchinson) | exact | hutchinson
    probes: int = 1              # Rademacher probes per point (hutchinson)
    weighting: str = "auto"      # decoder loss weight: auto (= likelihood, the ELBO's; before issue 16 noise for the Gaussian prior) | likelihood | noise (DSM's σ²/g²)
    cache_size: int = 2048       # paths in the trajectory cache
    cache_refresh: int = 250     # steps between cache refreshes; 0: once per phase
    lr_final: float = 0.1        # the learning rate decays (cosine) to lr_final * train.lr over each phase (open last phase: over half_steps, then stays)
    freeze: str = "average"      # weights a phase hands on: average (bias-corrected EMA over the phase) | last
    hidden: int = 128            # width of both MLPs (vectors); 0: model.hidden and model.blocks
    blocks: int = 2              # residual blocks of both MLPs


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
    dsb: DSBConfig = field(default_factory=DSBConfig)
    vsdm: VSDMConfig = field(default_factory=VSDMConfig)
    sbfbsde: SBFBSDEConfig = field(default_factory=SBFBSDEConfig)

    def validate(self) -> "Config":
        """Check values (not just types); resolve the reference's defaults. Returns ``self``."""
        from .methods import REGISTRY, method_class  # the one registry of methods (it imports this module)

        cls = method_class(self.method)
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise SbdiffError(f"unknown device '{self.device}'; choose cpu, cuda or auto")
        if self.data.prior != "gaussian" and not cls.bridges:
            bridges = ", ".join(name for name, c in REGISTRY.items() if c.bridges)
            raise SbdiffError(f"method '{self.method}' maps data to the Gaussian prior only; a data set as the prior "
                              f"('{self.data.prior}') needs a bridge method ({bridges})")
        params = dict(self.reference)
        kind = params.pop("kind", "vp")
        ref = make_reference(kind, **params)
        self.reference = {"kind": kind, **ref.params()}
        t = self.train
        for name in ("batch_size", "log_every"):
            if getattr(t, name) < 1:
                raise SbdiffError(f"train.{name} must be at least 1, got {getattr(t, name)}")
        for name in ("steps", "warmup", "checkpoint_every", "max_nonfinite"):
            if getattr(t, name) < 0:
                raise SbdiffError(f"train.{name} must be >= 0, got {getattr(t, name)}")
        if not (t.max_minutes >= 0 and math.isfinite(t.max_minutes)):
            raise SbdiffError(f"train.max_minutes must be a finite number >= 0, got {t.max_minutes}")
        if t.shards < 1 or t.world_size < 1 or t.batch_size % t.shards:
            raise SbdiffError(f"train.shards ({t.shards}) and train.world_size ({t.world_size}) must be >= 1 "
                              f"and train.batch_size ({t.batch_size}) a multiple of train.shards")
        if t.precision not in ("fp32", "bf16"):
            raise SbdiffError(f"train.precision must be fp32 or bf16, got '{t.precision}'")
        if not (t.checkpoint_minutes >= 0 and math.isfinite(t.checkpoint_minutes)):
            raise SbdiffError(f"train.checkpoint_minutes must be a finite number >= 0, got {t.checkpoint_minutes}")
        if t.steps == 0 and t.max_minutes == 0 and not cls.schedule_ends(self):
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
        _resolve_images(self)
        _validate_dsb(self.dsb)
        for key, value in cls.defaults.items():  # keys still at the generic default
            section, name = key.split(".")
            sec = getattr(self, section)
            if getattr(sec, name) == getattr(type(sec)(), name):
                setattr(sec, name, value)
        _validate_vsdm(self)
        _validate_sbfbsde(self)
        if self.data.n_samples < 2:
            raise SbdiffError(f"data.n_samples must be at least 2, got {self.data.n_samples}")
        if self.sample.nfe < 1:
            raise SbdiffError(f"sample.nfe must be at least 1, got {self.sample.nfe}")
        if self.sample.ode_solver not in ("euler", "heun", "dopri5"):
            raise SbdiffError(f"sample.ode_solver must be euler, heun or dopri5, got '{self.sample.ode_solver}'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Defaults that differ for images: applied when ``data.image_shape = "auto"`` resolves to an image
# and the key still holds its generic default (an explicit ``data.image_shape`` applies none). A
# U-Net step costs ~10x an MLP step on CPU: smaller batches buy more steps for the same time, and a
# shorter EMA horizon (~200 steps) forgets the zero-output initial network within a short budget.
IMAGE_DEFAULTS = {"train.batch_size": 128, "train.ema_decay": 0.995,
                  # VSDM's encoder update simulates U-Net paths: 128 x 50 Heun steps (~6 % of the time)
                  "vsdm.paths": 128, "vsdm.path_steps": 50}




def _resolve_images(cfg: "Config") -> None:
    """Validate the image keys and resolve ``auto`` values from the data source (``data.image_info``)."""
    from .data import BUILTIN, ImageInfo, image_info

    d, m = cfg.data, cfg.model
    if d.dequantize not in ("auto", "uniform", "none"):
        raise SbdiffError(f"data.dequantize must be auto, uniform or none, got '{d.dequantize}'")
    if d.levels < 0 or d.levels == 1:
        raise SbdiffError(f"data.levels must be 0 (from the data) or at least 2, got {d.levels}")
    if not (d.max_value >= 0 and math.isfinite(d.max_value)):
        raise SbdiffError(f"data.max_value must be a finite number >= 0 (0: from the data), got {d.max_value}")
    if m.net not in ("auto", "mlp", "unet"):
        raise SbdiffError(f"model.net must be auto, mlp or unet, got '{m.net}'")
    try:
        mult = m.mult()
    except ValueError:
        mult = ()
    if not mult or min(mult) < 1:
        raise SbdiffError(f"model.unet_mult must be comma-separated positive integers like \"1,2\", got '{m.unet_mult}'")
    if m.unet_channels < 1 or m.unet_res_blocks < 1 or not 0 <= m.unet_dropout < 1:
        raise SbdiffError("model.unet_channels >= 1, model.unet_res_blocks >= 1 and 0 <= model.unet_dropout < 1 "
                          "are required")
    info = None
    if d.image_shape == "auto":
        # a missing file is reported by load_data when training; a saved run whose data file is gone
        # predates images (its config would say image_shape otherwise): vectors
        missing = d.data not in BUILTIN and not Path(d.data).is_file()
        info = ImageInfo(None) if missing else image_info(d.data)
        d.image_shape = "none" if info.image_shape is None else "x".join(map(str, info.image_shape))
        if info.image_shape is not None:  # image defaults for keys still at their generic default
            for key, value in IMAGE_DEFAULTS.items():
                section, name = key.split(".")
                sec = getattr(cfg, section)
                if getattr(sec, name) == getattr(type(sec)(), name):
                    setattr(sec, name, value)
    elif d.image_shape != "none":
        try:
            shape = tuple(int(v) for v in d.image_shape.split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise SbdiffError(f"data.image_shape must be auto, none or CxHxW like \"1x8x8\", got '{d.image_shape}'")
    if d.image_shape == "none":
        if d.dequantize == "uniform":
            raise SbdiffError("data.dequantize = uniform applies to image data; this data is vectors "
                              "(data.image_shape = none)")
        if m.net == "unet":
            raise SbdiffError("model.net = unet needs image data (set data.image_shape = \"CxHxW\")")
        d.dequantize = "none"
        return
    if d.dequantize == "none" and d.max_value > 0:
        return
    if d.dequantize == "uniform" and d.levels >= 2 and d.max_value > 0:
        return
    if info is None or info.image_shape is None:
        info = image_info(d.data)
    if d.dequantize == "auto":
        d.dequantize = "uniform" if (d.levels or info.levels) else "none"
    if d.dequantize == "uniform" and d.levels == 0:
        if not info.levels:
            raise SbdiffError(f"data.dequantize = uniform: {d.data} is not integer-valued; set data.levels")
        d.levels = info.levels
    if d.max_value == 0:
        d.max_value = info.max_value if (info.levels == d.levels or d.dequantize == "none") else float(d.levels - 1)


def _validate_dsb(d: DSBConfig) -> None:
    for name in ("iterations", "first_steps", "cache_refresh"):
        if getattr(d, name) < 0:
            raise SbdiffError(f"dsb.{name} must be >= 0, got {getattr(d, name)}")
    for name in ("half_steps", "num_steps", "cache_size"):
        if getattr(d, name) < 1:
            raise SbdiffError(f"dsb.{name} must be at least 1, got {getattr(d, name)}")
    if d.schedule not in ("symmetric", "uniform"):
        raise SbdiffError(f"dsb.schedule must be symmetric or uniform, got '{d.schedule}'")
    if not 0 <= d.lr_final <= 1:
        raise SbdiffError(f"dsb.lr_final must lie in [0, 1], got {d.lr_final}")
    if not 0 < d.gamma_ratio <= 1:
        raise SbdiffError(f"dsb.gamma_ratio must lie in (0, 1], got {d.gamma_ratio}")


def _validate_vsdm(cfg: "Config") -> None:
    """Check ``[vsdm]`` and resolve ``encoder = "auto"`` (after the image keys are resolved)."""
    v = cfg.vsdm
    if v.encoder not in ("auto", "full", "diagonal", "isotropic"):
        raise SbdiffError(f"vsdm.encoder must be auto, full, diagonal or isotropic, got '{v.encoder}'")
    if v.encoder == "auto":
        v.encoder = "diagonal" if cfg.data.image_shape != "none" else "full"
    for name in ("warmup", "freeze"):
        if getattr(v, name) < 0:
            raise SbdiffError(f"vsdm.{name} must be >= 0, got {getattr(v, name)}")
    for name in ("interval", "sa_iters", "paths", "path_steps", "hidden"):
        if getattr(v, name) < 1:
            raise SbdiffError(f"vsdm.{name} must be at least 1, got {getattr(v, name)}")
    if not (v.sa_lr > 0 and math.isfinite(v.sa_lr)):
        raise SbdiffError(f"vsdm.sa_lr must be a finite positive number, got {v.sa_lr}")
    if not (v.sa_decay == 0 or 0.5 < v.sa_decay <= 1):
        raise SbdiffError(f"vsdm.sa_decay must be 0 (constant step size) or lie in (0.5, 1] (Robbins–Monro), "
                          f"got {v.sa_decay}")
    if not 0 <= v.interact <= 1:
        raise SbdiffError(f"vsdm.interact (zeta) must lie in [0, 1], got {v.interact}")
    if cfg.method == "vsdm" and cfg.reference.get("kind") != "vp":
        raise SbdiffError(f"method vsdm needs the VP reference (its encoder is dX = -1/2 beta(t) D_t X dt + "
                          f"sqrt(beta(t)) dW with the VP beta), got reference.kind = '{cfg.reference.get('kind')}'")


def _validate_sbfbsde(cfg: "Config") -> None:
    """Check ``[sbfbsde]`` (see :class:`SBFBSDEConfig`)."""
    s = cfg.sbfbsde
    choices = {"schedule": ("alternating", "joint"), "warm_start": ("dsm", "none"),
               "grid": ("auto", "uniform", "quadratic"), "divergence": ("auto", "exact", "hutchinson"),
               "weighting": ("auto", "likelihood", "noise"), "freeze": ("average", "last")}
    for name, allowed in choices.items():
        if getattr(s, name) not in allowed:
            raise SbdiffError(f"sbfbsde.{name} must be {' or '.join(allowed)}, got '{getattr(s, name)}'")
    for name in ("iterations", "first_steps", "encoder_steps", "freeze_encoder", "cache_refresh", "hidden"):
        if getattr(s, name) < 0:
            raise SbdiffError(f"sbfbsde.{name} must be >= 0, got {getattr(s, name)}")
    for name in ("half_steps", "num_steps", "probes", "cache_size", "blocks"):
        if getattr(s, name) < 1:
            raise SbdiffError(f"sbfbsde.{name} must be at least 1, got {getattr(s, name)}")
    if s.cache_size < 3:
        raise SbdiffError(f"sbfbsde.cache_size must be at least 3 (the prior-loss estimate needs 3 paths), got {s.cache_size}")
    if not 0 < s.lr_final <= 1:
        raise SbdiffError(f"sbfbsde.lr_final must lie in (0, 1], got {s.lr_final}")
    if cfg.method == "sbfbsde" and s.schedule == "joint" and cfg.data.prior != "gaussian":
        raise SbdiffError("sbfbsde.schedule = joint needs the Gaussian prior (its loss has log p_T(X_T)); a bridge "
                          f"to a data set ('{cfg.data.prior}') needs the alternating schedule")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig,
             "dsb": DSBConfig, "vsdm": VSDMConfig, "sbfbsde": SBFBSDEConfig}


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
