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

    IPF's stopping rule is checked before iteration 1 (generative mode): when the reference alone
    carries the data to the prior within ``ipf_tol`` nats per dimension (a closed-form upper bound,
    :func:`~sbdiff.objectives.reference_prior_kl_bound`), iteration 0's decoder is already the
    Schrödinger bridge to that precision and the run trains it alone, with the whole budget
    (:meth:`SBFBSDE._check_converged`). The default VP reference does this for standardised data
    (~1e-5 nats per dimension); a reference that does not reach the prior (``brownian``, a short VE)
    alternates.

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

Frozen weights: the freeze policy of the alternating base (:mod:`sbdiff.methods._alternating`): the
network being fitted is averaged by the trainer's EMA (``train.ema_decay``), restarted at each phase
(a bias-corrected average over the phase) and taken by the network when it is frozen (this preset's
default ``train.phase_average``); the frozen one keeps its averaged weights, and the next phase's
paths are simulated from them (``freeze = "average"``) or from the network's last weights
(``"last"``, which turns ``train.phase_average`` off). A run that ends in a decoder phase returns (in
the EMA model) an encoder and a decoder fitted to each other. (Before issue 23 this preset kept the
same average itself and wrote it into the model and the EMA; the trainer does it now, for any preset.)

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
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import SbdiffError, append_dims
from ..config import Config, Section, set_resolved
from ..decoders import NeuralDecoder, ScoreDecoder
from ..distributed import detect
from ..encoders import FixedEncoder, NeuralEncoder
from ..model import PathVAE
from ..nets import TimeMLP
from ..objectives import (divergence_matching, dsm_loss, importance_times, reference_prior_kl_bound,
                          simulate_controlled)
from ..solvers import make_grid, sdeint
from ._alternating import Alternating
from ._schedule import OPEN, Phase, PhaseSchedule
from .base import build_network, check_flat, register

__all__ = ["SBFBSDE", "SBFBSDEConfig", "training_grid"]


@dataclass
class SBFBSDEConfig(Section):
    """Settings of ``method = "sbfbsde"``, the ``[sbfbsde]`` section (DESIGN §4.3; Chen, Liu, Theodorou 2022; docs/presets.md)."""

    schedule: str = "alternating"  # alternating (half-bridges, SB-FBSDE eqs. 18-19) | joint (eq. 16; Gaussian prior only)
    iterations: int = 0          # decoder phases (IPF iterations); 0: alternate until the budget ends
    half_steps: int = 2000       # optimiser steps per phase
    first_steps: int = 0         # steps of the first decoder phase (the warm start); 0: half_steps (joint: DSM steps before it)
    encoder_steps: int = 0       # steps per encoder phase; 0: half_steps
    freeze_encoder: int = 3      # fit the encoder in this many phases only, then the decoder trains to the end; 0: never
    ipf_tol: float = 1e-3        # Gaussian prior: IPF has converged at iteration 0 when the reference alone carries the data to the prior within this many nats per dimension (then the decoder trains alone); 0: always alternate
    warm_start: str = "dsm"      # dsm (first decoder phase by DSM with the reference encoder: the SGM preset) | none
    num_steps: int = 0           # steps K of the time grid of the simulated paths; 0 (auto): 200 with the Gaussian prior, 50 for bridges
    grid: str = "auto"           # auto (uniform for bridges, quadratic for the Gaussian prior) | uniform | quadratic
    divergence: str = "auto"     # auto (exact for d <= 2, else hutchinson) | exact | hutchinson
    probes: int = 1              # Rademacher probes per point (hutchinson)
    weighting: str = "auto"      # decoder loss weight: auto (= likelihood, the ELBO's; before issue 16 noise for the Gaussian prior) | likelihood | noise (DSM's σ²/g²)
    cache_size: int = 2048       # paths in the trajectory cache
    cache_refresh: int = 250     # steps between cache refreshes; 0: once per phase
    lr_final: float = 0.1        # the learning rate decays (cosine) to lr_final * train.lr over each phase (open last phase: over half_steps, then stays)
    freeze: str = "average"      # weights a phase hands on: average (the trainer's EMA of the network; train.phase_average) | last
    hidden: int = 128            # width of both MLPs (vectors); 0: model.hidden and model.blocks
    blocks: int = 2              # residual blocks of both MLPs


def training_grid(reference, t_min: float, num_steps: int, kind: str) -> Tensor:
    """The time grid ``t_min = t_0 < … < t_K = T`` of the trajectories, shape ``(K+1,)``, float64:
    ``uniform`` or ``quadratic`` (dense near the data side; :func:`sbdiff.solvers.make_grid`)."""
    return make_grid(kind, t_min, reference.T, num_steps)


