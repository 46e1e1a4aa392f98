"""Run configuration: typed sections, loading from TOML with validation, and saving the resolved form.

A config file holds any subset of the keys below; everything missing takes its default. Unknown
sections or keys, and values of the wrong type, raise :class:`SbdiffError` naming the key.

```toml
method = "sgm"          # a registered preset: sgm | dsb | vsdm | sbfbsde (sbdiff.methods)
seed = 0
device = "cpu"

[data]
data = "checkerboard"   # built-in name or .npy/.npz/.csv path
prior = "gaussian"
n_samples = 50000       # size of a generated built-in set
normalize = true        # per-coordinate standardisation of vectors (likelihoods account for it);
                        # bridge mode (prior a data set): false unless set (BRIDGE_DEFAULTS)
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
net = "auto"            # auto (unet for images, mlp for vectors and series) | mlp | unet | window (series windows)
unet_channels = 32      # U-Net width at the finest resolution
unet_mult = "1,2"       # width multipliers per resolution (8x8 -> 4x4)
unet_res_blocks = 1     # residual blocks per resolution
unet_attention = false  # self-attention at the coarsest resolution
unet_dropout = 0.0
window_channels = 64    # series: width of the window network (a 1-D CNN over time, series as channels)
window_blocks = 4       # series: dilated residual blocks of the window network

[train]
steps = 20000           # 0: no step limit (then set max_minutes)
max_minutes = 0.0       # 0: no time limit; the alternating presets fit their phases to it (docs/presets.md)
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
phase_average = false   # presets with phases: each phase averages its network afresh (bias-corrected EMA) and hands the average on (the network takes it when frozen)

[sample]
nfe = 500
ode_solver = "heun"     # euler | heun | dopri5

[cond]                  # conditional generation (DESIGN §4.6; docs/conditioning.md); sgm, vsdm, dsbm
labels = "none"         # none | auto (the data's own: digits) | path to integer labels .npy, one per row
window = 0              # series: train on sliding windows of L rows of data.data (0: not a series)
horizon = 0             # series: the last H rows of a window are generated, the first L - H are the context
scaling = "mean"        # series: mean (each window / the mean |value| of its own history, per series) | standard
anchor = "none"         # series: none | last (generate the change from the history's last row: random-walk-like series)
p_uncond = 0.1          # classifier-free guidance: probability of dropping the context in training
kind = "none"           # resolved when training: none | label | vector
size = 0                # resolved: number of classes K (labels) or context width (L - H)·d (series)

[log]                   # watching a run (docs/monitoring.md); free to change at a resume
tensorboard = false     # also write metrics.jsonl's rows and, at checkpoints, a sample plot as TensorBoard
                        # events in the run directory (needs: pip install 'sbdiff[tensorboard]')
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
from .registry import REGISTRY, method_class

__all__ = ["Config", "Section", "DataConfig", "ModelConfig", "TrainConfig", "SampleConfig", "CondConfig",
           "LogConfig", "IMAGE_DEFAULTS",
           "preset_sections", "set_resolved", "load_config", "save_config"]


class Section:
    """Base of a config section (a dataclass): remembers which keys the user set.

    A key is *explicit* when it was assigned after construction (a TOML file, a CLI flag, code), or
    given to the constructor with a value other than its default. :meth:`Config.validate` resolves
    every other key in layers, generic default -> the method's default -> the image default, so an
    explicit value always wins, even one equal to the generic default. The resolver writes with
    :func:`set_resolved`, which does not mark the key explicit.
    """

    def __post_init__(self):
        explicit = {f.name for f in fields(self) if getattr(self, f.name) != _generic_default(self, f.name)}
        object.__setattr__(self, "_explicit", explicit)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        explicit = self.__dict__.get("_explicit")
        if explicit is not None:
            explicit.add(name)

    def explicit(self) -> frozenset[str]:
        """Names of the keys set by the user (see the class docstring)."""
        return frozenset(self.__dict__.get("_explicit", ()))


def set_resolved(section: Section, name: str, value: Any) -> None:
    """Write a resolved value (a default layer, an ``auto`` choice): the key is the resolver's, not
    the user's (an explicit ``"auto"`` becomes an unset key holding what it resolved to)."""
    object.__setattr__(section, name, value)
    section.__dict__.get("_explicit", set()).discard(name)


