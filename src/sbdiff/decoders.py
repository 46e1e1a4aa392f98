"""Decoders: the backward SDE ``dX = [f − g·ẑ_θ(X, t)] dt + g dW̄`` from prior (t=T) to data (t=0).

Drift matching (DESIGN §2) is zero exactly when ``ẑ_θ = g ∇log q_t − z_φ``; for a fixed encoder
(``z_φ = 0``) the decoder is therefore a score model, ``ẑ_θ = g·s_θ``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._controlled import ControlledSDE, control_at
from ._utils import SbdiffError, append_dims, as_time
from .encoders import FixedEncoder
from .references import ReferenceSDE

__all__ = ["Decoder", "ScoreDecoder", "NeuralDecoder", "check_parametrization"]


class Decoder(ControlledSDE):
    """Base class: backward drift (read in forward time) ``f − g·ẑ`` with ``ẑ = control(x, t)``."""

    sign = -1.0

    def skip_precision(self, t: Tensor) -> Tensor | None:
        """``κ(t)`` ``(B,)`` when the control has the exact linear part ``ẑ = −g κ x + …`` (a Gaussian
        skip), so that a backward integrator can take the part of the drift linear in ``x`` exactly
        (:func:`~sbdiff.objectives.simulate_controlled`); ``None``: no such part is known."""
        return None

    def guided_control(self, x: Tensor, t: Tensor, c: Tensor | None, guidance: float = 0.0) -> Tensor:
        """Classifier-free guidance (Ho & Salimans 2022; DESIGN §4.6): ``ẑ_w = (1 + w) ẑ(x, t, c) −
        w ẑ(x, t, ∅)`` with ``w = guidance``; the plain control for ``w = 0`` or no context. Shape of ``x``."""
        if c is None or guidance == 0:
            return control_at(self, x, t, c)
        return (1.0 + guidance) * self.control(x, t, c) - guidance * self.control(x, t, None)


def check_parametrization(parametrization: str) -> None:
    """Refuse a score decoder's parametrization other than ``"noise"`` or ``"score"``."""
    if parametrization not in ("noise", "score"):
        raise SbdiffError(f"unknown decoder parametrization '{parametrization}'; choose noise or score")


class ScoreDecoder(Decoder):
    """The decoder of a closed-form encoder: ``ẑ_θ(x, t) = g(t)·s_θ(x, t) − z_φ(x, t)``, so that drift
    matching vanishes exactly when ``s_θ = ∇log q_t`` (DESIGN §2); backward drift ``f + g z_φ − g² s_θ``.
    For a fixed encoder (``z_φ = 0``, SGM) this is the score model ``ẑ_θ = g·s_θ``.

    Parameters
    ----------
    encoder : Encoder or ReferenceSDE
        An encoder with closed-form transitions (``Encoder.gaussian_transition``): the fixed
        reference (SGM), the linear encoder (VSDM). A :class:`~sbdiff.references.ReferenceSDE` is
        taken as its :class:`~sbdiff.encoders.FixedEncoder`. Held as a plain reference, not a
        submodule: its parameters belong to the model's encoder.
    net : callable ``(x, t) -> (B, ...)``
        A network (or a closed-form function in tests).
    parametrization : {"noise", "score"}
        ``"noise"``: the noise ``ε`` of ``x_t = M_t x_0 + L_t ε`` (the encoder's transition from 0)
        is predicted as ``ε̂ = L_tᵀ C_t⁻¹ x_t + net(x_t, t)`` with ``C_t = M_t M_tᵀ + Σ_t``, and
        ``s_θ = −L_t⁻ᵀ ε̂`` (Ho et al. 2020; Deng et al. 2024 eq. 15). The first term is the exact
        noise predictor for ``N(0, I)`` data (the standardised data's Gaussian approximation; the skip
        connection of Karras et al. 2022 in noise form; for a scalar transition
        ``σ_t x/(α_t² + σ_t²)``): the network learns a residual, and the score extrapolates like a
        Gaussian's far from the data, so that samples drawn from the prior's tails contract instead of
        escaping under the backward SDE. ``"score"``: ``net`` is the score itself.
    """

    def __init__(self, encoder, net: Callable[[Tensor, Tensor], Tensor], parametrization: str = "noise"):
        if isinstance(encoder, ReferenceSDE):
            encoder = FixedEncoder(encoder)
        if not getattr(encoder, "closed_form", False):
            raise SbdiffError(f"a score decoder needs an encoder with closed-form transitions, got "
                              f"{type(encoder).__name__}")
        super().__init__(encoder.reference)
        check_parametrization(parametrization)
        self.__dict__["encoder"] = encoder  # not a submodule: no second copy of its parameters
        self.net = net
        self.parametrization = parametrization

    def score(self, x: Tensor, t: Tensor | float, c: Tensor | None = None) -> Tensor:
        """Model score ``s_θ(x, t | c) ≈ ∇log q_t(x | c)``, shape of ``x`` (``c``: the context, DESIGN §4.6)."""
        t = as_time(t, x)
        out = self.net(x, t) if c is None else self.net(x, t, c)
        if self.parametrization == "score":
            return out
        tr = self.encoder.gaussian_transition(torch.zeros_like(t), t, x)
        return -tr.inv_factor_t(tr.gaussian_noise(x) + out)

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        t = as_time(t, x)
        return append_dims(self.reference.g(t), x.ndim) * self.score(x, t, c) - control_at(self.encoder, x, t, c)

    def skip_precision(self, t: Tensor) -> Tensor | None:
        """``κ = 1/(α_t² + σ_t²)`` of the noise parametrization's skip ``s = −x/(α_t² + σ_t²) + …`` over the
        reference (``z_φ = 0``): the score of ``N(0, I)`` data (VP: ``κ = 1``); ``None`` for the
        ``"score"`` parametrization or a linear encoder's matrix transitions."""
        if self.parametrization != "noise" or not isinstance(self.encoder, FixedEncoder):
            return None
        ref = self.reference
        zero = torch.zeros_like(t)
        return 1.0 / (torch.exp(2 * ref.log_mean_coeff(zero, t)) + ref.transition_var(zero, t))


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

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        return self.net(x, t) if c is None else self.net(x, t, c)
