"""Reference SDEs ``dX = f(X, t) dt + g(t) dW`` on ``[0, T]`` (DESIGN §1).

Every reference here is scalar-linear, ``f(x, t) = −h(t) x``, so its transitions are Gaussian in
closed form: ``X_t | X_s = x  ~  N(a(s, t) x, v(s, t) I)`` with ``a = exp(−∫_s^t h)`` and
``v = ∫_s^t a(r, t)² g(r)² dr`` (Särkkä & Solin 2019, eq. 6.7). The interface follows score_sde's
``SDE`` class (Song et al. 2021): ``sde(x, t)``, ``marginal_prob``, ``prior_sampling``,
``prior_logp`` and ``reverse``.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from ._utils import SbdiffError, append_dims, as_time, gaussian_log_prob

__all__ = [
    "ReferenceSDE",
    "Brownian",
    "VP",
    "VE",
    "OU",
    "REFERENCES",
    "make_reference",
]


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise SbdiffError(f"reference parameter {name} must be a positive number, got {value}")
    return value


class ReferenceSDE(ABC):
    """A scalar-linear reference process ``dX = −h(t) X dt + g(t) dW`` on ``[0, T]``.

    Subclasses implement ``h``, ``g``, ``log_mean_coeff(s, t)`` and ``transition_var(s, t)``;
    everything else (drift, marginals, transitions, prior, time reversal) follows from them.
    """

    name: str = "reference"

    def __init__(self, T: float = 1.0):
        self.T = _positive("T", T)

    # -- the four primitives -------------------------------------------------------------------
    @abstractmethod
    def h(self, t: Tensor) -> Tensor:
        """Linear drift rate, ``f(x, t) = −h(t) x``; ``t`` shape ``(B,)`` -> ``(B,)``."""

    @abstractmethod
    def g(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``; ``t`` shape ``(B,)`` -> ``(B,)``."""

    @abstractmethod
    def log_mean_coeff(self, s: Tensor, t: Tensor) -> Tensor:
        """``log a(s, t) = −∫_s^t h(r) dr``; shapes ``(B,)``."""

    @abstractmethod
    def transition_var(self, s: Tensor, t: Tensor) -> Tensor:
        """``v(s, t) = Var(X_t | X_s)`` per coordinate; shapes ``(B,)``."""

    @abstractmethod
    def prior_var(self) -> float:
        """Variance per coordinate of the centred Gaussian prior ``N(0, prior_var·I)`` at ``t = T``."""

    # -- derived ---------------------------------------------------------------------------------
    def f(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Reference drift ``f(x, t) = −h(t) x``; ``x`` shape ``(B, ...)``."""
        t = as_time(t, x)
        return -append_dims(self.h(t), x.ndim) * x

    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Drift ``f(x, t)`` of shape ``(B, ...)`` and diffusion ``g(t)`` of shape ``(B,)``."""
        t = as_time(t, x)
        return self.f(x, t), self.g(t)

    def transition(self, x_s: Tensor, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean ``a(s,t)·x_s`` (shape of ``x_s``) and std ``√v(s,t)`` (shape ``(B,)``) of ``X_t | X_s``."""
        s, t = as_time(s, x_s), as_time(t, x_s)
        mean = append_dims(torch.exp(self.log_mean_coeff(s, t)), x_s.ndim) * x_s
        return mean, torch.sqrt(self.transition_var(s, t))

    def marginal_prob(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean (shape of ``x0``) and std (shape ``(B,)``) of ``X_t | X_0 = x0``."""
        return self.transition(x0, torch.zeros_like(as_time(t, x0)), t)

    def prior_sampling(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
        """Draw from the prior ``N(0, prior_var·I)``; returns a tensor of ``shape``."""
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return z * math.sqrt(self.prior_var())

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log density of the prior at ``z`` of shape ``(B, ...)``; returns ``(B,)``."""
        return gaussian_log_prob(z, self.prior_var())

    def reverse(self, score_fn: Callable[[Tensor, Tensor], Tensor], probability_flow: bool = False):
        """Drift of the time reversal given a score ``∇log q_t``: ``f − g²·score`` (the backward SDE,
        Anderson 1982; read in forward time) or ``f − ½g²·score`` (probability-flow ODE, Song et al.
        2021 eq. 13). Returns a function ``(x, t) -> drift``."""
        weight = 0.5 if probability_flow else 1.0

        def drift(x: Tensor, t: Tensor | float) -> Tensor:
            t = as_time(t, x)
            g2 = append_dims(self.g(t) ** 2, x.ndim)
            return self.f(x, t) - weight * g2 * score_fn(x, t)

        return drift

    def params(self) -> dict[str, float]:
        """The constructor arguments, for saving in a run's config."""
        names = inspect.signature(type(self).__init__).parameters
        return {n: getattr(self, n) for n in names if n != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Brownian(ReferenceSDE):
    """``dX = √eps dW`` (``f = 0``): the reference of entropic OT with cost ``½‖x−y‖²`` and weight
    ``eps`` on ``[0, 1]`` (DESIGN §1). Prior ``N(0, eps·T·I)`` (meant for standardised data)."""

    name = "brownian"

    def __init__(self, eps: float = 1.0, T: float = 1.0):
        super().__init__(T)
        self.eps = _positive("eps", eps)

    def h(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return torch.full_like(t, math.sqrt(self.eps))

    def log_mean_coeff(self, s, t):
        return torch.zeros_like(t)

    def transition_var(self, s, t):
        return self.eps * (t - s)

    def prior_var(self):
        return self.eps * self.T


class VP(ReferenceSDE):
    """Variance preserving ``dX = −½β(t) X dt + √β(t) dW``, ``β`` linear from ``beta_min`` to
    ``beta_max`` over ``[0, T]`` (Song et al. 2021, eq. 11). Prior ``N(0, I)``."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T)
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise SbdiffError(f"vp needs beta_max >= beta_min, got {beta_max} < {beta_min}")

    def beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def h(self, t):
        return 0.5 * self.beta(t)

    def g(self, t):
        return torch.sqrt(self.beta(t))

    def log_mean_coeff(self, s, t):
        return -0.5 * (self._int_beta(t) - self._int_beta(s))

    def transition_var(self, s, t):
        return -torch.expm1(-(self._int_beta(t) - self._int_beta(s)))

    def prior_var(self):
        return 1.0


class VE(ReferenceSDE):
    """Variance exploding ``dX = σ(t)√(2 log(σ_max/σ_min)/T) dW``, ``σ(t) = σ_min (σ_max/σ_min)^{t/T}``
    (Song et al. 2021, eq. 9). Prior ``N(0, σ_max²·I)``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, T: float = 1.0):
        super().__init__(T)
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise SbdiffError(f"ve needs sigma_max > sigma_min, got {sigma_max} <= {sigma_min}")

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def h(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min) / self.T)

    def log_mean_coeff(self, s, t):
        return torch.zeros_like(t)

    def transition_var(self, s, t):
        return self.sigma(t) ** 2 - self.sigma(s) ** 2

    def prior_var(self):
        return self.sigma_max**2


class OU(ReferenceSDE):
    """Ornstein–Uhlenbeck ``dX = −alpha X dt + g dW``; stationary law (the prior)
    ``N(0, g²/(2 alpha)·I)``, which is ``N(0, I)`` with the defaults."""

    name = "ou"

    def __init__(self, alpha: float = 1.0, sigma: float = math.sqrt(2.0), T: float = 5.0):
        super().__init__(T)
        self.alpha = _positive("alpha", alpha)
        self.sigma = _positive("sigma", sigma)

    def h(self, t):
        return torch.full_like(t, self.alpha)

    def g(self, t):
        return torch.full_like(t, self.sigma)

    def log_mean_coeff(self, s, t):
        return -self.alpha * (t - s)

    def transition_var(self, s, t):
        return self.sigma**2 / (2 * self.alpha) * -torch.expm1(-2 * self.alpha * (t - s))

    def prior_var(self):
        return self.sigma**2 / (2 * self.alpha)


REFERENCES: dict[str, type[ReferenceSDE]] = {c.name: c for c in (Brownian, VP, VE, OU)}


def make_reference(kind: str, **params: float) -> ReferenceSDE:
    """Build a named reference (``brownian``, ``vp``, ``ve``, ``ou``) with keyword parameters.

    Raises
    ------
    SbdiffError
        For an unknown kind, an unknown parameter name or an invalid value.
    """
    if kind not in REFERENCES:
        raise SbdiffError(f"unknown reference '{kind}'; choose from {', '.join(REFERENCES)}")
    cls = REFERENCES[kind]
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SbdiffError(
            f"unknown parameter(s) {', '.join(unknown)} for reference '{kind}'; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(**params)
