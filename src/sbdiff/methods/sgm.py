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
from ..objectives import dsm_loss, importance_times
from .base import Method, build_network, check_flat, register


@register("sgm")
class SGM(Method):
    """Fixed encoder / DSM / decoder only."""

    conditional = True

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        reference = self.make_reference()
        net = build_network(self.config, check_flat(data), reference.T)
        encoder = FixedEncoder(reference)
        return self.assemble(encoder, ScoreDecoder(encoder, net, "noise"), data)

    def sample_times(self, model: PathVAE, n: int, generator: torch.Generator, like: Tensor) -> Tensor:
        """Training times, shape ``(n,)``: half stratified uniform on ``[t_min, T]``, half log-uniform
        (:func:`~sbdiff.objectives.importance_times`). The extra weight near ``t_min``, where the
        score varies fastest, sharpens edges of the learned density; any positive weighting of DSM
        has the same minimiser, the exact score. (Measured on the checkerboard, 1 thread, 4.5 min:
        91.7 % of samples on the dark squares against 88.2 % with uniform times.)"""
        t, _ = importance_times(n, model.t_min, model.reference.T, generator=generator, dtype=like.dtype,
                                device=like.device)
        return t

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator,
               context: Tensor | None = None) -> dict[str, Tensor]:
        batch = model.dequantize_model(batch, generator=generator)  # fresh noise every step (images)
        t = self.sample_times(model, batch.shape[0], generator, batch)
        dm = dsm_loss(model.encoder, model.decoder, batch, t, generator=generator, context=context).mean()
        return {"loss": dm, "drift_matching": dm}
