"""DSBM: bridge matching by iterative Markovian fitting, and the coupled loop (DESIGN §4.5).

Shi, De Bortoli, Campbell, Doucet, NeurIPS 2023 ("Diffusion Schrödinger Bridge Matching", IMF), and
Peluchetti, TMLR 2024 (BM², the coupled loop), as the ``neural / bridge matching / alternating``
preset of the path VAE. Both SDEs have a neural control: the encoder's forward drift ``f + g z_φ``
and the decoder's backward drift ``f − g ẑ_θ`` (read in forward time).

For a coupling ``π(x0, x1)`` the *reciprocal* path law is the reference's bridges pinned at the pairs
(:func:`sbdiff.couplings.bridge_sample`). Its Markovian projection has the forward control
``E[z*(X_t) | X_t]`` and the backward control ``E[ẑ*(X_t) | X_t]`` with the bridge's own controls
(:func:`sbdiff.couplings.bridge_targets`; for ``brownian(eps)`` on ``[0, 1]``:
``z* = (x1 − X_t)/(√eps (1 − t))``, ``ẑ* = (x0 − X_t)/(√eps t)``), so each half-step is a plain
regression on ``(X_t, t)``: drift matching of one network against the reciprocal projection of the
other's path law. The target's variance given the pair, ``V(t)`` (``t/(1 − t)`` forward,
``(1 − t)/t`` backward for ``brownian``), is unbounded at the pinned end, so ``t`` is drawn on
``(δT, (1 − δ)T)`` with density ``∝ max(1, √V)`` and the residual weighted by the inverse density
(:class:`sbdiff.couplings.BridgeTimes`): the path KL's uniform time in expectation, with a finite
gradient variance.

Schedules (``dsbm.schedule``):

* ``imf`` — the phases of the alternating base (:class:`~sbdiff.methods._alternating.Alternating`).
  Decoder phase 0 fits the backward drift on bridges of the iteration-0 coupling of the data and the
  prior (``dsbm.coupling``: ``independent``, or minibatch OT, exact ``ot`` or ``entropic`` with
  regularisation ``2·eps``: SF²M's coupling, Tong et al. 2024;
  :func:`sbdiff.couplings.minibatch_coupling`; or ``lightsb``: the plan of a LightSB fit, DESIGN §4.7,
  a closed-form SB of a mixture potential fitted in seconds, so that the projections start from an
  approximate SB rather than a minibatch plan). Then, in turn: an encoder phase fits the forward
  drift on bridges of pairs ``(x0, x1)`` with ``x1`` drawn from the prior and ``x0`` simulated by the
  frozen decoder; a decoder phase fits the backward drift on pairs with ``x0`` from the data and
  ``x1`` simulated by the frozen encoder. Each projection keeps both marginals of the coupling it
  was fed, so the prior loss (DESIGN §2) is zero in the population limit; the fixed point is the SB.
* ``coupled`` — both networks in one loop (BM²): each step fits the forward drift on the decoder's
  cached pairs and the backward drift on the encoder's, the caches simulated by the live networks
  every ``cache_refresh`` steps (no gradient through them); the first ``first_steps`` steps train both
  on the iteration-0 coupling.

The caches hold pairs only (``(M, d)`` each; and their contexts in a conditional run); the frozen
side is simulated by Euler–Maruyama on the uniform grid of ``num_steps`` steps, which is also the SDE
grid of ``decode``/``encode``. Modes:
bridge (``data.prior`` a second data set at ``t = T``) and generative (the reference's prior; with
``brownian(eps)`` on ``[0, 1]``, ``N(0, eps·I)``): there the probability-flow ODE
``dx/dt = f + ½ g (z − ẑ)`` (the mean of the forward and the reversed backward drift) gives ``nll``.

Conditioning (DESIGN §4.6; generative mode only, as for every conditional preset): each data row
``x`` has its context ``c`` (a label, or a vector such as a series' history window), both networks
take ``c`` (``z_φ(x, t, c)``, ``ẑ_θ(x, t, c)``), and every pair carries the context it was drawn
under, stored beside it in the caches (``"c"``, model form, rows aligned with ``x0`` and ``x1``): a
decoder phase's pairs are data rows ``x0`` with their own contexts and the frozen encoder's ends
``x1`` simulated under them; an encoder phase's pairs are prior draws ``x1``, a context drawn
uniformly from the training contexts (:attr:`~sbdiff.methods.Method.context_pool`, with the cache's
generator, after the prior draws) and the frozen decoder's end ``x0`` simulated under it. The
regression then runs per context: the IMF argument holds for each ``c``, so the fixed point is the
SB from ``p_data(· | c)`` to the prior for every ``c``. Iteration 0 takes the *independent*
coupling (a data row with its context and an independent prior draw): a minibatch OT, entropic or
LightSB plan between data rows and prior draws would pair a prior point with the data of whichever
context lies nearest, not with a draw of ``x | c``; an unset ``dsbm.coupling`` resolves to
``independent`` in a conditional run, and an explicit ``ot``, ``entropic`` or ``lightsb`` is refused
in one line. Classifier-free guidance: the losses' ``context`` (the trainer's batch contexts with
rows dropped to the null context with probability ``cond.p_uncond``) is used only for its dropped
rows: the ``i``-th pair drawn from a cache loses its context where the ``i``-th batch row lost its
(the mask is independent of the pairs, so each pair is dropped with probability ``p_uncond``), in
both networks' regressions; the simulations always run under the pairs' real contexts. An
unconditional run draws exactly what it drew before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._utils import SbdiffError
from ..config import Config, Section, set_resolved
from ..couplings import COUPLINGS, BridgeTimes, bridge_matching_loss, minibatch_coupling
from ..decoders import NeuralDecoder
from ..distributed import step_generator
from ..encoders import NeuralEncoder
from ..mixture_sb import MixturePotential, fit_mixture_sb
from ..model import PathVAE
from ..references import Brownian
from ..solvers import euler_maruyama, make_grid
from ._alternating import CACHE_STREAM, Alternating
from ._schedule import Phase, PhaseSchedule
from .base import build_network, check_flat, register

__all__ = ["DSBM", "DSBMConfig", "SCHEDULES", "DSBM_COUPLINGS"]

#: The schedules of ``dsbm.schedule``.
SCHEDULES = ("imf", "coupled")
#: The iteration-0 couplings of ``dsbm.coupling``: the minibatch ones and a LightSB fit's plan.
DSBM_COUPLINGS = (*COUPLINGS, "lightsb")
#: The seed stream of the LightSB fit behind ``dsbm.coupling = "lightsb"``.
LIGHTSB_STREAM = 104_729


@dataclass
class DSBMConfig(Section):
    """Settings of ``method = "dsbm"``, the ``[dsbm]`` section (DESIGN §4.5; Shi et al. 2023, Peluchetti 2024)."""

    schedule: str = "imf"          # imf (alternating Markovian projections, DSBM) | coupled (both networks in one loop, BM²)
    coupling: str = "entropic"     # iteration 0's coupling: independent | ot (exact minibatch OT) | entropic (Sinkhorn, reg 2 eps) | lightsb (the plan of a LightSB fit); conditional runs: independent
    coupling_steps: int = 10000    # lightsb coupling: Adam steps of the mixture fit (its K, covariance, s_init, s_floor: the [lightsb] section)
    iterations: int = 0            # imf: decoder phases (the encoder is fitted between them); 0: as many as the budget holds
    half_steps: int = 2000         # imf: optimiser steps per phase (stretched to fill a budget)
    first_steps: int = 0           # imf: steps of decoder phase 0 (0: half_steps); coupled: steps on the coupling before the loop
    num_steps: int = 100           # Euler-Maruyama steps of the simulated pairs and of decode/encode
    cache_size: int = 10000        # pairs in each cache
    cache_refresh: int = 1000      # steps between cache refreshes (0: once per phase; coupled: required)
    ot_block: int = 512            # rows per minibatch OT problem (ot, entropic)
    sinkhorn_iters: int = 1000     # iteration cap of Sinkhorn (entropic)
    lr_final: float = 0.1          # imf: the learning rate decays (cosine) to lr_final * train.lr over each phase
    time_margin: float = 1e-3      # t is drawn on (margin T, (1 - margin) T) (density ∝ max(1, √V), importance-weighted)


@register("dsbm")
class DSBM(Alternating):
    """Neural encoder and decoder / bridge matching / alternating Markovian projections (IMF) or coupled."""

    settings = DSBMConfig
    conditional = True
    # Like DSB: a phase's EMA weights become the next phase's simulator, so a short horizon; a 128x2 MLP.
    # dsbm.coupling is a layer key (its generic default) so that a conditional run's resolution to
    # "independent" (check) is undone when the config is validated again without a context.
    defaults = {"train.ema_decay": 0.99, "train.lr": 2e-3, "model.hidden": 128, "model.blocks": 2,
                "dsbm.coupling": DSBMConfig.coupling}
    # decoder, encoder, decoder phases of 4 steps, caches of 64 pairs refreshed every 2 steps
    smoke = ("[dsbm]\niterations = 2\nhalf_steps = 4\nnum_steps = 4\ncache_size = 64\ncache_refresh = 2\n"
             "lr_final = 1.0\ncoupling = \"ot\"\not_block = 32\n")

    @classmethod
    def check(cls, config: Config) -> None:
        d = config.dsbm
        if d.schedule not in SCHEDULES:
            raise SbdiffError(f"dsbm.schedule must be one of {', '.join(SCHEDULES)}, got '{d.schedule}'")
        if d.coupling not in DSBM_COUPLINGS:
            raise SbdiffError(f"dsbm.coupling must be one of {', '.join(DSBM_COUPLINGS)}, got '{d.coupling}'")
        for name in ("iterations", "first_steps", "cache_refresh"):
            if getattr(d, name) < 0:
                raise SbdiffError(f"dsbm.{name} must be >= 0, got {getattr(d, name)}")
        for name in ("half_steps", "num_steps", "cache_size", "ot_block", "sinkhorn_iters", "coupling_steps"):
            if getattr(d, name) < 1:
                raise SbdiffError(f"dsbm.{name} must be at least 1, got {getattr(d, name)}")
        if not 0 <= d.lr_final <= 1:
            raise SbdiffError(f"dsbm.lr_final must lie in [0, 1], got {d.lr_final}")
        if not 0 < d.time_margin < 0.5:
            raise SbdiffError(f"dsbm.time_margin must lie in (0, 0.5), got {d.time_margin}")
        if config.method == cls.name and d.schedule == "coupled" and d.cache_refresh == 0:
            raise SbdiffError("dsbm.schedule = coupled refreshes its caches every dsbm.cache_refresh steps: set it >= 1")
        conditional = config.cond.requested or config.cond.kind != "none"
        if config.method == cls.name and conditional:
            if "coupling" in d.explicit() and d.coupling != "independent":
                raise SbdiffError(_conditional_coupling_error(d.coupling))
            set_resolved(d, "coupling", "independent")  # module docstring, "Conditioning"

    @classmethod
    def schedule_of(cls, config: Config) -> PhaseSchedule | None:
        """The IMF phases; ``None`` for the coupled loop. With ``iterations = 0`` ("until the budget
        ends") and a step budget alone (``train.steps``, no ``train.max_minutes``), the phases are
        fitted to ``train.steps`` at once (:meth:`PhaseSchedule.fit_to`), so the run ends on a finished
        decoder phase with its rate decayed; a time budget fits them after timing the first steps."""
        if config.dsbm.schedule != "imf":
            return None
        schedule = super().schedule_of(config)
        t = config.train
        if config.dsbm.iterations == 0 and t.steps and not t.max_minutes:
            schedule = schedule.fit_to(t.steps, 0)
        return schedule

    def __init__(self, config: Config):
        super().__init__(config)
        self._data: Tensor | None = None  # data-side points, data coordinates
        self._prior_loss: float | None = None  # the KL monitor of the encoder's last simulated ends
        self._coupling_s: float = 0.0  # seconds of the last iteration-0 coupling draw
        self._times: BridgeTimes | None = None  # the regression's time sampler (built with the model)
        self._lightsb: MixturePotential | None = None  # coupling = lightsb: the fitted potential

    # -- model -----------------------------------------------------------------------------------
    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        reference = self.make_reference()
        dim = check_flat(data)
        t_min = 0.0 if prior is not None else cfg.model.t_min
        grid = make_grid("uniform", t_min, reference.T, cfg.dsbm.num_steps)
        model = self.assemble(NeuralEncoder(reference, build_network(cfg, dim, reference.T)),
                              NeuralDecoder(reference, build_network(cfg, dim, reference.T)), data, prior,
                              t_min=t_min, sde_grid=grid)
        self._data = torch.as_tensor(data, dtype=torch.float32)
        self._times = BridgeTimes(reference, cfg.dsbm.time_margin)
        return model

    # -- pairs -------------------------------------------------------------------------------------
    def _data_points(self, model: PathVAE, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """``n`` data rows drawn with replacement (model coordinates, dequantised) and their contexts
        (model form; ``None`` in an unconditional run)."""
        device = model.data_mean.device
        idx = torch.randint(0, len(self._data), (n,), generator=gen, device=device)
        x = model.dequantize_model(model.to_model(self._data.to(device)[idx]), generator=gen)
        return x, (None if self.context_pool is None else self.context_pool[idx.to(self.context_pool.device)])

    def _simulate(self, model: PathVAE, part, x: Tensor, forward: bool, gen: torch.Generator,
                  c: Tensor | None = None) -> Tensor:
        """The end of ``part``'s SDE (an encoder forward from ``x`` at ``t_min``, a decoder backward
        from ``x`` at ``T``) by Euler–Maruyama on the model's grid, noise in every step; row ``i``
        under the context ``c[i]`` (model form) when ``c`` is given."""
        ts = model.sde_grid.to(device=x.device, dtype=x.dtype)
        drift = part.drift if c is None else (lambda y, t: part.drift(y, t, c))
        return euler_maruyama(drift, model.reference.g, x, ts if forward else ts.flip(0), generator=gen,
                              noise_last=True)

    @staticmethod
    def _with_context(pairs: dict[str, Tensor], c: Tensor | None) -> dict[str, Tensor]:
        return pairs if c is None else {**pairs, "c": c}

    def _coupling_pairs(self, model: PathVAE, n: int, gen: torch.Generator) -> dict[str, Tensor]:
        """``n`` pairs of the iteration-0 coupling of the data and the prior (``dsbm.coupling``):
        minibatch couplings of data and prior draws, or (``lightsb``) prior draws ``x1`` with
        ``x0 ~ π_θ(· | x1)`` of the LightSB fit (:meth:`_lightsb_plan`). A conditional run: the
        independent coupling, each pair with its data row's context (module docstring)."""
        s = self.config.dsbm
        if self.context_pool is not None and s.coupling != "independent":
            raise SbdiffError(_conditional_coupling_error(s.coupling))
        if s.coupling == "lightsb":
            start = time.perf_counter()
            potential = self._lightsb_plan(model)
            x1 = model.prior_model_points(n, generator=gen)
            x0 = potential.sample_plan(x1, gen)
            self._coupling_s = time.perf_counter() - start
            return {"x0": x0, "x1": x1}
        x0, c = self._data_points(model, n, gen)
        x1 = model.prior_model_points(n, generator=gen)
        start = time.perf_counter()
        eps = float(getattr(model.reference, "eps", 1.0))
        j = minibatch_coupling(x0, x1, s.coupling, eps=eps, block=s.ot_block, max_iter=s.sinkhorn_iters, generator=gen)
        self._coupling_s = time.perf_counter() - start
        return self._with_context({"x0": x0, "x1": x1[j]}, c)

    def _lightsb_plan(self, model: PathVAE) -> MixturePotential:
        """The LightSB fit (DESIGN §4.7) whose plan is iteration 0's coupling: a mixture potential on
        the data side fitted to all data points and as many prior draws (model coordinates) by
        ``dsbm.coupling_steps`` Adam steps of batch 512 (:func:`~sbdiff.mixture_sb.fit_mixture_sb`; the
        mixture's settings from ``[lightsb]``), on a generator of its own seeded by ``config.seed``, so
        that a resumed run refits the same potential. Fitted once per process."""
        if self._lightsb is None:
            cfg = self.config
            if not isinstance(model.reference, Brownian) or model.reference.T != 1.0:
                raise SbdiffError("dsbm.coupling = lightsb needs the reference brownian(eps) on [0, 1] (--eps EPS)")
            device = model.data_mean.device
            gen = torch.Generator(device=device).manual_seed(cfg.seed + LIGHTSB_STREAM)
            x0 = model.to_model(self._data.to(device))
            x1 = model.prior_model_points(len(x0), generator=gen)
            ls = cfg.lightsb
            self._lightsb = fit_mixture_sb(x1, x0, model.reference.eps, components=ls.components,
                                           covariance=ls.covariance, s_init=ls.s_init, s_floor=ls.s_floor,
                                           lr_final=ls.lr_final, steps=cfg.dsbm.coupling_steps, generator=gen)
        return self._lightsb

    @torch.no_grad()
    def _encoder_pairs(self, model: PathVAE, encoder, n: int, gen: torch.Generator) -> dict[str, Tensor]:
        """Pairs of the encoder's path law: ``x0`` from the data, ``x1`` its simulated end (under
        ``x0``'s context in a conditional run; the prior-loss monitor is measured on these ends)."""
        x0, c = self._data_points(model, n, gen)
        x1 = self._simulate(model, encoder, x0, True, gen, c)
        self._prior_loss = float(self.prior_kl(model, x1))
        return self._with_context({"x0": x0, "x1": x1}, c)

    @torch.no_grad()
    def _decoder_pairs(self, model: PathVAE, decoder, n: int, gen: torch.Generator) -> dict[str, Tensor]:
        """Pairs of the decoder's path law: ``x1`` from the prior, ``x0`` its simulated end (in a
        conditional run under a context drawn from the training contexts, kept with the pair)."""
        x1 = model.prior_model_points(n, generator=gen)
        c = None
        if self.context_pool is not None:
            pool = self.context_pool
            c = pool[torch.randint(0, len(pool), (n,), generator=gen, device=gen.device).to(pool.device)]
        return self._with_context({"x0": self._simulate(model, decoder, x1, False, gen, c), "x1": x1}, c)

    @torch.no_grad()
    def simulate(self, model: PathVAE, frozen, phase: Phase, generator: torch.Generator) -> dict[str, Tensor]:
        """The pairs of ``phase``: the iteration-0 coupling (decoder phase 0), the frozen encoder's
        (decoder phases) or the frozen decoder's (encoder phases); ``dsbm.cache_size`` of them."""
        n = self.config.dsbm.cache_size
        if phase.index == 0:
            return self._coupling_pairs(model, n, generator)
        if phase.role == "decoder":
            return self._encoder_pairs(model, frozen, n, generator)
        return self._decoder_pairs(model, frozen, n, generator)

    # -- the coupled loop -------------------------------------------------------------------------
    def begin_step(self, model: PathVAE, step: int) -> None:
        if self.schedule is not None:
            return super().begin_step(model, step)
        s = self.config.dsbm
        warm = step < s.first_steps
        start = 0 if warm else s.first_steps
        due = start + (step - start) // s.cache_refresh * s.cache_refresh
        if self.cache is not None and self._cache_step == due:
            device = model.data_mean.device
            if self.cache["decoder"]["x0"].device != device:  # a resumed cache comes back on the CPU
                self.cache = {k: {n: v.to(device) for n, v in pairs.items()} for k, pairs in self.cache.items()}
            return
        gen = step_generator(self.config.seed, due, CACHE_STREAM, model.data_mean.device)
        if warm:
            pairs = self._coupling_pairs(model, s.cache_size, gen)
            self.cache = {"decoder": pairs, "encoder": pairs}
        else:
            self.cache = {"decoder": self._encoder_pairs(model, model.encoder, s.cache_size, gen),
                          "encoder": self._decoder_pairs(model, model.decoder, s.cache_size, gen)}
        self._cache_step = due

    # -- losses ------------------------------------------------------------------------------------
    def _matching(self, model: PathVAE, pairs: dict[str, Tensor], B: int, generator: torch.Generator,
                  role: str, dropped: Tensor | None = None) -> Tensor:
        """Bridge matching of one network on ``B`` pairs of ``pairs``: the squared residual of its
        control against the bridge's (:func:`sbdiff.couplings.bridge_targets`), summed over
        coordinates, at times drawn by :class:`~sbdiff.couplings.BridgeTimes` with their importance
        weights (the path KL's uniform time in expectation), mean over the batch. Pairs with a
        context (``pairs["c"]``) are regressed under it, the ``i``-th drawn pair's replaced by the
        null context where ``dropped[i]`` (``(B,)`` bool; classifier-free guidance)."""
        x0, x1 = pairs["x0"], pairs["x1"]
        m = torch.randint(0, len(x0), (B,), generator=generator, device=x0.device)
        net = model.encoder.net if role == "encoder" else model.decoder.net
        c = pairs.get("c")
        if c is not None:
            c = c[m.to(c.device)]
            if dropped is not None:
                c = model.drop_context(c, dropped.to(c.device))
            net = _under(net, c)
        return bridge_matching_loss(net, model.reference, self._times, x0[m], x1[m], role, generator)

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator,
               context: Tensor | None = None) -> dict[str, Tensor]:
        """Bridge matching on ``batch.shape[0]`` pairs of the cache (the data batch itself is not
        used: the cache holds the pairs, with their contexts in a conditional run). ``imf``: the
        network of the phase; ``coupled``: both. ``context``: the batch's contexts as the trainer
        passes them, of which only the rows dropped to the null context count (module docstring)."""
        B = batch.shape[0]
        dropped = None if context is None else _null_rows(model, context)
        if self.schedule is None:
            if self.cache is None:
                raise RuntimeError("dsbm: losses called before begin_step (the training loop draws the cache)")
            dec = self._matching(model, self.cache["decoder"], B, generator, "decoder", dropped)
            enc = self._matching(model, self.cache["encoder"], B, generator, "encoder", dropped)
            res = {"loss": dec + enc, "drift_matching": dec.detach(), "encoder_matching": enc.detach()}
        else:
            phase, cache = self._require_cache()
            loss = self._matching(model, cache, B, generator, phase.role, dropped)
            key = "drift_matching" if phase.role == "decoder" else "encoder_matching"
            res = {"loss": loss, key: loss.detach(),
                   "ipf_iteration": torch.tensor(float(phase.iteration), device=loss.device)}
        device = res["loss"].device
        if self._prior_loss is not None:
            res["prior_loss"] = torch.tensor(self._prior_loss, device=device)
        refresh = self.config.dsbm.cache_refresh
        res["coupling_ms_per_step"] = torch.tensor(1e3 * self._coupling_s / max(refresh, 1), device=device)
        return res

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        return torch.tensor(float("nan") if self._prior_loss is None else self._prior_loss)

    def progress_info(self, step: int) -> dict[str, str]:
        if self.schedule is None:
            return {"coupled": "warm" if step < self.config.dsbm.first_steps else "loop"}
        return super().progress_info(step)

    # -- checkpoint state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The prior-loss monitor; ``coupled``: also the caches (with their contexts in a conditional
        run) and their step (they were simulated by networks that have trained since). ``imf`` redraws
        its cache from its seed and the frozen side's averaged weights, which the checkpoint holds."""
        state = {"prior_loss": self._prior_loss if self._prior_loss is not None else float("nan")}
        if self.schedule is None and self.cache is not None:
            state["cache"] = {k: dict(v) for k, v in self.cache.items()}
            state["cache_step"] = self._cache_step
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        pl = float(state.get("prior_loss", float("nan")))
        self._prior_loss = None if math.isnan(pl) else pl
        if self.schedule is None and "cache" in state:
            self.cache = {k: dict(v) for k, v in state["cache"].items()}
            self._cache_step = int(state["cache_step"])


def _conditional_coupling_error(coupling: str) -> str:
    return (f"dsbm.coupling = {coupling} pairs data rows with prior draws across contexts; a conditional dsbm run "
            "starts from the independent coupling (leave dsbm.coupling unset or set it to independent)")


def _under(net, c: Tensor):
    """``net(x, t, c)`` as a control of ``(x, t)``: the network under the fixed contexts ``c``."""
    return lambda x, t: net(x, t, c)


def _null_rows(model: PathVAE, c: Tensor) -> Tensor:
    """``(B,)`` bool: the rows of the model-form contexts ``c`` that are the null context
    (:meth:`~sbdiff.model.PathVAE.drop_context`: the label ``K`` of ``K`` classes, a row of NaN)."""
    kind, size = model.context
    return c == size if kind == "label" else torch.isnan(c).any(1)
