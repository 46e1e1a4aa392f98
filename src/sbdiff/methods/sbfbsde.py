"""SB-FBSDE: the path VAE with both networks learned (Chen, Liu, Theodorou, ICLR 2022; DESIGN §2, §4.3).

Encoder ``dX = [f + g z_φ] dt + g dW`` (:class:`~sbdiff.encoders.NeuralEncoder`) and decoder
``dX = [f − g ẑ_θ] dt + g dW̄``, both neural. In generative mode (prior ``N(0, prior_var·I)``) the
decoder is a :class:`~sbdiff.decoders.ScoreDecoder` (``ẑ = g s_θ``, noise parametrisation, the SGM
decoder); in bridge mode (``data.prior`` a data set, reference ``brownian(eps)``) it is a
:class:`~sbdiff.decoders.NeuralDecoder` (``ẑ = net``) and the SDEs live on the training grid
(``PathVAE.sde_grid``), so ``decode`` runs the chain the networks were trained on.

Schedules (``sbfbsde.schedule``):

``alternating`` (default; SB-FBSDE Alg. 1, its reference code's ``sb_alternate_train``)
    Half-bridges, as IPF. A *decoder phase* fits ``ẑ_θ`` on trajectories of the frozen encoder by
    drift matching in divergence form, ``E_Q ∫ [½‖ẑ‖² + g∇·ẑ + ẑᵀz] dt`` (eq. 18,
    :func:`~sbdiff.objectives.divergence_matching`); an *encoder phase* fits ``z_φ`` on trajectories
    of the frozen decoder with the roles swapped, ``E_P ∫ [½‖z‖² + g∇·z + zᵀẑ] dt`` (eq. 19).
    Iteration 0's decoder phase may be a warm start by denoising score matching with the reference
    encoder (``warm_start = "dsm"``: exactly the SGM preset, valid because ``z_φ ≡ 0`` at
    initialisation). The encoder's schedule is a setting of its own: ``encoder_steps`` per encoder phase
    and ``freeze_encoder`` (stop fitting the encoder after that many encoder phases; the decoder
    then trains on until the budget ends: the early stopping Kaba et al. 2024 recommend against
    overfitting the encoder).

``joint`` (SB-FBSDE eq. 16, ``sb_joint_train``; generative mode only)
    Each step simulates encoder paths from the data batch *with gradients* and minimises the negative
    path ELBO ``E[−log p_T(X_T)] + E ∫ [½‖z + ẑ‖² + ∇·(g ẑ − f)] dt`` in both networks at once. With
    ``warm_start = "dsm"`` the first ``first_steps`` steps (default 0: none) are the SGM preset's DSM
    steps, the encoder untouched (it is not in that loss).

Trajectory caches: during a phase, ``cache_size`` paths of the frozen network (states and its control
at every grid point) are simulated every ``cache_refresh`` steps in :meth:`SBFBSDE.begin_step`, with
random numbers seeded by ``(seed, step)``; a training batch draws ``(path, time)`` pairs from it.
A resumed run re-simulates the cache of its refresh step from the same seed, so it repeats the
uninterrupted run bit for bit.

Frozen weights: at the end of a phase the trained network is replaced by the average of its weights
over that phase (``freeze = "average"``: an exponential average with decay ``train.ema_decay``,
bias-corrected, so it averages this phase only), which then generates the next phase's paths. The
EMA model the trainer returns holds, for the network in training, this running average (decoder
phases) or the frozen weights of the previous phase (encoder phases), so that a run stopped at any
step returns an encoder and a decoder fitted to each other.

Logged (``metrics.jsonl``): ``phase`` (``2n`` decoder, ``2n + 1`` encoder phase of iteration ``n``),
``loss`` (what the phase minimises), and

* ``prior_loss``: :func:`~sbdiff.objectives.gaussian_kl_estimate` of the encoder's ``X_T`` against the
  prior (Gaussian mode: a lower bound of ``KL(q_T ‖ prior)``, exact for Gaussian ``q_T``; bridge mode:
  against the moments of the prior data set, a moment-matching proxy). Decoder phases: on the cache's
  endpoints; encoder phases: at log steps, on fresh paths of the encoder in training.
* ``drift_matching`` (decoder phases): the path term of the negative ELBO, ``E_Q ∫ [½‖z + ẑ‖² +
  ∇·(gẑ − f)] dt``; it equals the drift-matching term ``E_Q ∫ ½‖z + ẑ − g∇log q_t‖² dt`` plus
  ``H(q_0) − H(q_T)`` (entropies of the encoder's marginals, free of θ), so it falls as the decoder
  improves and its minimum over θ is ``H(q_0) − H(q_T)``, not 0. In the DSM warm start: the DSM loss
  (as the SGM preset logs it).
* ``objective`` = ``prior_loss + drift_matching``; ``nelbo`` (Gaussian mode) = ``E[−log p_T(X_T)] +
  drift_matching``, the negative path ELBO of the training batch (SB-FBSDE Thm 4).
* ``encoder_matching`` (encoder phases): the swapped path term ``E_P ∫ [½‖z + ẑ‖² + ∇·(gz + f)] dt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import SbdiffError, append_dims
from ..config import Config, Section
from ..decoders import NeuralDecoder, ScoreDecoder
from ..encoders import FixedEncoder, NeuralEncoder
from ..model import PathVAE
from ..nets import TimeMLP
from ..objectives import (divergence_matching, dsm_loss, gaussian_kl_estimate, importance_times,
                          simulate_controlled)
from ..solvers import time_grid
from ._schedule import Phase
from .base import Method, build_network, check_flat, register

__all__ = ["SBFBSDE", "SBFBSDEConfig", "SBFBSDESchedule", "training_grid"]

@dataclass
class SBFBSDEConfig(Section):
    """Settings of ``method = "sbfbsde"``, the ``[sbfbsde]`` section (DESIGN §4.3; Chen, Liu, Theodorou 2022; docs/presets.md)."""

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


#: ``end`` of an open-ended phase (the decoder phase after the encoder is frozen).
OPEN = 2**62


@dataclass(frozen=True)
class SBFBSDESchedule:
    """Alternating phases: decoder phase 0 (``first_steps``), then encoder phase ``n − 1``
    (``encoder_steps``) and decoder phase ``n`` (``half_steps``) for ``n = 1, 2, …``.

    Parameters
    ----------
    iterations : int
        Decoder phases; the schedule ends after the last (0: alternate until the budget ends).
    half_steps, first_steps, encoder_steps : int
        Phase lengths (``first_steps``/``encoder_steps`` 0: ``half_steps``).
    freeze_encoder : int
        Fit the encoder in this many phases only; the decoder phase after the last one then runs
        until training stops (0: no freeze).

    With ``encoder_steps = half_steps`` and no freeze this is
    :class:`~sbdiff.methods._schedule.HalfBridgeSchedule` (same phases, same :class:`Phase` objects).
    """

    iterations: int
    half_steps: int
    first_steps: int = 0
    encoder_steps: int = 0
    freeze_encoder: int = 0

    def __post_init__(self):
        if (self.iterations < 0 or self.half_steps < 1 or self.first_steps < 0 or self.encoder_steps < 0
                or self.freeze_encoder < 0):
            raise SbdiffError(f"bad sbfbsde schedule: iterations {self.iterations} (>= 0), half_steps "
                              f"{self.half_steps} (>= 1), first_steps, encoder_steps, freeze_encoder "
                              f"({self.first_steps}, {self.encoder_steps}, {self.freeze_encoder}; >= 0)")

    @property
    def first(self) -> int:
        return self.first_steps or self.half_steps

    @property
    def enc(self) -> int:
        return self.encoder_steps or self.half_steps

    @property
    def encoder_phases(self) -> int | None:
        """Number of encoder phases (``None``: unbounded)."""
        counts = [n for n in ((self.iterations - 1) if self.iterations else None, self.freeze_encoder or None)
                  if n is not None]
        return min(counts) if counts else None

    @property
    def open_ended(self) -> bool:
        """True when the last decoder phase runs until training stops (encoder frozen early)."""
        n = self.encoder_phases
        return bool(self.freeze_encoder) and n == self.freeze_encoder and (
            not self.iterations or self.freeze_encoder < self.iterations - 1)

    def total_steps(self) -> int | None:
        """Steps of the whole schedule (``None``: no end of its own)."""
        n = self.encoder_phases
        if n is None or self.open_ended:
            return None
        return self.first + n * (self.enc + self.half_steps)

    def phase(self, step: int) -> Phase:
        """The phase of step ``step`` (0-based); past a finite schedule's end, its last decoder phase."""
        n_enc = self.encoder_phases
        last_end = None if (n_enc is None or self.open_ended) else self.first + n_enc * (self.enc + self.half_steps)
        if step < self.first:
            end = OPEN if (n_enc == 0 and self.open_ended) else self.first
            return Phase(0, "decoder", 0, end)
        pair = self.enc + self.half_steps
        n, r = divmod(step - self.first, pair)
        if n_enc is not None and n >= n_enc:  # past the last encoder phase: the last decoder phase
            if n_enc == 0:
                return Phase(0, "decoder", 0, OPEN if self.open_ended else self.first)
            start = self.first + (n_enc - 1) * pair + self.enc
            return Phase(n_enc, "decoder", start, OPEN if self.open_ended else last_end)
        start = self.first + n * pair
        if r < self.enc:
            return Phase(n, "encoder", start, start + self.enc)
        end = start + pair
        if self.open_ended and n == n_enc - 1:
            end = OPEN
        return Phase(n + 1, "decoder", start + self.enc, end)


