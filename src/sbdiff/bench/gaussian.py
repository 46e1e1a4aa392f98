"""The Schrödinger bridge between two Gaussians in closed form, and its population IPF iterates
(DESIGN §6.1).

References: Bunne et al. 2023, "The Schrödinger bridge between Gaussian measures has a closed
form" (AISTATS), Theorem 3 and Table 1 (linear references); Janati et al. 2020, "Entropic optimal
transport between unbalanced Gaussian measures has a closed form" (NeurIPS), Theorem 1; Mallasto
et al. 2021, "Entropy-regularized 2-Wasserstein distance between Gaussian measures".

Conventions. Time runs on ``[0, 1]``; ``μ = N(m0, S0)`` sits at ``t = 0`` and ``ν = N(m1, S1)`` at
``t = 1``. The reference is ``dX = −α X dt + √eps dW`` (``α = 0``: ``brownian(eps)``, whose
static problem is entropic OT with cost ``½‖x − y‖²`` and entropy weight ``eps``, DESIGN §1;
``α ≠ 0``: an Ornstein–Uhlenbeck reference). Everything is computed in float64; point arguments
accept numpy arrays or torch tensors (results come back in the same kind, torch in the input's
dtype and device), with the batch first and the argument order ``(x, t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._utils import SbdiffError
from ._common import (check_dim, check_eps, check_mean, check_n, check_points, check_spd, check_times,
                      random_spd, rng_from, sample_gaussian, single_blas_thread, sym_sqrt, to_numpy)

__all__ = ["GaussianBridge", "IPFIterate", "gaussian_ipf", "entropic_cross_cov", "w2_map", "random_gaussian_bridge"]


def entropic_cross_cov(S0, S1, eps: float) -> np.ndarray:
    """``C_σ = Cov(X0, X1)`` of the entropic-OT plan between ``N(·, S0)`` and ``N(·, S1)`` for the
    cost ``½‖x − y‖²`` and entropy weight ``eps`` (= the Brownian-reference SB with variance ``eps``).

    ``D_σ = (4 S0^{½} S1 S0^{½} + σ⁴ I)^{½}``, ``C_σ = ½ (S0^{½} D_σ S0^{−½} − σ² I)`` with ``σ² = eps``
    (Janati et al. 2020, Thm 1; Bunne et al. 2023, Thm 3; DESIGN §6.1). ``S0⁻¹ C_σ`` is symmetric,
    ``C_σ`` itself is not in general. Shapes: ``S0, S1 (d, d)`` -> ``(d, d)``.
    """
    S0, S1 = np.asarray(S0, np.float64), np.asarray(S1, np.float64)
    d = S0.shape[0]
    r0, r0i = sym_sqrt(S0), sym_sqrt(S0, inverse=True)
    D = sym_sqrt(4.0 * r0 @ S1 @ r0 + eps**2 * np.eye(d))
    return 0.5 * (r0 @ D @ r0i - eps * np.eye(d))


def w2_map(S0, S1) -> np.ndarray:
    """The matrix ``T = S0^{−½} (S0^{½} S1 S0^{½})^{½} S0^{−½}`` of the 2-Wasserstein (Monge) map
    ``x ↦ m1 + T (x − m0)`` between ``N(m0, S0)`` and ``N(m1, S1)``; shape ``(d, d)``, symmetric."""
    S0, S1 = np.asarray(S0, np.float64), np.asarray(S1, np.float64)
    r0, r0i = sym_sqrt(S0), sym_sqrt(S0, inverse=True)
    T = r0i @ sym_sqrt(r0 @ S1 @ r0) @ r0i
    return 0.5 * (T + T.T)


def _ou_coeffs(alpha: float, eps: float):
    """Transition coefficients of ``dX = −αX dt + √eps dW``: ``X_t | X_s ~ N(φ(s,t) X_s, q(s,t) I)``."""

    def phi(s, t):
        return np.exp(-alpha * (t - s))

    def q(s, t):
        dt = np.asarray(t - s, np.float64)
        if alpha == 0.0:
            return eps * dt
        return eps * (-np.expm1(-2.0 * alpha * dt)) / (2.0 * alpha)

    return phi, q


class GaussianBridge:
    """The SB between ``μ = N(m0, S0)`` (``t = 0``) and ``ν = N(m1, S1)`` (``t = 1``) for the reference
    ``dX = −α X dt + √eps dW`` (default ``α = 0``: ``brownian(eps)``).

    Parameters
    ----------
    m0, S0, m1, S1 : array-like, shapes (d,), (d, d), (d,), (d, d)
        Means and symmetric positive-definite covariances.
    eps : float > 0
        Diffusion coefficient squared of the reference (DESIGN's ``σ²``).
    alpha : float
        OU mean-reversion rate of the reference (0: Brownian).

    Attributes
    ----------
    cross_cov : ndarray (d, d)
        ``C = Cov(X0, X1)`` of the optimal coupling. For ``α ≠ 0`` the static problem is entropic OT
        with cost ``‖y − φx‖²/(2q)``, ``φ = e^{−α}``, ``q = eps(1 − e^{−2α})/(2α)``; the change of
        variable ``x ↦ φx`` reduces it to the Brownian case: ``C = C_q(φ² S0, S1)/φ`` (Bunne et al.
        2023, §4).
    dim : int

    Notes
    -----
    Given the coupling, ``X_t = a_t X0 + b_t X1 + √v_t Z`` (the reference bridge) with
    ``b_t = φ(t,1) q(0,t)/q(0,1)``, ``a_t = φ(0,t) q(t,1)/q(0,1)``, ``v_t = q(0,t) q(t,1)/q(0,1)``
    (Brownian: ``a = 1−t``, ``b = t``, ``v = eps t(1−t)``). Hence ``m_t = a m0 + b m1`` and
    ``Σ_t = a² S0 + b² S1 + ab (C + Cᵀ) + v I`` (DESIGN §6.1). The forward SB drift is
    ``b_t(x) = ṁ_t + A_t (x − m_t)`` with, writing ``φ = φ(t,1)``, ``r = 1/q(0,1)``,
    ``A_t = eps φ r [b S1 + a Cᵀ − φ φ(0,t)(a S0 + b C) − φ q(0,t) I] Σ_t⁻¹ − α I``; for ``α = 0``
    this is DESIGN's ``A_t = P_t Σ_t⁻¹``, ``P_t = t(S1 − C − eps I) − (1−t)(S0 − Cᵀ)``. (It is the
    bridge drift ``−αx + eps φ (E[X1 | X_t = x] − φ x)/q(t,1)`` averaged over the plan, with the
    factor ``q(t,1)`` cancelled so that it holds at ``t = 1`` too.)
    """

    def __init__(self, m0, S0, m1, S1, eps: float, *, alpha: float = 0.0):
        self.m0 = check_mean(m0, "m0")
        self.dim = d = check_dim(len(self.m0))
        self.m1 = check_mean(m1, "m1")
        if self.m1.shape != (d,):
            raise SbdiffError(f"m1 must have shape ({d},) like m0, got {tuple(self.m1.shape)}")
        self.S0 = check_spd(S0, d, "S0")
        self.S1 = check_spd(S1, d, "S1")
        self.eps = check_eps(eps)
        try:
            self.alpha = float(alpha)
        except (TypeError, ValueError):
            raise SbdiffError(f"alpha must be a number, got {alpha!r}") from None
        if not math.isfinite(self.alpha):
            raise SbdiffError(f"alpha must be finite, got {alpha}")
        self._phi, self._q = _ou_coeffs(self.alpha, self.eps)
        phi1, q1 = float(self._phi(0.0, 1.0)), float(self._q(0.0, 1.0))
        self.cross_cov = entropic_cross_cov(phi1**2 * self.S0, self.S1, q1) / phi1
        C = self.cross_cov
        self._S0_inv = np.linalg.inv(self.S0)
        self._K = C.T @ self._S0_inv  # E[X1 | X0 = x] = m1 + K (x − m0)
        cond = self.S1 - C.T @ self._S0_inv @ C
        self._cond_cov = 0.5 * (cond + cond.T)
        self._cond_sqrt = sym_sqrt(self._cond_cov)
        self._S0_sqrt, self._S1_sqrt = np.linalg.cholesky(self.S0), np.linalg.cholesky(self.S1)

    # -- closed forms ---------------------------------------------------------------------------
    def _coeffs(self, t: float) -> tuple[float, float, float]:
        phi, q = self._phi, self._q
        q01 = q(0.0, 1.0)
        return (float(phi(0.0, t) * q(t, 1.0) / q01), float(phi(t, 1.0) * q(0.0, t) / q01),
                float(q(0.0, t) * q(t, 1.0) / q01))

    def marginal(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``m_t`` (d,) and covariance ``Σ_t`` (d, d) of the SB marginal at time ``t ∈ [0, 1]``."""
        t = float(check_times(t, 1)[0])
        a, b, v = self._coeffs(t)
        C = self.cross_cov
        m = a * self.m0 + b * self.m1
        S = a * a * self.S0 + b * b * self.S1 + a * b * (C + C.T) + v * np.eye(self.dim)
        return m, 0.5 * (S + S.T)

    def drift_matrix(self, t: float) -> np.ndarray:
        """``A_t`` (d, d): the forward drift is ``b_t(x) = ṁ_t + A_t (x − m_t)``; symmetric."""
        t = float(check_times(t, 1)[0])
        a, b, _ = self._coeffs(t)
        C, d = self.cross_cov, self.dim
        phi_t1, phi_0t, q0t = float(self._phi(t, 1.0)), float(self._phi(0.0, t)), float(self._q(0.0, t))
        r = 1.0 / float(self._q(0.0, 1.0))
        P = self.eps * phi_t1 * r * (b * self.S1 + a * C.T - phi_t1 * phi_0t * (a * self.S0 + b * C)
                                     - phi_t1 * q0t * np.eye(d))
        _, S = self.marginal(t)
        return np.linalg.solve(S, P.T).T - self.alpha * np.eye(d)  # P Σ⁻¹ (Σ symmetric)

    def mean_velocity(self, t: float) -> np.ndarray:
        """``ṁ_t = −α m_t + eps φ(t,1) (m1 − φ(0,1) m0)/q(0,1)`` (Brownian: ``m1 − m0``); shape (d,)."""
        t = float(check_times(t, 1)[0])
        m, _ = self.marginal(t)
        return (-self.alpha * m + self.eps * float(self._phi(t, 1.0)) / float(self._q(0.0, 1.0))
                * (self.m1 - float(self._phi(0.0, 1.0)) * self.m0))

    def _per_time(self, x, t, fn):
        arr, back = to_numpy(x, "x")
        check_points(arr, self.dim)
        ts = check_times(t, arr.shape[0])
        out = np.empty_like(arr)
        for tu in np.unique(ts):
            rows = ts == tu
            out[rows] = fn(arr[rows], float(tu))
        return back(out)

    @single_blas_thread
    def drift(self, x, t):
        """Forward SB drift ``b_t(x)``: ``x (n, d)``, ``t`` float or ``(n,)`` -> ``(n, d)``.

        ``dX = b_t(X) dt + √eps dW`` started at ``X0 ~ μ`` has the SB marginals and coupling.
        """

        def fn(xs, tu):
            m, _ = self.marginal(tu)
            return self.mean_velocity(tu) + (xs - m) @ self.drift_matrix(tu).T

        return self._per_time(x, t, fn)

    @single_blas_thread
    def score(self, x, t):
        """``∇ log p_t(x) = −Σ_t⁻¹ (x − m_t)``: ``x (n, d)``, ``t`` float or ``(n,)`` -> ``(n, d)``."""

        def fn(xs, tu):
            m, S = self.marginal(tu)
            return -np.linalg.solve(S, (xs - m).T).T

        return self._per_time(x, t, fn)

    # -- the plan -------------------------------------------------------------------------------
    @single_blas_thread
    def conditional_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``m1 + Cᵀ S0⁻¹ (x − m0)`` (n, d) and covariance ``S1 − Cᵀ S0⁻¹ C`` (n, d, d) of ``X1 | X0 = x``."""
        arr, _ = to_numpy(x, "x")
        check_points(arr, self.dim)
        mean = self.m1 + (arr - self.m0) @ self._K.T
        return mean, np.broadcast_to(self._cond_cov, (arr.shape[0], self.dim, self.dim)).copy()

    @single_blas_thread
    def conditional(self, x, seed=None):
        """Draws of ``X1 | X0 = x`` under the optimal plan: ``x (n, d)`` -> ``(n, d)`` (input's kind)."""
        arr, back = to_numpy(x, "x")
        check_points(arr, self.dim)
        rng = rng_from(seed)
        mean = self.m1 + (arr - self.m0) @ self._K.T
        return back(mean + rng.standard_normal(arr.shape) @ self._cond_sqrt.T)

    sample_conditional = conditional

    def sample_source(self, n: int, seed=None) -> np.ndarray:
        """``n`` draws of ``μ``, shape ``(n, d)``."""
        return sample_gaussian(self.m0, self._S0_sqrt, check_n(n), rng_from(seed))

    def sample_target(self, n: int, seed=None) -> np.ndarray:
        """``n`` draws of ``ν``, shape ``(n, d)``."""
        return sample_gaussian(self.m1, self._S1_sqrt, check_n(n), rng_from(seed))

    def sample_plan(self, n: int, seed=None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws ``(x0, x1)`` of the optimal coupling, each ``(n, d)``."""
        rng = rng_from(seed)
        x0 = self.sample_source(n, rng)
        return x0, self.conditional(x0, rng)

    def target_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean (d,) and covariance (d, d) of the target ``ν``."""
        return self.m1.copy(), self.S1.copy()

    @property
    def joint_cov(self) -> np.ndarray:
        """Covariance ``[[S0, C], [Cᵀ, S1]]`` (2d, 2d) of the optimal coupling."""
        C = self.cross_cov
        return np.block([[self.S0, C], [C.T, self.S1]])

    def __repr__(self) -> str:
        ref = f"brownian(eps={self.eps:g})" if self.alpha == 0 else f"ou(alpha={self.alpha:g}, eps={self.eps:g})"
        return f"GaussianBridge(dim={self.dim}, reference={ref})"


# -- IPF --------------------------------------------------------------------------------------------
@dataclass
class IPFIterate:
    """One population IPF iterate: the Gaussian joint law of ``(X0, X1)``.

    Attributes
    ----------
    half_step : int
        0 for the reference started at ``μ``; ``2n − 1`` after the backward half-step of IPF
        iteration ``n`` (``X1`` marginal reset to ``ν``, ``X0 | X1`` kept: DSB's backward network of
        iteration ``n``); ``2n`` after the forward half-step (``X0`` marginal reset to ``μ``,
        ``X1 | X0`` kept: DSB's forward network of iteration ``n``).
    side : str
        ``"reference"``, ``"backward"`` or ``"forward"``.
    mean : ndarray (2d,)
    cov : ndarray (2d, 2d)
    """

    half_step: int
    side: str
    mean: np.ndarray
    cov: np.ndarray

    @property
    def dim(self) -> int:
        return self.mean.shape[0] // 2

    @property
    def cross_cov(self) -> np.ndarray:
        """``Cov(X0, X1)``, shape (d, d)."""
        d = self.dim
        return self.cov[:d, d:]


def gaussian_ipf(m0, S0, m1, S1, eps: float, n_iter: int, *, alpha: float = 0.0) -> list[IPFIterate]:
    """Population IPF (Sinkhorn on path space; Kullback 1968, De Bortoli et al. 2021 Alg. 1) between
    ``μ = N(m0, S0)`` and ``ν = N(m1, S1)`` for the reference ``dX = −αX dt + √eps dW`` on ``[0, 1]``.

    The iterates are Gaussian: the joint of ``(X0, X1)`` carries everything (given it, the path law is
    the reference bridge mixture). Start: ``π⁰ = μ ⊗ p_ref(x1 | x0)``. Backward half-step: keep
    ``X0 | X1`` of the previous iterate, set ``X1 ~ ν``. Forward half-step: keep ``X1 | X0``, set
    ``X0 ~ μ``. ``‖C_n − C_σ‖`` converges linearly (DESIGN §6.1).

    Returns
    -------
    list of IPFIterate, length ``2 n_iter + 1``: ``[π⁰, backward 1, forward 1, backward 2, ...]``.
    """
    ref = GaussianBridge(m0, S0, m1, S1, eps, alpha=alpha)  # validates everything
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise SbdiffError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    d = ref.dim
    phi, q = float(ref._phi(0.0, 1.0)), float(ref._q(0.0, 1.0))
    mean = np.concatenate([ref.m0, phi * ref.m0])
    cov = np.block([[ref.S0, phi * ref.S0], [phi * ref.S0, phi**2 * ref.S0 + q * np.eye(d)]])
    out = [IPFIterate(0, "reference", mean, cov)]

    def reset(mean, cov, keep: slice, reset_: slice, m_new, S_new):
        # keep the law of X_keep | X_reset, give X_reset the law N(m_new, S_new)
        A, B, D = cov[keep, keep], cov[keep, reset_], cov[reset_, reset_]
        G = np.linalg.solve(D, B.T).T  # B D⁻¹
        cond = A - G @ B.T
        new_mean = np.empty_like(mean)
        new_mean[reset_] = m_new
        new_mean[keep] = mean[keep] + G @ (m_new - mean[reset_])
        new_cov = np.empty_like(cov)
        new_cov[reset_, reset_] = S_new
        new_cov[keep, reset_] = G @ S_new
        new_cov[reset_, keep] = (G @ S_new).T
        kk = G @ S_new @ G.T + cond
        new_cov[keep, keep] = 0.5 * (kk + kk.T)
        return new_mean, new_cov

    x0, x1 = slice(0, d), slice(d, 2 * d)
    for n in range(1, n_iter + 1):
        mean, cov = reset(mean, cov, x0, x1, ref.m1, ref.S1)
        out.append(IPFIterate(2 * n - 1, "backward", mean, cov))
        mean, cov = reset(mean, cov, x1, x0, ref.m0, ref.S0)
        out.append(IPFIterate(2 * n, "forward", mean, cov))
    return out


def random_gaussian_bridge(dim: int, eps: float, seed: int = 0, *, alpha: float = 0.0) -> GaussianBridge:
    """A reproducible random problem: ``m0, m1 ~ U[−1, 1]^d``, ``S0, S1 = O diag(λ) Oᵀ`` with Haar
    ``O`` and ``λ ~ U[0.25, 2]`` (so neither commutes with the other and ``C`` is not symmetric)."""
    dim, eps = check_dim(dim), check_eps(eps)
    rng = rng_from([int(seed), dim, 4242])
    m0, m1 = rng.uniform(-1, 1, dim), rng.uniform(-1, 1, dim)
    S0, S1 = random_spd(dim, rng, 0.25, 2.0), random_spd(dim, rng, 0.25, 2.0)
    return GaussianBridge(m0, S0, m1, S1, eps, alpha=alpha)
