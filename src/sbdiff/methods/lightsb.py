"""LightSB: the Schrödinger bridge of a Gaussian-mixture potential, fitted in closed form (DESIGN §4.7).

Korotin, Gushchin, Burnaev, ICLR 2024 ("Light Schrödinger Bridge") and, for ``objective =
"matching"``, Gushchin et al., ICML 2024 ("Light and Optimal Schrödinger Bridge Matching",
LightSB-M), as a preset of the path VAE with the reference ``brownian(eps)`` on ``[0, 1]``.

Which parts of the path VAE (DESIGN §2) are closed form here:

* **the decoder** is the SB whose adjusted potential is a mixture,
  ``v_θ(x_0) = Σ_k α_k N(x_0 | r_k, eps S_k)`` (:class:`~sbdiff.mixture_sb.MixturePotential`, the
  prior side ``x_T`` as LightSB's source, the data side ``x_0`` as its target). Its plan
  ``π_θ(x_0 | x_T)`` is a Gaussian mixture, so :meth:`~sbdiff.model.PathVAE.decode` samples it
  exactly (no steps) unless asked for the SDE (``sde=True``, ``--sde``) or a path
  (``--trajectory``); the SDE's control ``ẑ_θ(x, t) = b_θ(x, 1 − t)/√eps`` is the closed-form drift
  of the mixture's bridge (no network).
* **drift matching** is computed without simulating a path. Both the SB and the model's process
  are mixtures of the reference's bridges (they share them), so the path KL is the KL of the
  plans, ``KL(π* ‖ π_θ) = E_prior log c_θ(x_T) − E_data log v_θ(x_0) + const``; the prior loss is
  zero by construction (the decoder starts from the prior itself). ``objective = "kl"`` (LightSB)
  minimises this. ``objective = "matching"`` (LightSB-M) regresses the same closed-form control on
  the reference's bridges of a coupling of data and prior batches (``lightsb.coupling``, the
  couplings of dsbm; :func:`~sbdiff.couplings.bridge_matching_loss`).
* **the encoder** (``lightsb.encoder = true``) is the same construction from the other side: a
  second mixture potential on the prior side, fitted to the plan ``π_φ(x_T | x_0)`` by the same
  objective with the roles swapped. It makes ``encode`` exact too, and gives the probability-flow
  ODE (``f + ½ g (z − ẑ)``) its forward half, hence ``nll`` in generative mode. With ``false``
  there is no encoder and ``encode`` is refused.

Modes: bridge (``--prior DATA2``) and generative (the prior ``N(0, eps·I)`` of ``brownian(eps)``).
Parameters: ``K (2d + 1)`` per side with diagonal ``S_k`` (``K d²`` more for ``full``), a few seconds of
CPU for 10 000 steps at ``d ≤ 16``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._utils import SbdiffError, as_time
from ..config import Config, Section, set_resolved
from ..couplings import COUPLINGS, BridgeTimes, bridge_matching_loss, minibatch_coupling
from ..decoders import Decoder
from ..encoders import Encoder
from ..mixture_sb import COVARIANCES, MixturePotential, default_lr
from ..model import PathVAE
from .base import Method, check_flat, data_scaling, register

__all__ = ["LightSB", "LightSBConfig", "MixtureDecoder", "MixtureEncoder", "OBJECTIVES"]

#: The objectives of ``lightsb.objective``.
OBJECTIVES = ("kl", "matching")
#: Rows per minibatch OT problem of the matching objective's coupling (LightSB-M's batch: an exact OT
#: problem of 128 × 128 costs ~3 ms, of 512 × 512 ~150 ms).
OT_BLOCK = 128


@dataclass
class LightSBConfig(Section):
    """Settings of ``method = "lightsb"``, the ``[lightsb]`` section (DESIGN §4.7; Korotin et al. 2024)."""

    objective: str = "kl"          # kl (LightSB: the plans' KL in closed form) | matching (LightSB-M: bridge matching on a coupling)
    components: int = 50           # K, Gaussian components of each mixture potential
    covariance: str = "diagonal"   # S_k: diagonal | full (a rotation per component, K d^2 more parameters)
    s_init: float = 1.0            # initial eigenvalues of S_k
    s_floor: float = 1e-4          # floor of the eigenvalues of S_k (> 0: every S_k stays positive definite)
    encoder: bool = True           # also fit the forward mixture (encode, the PF-ODE and nll)
    coupling: str = "ot"           # matching: independent | ot (exact minibatch OT) | entropic (Sinkhorn, reg 2 eps)
    time_margin: float = 1e-3      # matching: t is drawn on (margin, 1 - margin), importance-weighted as in dsbm
    lr_final: float = 0.1          # the learning rate decays (cosine) to lr_final * train.lr over train.steps (1: constant, LightSB's own)


class MixtureDecoder(Decoder):
    """The decoder of a mixture potential: ``ẑ(x, t) = b(x, 1 − t)/√eps`` (the backward drift, read
    in reverse time, is the bridge's ``b`` from the prior side); :meth:`sample_plan` draws the plan
    ``π_θ(x_0 | x_T)`` exactly. The Euler–Maruyama path ends with a noisy step (``noise_last``): the
    model's law at ``t = 0`` is the plan itself, not its denoised mean. ``net`` is the potential
    (:class:`~sbdiff.mixture_sb.MixturePotential`): the part's network, as for the neural parts."""

    noise_last = True

    def __init__(self, reference, potential: MixturePotential):
        super().__init__(reference)
        self.net = potential

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        t = as_time(t, x)
        return self.net.drift(x, self.reference.T - t) / math.sqrt(self.net.eps)

    def sample_plan(self, x_T: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of ``π_θ(x_0 | x_T)`` for prior-side points ``(B, d)`` (model coordinates)."""
        return self.net.sample_plan(x_T, generator)


class MixtureEncoder(Encoder):
    """The encoder of a mixture potential on the prior side: ``z(x, t) = b(x, t)/√eps`` (the
    forward bridge from the data side); :meth:`sample_plan` draws ``π_φ(x_T | x_0)`` exactly."""

    noise_last = True

    def __init__(self, reference, potential: MixturePotential):
        super().__init__(reference)
        self.net = potential

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        return self.net.drift(x, as_time(t, x)) / math.sqrt(self.net.eps)

    def sample_plan(self, x_0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of ``π_φ(x_T | x_0)`` for data-side points ``(B, d)`` (model coordinates)."""
        return self.net.sample_plan(x_0, generator)


class _NoEncoder(Encoder):
    """``lightsb.encoder = false``: no forward process; ``encode`` and the PF-ODE are refused."""

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        raise SbdiffError("this lightsb run was trained without an encoder (lightsb.encoder = false): encode, "
                          "the probability-flow ODE and nll need one")


@register("lightsb")
class LightSB(Method):
    """Mixture potentials / closed-form plans' KL (or bridge matching) / no schedule."""

    settings = LightSBConfig
    bridges = True
    # LightSB's recipe (10 000 Adam steps, no EMA, warm-up or clipping: a huge clip norm) with batches of
    # 512, not 128 (D = 2, eps = 0.1, seed 0: cBW2-UVP 0.038 % against 0.084 % at 128; floor 0.004 %);
    # train.lr follows eps (sbdiff.mixture_sb.default_lr) unless set.
    defaults = {"train.batch_size": 512, "train.steps": 10_000, "train.ema_decay": 0.0, "train.warmup": 0,
                "train.grad_clip": 1e9}
    # the matching objective on a minibatch-OT coupling (it draws more randomness than kl), K = 4
    smoke = "[reference]\nkind = \"brownian\"\neps = 1.0\n[lightsb]\ncomponents = 4\nobjective = \"matching\"\nlr_final = 1.0\n"

    @classmethod
    def check(cls, config: Config) -> None:
        s = config.lightsb
        if s.objective not in OBJECTIVES:
            raise SbdiffError(f"lightsb.objective must be one of {', '.join(OBJECTIVES)}, got '{s.objective}'")
        if s.covariance not in COVARIANCES:
            raise SbdiffError(f"lightsb.covariance must be one of {', '.join(COVARIANCES)}, got '{s.covariance}'")
        if s.coupling not in COUPLINGS:
            raise SbdiffError(f"lightsb.coupling must be one of {', '.join(COUPLINGS)}, got '{s.coupling}'")
        if s.components < 1:
            raise SbdiffError(f"lightsb.components must be at least 1, got {s.components}")
        if not (s.s_floor > 0 and math.isfinite(s.s_floor)):
            raise SbdiffError(f"lightsb.s_floor must be a finite number > 0, got {s.s_floor}")
        if not (s.s_init > s.s_floor and math.isfinite(s.s_init)):
            raise SbdiffError(f"lightsb.s_init must be a finite number > lightsb.s_floor ({s.s_floor}), got {s.s_init}")
        if not 0 < s.time_margin < 0.5:
            raise SbdiffError(f"lightsb.time_margin must lie in (0, 0.5), got {s.time_margin}")
        if not 0 < s.lr_final <= 1:
            raise SbdiffError(f"lightsb.lr_final must lie in (0, 1], got {s.lr_final}")
        if config.method != cls.name:
            return
        ref = config.reference
        if ref.get("kind") != "brownian" or float(ref.get("T", 1.0)) != 1.0:
            raise SbdiffError(f"lightsb solves the SB of the reference brownian(eps) on [0, 1]: give --eps EPS "
                              f"(got reference '{ref.get('kind')}'{'' if ref.get('kind') != 'brownian' else ' with T != 1'})")
        if config.cond.requested or config.cond.kind != "none":
            raise SbdiffError("lightsb does not generate under a context (cond)")
        if "lr" not in config.train.explicit():
            set_resolved(config.train, "lr", default_lr(float(ref["eps"])))

    # -- model -----------------------------------------------------------------------------------
    def _potential(self, dim: int, means: Tensor) -> MixturePotential:
        s, eps = self.config.lightsb, float(self.config.reference["eps"])
        pot = MixturePotential(dim, s.components, eps, covariance=s.covariance, s_init=s.s_init, s_floor=s.s_floor)
        pot.init_means(means)
        return pot

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        reference = self.make_reference()
        dim = check_flat(data)
        K = cfg.lightsb.components
        # the means start on K data points (decoder) and K prior points (encoder), in model coordinates:
        # LightSB's initialisation
        mean, scale, _ = data_scaling(cfg, data)
        gen = torch.Generator().manual_seed(cfg.seed + 7919)

        def draw(points: np.ndarray) -> Tensor:
            x = torch.as_tensor((points - mean) / scale, dtype=torch.float32)
            return x[torch.randint(0, len(x), (K,), generator=gen)]

        decoder = MixtureDecoder(reference, self._potential(dim, draw(data)))
        encoder = _NoEncoder(reference)
        if cfg.lightsb.encoder:
            x1 = draw(prior) if prior is not None and len(prior) else reference.prior_sampling((K, dim), generator=gen)
            encoder = MixtureEncoder(reference, self._potential(dim, x1))
        self._times = BridgeTimes(reference, cfg.lightsb.time_margin)
        # bridge mode: the SDEs run on all of [0, 1] (the drift is finite there); generative mode keeps
        # model.t_min, where the path ELBO's time integral starts (as dsbm)
        return self.assemble(encoder, decoder, data, prior, t_min=0.0 if prior is not None else None)

    def lr_factor(self, step: int) -> float:
        """Cosine decay from 1 to ``lightsb.lr_final`` over ``train.steps`` (constant past it, and for a
        run with a time budget alone). Minibatch noise sets the fit's last digits: on a Gaussian pair
        (K = 1, D = 3) a constant rate leaves the cross-covariance 1.5–2.7 % off where the full-batch
        optimum is 0.6 % off."""
        steps, final = self.config.train.steps, self.config.lightsb.lr_final
        if not steps or final == 1:
            return 1.0
        u = min(step / steps, 1.0)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * u))

    # -- losses ------------------------------------------------------------------------------------
    def _pairs(self, model: PathVAE, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The data batch ``x0`` ``(B, d)`` and as many prior points, coupled by ``lightsb.coupling`` in
        blocks of :data:`OT_BLOCK` rows."""
        s = self.config.lightsb
        x1 = model.prior_model_points(len(x0), generator=generator)
        j = minibatch_coupling(x0, x1, s.coupling, eps=float(self.config.reference["eps"]),
                               block=min(len(x0), OT_BLOCK), generator=generator)
        return x0, x1[j]

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``kl``: ``mean log c_θ(x_T) − mean log v_θ(x_0)`` on the data batch and as many prior draws
        (and the encoder's, roles swapped); ``matching``: bridge matching of the closed-form
        controls on the coupled batch. ``loss`` is their sum over the fitted sides."""
        x0 = model.dequantize_model(batch, generator=generator)
        encoder = model.encoder if isinstance(model.encoder, MixtureEncoder) else None
        if self.config.lightsb.objective == "kl":
            x1 = model.prior_model_points(len(x0), generator=generator)
            dec = model.decoder.net.loss(x1, x0)
            enc = encoder.net.loss(x0, x1) if encoder is not None else None
        else:
            x0, x1 = self._pairs(model, x0, generator)
            ref = model.reference
            dec = bridge_matching_loss(model.decoder.control, ref, self._times, x0, x1, "decoder", generator)
            enc = (bridge_matching_loss(encoder.control, ref, self._times, x0, x1, "encoder", generator)
                   if encoder is not None else None)
        out = {"loss": dec if enc is None else dec + enc, "drift_matching": dec.detach()}
        if enc is not None:
            out["encoder_matching"] = enc.detach()
        return out

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        """The Gaussian-moment KL of the encoder's exact plan draws ``x_T ~ π_φ(· | x_0)`` against the
        prior (:meth:`Method.prior_kl`); NaN without an encoder. (The decoder's prior loss is zero:
        it starts from the prior itself.)"""
        if not isinstance(model.encoder, MixtureEncoder):
            return torch.tensor(float("nan"))
        return self.prior_kl(model, model.encoder.sample_plan(batch, generator))