class _Cache:
    """Paths of the frozen network: ``xs`` and controls ``cs`` ``(K+1, M, d)``, on the training grid."""

    def __init__(self, xs: Tensor, cs: Tensor, prior_loss: Tensor, cross_entropy: Tensor | None):
        self.xs, self.cs = xs, cs
        self.prior_loss, self.cross_entropy = prior_loss, cross_entropy


@register("sbfbsde")
class SBFBSDE(Alternating):
    """Neural encoder / divergence-form drift matching / alternating (or joint) schedule."""

    settings = SBFBSDEConfig
    # The weights a phase hands on are the trainer's EMA of the network (the freeze policy of the
    # alternating base), restarted at each phase and handed on to the network when it is frozen: a
    # bias-corrected average over the phase (horizon ~1000 steps at the generic 0.999), what this
    # preset did itself before issue 23. Gaussian d = 5, 8 min, C_sigma err: 2.82 % before; 6.45 %
    # with the plain EMA at DSB's 0.99; 3.63 % with the restarted average not handed on.
    defaults = {"train.phase_average": True}
    # a DSM warm start of 6 steps, then an encoder phase and a decoder phase of 6 steps
    # (ipf_tol = 0: the generative smoke runs alternate too, though their reference reaches the prior)
    smoke = ("[sbfbsde]\nhalf_steps = 6\nnum_steps = 5\ncache_size = 16\ncache_refresh = 2\nhidden = 16\n"
             "blocks = 1\nlr_final = 1.0\nipf_tol = 0\n")

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
        for name in ("iterations", "first_steps", "encoder_steps", "freeze_encoder", "cache_refresh", "hidden",
                     "num_steps"):
            if getattr(s, name) < 0:
                raise SbdiffError(f"sbfbsde.{name} must be >= 0, got {getattr(s, name)}")
        for name in ("half_steps", "probes", "cache_size", "blocks"):
            if getattr(s, name) < 1:
                raise SbdiffError(f"sbfbsde.{name} must be at least 1, got {getattr(s, name)}")
        if s.cache_size < 3:
            raise SbdiffError(f"sbfbsde.cache_size must be at least 3 (the prior-loss estimate needs 3 paths), "
                              f"got {s.cache_size}")
        if not (s.ipf_tol >= 0 and math.isfinite(s.ipf_tol)):
            raise SbdiffError(f"sbfbsde.ipf_tol must be a finite number >= 0, got {s.ipf_tol}")
        if not 0 < s.lr_final <= 1:
            raise SbdiffError(f"sbfbsde.lr_final must lie in (0, 1], got {s.lr_final}")
        if s.freeze == "last" and config.method == cls.name:  # the last weights are handed on, not the average
            if "phase_average" in config.train.explicit() and config.train.phase_average:
                raise SbdiffError("sbfbsde.freeze = last hands on a phase's last weights and train.phase_average = "
                                  "true its average: set one of them")
            set_resolved(config.train, "phase_average", False)
        if config.method == cls.name and s.schedule == "joint" and config.data.prior != "gaussian":
            raise SbdiffError("sbfbsde.schedule = joint needs the Gaussian prior (its loss has log p_T(X_T)); a "
                              f"bridge to a data set ('{config.data.prior}') needs the alternating schedule")

    def __init__(self, config: Config):
        super().__init__(config)
        self._notice: str | None = None  # the converged-at-iteration-0 line, printed at the first training step
        self._step = 0
        self._x: Tensor | None = None  # training data, model coordinates

    @classmethod
    def schedule_of(cls, config: Config) -> PhaseSchedule | None:
        """The alternating schedule's phases; ``None`` for ``schedule = "joint"``."""
        return super().schedule_of(config) if config.sbfbsde.schedule == "alternating" else None

    # -- settings ---------------------------------------------------------------------------------
    @property
    def bridge_mode(self) -> bool:
        return self.config.data.prior != "gaussian"

    def weighting(self) -> str:
        """``likelihood`` (``auto``: the ELBO's own weighting, both modes) or ``noise``."""
        w = self.config.sbfbsde.weighting
        return "likelihood" if w == "auto" else w

    def num_steps(self) -> int:
        """Steps ``K`` of the training grid: ``sbfbsde.num_steps``, or with 0 (auto) 200 for the
        Gaussian prior and 50 for bridges. The VP reference moves fastest near ``T`` (``β(T) = 20``),
        where the quadratic grid is coarsest: with 50 steps its last step carries ``β Δt = 0.8``, and the
        pair learned there was consistent on the 50-step chain but not in continuous time (issue 26:
        held-out PF-ODE ``nll`` 4.29 against ``nelbo`` 3.56 on the checkerboard); 200 steps (``β Δt =
        0.2``) gave 3.65 against 3.69. Bridges (``brownian(eps)``, uniform grid) keep 50."""
        k = self.config.sbfbsde.num_steps
        return k if k else (50 if self.bridge_mode else 200)

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
        grid = training_grid(reference, cfg.model.t_min, self.num_steps(), self._grid_kind())
        model = self.assemble(encoder, decoder, data, prior, sde_grid=grid if self.bridge_mode else None)
        self._x = model.to_model(torch.as_tensor(data, dtype=torch.float32))
        self._check_converged(model)
        return model

    def _check_converged(self, model: PathVAE) -> None:
        """IPF's stopping rule, checked before its first iteration (generative mode, alternating schedule,
        ``ipf_tol > 0``): when the reference alone carries the data to the prior, its reversal (the
        decoder of iteration 0, the DSM warm start) is the Schrödinger bridge to within the prior loss
        of the reference encoder, bounded in closed form by
        :func:`~sbdiff.objectives.reference_prior_kl_bound`: the first half-bridge ``P¹ = R·(p_prior /
        q_T)(X_T)`` meets the prior exactly and misses the data by at most ``KL(p_prior ‖ q_T)`` (data
        processing), so further IPF iterations have nothing left to correct. Training them anyway only
        adds the estimation noise of two more fitted networks: issue 26 measured sbfbsde's held-out
        ``nll`` 0.10-0.20 nats above SGM's on the checkerboard under the same budget, its encoder fitted
        to noise, and its PF-ODE (which combines both networks) off the sampler's law by up to 0.07
        nats. When the bound is at most ``ipf_tol · d`` nats the schedule is one decoder phase for the
        whole budget (``z_φ ≡ 0``, the zero-initialised encoder, stays the reference; the PF-ODE is the
        decoder's own), and one line on stderr says so at the first training step. ``ipf_tol = 0`` always alternates."""
        s = self.config.sbfbsde
        if self.bridge_mode or self.schedule is None or s.ipf_tol <= 0:
            return
        bound = float(reference_prior_kl_bound(model.reference, self._x))
        if bound > s.ipf_tol * model.dim:
            return
        first = self.config.train.steps or OPEN  # the whole budget (a time budget's plan fits it)
        self.schedule = self.configured = PhaseSchedule(1, s.half_steps, first)
        self._notice = (f"sbdiff: sbfbsde: the reference alone carries the data to the prior (KL <= {bound:.2g} nats, "
                        f"below sbfbsde.ipf_tol x d = {s.ipf_tol * model.dim:.2g}): IPF has converged at iteration "
                        "0, whose decoder (the DSM warm start) is the Schroedinger bridge; the decoder trains alone. "
                        "Set sbfbsde.ipf_tol = 0 to alternate anyway")

    def _grid_kind(self) -> str:
        g = self.config.sbfbsde.grid
        return ("uniform" if self.bridge_mode else "quadratic") if g == "auto" else g

    def grid(self, model: PathVAE) -> Tensor:
        """The training grid ``(K+1,)`` in the model's dtype and device."""
        ts = training_grid(model.reference, model.t_min, self.num_steps(), self._grid_kind())
        return ts.to(dtype=model.data_mean.dtype, device=model.data_mean.device)

    # -- schedule hooks ---------------------------------------------------------------------------
    def warm(self, phase: Phase) -> bool:
        """True for the DSM warm start (iteration 0's decoder phase with ``warm_start = "dsm"``)."""
        return self.config.sbfbsde.warm_start == "dsm" and phase.index == 0

    def needs_cache(self, phase: Phase) -> bool:
        return not self.warm(phase)

    def begin_step(self, model: PathVAE, step: int) -> None:
        if self._notice is not None:  # once per training session (not when a saved run is loaded)
            if detect().is_writer:
                print(self._notice, file=sys.stderr, flush=True)
            self._notice = None
        self._step = step
        super().begin_step(model, step)

    # -- caches -------------------------------------------------------------------------------------
    def _start_points(self, model: PathVAE, n: int, gen: torch.Generator) -> Tensor:
        """``n`` encoder start points at ``t_min``: data rows (dequantised) moved by the reference's
        transition from 0 to ``t_min`` (the law SGM's DSM fits at ``t_min``)."""
        x = self._x.to(model.data_mean.device)
        idx = torch.randint(0, len(x), (n,), generator=gen, device=x.device)
        x0 = model.dequantize_model(x[idx], generator=gen)
        mean, std = model.reference.transition(x0, 0.0, model.t_min)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
        return mean + append_dims(std, x0.ndim) * noise

    @torch.no_grad()
    def simulate(self, model: PathVAE, frozen, phase: Phase, generator: torch.Generator) -> _Cache:
        """``cache_size`` paths of the ``frozen`` part: the encoder's from the data (decoder phases) or
        the decoder's from the prior (encoder phases)."""
        if self.bridge_mode and self.prior_moments is None:
            raise SbdiffError("sbfbsde in bridge mode needs the prior data set (data.prior) to train")
        M = self.config.sbfbsde.cache_size
        ts = self.grid(model)
        if phase.role == "decoder":  # fitting the decoder: paths of the encoder from the data
            x = self._start_points(model, M, generator)
            xs, cs = simulate_controlled(frozen, x, ts, generator=generator, exact_reference=True)
            x_T = xs[-1]
            ce = None if self.bridge_mode else -frozen.prior_logp(x_T).mean()
            return _Cache(xs, cs, self.prior_kl(model, x_T), ce)
        # fitting the encoder: paths of the decoder from the prior, in model coordinates (before issue 26
        # bridge mode started them from the prior data set's raw rows: wrong whenever data.normalize
        # rescaled the data, which left the encoder fitting a decoder from the wrong set)
        x = model.prior_model_points(M, generator=generator)
        xs, cs = simulate_controlled(frozen, x, ts.flip(0), generator=generator)
        return _Cache(xs.flip(0), cs.flip(0), torch.zeros(()), None)

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
        phase = self.phase if self.phase is not None else self.schedule.phase(self._step)
        tag = torch.tensor(float(phase.index), device=batch.device)
        if self.warm(phase):
            return {**self._dsm_losses(model, batch, generator), "phase": tag}
        phase, cache = self._require_cache()
        ref = model.reference
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
            prior = self.prior_kl(model, x_T) if batch.shape[0] >= 3 else torch.zeros(())  # no NaN in the losses
        return {"loss": dm, "drift_matching": dm, "prior_loss": prior.to(dm)}

    def _joint_losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Negative path ELBO with gradients through the encoder's paths (SB-FBSDE eq. 16)."""
        ref, ts = model.reference, self.grid(model)
        w = self._weights(ts)
        s = self.config.sbfbsde
        batch = model.dequantize_model(batch, generator=generator)
        mean, std = ref.transition(batch, 0.0, model.t_min)
        x = mean + append_dims(std, batch.ndim) * torch.randn(batch.shape, generator=generator,
                                                               dtype=batch.dtype, device=batch.device)
        d = x[0].numel()
        exact = self.exact_divergence(d)
        acc = {"path": torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)}

        def integrate(k: int, y: Tensor, tk: Tensor) -> None:  # the path term at t_k, with gradients
            t = tk.expand(y.shape[0])
            z = model.encoder.control(y, t)
            integrand, _ = divergence_matching(model.decoder.control, y, t, z, ref.g(t), exact=exact,
                                               probes=s.probes, generator=generator)
            # ½‖z + ẑ‖² + ∇·(gẑ − f) = [½‖ẑ‖² + g∇·ẑ + ẑᵀz] + ½‖z‖² − ∇·f
            acc["path"] = acc["path"] + w[k] * (integrand + 0.5 * z.pow(2).reshape(y.shape[0], -1).sum(1)
                                                + ref.h(t) * d)
            acc["z"] = z

        def euler(k: int, y: Tensor, t0: Tensor, t1: Tensor, noise: Tensor) -> Tensor:  # the encoder's step
            t = t0.expand(y.shape[0])
            dt = float(t1 - t0)
            g = append_dims(ref.g(t), y.ndim)
            return y + (ref.f(y, t) + g * acc["z"]) * dt + g * math.sqrt(dt) * noise

        x = sdeint(euler, x, ts, generator=generator, observe=integrate)
        path = acc["path"]
        ce = -model.encoder.prior_logp(x)
        nelbo = (ce + path).mean()
        with torch.no_grad():
            prior = self.prior_kl(model, x.detach()) if x.shape[0] >= 3 else torch.zeros(())
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
        return self.prior_kl(model, xs[-1])