def training_grid(reference, t_min: float, num_steps: int, kind: str) -> Tensor:
    """The time grid ``t_min = t_0 < … < t_K = T`` of the trajectories, shape ``(K+1,)``, float64:
    ``uniform`` or ``quadratic`` (dense near the data side, :func:`sbdiff.solvers.time_grid`)."""
    if kind == "uniform":
        return torch.linspace(t_min, reference.T, num_steps + 1, dtype=torch.float64)
    return time_grid(t_min, reference.T, num_steps, dtype=torch.float64)


def _params(net: nn.Module) -> list[Tensor]:
    """The trained weights of a network (its parameters; buffers such as the time embedding's
    frequencies are constants, rebuilt, not saved, and must not be averaged)."""
    return list(net.parameters())


class _Cache:
    """Paths of the frozen network: ``xs`` and controls ``cs`` ``(K+1, M, d)``, on the training grid."""

    def __init__(self, xs: Tensor, cs: Tensor, step: int, prior_loss: Tensor, cross_entropy: Tensor | None):
        self.xs, self.cs, self.step = xs, cs, step
        self.prior_loss, self.cross_entropy = prior_loss, cross_entropy


@register("sbfbsde")
class SBFBSDE(Method):
    """Neural encoder / divergence-form drift matching / alternating (or joint) schedule."""

    settings = SBFBSDEConfig
    bridges = True
    ddp_find_unused_parameters = True
    # a DSM warm start of 6 steps, then an encoder phase and a decoder phase of 6 steps
    smoke = ("[sbfbsde]\nhalf_steps = 6\nnum_steps = 5\ncache_size = 16\ncache_refresh = 2\nhidden = 16\n"
             "blocks = 1\nlr_final = 1.0\n")

    @classmethod
    def check(cls, config: Config) -> None:
        """Check ``[sbfbsde]`` (see :class:`SBFBSDEConfig`)."""
        s = config.sbfbsde
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
            raise SbdiffError(f"sbfbsde.cache_size must be at least 3 (the prior-loss estimate needs 3 paths), "
                              f"got {s.cache_size}")
        if not 0 < s.lr_final <= 1:
            raise SbdiffError(f"sbfbsde.lr_final must lie in (0, 1], got {s.lr_final}")
        if config.method == cls.name and s.schedule == "joint" and config.data.prior != "gaussian":
            raise SbdiffError("sbfbsde.schedule = joint needs the Gaussian prior (its loss has log p_T(X_T)); a "
                              f"bridge to a data set ('{config.data.prior}') needs the alternating schedule")

    def __init__(self, config: Config):
        super().__init__(config)
        s = config.sbfbsde
        self.schedule = SBFBSDESchedule(s.iterations, s.half_steps, s.first_steps, s.encoder_steps,
                                        s.freeze_encoder) if s.schedule == "alternating" else None
        self._phase: Phase | None = None
        self._step = 0
        self._cache: _Cache | None = None
        self._avg: list[Tensor] | None = None  # running (biased) average of the trained network's weights
        self._avg_n = 0
        self._frozen: list[Tensor] | None = None  # encoder weights kept by the EMA model in an encoder phase
        self._x: Tensor | None = None  # training data, model coordinates
        self._prior_moments: tuple[Tensor, Tensor] | None = None

    # -- settings ---------------------------------------------------------------------------------
    @property
    def bridge_mode(self) -> bool:
        return self.config.data.prior != "gaussian"

    def weighting(self) -> str:
        """``likelihood`` (``auto``: the ELBO's own weighting, both modes) or ``noise``."""
        w = self.config.sbfbsde.weighting
        return "likelihood" if w == "auto" else w

    def exact_divergence(self, dim: int) -> bool:
        div = self.config.sbfbsde.divergence
        return dim <= 2 if div == "auto" else div == "exact"

    def _network(self, dim: int, T: float) -> nn.Module:
        cfg = self.config
        if cfg.data.shape() is not None or cfg.model.net == "unet":
            return build_network(cfg, dim, T)
        s, m = cfg.sbfbsde, cfg.model
        return TimeMLP(dim, s.hidden or m.hidden, s.blocks if s.hidden else m.blocks, m.time_dim, T)

    # -- model ------------------------------------------------------------------------------------
    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        reference = self.make_reference()
        dim = check_flat(data)
        dec_net = self._network(dim, reference.T)  # first: initialised as the SGM preset's network
        encoder = NeuralEncoder(reference, self._network(dim, reference.T))
        decoder = NeuralDecoder(reference, dec_net) if self.bridge_mode else ScoreDecoder(reference, dec_net, "noise")
        grid = training_grid(reference, cfg.model.t_min, cfg.sbfbsde.num_steps, self._grid_kind())
        model = self.assemble(encoder, decoder, data, prior, sde_grid=grid if self.bridge_mode else None)
        self._x = model.to_model(torch.as_tensor(data, dtype=torch.float32))
        if prior is not None:
            p = model.to_model(torch.as_tensor(prior, dtype=torch.float32)).double()
            cov = torch.cov(p.T).reshape(dim, dim) if len(p) > 1 else torch.eye(dim, dtype=torch.float64)
            cov = cov + 1e-9 * torch.eye(dim, dtype=torch.float64) * torch.diagonal(cov).mean().clamp_min(1e-12)
            self._prior_moments = (p.mean(0), cov)
        return model

    def _grid_kind(self) -> str:
        g = self.config.sbfbsde.grid
        return ("uniform" if self.bridge_mode else "quadratic") if g == "auto" else g

    def grid(self, model: PathVAE) -> Tensor:
        """The training grid ``(K+1,)`` in the model's dtype and device."""
        ts = training_grid(model.reference, model.t_min, self.config.sbfbsde.num_steps, self._grid_kind())
        return ts.to(dtype=model.data_mean.dtype, device=model.data_mean.device)

    # -- schedule hooks -----------------------------------------------------------------------------
    def max_steps(self) -> int | None:
        return None if self.schedule is None else self.schedule.total_steps()

    def lr_factor(self, step: int) -> float:
        """Cosine decay from 1 to ``sbfbsde.lr_final`` over each phase (as DSB's half-bridges): the
        divergence-form gradients are noisy, and a decaying rate averages the noise out before the
        network is frozen for the next phase. The open-ended last decoder phase (after
        ``freeze_encoder``) decays over ``half_steps`` and then stays at ``lr_final``; the joint
        schedule keeps the full rate."""
        if self.schedule is None:
            return 1.0
        phase = self.schedule.phase(step)
        length = self.config.sbfbsde.half_steps if phase.end >= OPEN else phase.end - phase.start
        frac = min(max((step - phase.start) / max(length, 1), 0.0), 1.0)
        final = self.config.sbfbsde.lr_final
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac))

    def checkpoint_due(self, step: int) -> bool:
        """After the last step of every phase (a resume then starts from a completed half-bridge)."""
        return self.schedule is not None and step > 0 and self.schedule.phase(step - 1).end == step

    def warm(self, phase: Phase) -> bool:
        """True for the DSM warm start (iteration 0's decoder phase with ``warm_start = "dsm"``)."""
        return self.config.sbfbsde.warm_start == "dsm" and phase.index == 0

    @staticmethod
    def _trained(model: PathVAE, phase: Phase) -> nn.Module:
        return model.decoder.net if phase.role == "decoder" else model.encoder.net

    def begin_step(self, model: PathVAE, ema_model: PathVAE, step: int) -> None:
        self._step = step
        if self.schedule is None:
            return
        phase = self.schedule.phase(step)
        prev = self._phase
        device = model.data_mean.device
        for store in (self._avg, self._frozen):  # restored state comes back on the CPU
            if store is not None and store and store[0].device != device:
                store[:] = [a.to(device) for a in store]
        if prev is not None and step > prev.start:
            self._accumulate(self._trained(model, prev))  # the weights after step `step − 1`
        if prev is None or prev.index != phase.index:
            if prev is not None:
                self._freeze(model, ema_model, prev)
            self._enter(model, phase)
        self._phase = phase
        self._sync_ema(model, ema_model, phase)
        if not self.warm(phase):
            refresh = self.config.sbfbsde.cache_refresh
            due = phase.start if not refresh else phase.start + (step - phase.start) // refresh * refresh
            if self._cache is None or self._cache.step != due:
                self._cache = self._simulate(model, phase, due)

    def _accumulate(self, net: nn.Module) -> None:
        decay = self.config.train.ema_decay
        params = [p.detach() for p in _params(net)]
        if self._avg is None:
            self._avg = [torch.zeros_like(p) for p in params]
        torch._foreach_lerp_(self._avg, params, 1.0 - decay)
        self._avg_n += 1

    def _average(self) -> list[Tensor] | None:
        """The bias-corrected average of the trained network's weights over this phase so far."""
        if self._avg is None or self._avg_n == 0:
            return None
        decay = self.config.train.ema_decay
        corr = 1.0 - decay ** self._avg_n
        return [a / corr for a in self._avg]

    @torch.no_grad()
    def _freeze(self, model: PathVAE, ema_model: PathVAE, phase: Phase) -> None:
        """End of ``phase``: the trained network becomes its phase average (``freeze = "average"``)
        or stays at its last weights (``"last"``), in the model and in the EMA model."""
        net, ema_net = self._trained(model, phase), self._trained(ema_model, phase)
        avg = self._average()
        if self.config.sbfbsde.freeze == "average" and avg is not None:
            for p, a in zip(_params(net), avg):
                p.copy_(a)
        for q, p in zip(_params(ema_net), _params(net)):
            q.copy_(p)

    def _enter(self, model: PathVAE, phase: Phase) -> None:
        self._avg, self._avg_n = None, 0
        self._cache = None
        self._frozen = [p.detach().clone() for p in _params(model.encoder.net)] if phase.role == "encoder" else None

    @torch.no_grad()
    def _sync_ema(self, model: PathVAE, ema_model: PathVAE, phase: Phase) -> None:
        """Decoder phase: the EMA decoder is the phase average so far. Encoder phase: the EMA encoder
        stays the frozen one (the decoder was fitted to it) until the phase completes."""
        ema_net = self._trained(ema_model, phase)
        src = self._average() if phase.role == "decoder" else self._frozen
        if src is None:
            src = [p.detach() for p in _params(self._trained(model, phase))]
        for q, a in zip(_params(ema_net), src):
            q.copy_(a)

    # -- caches -------------------------------------------------------------------------------------
    def _generator(self, step: int, device) -> torch.Generator:
        from ..distributed import step_generator

        return step_generator(self.config.seed, step, 1000, device)

    def _start_points(self, model: PathVAE, n: int, gen: torch.Generator) -> Tensor:
        """``n`` encoder start points at ``t_min``: data rows (dequantised) moved by the reference's
        transition from 0 to ``t_min`` (the law SGM's DSM fits at ``t_min``)."""
        x = self._x.to(model.data_mean.device)
        idx = torch.randint(0, len(x), (n,), generator=gen, device=x.device)
        x0 = model.dequantize_model(x[idx], generator=gen)
        mean, std = model.reference.transition(x0, 0.0, model.t_min)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
        return mean + append_dims(std, x0.ndim) * noise

    def _prior_kl(self, model: PathVAE, x_T: Tensor) -> Tensor:
        if self._prior_moments is not None:
            m, c = self._prior_moments
            return gaussian_kl_estimate(x_T, m.to(x_T.device), c.to(x_T.device))
        return gaussian_kl_estimate(x_T, prior_var=model.reference.prior_var())

    @torch.no_grad()
    def _simulate(self, model: PathVAE, phase: Phase, step: int) -> _Cache:
        """``cache_size`` paths of the frozen network, seeded by ``(seed, step)``."""
        if self.bridge_mode and self._prior_moments is None:
            raise SbdiffError("sbfbsde in bridge mode needs the prior data set (data.prior) to train")
        gen = self._generator(step, model.data_mean.device)
        M = self.config.sbfbsde.cache_size
        ts = self.grid(model)
        if phase.role == "decoder":  # fitting the decoder: paths of the encoder from the data
            x = self._start_points(model, M, gen)
            xs, cs = simulate_controlled(model.encoder, x, ts, generator=gen, exact_reference=True)
            x_T = xs[-1]
            ce = None if self.bridge_mode else -model.encoder.prior_logp(x_T).mean()
            return _Cache(xs, cs, step, self._prior_kl(model, x_T), ce)
        x = model.sample_prior(M, generator=gen)  # fitting the encoder: paths of the decoder from the prior
        xs, cs = simulate_controlled(model.decoder, x, ts.flip(0), generator=gen)
        return _Cache(xs.flip(0), cs.flip(0), step, torch.zeros(()), None)

    # -- losses -------------------------------------------------------------------------------------
    def _weights(self, ts: Tensor) -> Tensor:
        """Trapezoid weights ``(K+1,)`` of the grid: ``Σ w_k h(t_k) ≈ ∫ h dt``."""
        dt = ts[1:] - ts[:-1]
        w = torch.zeros_like(ts)
        w[:-1] += 0.5 * dt
        w[1:] += 0.5 * dt
        return w

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        if self.schedule is None:
            s = self.config.sbfbsde
            if s.warm_start == "dsm" and self._step < s.first_steps:  # joint: DSM steps before it
                return self._dsm_losses(model, batch, generator)
            return self._joint_losses(model, batch, generator)
        phase = self._phase if self._phase is not None else self.schedule.phase(self._step)
        tag = torch.tensor(float(phase.index), device=batch.device)
        if self.warm(phase):
            return {**self._dsm_losses(model, batch, generator), "phase": tag}
        if self._cache is None:
            raise SbdiffError("sbfbsde: no trajectory cache (begin_step was not called before losses)")
        cache, ref = self._cache, model.reference
        ts = self.grid(model)
        K = len(ts) - 1
        B = batch.shape[0]
        M = cache.xs.shape[1]
        i = torch.randint(0, M, (B,), generator=generator, device=batch.device)
        k = torch.randint(0, K + 1, (B,), generator=generator, device=batch.device)
        x, other, t = cache.xs[k, i], cache.cs[k, i], ts[k]
        g = ref.g(t)
        w = (K + 1) * self._weights(ts)[k]  # E over uniform k of w·h = trapezoid integral
        s = self.config.sbfbsde
        exact = self.exact_divergence(x[0].numel())
        trained = model.decoder if phase.role == "decoder" else model.encoder
        integrand, _ = divergence_matching(trained.control, x, t, other, g, exact=exact, probes=s.probes,
                                           generator=generator)
        d = x[0].numel()
        div_f = -ref.h(t) * d  # ∇·f for f = −h(t) x
        flat_other = 0.5 * other.pow(2).reshape(B, -1).sum(1)
        if phase.role == "decoder":
            lam = w if self.weighting() == "likelihood" else self._noise_weight(model, t)
            loss = (lam * integrand).mean()
            dm = (w * (integrand.detach() + flat_other - div_f)).mean()
            out = {"loss": loss, "drift_matching": dm, "prior_loss": cache.prior_loss.to(dm),
                   "objective": cache.prior_loss.to(dm) + dm, "phase": tag}
            if cache.cross_entropy is not None:
                out["nelbo"] = cache.cross_entropy.to(dm) + dm
            return out
        loss = (w * integrand).mean()
        em = (w * (integrand.detach() + flat_other + div_f)).mean()
        return {"loss": loss, "encoder_matching": em, "phase": tag}

    @staticmethod
    def _noise_weight(model: PathVAE, t: Tensor) -> Tensor:
        """``λ(t) = σ_t²/g(t)²`` with ``σ_t²`` the reference's transition variance from 0: the DSM
        noise-prediction weighting (any positive weight has the same minimiser)."""
        ref = model.reference
        return ref.transition_var(torch.zeros_like(t), t) / ref.g(t) ** 2

    def _dsm_losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Warm start: the SGM preset's loss (DSM with the reference encoder, SGM's training times)."""
        batch = model.dequantize_model(batch, generator=generator)
        enc = FixedEncoder(model.reference)
        t, _ = importance_times(batch.shape[0], model.t_min, model.reference.T, generator=generator,
                                dtype=batch.dtype, device=batch.device)
        dm = dsm_loss(enc, model.decoder, batch, t, generator=generator).mean()
        with torch.no_grad():
            x_T, _, _ = enc.sample_transition(batch, 0.0, model.reference.T, generator=generator)
            prior = self._prior_kl(model, x_T) if batch.shape[0] >= 3 else torch.zeros(())
        return {"loss": dm, "drift_matching": dm, "prior_loss": prior.to(dm)}

    def _joint_losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Negative path ELBO with gradients through the encoder's paths (SB-FBSDE eq. 16)."""
        ref, ts = model.reference, self.grid(model)
        K = len(ts) - 1
        w = self._weights(ts)
        s = self.config.sbfbsde
        batch = model.dequantize_model(batch, generator=generator)
        mean, std = ref.transition(batch, 0.0, model.t_min)
        x = mean + append_dims(std, batch.ndim) * torch.randn(batch.shape, generator=generator,
                                                               dtype=batch.dtype, device=batch.device)
        d = x[0].numel()
        exact = self.exact_divergence(d)
        path = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k in range(K + 1):
            t = ts[k].expand(x.shape[0])
            z = model.encoder.control(x, t)
            integrand, zhat = divergence_matching(model.decoder.control, x, t, z, ref.g(t), exact=exact,
                                                  probes=s.probes, generator=generator)
            # ½‖z + ẑ‖² + ∇·(gẑ − f) = [½‖ẑ‖² + g∇·ẑ + ẑᵀz] + ½‖z‖² − ∇·f
            path = path + w[k] * (integrand + 0.5 * z.pow(2).reshape(x.shape[0], -1).sum(1) + ref.h(t) * d)
            if k < K:
                dt = float(ts[k + 1] - ts[k])
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                g = append_dims(ref.g(t), x.ndim)
                x = x + (ref.f(x, t) + g * z) * dt + g * math.sqrt(dt) * noise
        ce = -model.encoder.prior_logp(x)
        nelbo = (ce + path).mean()
        with torch.no_grad():
            prior = self._prior_kl(model, x.detach())
        return {"loss": nelbo, "nelbo": nelbo.detach(), "drift_matching": path.mean().detach(),
                "prior_loss": prior.to(nelbo), "objective": prior.to(nelbo) + path.mean().detach()}

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        """:func:`~sbdiff.objectives.gaussian_kl_estimate` of the encoder's ``X_T`` from ``batch``
        (fresh encoder paths on the training grid); the trainer calls it at log steps of encoder
        phases, where the losses do not carry ``prior_loss``."""
        if batch.shape[0] < 3:
            return torch.zeros(())
        x0 = model.dequantize_model(batch, generator=generator)
        mean, std = model.reference.transition(x0, 0.0, model.t_min)
        x = mean + append_dims(std, x0.ndim) * torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                                                            device=x0.device)
        xs, _ = simulate_controlled(model.encoder, x, self.grid(model), generator=generator, exact_reference=True)
        return self._prior_kl(model, xs[-1])

    def trainable(self, model: PathVAE) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.schedule is None or self._phase is None:
            return {}
        state = {"phase": [self._phase.iteration, self._phase.role, self._phase.start, self._phase.end],
                 "avg_n": self._avg_n}
        if self._avg is not None:
            state["avg"] = [a.clone() for a in self._avg]
        if self._frozen is not None:
            state["frozen"] = [f.clone() for f in self._frozen]
        return state

    def load_state_dict(self, state: dict) -> None:
        if not state or self.schedule is None:
            return
        it, role, start, end = state["phase"]
        self._phase = Phase(int(it), str(role), int(start), int(end))
        self._avg_n = int(state["avg_n"])
        self._avg = [a for a in state["avg"]] if "avg" in state else None
        self._frozen = [f for f in state["frozen"]] if "frozen" in state else None
        self._cache = None  # re-simulated from its seed at the next begin_step
