"""SGM: score-based generative models as the path VAE with a fixed encoder (DESIGN §4.1).

Encoder ``z_φ ≡ 0`` (the reference VP/VE/OU/Brownian SDE), decoder ``ẑ_θ = g·s_θ`` trained by
denoising score matching (estimator 1), one decoder pass (Song et al. 2021). The prior loss does not
depend on θ; it is reported (Gaussian-moment KL of the encoder's ``X_T``) but not optimised.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._utils import SbdiffError
from ..config import Config
from ..data import ImageScaling, Standardizer
from ..decoders import ScoreDecoder
from ..encoders import FixedEncoder
from ..model import PathVAE
from ..nets import TimeMLP, UNet
from ..objectives import dsm_loss, gaussian_moment_kl, importance_times
from ..references import make_reference
from .base import Method


def build_network(config: Config, dim: int, T: float) -> torch.nn.Module:
    """The network chosen by the data's shape (``model.net = auto``): a :class:`~sbdiff.nets.UNet`
    for images (``data.image_shape`` resolved to ``C×H×W``), a :class:`~sbdiff.nets.TimeMLP` for
    vectors. Both map ``(B, dim)`` to ``(B, dim)``."""
    m, shape = config.model, config.data.shape()
    kind = m.net if m.net != "auto" else ("unet" if shape is not None else "mlp")
    if kind == "unet":
        if shape is None:
            raise SbdiffError("model.net = unet needs image data (data.image_shape = CxHxW)")
        if shape[0] * shape[1] * shape[2] != dim:
            raise SbdiffError(f"data.image_shape {config.data.image_shape} does not match the data's dimension {dim}")
        return UNet(shape, m.unet_channels, m.mult(), m.unet_res_blocks, m.unet_attention, m.time_dim, T,
                    m.unet_dropout)
    return TimeMLP(dim, m.hidden, m.blocks, m.time_dim, T)


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


class SGM(Method):
    """Fixed encoder / DSM / decoder only."""

    name = "sgm"

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        params = dict(cfg.reference)
        reference = make_reference(params.pop("kind"), **params)
        if data.ndim != 2:
            raise SbdiffError(f"expected flat data of shape (N, d), got {data.shape} (images are flattened "
                              "by sbdiff.data.load_data; set data.image_shape to rebuild them)")
        dim = data.shape[1]
        net = build_network(cfg, dim, reference.T)
        mean, scale, step = data_scaling(cfg, data)
        return PathVAE(FixedEncoder(reference), ScoreDecoder(reference, net, "noise"), dim,
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
