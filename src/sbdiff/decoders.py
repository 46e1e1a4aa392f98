"""Decoders: the backward SDE ``dX = [f − g·ẑ_θ(X, t)] dt + g dW̄`` from prior (t=T) to data (t=0).

Drift matching (DESIGN §2) is zero exactly when ``ẑ_θ = g ∇log q_t − z_φ``; for a fixed encoder
(``z_φ = 0``) the decoder is therefore a score model, ``ẑ_θ = g·s_θ``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._controlled import ControlledSDE
from ._utils import SbdiffError, append_dims, as_time
from .references import ReferenceSDE

__all__ = ["Decoder", "ScoreDecoder", "NeuralDecoder", "check_parametrization"]


class Decoder(ControlledSDE):
    """Base class: backward drift (read in forward time) ``f − g·ẑ`` with ``ẑ = control(x, t)``."""

    sign = -1.0


def check_parametrization(parametrization: str) -> None:
    """Refuse a score decoder's parametrization other than ``"noise"`` or ``"score"``."""
    if parametrization not in ("noise", "score"):
        raise SbdiffError(f"unknown decoder parametrization '{parametrization}'; choose noise or score")


class ScoreDecoder(Decoder):
    """A decoder for a fixed encoder: ``ẑ_θ(x, t) = g(t)·s_θ(x, t)``.

    Parameters
    ----------
    reference : ReferenceSDE
        The (fixed) encoder's reference.
    net : callable ``(x, t) -> (B, ...)``
        A network (or a closed-form function in tests).
    parametrization : {"noise", "score"}
        ``"noise"``: the noise ``ε`` of ``x_t = α_t x_0 + σ_t ε`` is predicted as
        ``ε̂ = σ_t x_t/(α_t² + σ_t²) + net(x_t, t)`` and ``s_θ = −ε̂/σ_t`` (Ho et al. 2020). The first
        term is the exact noise predictor for ``N(0, I)`` data (the standardised data's Gaussian
        approximation; the skip connection of Karras et al. 2022 in noise form): the network learns a
        residual, and the score extrapolates like a Gaussian's far from the data, so that samples
        drawn from the prior's tails contract instead of escaping under the backward SDE.
        ``"score"``: ``net`` is the score itself.
    """

    def __init__(self, reference: ReferenceSDE, net: Callable[[Tensor, Tensor], Tensor],
                 parametrization: str = "noise"):
        super().__init__(reference)
        check_parametrization(parametrization)
        self.net = net
        self.parametrization = parametrization

    def score(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Model score ``s_θ(x, t) ≈ ∇log q_t(x)``, shape of ``x``."""
        t = as_time(t, x)
        out = self.net(x, t)
        if self.parametrization == "score":
            return out
        alpha = append_dims(torch.exp(self.reference.log_mean_coeff(torch.zeros_like(t), t)), x.ndim)
        std = append_dims(torch.sqrt(self.reference.transition_var(torch.zeros_like(t), t)), x.ndim)
        eps_hat = std * x / (alpha**2 + std**2) + out
        return -eps_hat / std

    def control(self, x: Tensor, t: Tensor) -> Tensor:
        return append_dims(self.reference.g(t), x.ndim) * self.score(x, t)


class NeuralDecoder(Decoder):
    """``ẑ_θ(x, t) = net(x, t)``: the control itself is the network (DSB, SB-FBSDE), for encoders
    whose reversal is not a score of a fixed process (DESIGN §4.2, §4.3).

    Parameters
    ----------
    reference : ReferenceSDE
    net : module ``(x, t) -> (B, d)``
    """

    def __init__(self, reference: ReferenceSDE, net: Callable[[Tensor, Tensor], Tensor]):
        super().__init__(reference)
        self.net = net

    def control(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t)