def _generic_default(section: Section, name: str) -> Any:
    f = {f.name: f for f in fields(section)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@dataclass
class DataConfig(Section):
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
class ModelConfig(Section):
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
    window_channels: int = 64
    window_blocks: int = 4

    def mult(self) -> tuple[int, ...]:
        """``unet_mult`` as a tuple of ints."""
        return tuple(int(v) for v in self.unet_mult.split(","))


@dataclass
class TrainConfig(Section):
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
    phase_average: bool = False


@dataclass
class SampleConfig(Section):
    nfe: int = 500
    ode_solver: str = "heun"


@dataclass
class CondConfig(Section):
    labels: str = "none"
    window: int = 0
    horizon: int = 0
    scaling: str = "mean"
    anchor: str = "none"
    p_uncond: float = 0.1
    kind: str = "none"
    size: int = 0

    @property
    def requested(self) -> bool:
        """True when the config asks for a conditional model (labels or series windows)."""
        return self.labels != "none" or self.window > 0

    def context(self) -> tuple[str, int] | None:
        """The resolved context ``(kind, size)`` of the networks and the model, or ``None``."""
        return None if self.kind == "none" else (self.kind, self.size)


@dataclass
class LogConfig(Section):
    """How a run can be watched while it trains (never what it computes: every key may change at a
    resume, :data:`sbdiff.train.FREE_KEYS`).

    Attributes
    ----------
    tensorboard : bool
        Write every ``metrics.jsonl`` row (each numeric key a scalar, tagged by the key, at the row's
        ``step``) and, at each checkpoint, a plot of samples of the EMA model as TensorBoard events in
        the run directory (:mod:`sbdiff.monitoring`; ``tensorboard --logdir runs/``). Needs the
        optional ``tensorboard`` package (``pip install 'sbdiff[tensorboard]'``).
    """

    tensorboard: bool = False


#: The sections every config has; each registered preset adds its own (``preset_sections``).
_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig,
             "cond": CondConfig, "log": LogConfig}


def preset_sections() -> dict[str, type]:
    """``{method name: settings dataclass}`` of the registered presets that have settings (the
    ``[dsb]``, ``[vsdm]``, … sections; a preset's ``settings`` attribute)."""
    return {name: cls.settings for name, cls in REGISTRY.items() if getattr(cls, "settings", None) is not None}


