"""Gaussian transitions ``q(x_t | x_s) = N(M x_s, Σ)`` as operators, shared by every closed-form encoder.

A closed-form encoder (the fixed reference of SGM, VSDM's linear encoder; DESIGN §4.1, §4.4) returns a
:class:`GaussianTransition` from ``Encoder.gaussian_transition(s, t, like)``. Its matrices commute
with one orthonormal basis ``U`` (``U = None``: the standard basis), so that in the eigen coordinates
``y = Uᵀx`` they are diagonal:

    ``M = U diag(a) Uᵀ``,  ``Σ = L Lᵀ`` with the symmetric factor ``L = U diag(σ) Uᵀ``.

A scalar transition (``a``, ``σ`` of shape ``(B,)``, the reference's ``N(a x, σ² I)``) is the case
``U = None`` with one coefficient per row. Everything the denoising-score-matching path needs is an
operator on a batch (Deng et al. 2024, eq. 15; Vincent 2011):

* the draw ``x_t = M x_s + L ε`` (:meth:`sample`),
* ``Lᵀ v`` (:meth:`factor_t`, the ``Σ_t``-weighted DSM residual ``Lᵀ(ẑ + z)/g + ε``),
* ``L⁻ᵀ v`` (:meth:`inv_factor_t`, the transition score ``−Σ⁻¹(x_t − M x_s) = −L⁻ᵀ ε``),
* ``Lᵀ C⁻¹ x`` with ``C = M Mᵀ + Σ`` (:meth:`gaussian_noise`, the exact noise predictor for
  ``N(0, I)`` data: the skip of the noise-parametrised score decoder).

So SGM and VSDM share one DSM loss (:func:`sbdiff.objectives.dsm_loss`) and one score decoder
(:class:`sbdiff.decoders.ScoreDecoder`); only the encoder's coefficients differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._utils import append_dims

__all__ = ["GaussianTransition", "to_eig", "from_eig"]


def to_eig(x: Tensor, basis: Tensor | None) -> Tensor:
    """``Uᵀx`` per row of ``x`` ``(B, d)`` (identity for ``basis = None``). In ``U``'s precision,
    outside autocast: a bf16 change of basis would cost a transition its accuracy."""
    if basis is None:
        return x
    with torch.autocast(x.device.type, enabled=False):
        return x.to(basis.dtype) @ basis


def from_eig(y: Tensor, basis: Tensor | None) -> Tensor:
    """``U y`` per row (as :func:`to_eig`)."""
    if basis is None:
        return y
    with torch.autocast(y.device.type, enabled=False):
        return y.to(basis.dtype) @ basis.T


@dataclass(frozen=True)
class GaussianTransition:
    """``X_t | X_s = x ~ N(U diag(a) Uᵀ x, U diag(σ²) Uᵀ)`` for a batch.

    Parameters
    ----------
    mean_coeff : Tensor
        ``a``: ``(B,)`` for a scalar transition, ``(B, d)`` in the eigen coordinates otherwise.
    std : Tensor
        ``σ``, the shape of ``mean_coeff``.
    basis : Tensor or None
        ``U`` ``(d, d)`` orthonormal, or ``None`` (the standard basis).
    """

    mean_coeff: Tensor
    std: Tensor
    basis: Tensor | None = None

    # -- coordinates ---------------------------------------------------------------------------------
    def _coef(self, c: Tensor, x: Tensor) -> Tensor:
        return append_dims(c, x.ndim) if c.ndim == 1 else c

    def to_eig(self, x: Tensor) -> Tensor:
        """``Uᵀx`` per row (:func:`to_eig`)."""
        return to_eig(x, self.basis)

    def from_eig(self, y: Tensor) -> Tensor:
        """``U y`` per row (:func:`from_eig`)."""
        return from_eig(y, self.basis)

    def _apply(self, w: Tensor, v: Tensor) -> Tensor:
        """``U diag(w) Uᵀ v`` per row."""
        return self.from_eig(self._coef(w, v) * self.to_eig(v))

    # -- the operators ------------------------------------------------------------------------------
    def mean(self, x_s: Tensor) -> Tensor:
        """``M x_s``, shape of ``x_s``."""
        return self._apply(self.mean_coeff, x_s)

    def sample(self, x_s: Tensor, noise: Tensor) -> Tensor:
        """``x_t = M x_s + L ε`` for ``ε = noise`` (shape of ``x_s``)."""
        y = self._coef(self.mean_coeff, x_s) * self.to_eig(x_s) + self._coef(self.std, noise) * self.to_eig(noise)
        return self.from_eig(y)

    def factor_t(self, v: Tensor) -> Tensor:
        """``Lᵀ v`` (``L`` is symmetric), shape of ``v``."""
        return self._apply(self.std, v)

    def inv_factor_t(self, v: Tensor) -> Tensor:
        """``L⁻ᵀ v``, shape of ``v``."""
        return self.from_eig(self.to_eig(v) / self._coef(self.std, v))

    def gaussian_noise(self, x: Tensor) -> Tensor:
        """``Lᵀ C⁻¹ x`` with ``C = M Mᵀ + Σ``: the posterior mean of ``ε`` given ``x_t = x`` when
        ``x_s ~ N(0, I)`` (in eigen coordinates ``σ y/(a² + σ²)``), shape of ``x``."""
        a, std = self._coef(self.mean_coeff, x), self._coef(self.std, x)
        return self.from_eig(std * self.to_eig(x) / (a**2 + std**2))

    def factor(self) -> Tensor:
        """The factor ``L`` itself: ``(B,)`` (scalar), ``(B, d)`` (its diagonal, no basis) or
        ``(B, d, d)`` (with a basis)."""
        if self.basis is None:
            return self.std
        with torch.autocast(self.std.device.type, enabled=False):
            U = self.basis.to(self.std.dtype)
            return torch.einsum("ij,bj,kj->bik", U, self.std, U)

    def covariance(self) -> Tensor:
        """``Σ`` as a ``(B, d, d)`` matrix (needs ``d``: not for scalar transitions)."""
        if self.std.ndim == 1:
            raise ValueError("a scalar transition has no fixed dimension; use std**2 * I")
        var = self.std**2
        if self.basis is None:
            return torch.diag_embed(var)
        U = self.basis.to(var.dtype)
        return torch.einsum("ij,bj,kj->bik", U, var, U)
