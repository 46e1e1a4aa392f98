"""SGM: score-based generative models as the path VAE with a fixed encoder (DESIGN §4.1).

Encoder ``z_φ ≡ 0`` (the reference VP/VE/OU/Brownian SDE), decoder ``ẑ_θ = g·s_θ`` trained by
denoising score matching (estimator 1), one decoder pass (Song et al. 2021). The prior loss does not
depend on θ; it is reported (Gaussian-moment KL of the encoder's ``X_T``) but not optimised.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..decoders import ScoreDecoder
from ..encoders import FixedEncoder
from ..model import PathVAE
from ..objectives import dsm_loss, gaussian_moment_kl, importance_times
from .base import Method, build_network, check_flat, data_scaling


class SGM(Method):
    """Fixed encoder / DSM / decoder only."""

    name = "sgm"

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        reference = self.make_reference()
        dim = check_flat(data)
        net = build_network(cfg, dim, reference.T)
        mean, scale, step = data_scaling(cfg, data)
        encoder = FixedEncoder(reference)
        return PathVAE(encoder, ScoreDecoder(encoder, net, "noise"), dim,
                       cfg.model.t_min, torch.as_tensor(mean, dtype=torch.float32),
                       torch.as_tensor(scale, dtype=torch.float32), image_shape=cfg.data.shape(),
                       dequant_step=step)

    def sample_times(self, model: PathVAE, n: int, generator: torch.Generator, like: Tensor) -> Tensor:
        """Training times, shape ``(n,)``: half stratified uniform on ``[t_min, T]``, half log-uniform
        (:func:`~sbdiff.objectives.importance_times`). The extra weight near ``t_min``, where the
        score varies fastest, sharpens edges of the learned density; any positive weighting of DSM
        has the same minimiser, the exact score. (Measured on the checkerboard, 1 thread, 4.5 min:
        91.7 % of samples on the dark squares against 88.2 % with uniform times.)"""
        t, _ = importance_times(n, model.t_min, model.reference.T, generator=generator, dtype=like.dtype,
                                device=like.device)
        return t

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        batch = model.dequantize_model(batch, generator=generator)  # fresh noise every step (images)
        t = self.sample_times(model, batch.shape[0], generator, batch)
        dm = dsm_loss(model.encoder, model.decoder, batch, t, generator=generator).mean()
        return {"loss": dm, "drift_matching": dm}

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        x_T, _, _ = model.encoder.sample_transition(batch, 0.0, model.reference.T, generator=generator)
        return gaussian_moment_kl(x_T, model.reference.prior_var())