@dataclass(eq=False)
class Config:
    """A run's configuration: the generic sections as fields, plus one section per registered
    preset with settings, reached as an attribute of the preset's name (``config.dsb``)."""

    method: str = "sgm"
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    reference: dict = field(default_factory=lambda: {"kind": "vp"})
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    cond: CondConfig = field(default_factory=CondConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        object.__setattr__(self, "_presets", {})

    def __getattr__(self, name: str) -> Any:  # only reached when normal lookup fails: preset sections
        if name.startswith("_"):
            raise AttributeError(name)
        presets = self.__dict__.get("_presets")
        if presets is not None and name in presets:  # the common case, read every step by the presets
            return presets[name]
        cls = preset_sections().get(name)
        if cls is None or presets is None:
            raise AttributeError(f"'Config' has no attribute '{name}'")
        if name not in presets:
            presets[name] = cls()
        return presets[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in preset_sections() and "_presets" in self.__dict__:
            self.__dict__["_presets"][name] = value
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def validate(self, *, defaults_of: str | None = None) -> "Config":
        """Check values (not just types) and resolve what is left open. Returns ``self``.

        Resolution, in one place and in this order (later layers win): every key a default layer
        may set and the user did not (:class:`Section`) takes its generic default, then the method's
        ``defaults``, then, when ``data.image_shape = "auto"`` resolves to an image,
        :data:`IMAGE_DEFAULTS` and each preset's ``image_defaults``; the user's explicit keys are
        never touched, and ``auto`` values resolved before stay resolved (no second read of the data); in
        bridge mode (``data.prior`` a data set) :data:`BRIDGE_DEFAULTS` come last, and in a series run
        (``cond.window > 0``) :data:`SERIES_DEFAULTS`. ``auto`` values
        (image keys, a preset's own) are resolved, and each registered preset checks its section
        (``check``). ``defaults_of`` takes another preset's defaults than ``self.method``'s (the
        benchmark's peer solvers borrow the bridge presets' network and EMA).
        """
        cls = method_class(self.method)
        layer_cls = method_class(defaults_of) if defaults_of is not None else cls
        for key in _layer_keys():  # a config validated before (e.g. under another method) resolves afresh
            section, name = key.split(".")
            sec = getattr(self, section)
            if name not in sec.explicit():
                set_resolved(sec, name, _generic_default(sec, name))
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
        layers = dict(layer_cls.defaults)
        _resolve_images(self)
        if self.data.image_shape != "none" and "image_shape" not in self.data.explicit():  # auto: an image
            layers.update(IMAGE_DEFAULTS)
            layers.update(_preset_image_defaults())
        if self.data.prior != "gaussian":
            layers.update(BRIDGE_DEFAULTS)
        if self.cond.window > 0:
            layers.update(SERIES_DEFAULTS)
        for key, value in layers.items():
            section, name = key.split(".")
            sec = getattr(self, section)
            if name not in sec.explicit():
                set_resolved(sec, name, value)
        for preset in REGISTRY.values():
            preset.check(self)
        self._check_generic(cls, ref)
        return self

    def _check_generic(self, cls, ref) -> None:
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
        if self.data.n_samples < 2:
            raise SbdiffError(f"data.n_samples must be at least 2, got {self.data.n_samples}")
        if self.sample.nfe < 1:
            raise SbdiffError(f"sample.nfe must be at least 1, got {self.sample.nfe}")
        if self.sample.ode_solver not in ("euler", "heun", "dopri5"):
            raise SbdiffError(f"sample.ode_solver must be euler, heun or dopri5, got '{self.sample.ode_solver}'")
        self._check_cond(cls)

    def _check_cond(self, cls) -> None:
        c = self.cond
        if c.labels != "none" and c.window > 0:
            raise SbdiffError("cond.labels and cond.window exclude each other: a run is conditioned on labels or "
                              "on a series' history")
        if c.window < 0 or c.horizon < 0:
            raise SbdiffError(f"--window and --horizon must be >= 0, got L = {c.window}, H = {c.horizon}")
        if c.window > 0 or c.horizon > 0:
            if c.horizon < 1:
                raise SbdiffError(f"a series run needs --horizon H >= 1 (the steps to forecast), got H = {c.horizon}")
            if c.window <= c.horizon:
                raise SbdiffError(f"the horizon H = {c.horizon} must be less than the window L = {c.window} "
                                  "(a window is L - H observed steps followed by H generated ones)")
        if c.scaling not in ("mean", "standard"):
            raise SbdiffError(f"cond.scaling must be mean or standard, got '{c.scaling}'")
        if c.anchor not in ("none", "last"):
            raise SbdiffError(f"cond.anchor must be none or last, got '{c.anchor}'")
        if self.model.net == "window" and c.window < 1:
            raise SbdiffError("model.net = window is the network of series windows: it needs --window L --horizon H")
        if not 0 <= c.p_uncond <= 1:
            raise SbdiffError(f"cond.p_uncond must lie in [0, 1], got {c.p_uncond}")
        if c.kind not in ("none", "label", "vector") or (c.kind != "none" and c.size < 1):
            raise SbdiffError(f"cond.kind must be none, label or vector with cond.size >= 1, got {c.kind!r}, {c.size}")
        if (c.requested or c.kind != "none") and not getattr(cls, "conditional", False):
            names = ", ".join(name for name, k in REGISTRY.items() if getattr(k, "conditional", False))
            raise SbdiffError(f"method '{self.method}' does not generate under a context (cond); conditional "
                              f"generation is supported by {names}")
        if (c.requested or c.kind != "none") and self.data.prior != "gaussian":
            raise SbdiffError("conditional generation needs the Gaussian prior (no --prior data set)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update({name: dataclasses.asdict(getattr(self, name)) for name in preset_sections()})
        return d


# Defaults that differ for images: applied when ``data.image_shape = "auto"`` resolves to an image,
# to keys the user left unset (an explicit ``data.image_shape`` applies none; a preset adds its own
# section's image defaults as ``image_defaults``). A U-Net step costs ~10x an MLP step on CPU:
# smaller batches buy more steps for the same time, and a shorter EMA horizon (~200 steps) forgets
# the zero-output initial network within a short budget.
IMAGE_DEFAULTS = {"train.batch_size": 128, "train.ema_decay": 0.995}
#: Defaults of bridge mode (``data.prior`` a data set). No per-coordinate standardisation: the
#: bridge's problem is posed in the data's own coordinates (with ``brownian(eps)``, entropic OT with
#: cost ``½‖x − y‖²`` and weight ``eps``, DESIGN §1), which a per-coordinate rescaling would change.
BRIDGE_DEFAULTS = {"data.normalize": False}
#: Defaults of a series run (``cond.window > 0``). A forecaster trained on a short series sees few
#: windows (``macrodata``: 130), and a diffusion model trained long memorises them: its forecasts then
#: collapse onto training futures and their intervals cover too little. 500 steps is the budget chosen
#: on ``macrodata``'s validation windows (docs/conditioning.md, "Training length of a series run":
#: validation CRPS 0.74–0.76 and 90 % coverage 0.97 at 500 steps; 0.91 and 0.41 at 2000; 0.95–0.98
#: and 0.30–0.34 on the test windows after 3 minutes, ~4500 steps). A longer series can take more:
#: set ``train.steps`` and compare the validation scores.
#: VSDM's encoder starts updating at step ``vsdm.warmup`` (1000 by default, past the whole run): here
#: after 200 steps, then every 100, so that a series run of vsdm learns its linear encoder.
SERIES_DEFAULTS = {"train.steps": 500, "vsdm.warmup": 200, "vsdm.interval": 100}


def _preset_image_defaults() -> dict[str, Any]:
    """Every registered preset's ``image_defaults`` as ``{"name.key": value}``."""
    return {f"{name}.{k}": v for name, preset in REGISTRY.items() for k, v in getattr(preset, "image_defaults", {}).items()}


def _layer_keys() -> set[str]:
    """The keys a default layer may set: any preset's ``defaults``, the image defaults."""
    keys = set(IMAGE_DEFAULTS) | set(BRIDGE_DEFAULTS) | set(SERIES_DEFAULTS) | set(_preset_image_defaults())
    for preset in REGISTRY.values():
        keys |= set(preset.defaults)
    return keys


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
    if m.net not in ("auto", "mlp", "unet", "window"):
        raise SbdiffError(f"model.net must be auto, mlp, unet or window, got '{m.net}'")
    if m.window_channels < 1 or m.window_blocks < 1:
        raise SbdiffError("model.window_channels >= 1 and model.window_blocks >= 1 are required")
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
        missing = cfg.cond.window > 0 or (d.data not in BUILTIN and not Path(d.data).is_file())  # series: vectors
        info = ImageInfo(None) if missing else image_info(d.data)
        set_resolved(d, "image_shape", "none" if info.image_shape is None else "x".join(map(str, info.image_shape)))
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
        set_resolved(d, "dequantize", "none")
        return
    if d.dequantize == "none" and d.max_value > 0:
        return
    if d.dequantize == "uniform" and d.levels >= 2 and d.max_value > 0:
        return
    if info is None or info.image_shape is None:
        info = image_info(d.data)
    if d.dequantize == "auto":
        set_resolved(d, "dequantize", "uniform" if (d.levels or info.levels) else "none")
    if d.dequantize == "uniform" and d.levels == 0:
        if not info.levels:
            raise SbdiffError(f"data.dequantize = uniform: {d.data} is not integer-valued; set data.levels")
        set_resolved(d, "levels", info.levels)
    if d.max_value == 0:
        set_resolved(d, "max_value", info.max_value if (info.levels == d.levels or d.dequantize == "none")
                     else float(d.levels - 1))


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
    sections = {**_SECTIONS, **preset_sections()}
    top = {f.name for f in fields(Config)} | set(sections)
    for key, value in raw.items():
        if key not in top:
            raise SbdiffError(f"unknown config key '{key}'; accepted top-level keys: {', '.join(sorted(top))}")
        if key == "reference":
            if not isinstance(value, dict):
                raise SbdiffError("config key reference must be a table")
            ref = dict(value) if "kind" in value and value["kind"] != cfg.reference.get("kind") else {**cfg.reference, **value}
            cfg.reference = ref
        elif key in sections:
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
