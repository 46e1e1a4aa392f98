"""DSB: Diffusion Schrödinger Bridge by iterative proportional fitting with mean matching (DESIGN §4.2).

De Bortoli, Thornton, Heng, Doucet, NeurIPS 2021 (seed ``002_…``), Algorithm 1, as the
``neural / mean_matching / alternating`` preset of the path VAE. Both SDEs live on a fixed grid
``0 = t_0 < t_1 < … < t_N = T`` with steps ``γ_k = t_k − t_{k−1}`` (:func:`dsb_grid`):

* encoder chain (data -> prior):  ``X_k = F_k(X_{k−1}) + σ_k ξ``,
  ``F_k(x) = x + γ_k [f + g z_φ](x, t_{k−1})``, ``σ_k = √γ_k g(t_{k−1})``;
* decoder chain (prior -> data):  ``X_{k−1} = B_k(X_k) + σ_k ξ``,
  ``B_k(x) = x − γ_k [f − g ẑ_θ](x, t_k)``, the same ``σ_k``.

These are exactly the Euler–Maruyama steps of the :class:`~sbdiff.model.PathVAE`'s encoder and
decoder on that grid (with the noise at the step's lower end, ``noise_at="lower"``), so
``decode``/``encode`` of the trained model run the learned chains.

IPF iteration ``n`` (:class:`~sbdiff.methods._schedule.HalfBridgeSchedule`):

1. decoder half-bridge: simulate the frozen encoder from the data and fit ``B^n`` by mean matching,
   ``B_k(X_k) ≈ X_k + F_k(X_{k−1}) − F_k(X_k)`` (De Bortoli et al. 2021, Prop. 3: the backward
   kernel's mean, to ``O(γ²)``);
2. encoder half-bridge: simulate the frozen decoder from the prior and fit ``F^{n+1}`` the same way
   with the roles swapped, ``F_k(X_{k−1}) ≈ X_{k−1} + B_k(X_k) − B_k(X_{k−1})``.

Iteration 0's encoder is the reference (``z_φ = 0``, a zero-initialised network), so its decoder
is a score model fitted by mean matching. The regression residuals are divided by the step's noise
scale ``σ_k``: each step then weighs as its term of the path KL between Gaussian chains, and the
loss per coordinate is ≈ 1 at the optimum (the target's own noise) — ``drift_matching`` (decoder
phases) and ``encoder_matching`` (encoder phases) are logged so, with their floor ``d``.

Simulated chains are cached (``dsb.cache_size`` paths, refreshed every ``dsb.cache_refresh``
steps) from the frozen network's EMA weights, which the loop leaves unchanged while that network
is frozen (:meth:`DSB.frozen`), so they are the snapshot taken when its half-bridge ended; the
frozen network gets no gradient, so its weights and Adam state carry over to its next half-bridge
(a warm start). Both noise scales of step ``k`` are ``σ_k = √γ_k g(t_{k−1})`` (the step's data-side
end: the backward kernel of the forward step has the forward step's variance to leading order). A
cache is seeded by the step it was drawn at, so a resumed run (or another DDP rank) redraws it
exactly. A checkpoint is written at the end of every half-bridge.

Modes: generative (``data.prior = "gaussian"``, default reference VP) and bridge (``data.prior`` a
second data set at ``t = T``; use the reference ``brownian(eps)`` on ``[0, 1]``, where the SB is the
entropic OT plan with cost ``½‖x − y‖²`` and weight ``eps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._utils import SbdiffError, append_dims
from ..config import Config, Section
from ..decoders import NeuralDecoder
from ..distributed import step_generator
from ..encoders import NeuralEncoder
from ..model import PathVAE
from ._schedule import HalfBridgeSchedule, Phase
from .base import Method, build_network, check_flat, register

__all__ = ["DSB", "DSBConfig", "dsb_grid", "gaussian_fit_kl"]

_CACHE_STREAM = 1000


@dataclass
class DSBConfig(Section):
    """Settings of ``method = "dsb"``, the ``[dsb]`` section (DESIGN §4.2; De Bortoli et al. 2021, Alg. 1)."""

    iterations: int = 6          # IPF iterations (each: one decoder and one encoder half-bridge); 0: until the budget ends
    half_steps: int = 5000       # optimiser steps per half-bridge (6 x 5000: 55k steps, ~9 min on 2 cores at d = 16)
    first_steps: int = 0         # steps of the first decoder half-bridge (iteration 0, the reference's reversal); 0: half_steps
    num_steps: int = 50          # discretisation steps N of the chains (20 -> 50: C_sigma err 9.6 -> 6.2 % on the d = 5 Gaussian bridge)
    schedule: str = "symmetric"  # symmetric (small steps at both ends) | uniform
    gamma_ratio: float = 0.1     # symmetric: smallest / largest step
    cache_size: int = 10000      # trajectories held in the cache
    cache_refresh: int = 1000    # optimiser steps between cache refreshes (0: once per half-bridge)
    lr_final: float = 0.05       # the learning rate decays (cosine) to lr_final * train.lr over each half-bridge


def dsb_grid(T: float, num_steps: int, schedule: str = "symmetric", gamma_ratio: float = 0.1) -> Tensor:
    """Time grid ``(N+1,)`` float64 from 0 to ``T``.

    ``symmetric``: step sizes rise linearly from ``γ_min`` to ``γ_max = γ_min/gamma_ratio`` over the
    first half and fall back over the second (De Bortoli et al. 2021 §5; their ``gamma_space =
    linspace``), scaled so that ``Σγ = T``: small steps at the data side, where the score is
    sharpest, and at the prior side. ``uniform``: ``γ = T/N``.
    """
    if num_steps < 1:
        raise SbdiffError(f"dsb.num_steps must be at least 1, got {num_steps}")
    if schedule == "uniform" or num_steps < 3:
        gammas = np.full(num_steps, 1.0)
    elif schedule == "symmetric":
        half = np.linspace(gamma_ratio, 1.0, (num_steps + 1) // 2)
        gammas = np.concatenate([half, half[: num_steps // 2][::-1]])
    else:
        raise SbdiffError(f"dsb.schedule must be symmetric or uniform, got '{schedule}'")
    gammas = gammas / gammas.sum() * T
    grid = np.concatenate([[0.0], np.cumsum(gammas)])
    grid[-1] = T
    return torch.as_tensor(grid, dtype=torch.float64)


def gaussian_fit_kl(samples: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """``KL(N(m̂, Ĉ) ‖ N(mean, cov))`` with ``m̂, Ĉ`` the moments of ``samples`` ``(B, d)`` (a
    Gaussian-moment proxy of the prior loss for a data-set prior; nats, scalar)."""
    x = samples.double()
    m = x.mean(0)
    xc = x - m
    c = xc.T @ xc / max(len(x) - 1, 1)
    d = x.shape[1]
    cov = cov.double()
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    L = torch.linalg.cholesky(cov + 1e-9 * eye)
    c = c + 1e-9 * eye
    inv_c = torch.cholesky_solve(c, L)
    diff = torch.cholesky_solve((m - mean.double())[:, None], L)[:, 0]
    kl = 0.5 * (torch.diagonal(inv_c).sum() + ((m - mean.double()) * diff).sum() - d
                + 2 * torch.log(torch.diagonal(L)).sum() - torch.linalg.slogdet(c)[1])
    return kl.float()


@register("dsb")
class DSB(Method):
    """Neural encoder and decoder / mean matching / alternating half-bridges (IPF)."""

    settings = DSBConfig
    bridges = True
    ddp_find_unused_parameters = True  # one network gets no gradient in each half-bridge
    # Each half-bridge is a few thousand steps and its EMA weights become the next half-bridge's
    # sampler, so the EMA horizon must be short against a phase (0.999 kept ~55 % of the untrained
    # network after 600 steps; on the d = 2 Gaussian bridge the first decoder's coupling error fell
    # from 77 % to 11 % with 0.99). A 128x2 MLP: a cache refresh (10k chains x 20 steps) costs ~1 s
    # on 2 cores against ~4 s for 256x3 (~2.4 s at the default 50 steps), and a step ~3.5x less.
    defaults = {"train.ema_decay": 0.99, "model.hidden": 128, "model.blocks": 2}
    # decoder, encoder, decoder half-bridges of 4 steps, caches refreshed every 2 steps
    smoke = "[dsb]\niterations = 2\nhalf_steps = 4\nnum_steps = 4\ncache_size = 64\ncache_refresh = 2\nlr_final = 1.0\n"

    @classmethod
    def check(cls, config: Config) -> None:
        d = config.dsb
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

    def __init__(self, config: Config):
        super().__init__(config)
        c = config.dsb
        self.schedule = HalfBridgeSchedule(c.iterations, c.half_steps, c.first_steps)
        self._phase: Phase | None = None  # the phase the cache belongs to
        self._cache: dict | None = None
        self._cache_step: int | None = None
        self._prior_loss: float | None = None

    # -- model -----------------------------------------------------------------------------------
    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        reference = self.make_reference()
        dim = check_flat(data)
        grid = dsb_grid(reference.T, cfg.dsb.num_steps, cfg.dsb.schedule, cfg.dsb.gamma_ratio)
        model = self.assemble(NeuralEncoder(reference, build_network(cfg, dim, reference.T)),
                              NeuralDecoder(reference, build_network(cfg, dim, reference.T)), data, prior,
                              t_min=0.0, sde_grid=grid)
        self._data = torch.as_tensor(data, dtype=torch.float32)
        if prior is not None:  # the prior's Gaussian fit in model coordinates, for the prior-loss monitor
            p = model.to_model(torch.as_tensor(prior, dtype=torch.float32)).double()
            self._prior_moments = (p.mean(0), torch.cov(p.T).reshape(dim, dim))
        else:
            self._prior_moments = (torch.zeros(dim, dtype=torch.float64),
                                   reference.prior_var() * torch.eye(dim, dtype=torch.float64))
        return model

    @classmethod
    def schedule_ends(cls, config: Config) -> bool:
        return config.dsb.iterations > 0

    def max_steps(self) -> int | None:
        return self.schedule.total_steps()

    def lr_factor(self, step: int) -> float:
        """Cosine decay from 1 to ``dsb.lr_final`` over each half-bridge: the mean-matching targets
        are noisy (variance ``σ_k²`` per step), and a decaying rate averages the noise out before
        the network is frozen for the next half-bridge."""
        phase = self.schedule.phase(step)
        frac = min(max((step - phase.start) / max(phase.end - phase.start, 1), 0.0), 1.0)
        final = self.config.dsb.lr_final
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac))

    def checkpoint_due(self, step: int) -> bool:
        return step == self.schedule.phase(step - 1).end if step > 0 else False

    def frozen(self, step: int) -> tuple[str, ...]:
        return ("encoder.",) if self.schedule.phase(step).role == "decoder" else ("decoder.",)

    def progress_info(self, step: int) -> dict[str, str]:
        phase = self.schedule.phase(step)
        total = f"/{self.config.dsb.iterations - 1}" if self.config.dsb.iterations else ""
        return {"ipf": f"{phase.iteration}{total} {phase.role}"}

    # -- schedule: trajectory caches -------------------------------------------------------------
    def begin_step(self, model: PathVAE, ema_model: PathVAE, step: int) -> None:
        """Refill the cache at the start of a half-bridge and every ``dsb.cache_refresh`` steps
        within it, from the frozen network's EMA weights (which the loop does not move while it is
        frozen: :meth:`frozen`), with randomness seeded by the refresh step (so a resume redraws
        the same cache)."""
        phase = self.schedule.phase(step)
        refresh = self.config.dsb.cache_refresh or (phase.end - phase.start)
        due = phase.start + (step - phase.start) // refresh * refresh
        if self._phase != phase or self._cache_step != due:
            self._phase = phase
            self._fill_cache(model, ema_model, phase, due)

    @torch.no_grad()
    def _fill_cache(self, model: PathVAE, ema_model: PathVAE, phase: Phase, step: int) -> None:
        """Simulate ``dsb.cache_size`` chains of the frozen network with randomness seeded by ``step``."""
        device = model.data_mean.device
        gen = step_generator(self.config.seed, step, _CACHE_STREAM, device)
        n = self.config.dsb.cache_size
        ts = model.sde_grid.to(device)
        if phase.role == "decoder":  # encoder chains from the data
            idx = torch.randint(0, len(self._data), (n,), generator=gen, device=device)
            x = model.dequantize_model(model.to_model(self._data.to(device)[idx]), generator=gen)
            xs, outs = self._chain(model, ema_model.encoder.net, x, ts, gen, forward=True)
            mean, cov = (v.to(device) for v in self._prior_moments)  # the frozen encoder's X_T against the prior
            self._prior_loss = float(gaussian_fit_kl(xs[-1], mean, cov))
        else:  # decoder chains from the prior
            x = model.prior_model_points(n, generator=gen)
            xs, outs = self._chain(model, ema_model.decoder.net, x, ts, gen, forward=False)
        self._cache = {"x": xs, "out": outs}
        self._cache_step = step

    @staticmethod
    def _step_mean(model: PathVAE, net, x: Tensor, t: Tensor, gamma: Tensor, forward: bool) -> Tensor:
        """``F_k(x) = x + γ[f + g·net](x, t)`` (forward) or ``B_k(x) = x − γ[f − g·net](x, t)``."""
        f, g = model.reference.sde(x, t)
        drift = f + append_dims(g, x.ndim) * net(x, t) if forward else f - append_dims(g, x.ndim) * net(x, t)
        return x + drift * gamma if forward else x - drift * gamma

    def _chain(self, model: PathVAE, net, x: Tensor, ts: Tensor, gen, forward: bool) -> tuple[Tensor, Tensor]:
        """Chains of the frozen network and the mean-matching offsets.

        Forward (encoder from data): ``xs[k] = X_k`` for ``k = 0..N``, ``outs[k−1] = F_k(X_{k−1}) − F_k(X_k)``.
        Backward (decoder from the prior): ``xs[k] = X_k`` likewise, ``outs[k−1] = B_k(X_k) − B_k(X_{k−1})``.
        Shapes ``(N+1, n, d)`` and ``(N, n, d)``.
        """
        N = len(ts) - 1
        n = x.shape[0]
        xs = torch.empty((N + 1, *x.shape), dtype=x.dtype, device=x.device)
        outs = torch.empty((N, *x.shape), dtype=x.dtype, device=x.device)
        ks = range(1, N + 1) if forward else range(N, 0, -1)
        xs[0 if forward else N] = x
        for k in ks:
            t = ts[k - 1] if forward else ts[k]
            tb = t.to(x.dtype).expand(n)
            gamma = float(ts[k] - ts[k - 1])
            sigma = math.sqrt(gamma) * float(model.reference.g(ts[k - 1].reshape(1).double()))  # both directions
            mean_old = self._step_mean(model, net, x, tb, gamma, forward)
            x = mean_old + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
            outs[k - 1] = mean_old - self._step_mean(model, net, x, tb, gamma, forward)
            xs[k if forward else k - 1] = x
        return xs, outs

    # -- losses ----------------------------------------------------------------------------------
    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Mean matching on ``batch.shape[0]`` (step, path) pairs of the cache (the data batch itself
        is not used: the cache holds the frozen network's chains)."""
        phase = self._phase
        if phase is None or self._cache is None:
            raise SbdiffError("DSB.losses called before begin_step: the training loop sets up the cache")
        xs, outs = self._cache["x"], self._cache["out"]
        N, n = outs.shape[0], outs.shape[1]
        B = batch.shape[0]
        k = torch.randint(1, N + 1, (B,), generator=generator, device=xs.device)
        m = torch.randint(0, n, (B,), generator=generator, device=xs.device)
        ts = model.sde_grid.to(device=xs.device, dtype=xs.dtype)
        gamma = ts[k] - ts[k - 1]
        out = outs[k - 1, m]
        if phase.role == "decoder":  # B_k(X_k) − X_k ≈ F_k(X_{k−1}) − F_k(X_k)
            x, t = xs[k, m], ts[k]
            f, g = model.reference.sde(x, t)
            pred = -append_dims(gamma, x.ndim) * (f - append_dims(g, x.ndim) * model.decoder.net(x, t))
            key = "drift_matching"
        else:  # F_k(X_{k−1}) − X_{k−1} ≈ B_k(X_k) − B_k(X_{k−1})
            x, t = xs[k - 1, m], ts[k - 1]
            f, g = model.reference.sde(x, t)
            pred = append_dims(gamma, x.ndim) * (f + append_dims(g, x.ndim) * model.encoder.net(x, t))
            key = "encoder_matching"
        sigma = torch.sqrt(gamma) * model.reference.g(ts[k - 1])  # the step's noise, both directions
        loss = ((pred - out) / append_dims(sigma, x.ndim)).pow(2).reshape(B, -1).sum(1).mean()
        res = {"loss": loss, key: loss.detach(),
               "ipf_iteration": torch.tensor(float(phase.iteration), device=loss.device)}
        if self._prior_loss is not None:
            res["prior_loss"] = torch.tensor(self._prior_loss, device=loss.device)
        return res

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        return torch.tensor(float("nan") if self._prior_loss is None else self._prior_loss)

    # -- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The prior-loss monitor (measured on the last encoder cache). The frozen network's weights
        are the EMA weights, which the checkpoint holds; the cache is redrawn from its seed."""
        return {"prior_loss": self._prior_loss if self._prior_loss is not None else float("nan")}

    def load_state_dict(self, state: dict) -> None:
        pl = float(state.get("prior_loss", float("nan")))
        self._prior_loss = None if math.isnan(pl) else pl
        self._phase = self._cache = self._cache_step = None
