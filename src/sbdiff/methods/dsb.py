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

IPF iteration ``n`` (:class:`~sbdiff.methods._schedule.PhaseSchedule`, run by the alternating base
:class:`~sbdiff.methods._alternating.Alternating`):

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
steps) from the frozen network's averaged weights at the end of its half-bridge (the freeze policy
of :mod:`sbdiff.methods._alternating`); the frozen network gets no gradient, so its weights and Adam
state carry over to its next half-bridge (a warm start). Both noise scales of step ``k`` are ``σ_k = √γ_k g(t_{k−1})`` (the step's data-side
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
from ..encoders import NeuralEncoder
from ..model import PathVAE
from ..solvers import make_grid, sdeint
from ._alternating import Alternating
from ._schedule import Phase
from .base import build_network, check_flat, register

__all__ = ["DSB", "DSBConfig", "dsb_grid"]


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
    """Time grid ``(N+1,)`` float64 from 0 to ``T`` (:func:`sbdiff.solvers.make_grid`).

    ``symmetric``: step sizes rise linearly from ``γ_min`` to ``γ_max = γ_min/gamma_ratio`` over the
    first half and fall back over the second (De Bortoli et al. 2021 §5), so small steps at the data
    side, where the score is sharpest, and at the prior side. ``uniform``: ``γ = T/N``.
    """
    if num_steps < 1:
        raise SbdiffError(f"dsb.num_steps must be at least 1, got {num_steps}")
    if schedule not in ("symmetric", "uniform"):
        raise SbdiffError(f"dsb.schedule must be symmetric or uniform, got '{schedule}'")
    return make_grid("symmetric", 0.0, T, num_steps, gamma_ratio=gamma_ratio if schedule == "symmetric" else 1.0)


@register("dsb")
class DSB(Alternating):
    """Neural encoder and decoder / mean matching / alternating half-bridges (IPF)."""

    settings = DSBConfig
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
        self._prior_loss: float | None = None  # the KL monitor of the last encoder cache

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
        return model

    # -- the frozen side's chains ----------------------------------------------------------------
    @torch.no_grad()
    def simulate(self, model: PathVAE, frozen, phase: Phase, generator: torch.Generator) -> dict[str, Tensor]:
        """``dsb.cache_size`` chains of the ``frozen`` part: the encoder's from the data (decoder
        phases; the prior-loss monitor is measured on their ends) or the decoder's from the prior."""
        device = model.data_mean.device
        n = self.config.dsb.cache_size
        ts = model.sde_grid.to(device)
        if phase.role == "decoder":  # encoder chains from the data
            idx = torch.randint(0, len(self._data), (n,), generator=generator, device=device)
            x = model.dequantize_model(model.to_model(self._data.to(device)[idx]), generator=generator)
            xs, outs = self._chain(model, frozen.net, x, ts, generator, forward=True)
            self._prior_loss = float(self.prior_kl(model, xs[-1]))  # the frozen encoder's X_T against the prior
        else:  # decoder chains from the prior
            x = model.prior_model_points(n, generator=generator)
            xs, outs = self._chain(model, frozen.net, x, ts, generator, forward=False)
        return {"x": xs, "out": outs}

    @staticmethod
    def _step_mean(model: PathVAE, net, x: Tensor, t: Tensor, gamma: Tensor, forward: bool) -> Tensor:
        """``F_k(x) = x + γ[f + g·net](x, t)`` (forward) or ``B_k(x) = x − γ[f − g·net](x, t)``."""
        f, g = model.reference.sde(x, t)
        drift = f + append_dims(g, x.ndim) * net(x, t) if forward else f - append_dims(g, x.ndim) * net(x, t)
        return x + drift * gamma if forward else x - drift * gamma

    def _chain(self, model: PathVAE, net, x: Tensor, ts: Tensor, gen, forward: bool) -> tuple[Tensor, Tensor]:
        """Chains of the frozen network and the mean-matching offsets (:func:`sbdiff.solvers.sdeint`
        with the chain's kernel as the scheme: ``X_k = F_k(X_{k−1}) + σ_k ξ`` forward, ``X_{k−1} =
        B_k(X_k) + σ_k ξ`` backward, ``σ_k = √γ_k g(t_{k−1})``).

        Forward (encoder from data): ``xs[k] = X_k`` for ``k = 0..N``, ``outs[k−1] = F_k(X_{k−1}) − F_k(X_k)``.
        Backward (decoder from the prior): ``xs[k] = X_k`` likewise, ``outs[k−1] = B_k(X_k) − B_k(X_{k−1})``.
        Shapes ``(N+1, n, d)`` and ``(N, n, d)``.
        """
        N = len(ts) - 1
        n = x.shape[0]
        xs = torch.empty((N + 1, *x.shape), dtype=x.dtype, device=x.device)
        outs = torch.empty((N, *x.shape), dtype=x.dtype, device=x.device)

        def record(j: int, y: Tensor, t: Tensor) -> None:
            xs[j if forward else N - j] = y

        def kernel(j: int, y: Tensor, t0: Tensor, t1: Tensor, noise: Tensor) -> Tensor:
            tb = t0.to(y.dtype).expand(n)
            gamma = float(abs(t1 - t0))
            lower = t0 if forward else t1  # t_{k−1}: both directions use the forward step's noise
            sigma = math.sqrt(gamma) * float(model.reference.g(lower.reshape(1).double()))
            mean_old = self._step_mean(model, net, y, tb, gamma, forward)
            y = mean_old + sigma * noise
            outs[j if forward else N - 1 - j] = mean_old - self._step_mean(model, net, y, tb, gamma, forward)
            return y

        sdeint(kernel, x, ts if forward else ts.flip(0), generator=gen, observe=record)
        return xs, outs

    # -- losses ----------------------------------------------------------------------------------
    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Mean matching on ``batch.shape[0]`` (step, path) pairs of the cache (the data batch itself
        is not used: the cache holds the frozen network's chains)."""
        phase, cache = self._require_cache()
        xs, outs = cache["x"], cache["out"]
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
        super().load_state_dict(state)
        pl = float(state.get("prior_loss", float("nan")))
        self._prior_loss = None if math.isnan(pl) else pl
