"""Encoders: the forward SDE ``dX = [f + g·z_φ(X, t)] dt + g dW`` from data (t=0) to prior (t=T).

An encoder owns its reference process (``f``, ``g``) and supplies the control ``z_φ`` (DESIGN §2).
Encoders with linear drift have closed-form Gaussian transitions, which is what makes the
denoising-score-matching estimator of drift matching simulation-free.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._controlled import ControlledSDE
from ._utils import SbdiffError, as_time
from .transitions import GaussianTransition

__all__ = ["Encoder", "FixedEncoder", "NeuralEncoder"]


class Encoder(ControlledSDE):
    """Base class: forward drift ``f + g·z`` with ``z = control(x, t)`` (the data -> prior SDE).

    Encoders with ``closed_form = True`` implement :meth:`gaussian_transition`; :meth:`transition` and
    :meth:`sample_transition` follow from it, and so do the denoising-score-matching loss and the
    score decoder's skip (:mod:`sbdiff.transitions`).
    """

    sign = 1.0
    closed_form: bool = False

    def gaussian_transition(self, s: Tensor | float, t: Tensor | float, like: Tensor) -> GaussianTransition:
        """``q(x_t | x_s)`` for the batch of ``like`` (``(B, ...)``, which fixes dtype and device), as
        operators (:class:`~sbdiff.transitions.GaussianTransition`). Closed-form encoders only."""
        raise SbdiffError(f"{type(self).__name__} has no closed-form transitions")

    def transition(self, x_s: Tensor, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean (shape of ``x_s``) and covariance factor ``L`` of ``X_t | X_s = x_s``: ``(B,)`` for a
        scalar transition (the std), ``(B, d)`` (diagonal) or ``(B, d, d)``
        (:meth:`~sbdiff.transitions.GaussianTransition.factor`)."""
        tr = self.gaussian_transition(s, t, x_s)
        return tr.mean(x_s), tr.factor()

    def sample_transition(
        self, x_s: Tensor, s: Tensor | float, t: Tensor | float, noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``X_t | X_s``. Returns ``(x_t, noise, L)`` with ``x_t = mean + L·noise`` (``L`` as in
        :meth:`transition`)."""
        tr = self.gaussian_transition(s, t, x_s)
        if noise is None:
            noise = torch.randn(x_s.shape, generator=generator, dtype=x_s.dtype, device=x_s.device)
        return tr.sample(x_s, noise), noise, tr.factor()

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log density of the Gaussian prior at ``z`` of shape ``(B, d)``; returns ``(B,)``. The
        reference's ``N(0, prior_var·I)``; an encoder with its own terminal law (VSDM's ``N(0, Σ_T)``)
        overrides this and :meth:`prior_sampling`."""
        return self.reference.prior_logp(z)

    def prior_sampling(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
        """Draws of the Gaussian prior, a tensor of ``shape``."""
        return self.reference.prior_sampling(shape, generator=generator, dtype=dtype, device=device)


class FixedEncoder(Encoder):
    """``z_φ ≡ 0``: the encoder is the reference itself (score-based models, DESIGN §4.1).

    Its transitions are the reference's, ``q(x_t | x_s) = N(a(s,t) x_s, v(s,t) I)``.
    """

    closed_form = True

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        return torch.zeros_like(x)

    def gaussian_transition(self, s: Tensor | float, t: Tensor | float, like: Tensor) -> GaussianTransition:
        """The reference's scalar transition: ``a = exp(log_mean_coeff(s, t))``, ``σ = √v(s, t)``, ``(B,)``."""
        s, t = as_time(s, like), as_time(t, like)
        ref = self.reference
        return GaussianTransition(torch.exp(ref.log_mean_coeff(s, t)), torch.sqrt(ref.transition_var(s, t)))


class NeuralEncoder(Encoder):
    """``z_φ(x, t) = net(x, t)``: a learned encoder (DSB, SB-FBSDE; DESIGN §4.2, §4.3).

    Its transitions have no closed form; drift matching for its decoder uses simulated paths
    (mean matching or the divergence form). With a zero-initialised network it starts as the
    reference (``z_φ = 0``).

    Parameters
    ----------
    reference : ReferenceSDE
    net : module ``(x, t) -> (B, d)``
    """

    def __init__(self, reference, net):
        super().__init__(reference)
        self.net = net

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        return self.net(x, t) if c is None else self.net(x, t, c)
