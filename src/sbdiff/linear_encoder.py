"""The linear multivariate encoder of VSDM and its score decoder (DESIGN §4.4; Deng et al. 2024).

Encoder (forward SDE, data at ``t = 0``):

    ``dX = −½ β(t) D_t X dt + √β(t) dW``,

with ``β`` the VP reference's schedule (``f = −½β x``, ``g = √β``) and ``D_t`` symmetric. Relative to
the reference its control is linear, ``z_φ(x, t) = −½ √β (D_t − I) x = √β A_t x`` with the
*variational score* ``A_t = ½(I − D_t)`` (the linearised forward score ``∇log ψ_t ≈ A_t x`` of
Deng et al. 2024, eq. 7; their forward drift ``f + β A_t x``).

Families (all start at ``D = I``, where the encoder *is* the VP reference):

* ``full``: ``D = exp(S)`` with ``S`` symmetric, the matrix exponential of a free symmetric
  parameter; ``D = U diag(e^μ) Uᵀ`` for ``S = U diag(μ) Uᵀ`` is symmetric positive definite for every
  value of the parameter, and the map is smooth at ``S = 0`` (``dD = dS``), so gradient updates are
  well defined at the isotropic start, where an eigenvalue parametrisation is degenerate.
* ``diagonal``: ``D = diag(e^s)`` (images, high dimension): ``O(d)`` everything.
* ``isotropic``: ``D = e^s I``, one scalar: a learned contraction rate without anisotropy (the
  ablation that tells what a learned ``D`` adds beyond its overall scale).
* time-varying (either family): ``A_t = c(t)·A`` with ``c(t) = exp(m(t))`` and ``m`` a small MLP with
  a zero-initialised last layer (``c ≡ 1`` at the start), as the reference code's ``At = A·exp(MLP(t))``
  (WayneDW/Variational_Schrodinger_Diffusion_Model, ``models/toy_model/Linear.py``); then
  ``D_t = I − c(t)(I − D)`` shares the eigenvectors ``U`` of ``D`` at every time, so all ``D_t``
  commute and the problem decouples into scalar linear SDEs along ``U``.

Transitions in closed form (Särkkä & Solin 2019, §6.2), in the eigenbasis ``U`` with the rates
``λ_i(t)`` (eigenvalues of ``D_t``) and ``K_i(s, t) = ∫_s^t β(r) λ_i(r) dr``:

    ``X_t | X_s = x  ~  N(U diag(a) Uᵀ x, U diag(v) Uᵀ)``,
    ``a_i = exp(−½ K_i(s, t))``,  ``v_i = ∫_s^t β(r) exp(−K_i(r, t)) dr``.

Time-invariant ``D`` (``K_i = λ_i (B(t) − B(s))``, ``B = ∫β``): ``v_i = (1 − e^{−λ_i ΔB})/λ_i``, which
is the Lyapunov solution ``Σ = (I − e^{−ΔB·D}) D⁻¹`` (DESIGN §4.4), exact. Time-varying ``D_t``:
``K_i`` and ``v_i`` from ``0`` to the nodes of a fine uniform grid (trapezoid rule for ``K``; for the
variance integral the log-integrand taken linear on each interval, exact for exponentials, summed with a
log-cumulative-sum, stable for any rate), carried from the node below ``t`` by the same rule, and
``v(s, t) = v(0, t) − a(s, t)² v(0, s)``: a quadrature of the variance ODE
``v' = −β λ v + β`` with ``O(h²)`` error.

The transition score is ``∇log q(x_t | x_s) = −Σ⁻¹(x_t − mean) = −L⁻ᵀ ε`` for
``x_t = mean + L ε``, ``L = U diag(√v) Uᵀ`` (Deng et al. 2024, eq. 15), which
:class:`~sbdiff.decoders.ScoreDecoder` and :func:`sbdiff.objectives.dsm_loss` use through
:class:`~sbdiff.transitions.GaussianTransition`, as for the fixed reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._utils import SbdiffError, append_dims, as_time
from .encoders import Encoder
from .references import ReferenceSDE
from .transitions import GaussianTransition, from_eig, to_eig

__all__ = ["LinearEncoder", "FAMILIES"]

FAMILIES = ("full", "diagonal", "isotropic")


def _log_phi(u: Tensor) -> Tensor:
    """``log((e^u − 1)/u)``, elementwise, stable at ``u = 0`` (where it is ``u/2 + O(u²)``)."""
    small = u.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, 0.5 * u, torch.log(torch.expm1(safe) / safe))


class _TimeScale(nn.Module):
    """``m(t)``: an MLP of smooth time features ``[t/T, sin(kπt/T), cos(kπt/T)]_{k=1..K}`` to a scalar,
    last layer zero (``m ≡ 0``). Low, bounded frequencies keep ``c(t) = e^{m(t)}`` resolvable by the
    quadrature grid of the time-varying transitions. Maps ``(B,)`` to ``(B,)``."""

    def __init__(self, T: float, hidden: int = 32, n_freq: int = 4):
        super().__init__()
        self.T = float(T)
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * math.pi, persistent=False)
        self.fc1 = nn.Linear(2 * n_freq + 1, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, t: Tensor) -> Tensor:
        u = (t / self.T)[:, None]
        arg = u * self.freqs.to(t.dtype)[None]
        feats = torch.cat([u, torch.sin(arg), torch.cos(arg)], dim=1)
        return self.fc2(torch.nn.functional.silu(self.fc1(feats)))[:, 0]


class LinearEncoder(Encoder):
    """``dX = −½ β(t) D_t X dt + √β(t) dW``: VSDM's linear encoder (module docstring; DESIGN §4.4).

    Parameters
    ----------
    reference : ReferenceSDE
        A variance-preserving reference, ``f = −½ g² x`` (``vp``; supplies ``β = g²``).
    dim : int
        Dimension ``d``.
    family : {"full", "diagonal", "isotropic"}
        ``D = exp(S)`` with ``S`` a symmetric ``d×d`` parameter, ``D = diag(e^s)``, or ``D = e^s I``
        (one scalar: the ablation that separates a learned contraction rate from learned anisotropy).
    time_varying : bool
        ``D_t = I − c(t)(I − D)`` with ``c(t) = exp(m(t))`` learned (reference code's ``A_t = A·e^{MLP(t)}``).
    hidden : int
        Width of ``m``'s hidden layer (time-varying only).
    grid_size : int
        Intervals of the quadrature grid on ``[0, T]`` (time-varying only).

    Notes
    -----
    Parameters: ``log_d`` (``(d, d)``, symmetrised, for ``full``; ``(d,)`` for ``diagonal``), zero at
    the start (``D = I``), and ``time_scale.*`` (time-varying). Shapes: ``x`` ``(B, d)``, ``t`` ``(B,)``.
    """

    closed_form = True

    def __init__(self, reference: ReferenceSDE, dim: int, family: str = "full", time_varying: bool = False,
                 hidden: int = 32, grid_size: int = 4000):
        super().__init__(reference)
        if family not in FAMILIES:
            raise SbdiffError(f"unknown linear encoder family '{family}'; choose {' or '.join(FAMILIES)}")
        if int(dim) < 1:
            raise SbdiffError(f"the linear encoder needs dimension >= 1, got {dim}")
        probe = torch.linspace(0.0, reference.T, 5, dtype=torch.float64)
        if not torch.allclose(reference.h(probe), 0.5 * reference.g(probe) ** 2, rtol=1e-9, atol=0.0):
            raise SbdiffError(f"the linear (VSDM) encoder needs a variance-preserving reference with "
                              f"f = -1/2 g^2 x (reference 'vp'), got {reference!r}")
        if int(grid_size) < 10:
            raise SbdiffError(f"grid_size must be at least 10, got {grid_size}")
        self.dim = int(dim)
        self.family = family
        self.time_varying = bool(time_varying)
        self.grid_size = int(grid_size)
        shape = {"full": (self.dim, self.dim), "diagonal": (self.dim,), "isotropic": (1,)}[family]
        self.log_d = nn.Parameter(torch.zeros(shape))
        self.time_scale = _TimeScale(reference.T, hidden) if self.time_varying else None

    # -- the matrix D and its spectrum --------------------------------------------------------------
    def log_matrix(self) -> Tensor:
        """``S = log D``: symmetric ``(d, d)`` (full) or the vector ``s`` ``(d,)`` (diagonal; isotropic:
        the scalar repeated)."""
        p = self.log_d
        if self.family == "full":
            return 0.5 * (p + p.T)
        return p.expand(self.dim) if self.family == "isotropic" else p

    def matrix(self) -> Tensor:
        """``D = exp(S)``, ``(d, d)``; differentiable in the parameters (no eigendecomposition)."""
        s = self.log_matrix()
        return torch.linalg.matrix_exp(s) if self.family == "full" else torch.diag(torch.exp(s))

    def spectrum(self) -> tuple[Tensor | None, Tensor]:
        """Eigenvectors ``U`` (``(d, d)``, ``None`` for the diagonal family) and eigenvalues ``λ`` ``(d,)``
        of the time-invariant ``D`` (for time-varying encoders: of the base ``D``, ``c = 1``).

        ``U`` comes from ``eigh(S)``; a diagonal ``S`` (e.g. the start, ``S = 0``) gives ``U = I``
        exactly. Not differentiated (:meth:`gain` is the differentiable route)."""
        s = self.log_matrix()
        if self.family != "full":
            return None, torch.exp(s)
        off = s - torch.diag(torch.diagonal(s))
        if not bool(off.any()):
            return torch.eye(self.dim, dtype=s.dtype, device=s.device), torch.exp(torch.diagonal(s))
        mu, U = torch.linalg.eigh(s)
        return U, torch.exp(mu)

    def time_factor(self, t: Tensor) -> Tensor:
        """``c(t)`` of shape ``(B,)`` (ones for a time-invariant encoder)."""
        if self.time_scale is None:
            return torch.ones_like(t)
        dtype = self.time_scale.fc1.weight.dtype
        return torch.exp(self.time_scale(t.to(dtype))).to(t.dtype)

    def rates(self, t: Tensor, lam: Tensor) -> Tensor:
        """Eigenvalues ``λ_i(t)`` of ``D_t``, shape ``(B, d)``, from the base eigenvalues ``lam``."""
        if self.time_scale is None:
            return lam.expand(t.shape[0], -1)
        return 1.0 - self.time_factor(t)[:, None] * (1.0 - lam)

    def gain(self, t: Tensor) -> Tensor:
        """``G_t = −½(D_t − I) = A_t``, the control's matrix, ``z = g(t)·G_t x``: shape ``(B, d, d)``
        (full) or ``(B, d)`` (diagonal, the diagonal of ``G_t``). Differentiable in the parameters."""
        c = self.time_factor(t)
        if self.family == "full":
            eye = torch.eye(self.dim, dtype=self.log_d.dtype, device=self.log_d.device)
            return c[:, None, None] * (-0.5 * (self.matrix() - eye))[None]
        return c[:, None] * (-0.5 * (torch.exp(self.log_matrix()) - 1.0))[None]

    def forward(self, t: Tensor) -> Tensor:
        """:meth:`gain` (the module's forward, so that ``torch.func.functional_call`` can evaluate the
        control's matrix at other parameter values, as VSDM's stochastic-approximation step does)."""
        return self.gain(t)

    # -- eigen coordinates ----------------------------------------------------------------------------
    to_eig = staticmethod(to_eig)
    from_eig = staticmethod(from_eig)

    # -- transitions ------------------------------------------------------------------------------
    def _int_beta(self, s: Tensor, t: Tensor) -> Tensor:
        """``B(t) − B(s) = ∫_s^t β`` (``(B,)``): ``−2 log a(s, t)`` of the VP reference."""
        return -2.0 * self.reference.log_mean_coeff(s, t)

    def _grid_tables(self, lam: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
        """Time-varying encoders: ``K(0, r_k)`` and ``v(0, r_k)``, each ``(N+1, d)``, on the uniform grid
        ``r_k = kT/N`` (module docstring), and the spacing ``h``."""
        ref, n = self.reference, self.grid_size
        r = torch.linspace(0.0, ref.T, n + 1, dtype=dtype, device=lam.device)
        h = ref.T / n
        beta = ref.g(r) ** 2
        B = self._int_beta(torch.zeros_like(r), r)
        bc = beta * self.time_factor(r).to(dtype)
        C = torch.cat([bc.new_zeros(1), torch.cumsum(0.5 * h * (bc[1:] + bc[:-1]), 0)])
        K = B[:, None] - (1.0 - lam.to(dtype))[None] * C[:, None]  # ∫₀^r β λ_i(·)
        # v(0, r_k) = ∫₀^{r_k} β(r) e^{K(r) − K(r_k)} dr = e^{−K_k} Σ_{j<k} ∫_{r_j}^{r_{j+1}} e^{ℓ(r)} dr with
        # ℓ = log β + K taken linear on each interval (exact for exponential integrands):
        # ∫ = h e^{ℓ_j} φ(ℓ_{j+1} − ℓ_j), φ(u) = (e^u − 1)/u; summed in log space (logcumsumexp)
        ell = torch.log(beta)[:, None] + K
        log_terms = math.log(h) + ell[:-1] + _log_phi(ell[1:] - ell[:-1])
        V = torch.exp(torch.logcumsumexp(log_terms, 0) - K[1:])
        V = torch.cat([torch.zeros_like(V[:1]), V])
        return K, V, h

    def _at(self, t: Tensor, tables) -> tuple[Tensor, Tensor]:
        """``K(0, t)`` and ``v(0, t)``, each ``(B, d)``, from the grid tables: ``K`` linearly interpolated,
        ``v`` propagated from the grid node ``r_j ≤ t`` by the same log-linear rule,
        ``v(t) = e^{−(K_t − K_j)} v_j + (t − r_j) e^{ℓ_j − K_t} φ(ℓ_t − ℓ_j)``."""
        K, V, h = tables
        u = t / h
        j = torch.clamp(torch.floor(u).long(), 0, K.shape[0] - 2)
        delta = (t - j.to(t.dtype) * h)[:, None]
        w = delta / h
        Kt = (1.0 - w) * K[j] + w * K[j + 1]
        beta_j = self.reference.g(j.to(t.dtype) * h) ** 2
        ell_j = torch.log(beta_j)[:, None] + K[j]
        ell_t = torch.log(self.reference.g(t) ** 2)[:, None] + Kt
        vt = torch.exp(K[j] - Kt) * V[j] + delta * torch.exp(ell_j - Kt + _log_phi(ell_t - ell_j))
        return Kt, vt

    def coeffs(self, s: Tensor | float, t: Tensor | float, like: Tensor, spectrum=None) -> tuple[Tensor, Tensor]:
        """Mean coefficients ``a`` and variances ``v`` of ``X_t | X_s`` in the eigenbasis, each ``(B, d)``.

        ``like`` (``(B, …)``) fixes the batch, dtype and device; ``spectrum`` = :meth:`spectrum` (computed
        when omitted)."""
        s, t = as_time(s, like), as_time(t, like)
        _, lam = self.spectrum() if spectrum is None else spectrum
        lam = lam.to(like.dtype)
        if self.time_scale is None:
            dB = self._int_beta(s, t)[:, None]
            a = torch.exp(-0.5 * lam * dB)
            v = -torch.expm1(-lam * dB) / lam
            return a, v
        tables = self._grid_tables(lam, like.dtype)
        Kt, vt = self._at(t, tables)
        Ks, vs = self._at(s, tables)
        a = torch.exp(-0.5 * (Kt - Ks))
        return a, (vt - a**2 * vs).clamp_min(0.0)

    def gaussian_transition(self, s: Tensor | float, t: Tensor | float, like: Tensor) -> GaussianTransition:
        """``q(x_t | x_s) = N(U diag(a) Uᵀ x_s, U diag(v) Uᵀ)`` for the batch of ``like`` ``(B, d)``
        (:meth:`coeffs`; ``U = None`` for the diagonal family). ``transition`` and
        ``sample_transition`` (from :class:`~sbdiff.encoders.Encoder`) return the factor
        ``L = U diag(√v) Uᵀ`` as ``(B, d, d)`` (full) or its diagonal ``(B, d)``."""
        U, lam = spec = self.spectrum()
        a, v = self.coeffs(s, t, like, spec)
        return GaussianTransition(a, torch.sqrt(v), U)

    def covariance(self, s: Tensor | float, t: Tensor | float, like: Tensor) -> Tensor:
        """``Σ(s, t) = Cov(X_t | X_s)``, shape ``(B, d, d)`` (also for the diagonal family)."""
        return self.gaussian_transition(s, t, like).covariance()

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """``z = −½ √β (D_t − I) x``, shape ``(B, d)``."""
        t = as_time(t, x)
        U, lam = self.spectrum()
        rate = self.rates(t, lam.to(x.dtype))
        g = append_dims(self.reference.g(t), x.ndim)
        return -0.5 * g * self.from_eig((rate - 1.0) * self.to_eig(x, U), U)

    # -- the prior N(0, Σ_T) ----------------------------------------------------------------------
    def prior_cov(self) -> Tensor:
        """``Σ_T = Cov(X_T | X_0 = 0)``, ``(d, d)``: the prior of this encoder."""
        like = self.log_d.new_zeros(1, self.dim)
        return self.covariance(0.0, self.reference.T, like)[0]

    def _prior_spec(self, like: Tensor):
        U, lam = spec = self.spectrum()
        _, v = self.coeffs(0.0, self.reference.T, like[:1], spec)
        return U, v[0]

    def prior_logp(self, z: Tensor) -> Tensor:
        """``log N(z; 0, Σ_T)`` for ``z`` of shape ``(B, d)``; returns ``(B,)``."""
        U, v = self._prior_spec(z)
        y = self.to_eig(z.reshape(z.shape[0], -1), U)
        return -0.5 * (y.pow(2) / v).sum(1) - 0.5 * torch.log(2 * math.pi * v).sum()

    def prior_sampling(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Tensor:
        """Draws of ``N(0, Σ_T)``, a tensor of ``shape`` ``(n, d)``."""
        eps = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        U, v = self._prior_spec(eps)
        return self.from_eig(torch.sqrt(v) * self.to_eig(eps, U), U)
