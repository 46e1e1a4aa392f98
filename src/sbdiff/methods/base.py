"""The interface every method implements for the shared training loop, and the model builders the
methods share (the reference from the config, the network for the data's shape, the map to model
coordinates)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import SbdiffError
from ..config import Config
from ..data import ImageScaling, Standardizer
from ..model import PathVAE
from ..nets import TimeMLP, UNet, WindowNet
from ..objectives import gaussian_kl_estimate
from ..references import make_reference
from ..registry import register

__all__ = ["Method", "PlanWindow", "register", "build_network", "check_flat", "data_scaling"]


def check_flat(data: np.ndarray) -> int:
    """The dimension ``d`` of flat data ``(N, d)``; any other rank is refused."""
    if data.ndim != 2:
        raise SbdiffError(f"expected flat data of shape (N, d), got {data.shape} (images are flattened "
                          "by sbdiff.data.load_data; set data.image_shape to rebuild them)")
    return data.shape[1]


def network_kind(config: Config) -> str:
    """The network ``model.net`` names, ``auto`` resolved: ``unet`` for images, ``mlp`` for vectors and
    series windows alike. The window network (``window``, :class:`~sbdiff.nets.WindowNet`) is chosen by
    name: on ``exchange_rate_nips`` (a 30-day history of 8 series, 240 numbers) the flat MLP forecast
    better within 4 CPU-minutes (docs/conditioning.md, "Networks"; docs/results.md#forecasting); on
    ``macrodata`` the two were not compared."""
    if config.model.net != "auto":
        return config.model.net
    return "unet" if config.data.shape() is not None else "mlp"


def build_network(config: Config, dim: int, T: float) -> torch.nn.Module:
    """The network chosen by :func:`network_kind`: a :class:`~sbdiff.nets.UNet` for images
    (``data.image_shape`` resolved to ``C×H×W``), a :class:`~sbdiff.nets.WindowNet` for series windows
    (``cond.window = L``, ``cond.horizon = H``: a 1-D CNN over time with the series as channels), a
    :class:`~sbdiff.nets.TimeMLP` for vectors. All map ``(B, dim)`` to ``(B, dim)``; a conditional
    config (``cond.kind``, DESIGN §4.6) gives them the context's embedding (``forward(x, t, c)``)."""
    m, shape = config.model, config.data.shape()
    kind = network_kind(config)
    if kind == "window":
        c = config.cond
        if c.window < 1 or dim % c.horizon:
            raise SbdiffError(f"model.net = window needs series windows (--window L --horizon H) with H = {c.horizon} "
                              f"dividing the dimension {dim}")
        return WindowNet(c.horizon, c.window - c.horizon, dim // c.horizon, m.window_channels, m.window_blocks,
                         m.time_dim, T, context=c.context())
    if kind == "unet":
        if shape is None:
            raise SbdiffError("model.net = unet needs image data (data.image_shape = CxHxW)")
        if shape[0] * shape[1] * shape[2] != dim:
            raise SbdiffError(f"data.image_shape {config.data.image_shape} does not match the data's dimension {dim}")
        return UNet(shape, m.unet_channels, m.mult(), m.unet_res_blocks, m.unet_attention, m.time_dim, T,
                    m.unet_dropout, context=config.cond.context())
    return TimeMLP(dim, m.hidden, m.blocks, m.time_dim, T, context=config.cond.context())


def data_scaling(config: Config, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, scale, Δ)`` of the map to model coordinates: per-coordinate standardisation for
    vectors (``data.normalize``), one scalar affine map onto ``[−1, 1]`` for images with the
    dequantisation width ``Δ`` (:class:`~sbdiff.data.ImageScaling`; ``Δ = 0``: no dequantisation)."""
    d = config.data
    dim = data.shape[1]
    shape = d.shape()
    if shape is None:
        std = Standardizer.fit(data, d.normalize)
        return std.mean, std.scale, 0.0
    if shape[0] * shape[1] * shape[2] != dim:
        raise SbdiffError(f"data.image_shape {d.image_shape} does not match the data's dimension {dim}")
    scaling = ImageScaling(d.levels if d.dequantize == "uniform" else 0, d.max_value)
    return np.full(dim, scaling.center), np.full(dim, scaling.scale), scaling.step


class PlanWindow(NamedTuple):
    """Where the trainer times a run to fit a method's schedule to ``train.max_minutes``
    (:meth:`Method.plan_window`): from step ``start`` (the first step whose cost stands for the rest
    of the schedule) over a whole number of ``every`` steps (a cycle of the method's periodic costs,
    e.g. its cache refreshes), and :meth:`Method.plan_budget` called by step count ``last``: at the
    latest, or exactly there when ``early`` is false."""

    start: int
    every: int
    last: int
    early: bool = True


class Method:
    """A preset of the path-VAE trainer: builds the model and supplies its losses.

    A preset is one module: its subclass, registered with ``@register("name")``
    (:mod:`sbdiff.registry`), describes itself through the class attributes below (its settings
    section, defaults, checks and a smoke setting for the infrastructure tests), implements
    :meth:`build` (usually through :meth:`assemble`) and :meth:`losses`, and overrides the loop's
    hooks it needs (docs/presets.md, "Adding a preset").
    """

    name = "method"
    #: The settings dataclass of the preset's own config section ``[name]`` (a
    #: :class:`~sbdiff.config.Section` subclass), or ``None`` for a preset without settings.
    settings: type | None = None
    #: Image defaults of the preset's own section, ``{"key": value}`` (applied, like
    #: :data:`~sbdiff.config.IMAGE_DEFAULTS`, when ``data.image_shape = "auto"`` resolves to an image).
    image_defaults: dict = {}
    #: A small setting, as TOML text appended to the infrastructure tests' config (2-D data, hidden
    #: 32, 12 steps of batch 64): a schedule that switches phase (or updates the encoder) within the
    #: 12 steps, with small caches, so that stop-and-resume, the non-finite guard and DDP are tested
    #: on every branch of the preset.
    smoke: str = ""
    #: True for methods that bridge two data sets (``data`` at t = 0, a second data set as the prior
    #: at t = T, ``decode`` samples the learned conditional plan); the benchmark harness
    #: (:mod:`sbdiff.bench.runner`) scores such methods on the conditional plan (cBW2-UVP).
    bridges = False
    #: Set True when some trainable parameters get no gradient in a step (e.g. an alternating
    #: schedule that trains one network at a time under ``torch.no_grad`` for the other); DDP then
    #: looks for unused parameters. Do not toggle ``requires_grad`` during training: DDP fixes the
    #: set of reduced parameters when it wraps the model.
    ddp_find_unused_parameters = False
    #: Config defaults of this method, ``{"section.key": value}``, applied by
    #: :meth:`~sbdiff.config.Config.validate` to keys the user did not set.
    defaults: dict = {}
    #: True for presets that train a conditional model (DESIGN §4.6): their :meth:`losses` take the
    #: batch's ``context`` and pass it to the controls; the config refuses ``[cond]`` for the others.
    conditional = False

    def __init__(self, config: Config):
        self.config = config
        #: the training contexts in model form (``(N,)`` labels or ``(N, k)`` values; set by the trainer
        #: for a conditional run), for presets that simulate the decoder from the prior (VSDM)
        self.context_pool: Tensor | None = None
        #: the prior data set's Gaussian fit ``(mean (d,), cov (d, d))`` in model coordinates, float64
        #: (bridge mode; set by :meth:`assemble`); ``None``: the reference prior ``N(0, prior_var·I)``
        self.prior_moments: tuple[Tensor, Tensor] | None = None

    @classmethod
    def check(cls, config: Config) -> None:
        """Check the preset's section of ``config`` (called for every registered preset by
        :meth:`~sbdiff.config.Config.validate`, after the defaults are resolved); resolve its ``auto``
        values with :func:`~sbdiff.config.set_resolved`; raise :class:`~sbdiff.SbdiffError` naming
        the key. Rules that apply only when this preset trains test ``config.method == cls.name``."""

    def assemble(self, encoder, decoder, data: np.ndarray, prior: np.ndarray | None = None, *,
                 t_min: float | None = None, sde_grid: Tensor | None = None) -> PathVAE:
        """The :class:`~sbdiff.model.PathVAE` of ``encoder`` and ``decoder`` for data ``(N, d)`` in data
        coordinates: the map to model coordinates (:func:`data_scaling`), the image shape and
        dequantisation of the config, ``t_min`` (default ``model.t_min``), the prior data set
        ``(M, d)`` of bridge mode and the SDEs' fixed time grid ``sde_grid`` (``(K+1,)``, or ``None``)."""
        cfg = self.config
        mean, scale, step = data_scaling(cfg, data)
        model = PathVAE(encoder, decoder, check_flat(data), cfg.model.t_min if t_min is None else t_min,
                        torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32),
                        image_shape=cfg.data.shape(), dequant_step=step, prior_data=prior, sde_grid=sde_grid,
                        context=cfg.cond.context())
        self.prior_moments = None
        if prior is not None and len(prior):
            p = model.to_model(torch.as_tensor(prior, dtype=torch.float32)).double()
            d = p.shape[1]
            eye = torch.eye(d, dtype=torch.float64)
            cov = torch.cov(p.T).reshape(d, d) if len(p) > 1 else eye
            self.prior_moments = (p.mean(0), cov + 1e-9 * eye * torch.diagonal(cov).mean().clamp_min(1e-12))
        return model

    def prior_kl(self, model: PathVAE, x_T: Tensor) -> Tensor:
        """The prior-loss monitor of every preset: ``KL(q_T ‖ prior)`` for the law of the encoder's
        terminal samples ``x_T`` ``(n, d)``, by :func:`~sbdiff.objectives.gaussian_kl_estimate`
        (Gaussian moments, free of the plug-in bias; a lower bound of the KL against a Gaussian prior,
        exact when ``q_T`` is Gaussian). The prior is ``N(0, prior_var·I)`` of the reference, or the
        Gaussian fit of the prior data set (bridge mode: a moment-matching proxy). Scalar, nats; NaN
        for fewer than 3 samples."""
        if x_T.shape[0] < 3:
            return torch.tensor(float("nan"))
        if self.prior_moments is not None:
            mean, cov = (v.to(x_T.device) for v in self.prior_moments)
            return gaussian_kl_estimate(x_T, mean, cov)
        return gaussian_kl_estimate(x_T, prior_var=model.reference.prior_var())

    @classmethod
    def schedule_ends(cls, config: Config) -> bool:
        """True when the method's own schedule ends training (:meth:`max_steps` not ``None``), so that
        neither ``train.steps`` nor ``train.max_minutes`` is needed."""
        return False

    def make_reference(self):
        """The reference SDE named by ``config.reference`` (:func:`sbdiff.references.make_reference`)."""
        params = dict(self.config.reference)
        return make_reference(params.pop("kind"), **params)

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        """A fresh model for data of shape ``(N, d)`` (data coordinates; used for the standardisation).

        ``prior``: bridge mode (``data.prior`` a data set; :data:`~sbdiff.config.BRIDGE_METHODS`), the
        prior-side samples ``(M, d)`` in data coordinates, kept as ``PathVAE.prior_data``."""
        raise NotImplementedError

    # -- hooks of the training loop (defaults: a stateless method with one optimiser) --------------
    def begin_step(self, model: PathVAE, step: int) -> None:
        """Called before optimiser step ``step`` (0-based, the count of steps done), on every rank,
        outside autograd: switch half-bridges, refresh trajectory caches, update parameters that are
        not optimised by the loop's optimiser (the trainer then mirrors them into the EMA). Randomness
        must come from generators seeded by ``(config.seed, step, …)``
        (:func:`sbdiff.distributed.step_generator` with streams ``>= 1000``), so that a resumed run
        repeats it."""

    def max_steps(self) -> int | None:
        """Steps after which the method's own schedule is complete (``None``: no limit); training
        stops at the smaller of this and ``train.steps``."""
        return None

    def plan_window(self, step: int) -> PlanWindow | None:
        """Where to time the run before fitting the schedule to a time budget, for a session that
        starts at step ``step`` (:class:`PlanWindow`); ``None`` (the default): the method has no
        schedule to fit, or ``step`` is at or past the window's end."""
        return None

    def replan_window(self, step: int, planned_at: int) -> PlanWindow | None:
        """Where to time the run again for a further fit of the schedule to the time budget, after a
        plan made at step ``planned_at`` (:class:`PlanWindow`; the trainer then calls
        :meth:`plan_budget` once more, and asks again after that plan), for a session at step
        ``step``; ``None`` (the default): no further plan."""
        return None

    def plan_budget(self, total_steps: int, step: int) -> dict | None:
        """Fit the method's schedule to ``total_steps`` steps in all (what the time budget allows,
        counted from step 0), after ``step`` steps (inside :meth:`plan_window`'s phase), and return the
        plan: a JSON-able dict that :meth:`apply_plan` restores on a resume (the trainer keeps it in the
        checkpoint), with a one-line ``summary``. ``None`` (the default): nothing planned."""
        return None

    def apply_plan(self, plan: dict) -> None:
        """Take the schedule of a plan that :meth:`plan_budget` returned (a resume)."""

    def lr_factor(self, step: int) -> float:
        """Factor on ``train.lr`` at step ``step`` (after the warm-up), e.g. a decay within each
        half-bridge; 1 by default."""
        return 1.0

    def frozen(self, step: int) -> tuple[str, ...]:
        """State-dict prefixes of the :class:`~sbdiff.model.PathVAE` (e.g. ``"encoder."``) frozen in
        step ``step``: the method's losses give them no gradient (so the optimiser keeps their
        weights and Adam state: a warm start when their turn comes) and the loop's EMA does not move
        them (their averaged weights stay the snapshot the other network trains against). The one
        freeze policy: only the trainer writes the EMA; see :meth:`set_frozen`."""
        return ()

    def set_frozen(self, frozen: PathVAE) -> None:
        """Called by the trainer before :meth:`begin_step` whenever :meth:`frozen` changes (and at the
        first step of a session) with a copy of the averaged model: the frozen prefixes' weights in it
        are the snapshot the other network trains against (simulate the frozen side from it; do not
        train it). The default ignores it."""

    def progress_info(self, step: int) -> dict[str, str]:
        """Extra fields of the progress bar at step ``step`` (e.g. the IPF phase)."""
        return {}

    def phase_name(self, step: int) -> str | None:
        """The name of the phase step ``step`` (0-based) belongs to, e.g. ``"decoder 3"`` (the network
        fitted and the iteration), or ``None`` (the default) for a method without phases.

        The trainer logs it in every ``metrics.jsonl`` row (``phase_name``) and writes a row after the
        last step of every phase (where the name of step ``k + 1`` differs from step ``k``'s), so that
        no row averages two phases; :func:`sbdiff.plots.plot_curves` draws each phase apart. Two
        phases in a row must have different names. Read-only: it must not change the method's state.
        """
        return None

    def run_warning(self, model: PathVAE, last: dict, step: int) -> str | None:
        """One line to show when training ends (``last``: the run's last ``metrics.jsonl`` row,
        ``step``: the steps taken), or ``None``: a silent failure the user should hear of (the
        alternating presets: a prior loss that never came down). The trainer prints it on stderr
        and logs it in ``metrics.jsonl`` (``warning``). The default says nothing."""
        return None

    def checkpoint_due(self, step: int) -> bool:
        """True when a checkpoint should be written after step ``step`` (e.g. the end of a
        half-bridge), besides the loop's regular cadence."""
        return False

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Losses on a batch ``(B, d)`` in model coordinates. A :attr:`conditional` preset takes the
        keyword ``context`` too (``(B,)`` or ``(B, k)``, model form, rows dropped to the null context
        with probability ``cond.p_uncond``), passed only in a conditional run.

        Returns a dict with ``loss`` (scalar, differentiated by the loop) and ``drift_matching``
        (scalar); may add ``prior_loss``.
        """
        raise NotImplementedError

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Monitor of the prior loss ``KL(q_T ‖ p_prior)`` on a batch ``(B, d)`` (scalar, nats), logged
        at log steps when the losses do not carry ``prior_loss``. The default draws the encoder's
        ``X_T`` from its closed-form transition (fixed and linear encoders) and returns the
        Gaussian-moment KL against the reference prior ``N(0, prior_var·I)``; presets with a neural
        encoder override it."""
        x_T, _, _ = model.encoder.sample_transition(batch, 0.0, model.reference.T, generator=generator)
        return self.prior_kl(model, x_T)

    def trainable(self, model: PathVAE) -> list[nn.Parameter]:
        """Parameters the optimiser updates."""
        return [p for p in model.parameters() if p.requires_grad]

    def state_dict(self) -> dict:
        """Schedule state to checkpoint (e.g. the current IPF iteration and half-bridge of an
        alternating method); nested dicts/lists of numbers, strings and tensors. Stateless methods
        return ``{}``. Restored by :meth:`load_state_dict` on resume (tensors come back on the CPU)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state returned by :meth:`state_dict` (called after :meth:`build`); the
        default, for stateless methods, does nothing."""
