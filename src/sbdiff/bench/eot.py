"""The entropic-OT / Schrödinger-bridge benchmark pairs of Gushchin et al. (NeurIPS 2023, "Building
the bridge of Schrödinger: a continuous entropic optimal transport benchmark", arXiv 2306.10161),
Gaussian-mixture version (DESIGN §6.2).

Construction (their §3–4, Thm 3.2 and the ``ConditionalPlan`` of ngushchin/EntropicOTBenchmark).
Take a source ``p0 = Σ_m π_m N(a_m, Σ_m)`` and an (unnormalised) potential
``φ(y) = Σ_k w_k N(y | r_k, S_k)``. Then

``π*(x, y) = p0(x) N(y | x, eps I) φ(y) / Z(x)``, ``Z(x) = Σ_k w_k N(x | r_k, S_k + eps I)``

has the product form ``a(x) b(y) exp(−‖x − y‖²/(2 eps))``, so it is the entropic-OT plan (cost
``½‖x − y‖²``, entropy weight ``eps``) between ``p0`` and its own second marginal ``p1``, i.e. the
static SB for the reference ``brownian(eps)`` on ``[0, 1]``. In closed form:
``π*(y | x) = Σ_k g_k(x) N(y | μ_k(x), Λ_k)``, ``Λ_k = (S_k⁻¹ + I/eps)⁻¹``,
``μ_k(x) = Λ_k (S_k⁻¹ r_k + x/eps)``, ``g_k(x) ∝ w_k N(x | r_k, S_k + eps I)``; the SB drift is
``v*(x, t) = eps ∇ log Σ_k w_k N(x | r_k, S_k + eps (1−t) I)`` (DESIGN §6.2).

Parameter recipes. The original benchmark ships its parameters as downloaded tensors (one source per
dimension, one potential per (dimension, eps); ``eps ∈ {0.1, 1, 10}``, the published tables at
``D ∈ {2, 16, 64, 128}``); those files cannot be fetched offline (a Google-Drive download), so
:func:`make_pair` draws its own pairs, reproducibly from a seed, in one of two families. Both keep the
original's split: the source depends on ``(D, seed)`` only, the potential on ``(D, eps, seed)``.

``family="draft-recipe"`` (the default) follows the authors' own generator, with our own seeds: the
draft notebook ``notebooks/GaussianMixtureDraft.ipynb`` of ngushchin/EntropicOTBenchmark (its
``initialize_centers``, ``initialize_gaussians`` and ``params``; commit 438dcb9 of 2023-02-22, in
the pre-release history that the current branch no longer contains; the pairs' sampler and plan are
in ``benchmark/gaussian_mixture_benchmark.py``, which holds no draw):

* source: 3 components, weights ``U(0, 1)`` normalised (not equal), covariances ``0.5² I``, centres on
  a permuted grid with spacing 2: in every coordinate the three centres take the values
  ``{−2, 0, 2}`` in an independent random order;
* potential: 5 components, weights ``U(0, 1)`` normalised, covariances ``(0.5 s)² I`` with the scale
  ``s = s(eps, D)`` of :data:`DRAFT_POTENTIAL_SCALE` (0.5 at ``D ≤ 4`` up to 8 at ``eps = 0.1``,
  ``D ≥ 64``), centres on a permuted grid with spacing 1: in every coordinate the five centres take
  the values ``{−2, −1, 0, 1, 2}`` in an independent random order.

The scale is tabulated at ``D ∈ {2, 4, …, 128}``, ``eps ∈ {0.1, 1, 10}``; elsewhere we take the row of
the tabulated eps nearest in log scale and the column of the largest tabulated ``D ≤ dim`` (D = 2's
below 2). These pairs follow the authors' recipe (and share the official files' isotropic
covariances and unequal weights), not their numbers: the published files are a draw of their own,
and the stored ground-truth samples of their plotting notebooks (``notebooks/data_for_plotting``)
suggest sharper potentials still than this recipe gives.

``family="rotated"`` (sbdiff's first draw, kept bit-identical per seed) has 3 source components
with equal weights, 5 potential components and full covariances with random orientation:

* source: ``π_m = 1/3``, ``a_m ~ U[−2, 2]^D``, ``Σ_m = O diag(λ) Oᵀ``, ``O`` Haar, ``λ_i ~ U[0.1, 1]``;
* potential: ``w_k ∝ U[0.5, 1.5]``, ``r_k ~ U[−2, 2]^D``, ``S_k = O diag(λ) Oᵀ``, ``λ_i ~ U[0.1, 1]``.

The numbers of either family are comparable across sbdiff versions and methods on the same family
only, **not** with the tables of Gushchin et al. (different pairs). For the published tables, load
the downloaded official files with :func:`sbdiff.bench.official.load_official_pair` (``sbdiff bench
--official-dir``). The metrics follow their protocol (see :mod:`sbdiff.bench.metrics`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp, softmax

from .._utils import SbdiffError
from ._common import (check_dim, check_eps, check_n, check_points, check_spd, check_times, random_spd,
                      rng_from, single_blas_thread, to_numpy)

__all__ = ["EOTPair", "make_pair", "check_family", "FAMILIES", "DEFAULT_FAMILY", "DRAFT_POTENTIAL_SCALE",
           "BENCH_DIMS", "BENCH_EPS"]

BENCH_DIMS = (2, 16, 64, 128)
BENCH_EPS = (0.1, 1.0, 10.0)
_LOG2PI = math.log(2 * math.pi)
#: The pair families of :func:`make_pair` (module docstring); the first is the default.
FAMILIES = ("draft-recipe", "rotated")
DEFAULT_FAMILY = FAMILIES[0]
#: ``s(eps, D)`` of the draft recipe: the potential's components have standard deviation ``0.5 s``
#: (the ``params`` table of the authors' ``GaussianMixtureDraft.ipynb``).
DRAFT_POTENTIAL_SCALE = {
    0.1: {2: 0.5, 4: 0.5, 8: 1.0, 16: 1.0, 32: 4.0, 64: 8.0, 128: 8.0},
    1.0: {2: 0.5, 4: 0.5, 8: 1.0, 16: 1.0, 32: 2.0, 64: 2.0, 128: 2.0},
    10.0: {2: 0.5, 4: 0.5, 8: 1.0, 16: 1.0, 32: 2.0, 64: 2.0, 128: 2.0},
}


def _mixture_params(weights, means, covs, what: str):
    w, _ = to_numpy(weights, f"{what} weights")
    r, _ = to_numpy(means, f"{what} means")
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise SbdiffError(f"{what} means must have shape (K, d) with K, d >= 1, got {tuple(r.shape)}")
    K, d = r.shape
    if w.shape != (K,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise SbdiffError(f"{what} weights must be {K} positive numbers, got {w}")
    if not np.all(np.isfinite(r)):
        raise SbdiffError(f"{what} means contain NaN or infinite values")
    S, _ = to_numpy(covs, f"{what} covariances")
    if S.shape != (K, d, d):
        raise SbdiffError(f"{what} covariances must have shape ({K}, {d}, {d}), got {tuple(S.shape)}")
    S = np.stack([check_spd(S[k], d, f"{what} covariance {k}") for k in range(K)])
    return w, r, S


class EOTPair:
    """A benchmark pair ``(p0, p1)`` with its exact entropic-OT plan and SB drift.

    Parameters
    ----------
    source_weights, source_means, source_covs : array-like, shapes (M,), (M, d), (M, d, d)
        The source mixture ``p0``.
    potential_weights, potential_means, potential_covs : array-like, shapes (K,), (K, d), (K, d, d)
        The potential ``φ(y) = Σ_k w_k N(y | r_k, S_k)`` (weights need not sum to one).
    eps : float > 0
        Entropy weight (= variance of the reference ``brownian(eps)``).

    All computations are in float64; point arguments accept numpy arrays or torch tensors; samplers
    take ``seed`` (int, numpy Generator or None) and return numpy arrays.

    Attribute ``family`` (str or None) names the draw of :func:`make_pair` (None otherwise).
    Attributes ``test_inputs`` (ndarray ``(n, d)``: fixed cBW2-UVP test points) and
    ``target_variance`` (float: the cBW2-UVP normaliser ``tr Cov(p1)``) are None, except on the
    official pairs of :func:`sbdiff.bench.official.load_official_pair`, where
    :func:`sbdiff.bench.metrics.plan_metrics` uses them.
    """

    test_inputs = None
    target_variance = None
    family = None

    def __init__(self, source_weights, source_means, source_covs, potential_weights, potential_means,
                 potential_covs, eps: float):
        self.eps = eps = check_eps(eps)
        pw, pm, pS = _mixture_params(source_weights, source_means, source_covs, "source")
        self.dim = d = pm.shape[1]
        qw, qm, qS = _mixture_params(potential_weights, potential_means, potential_covs, "potential")
        if qm.shape[1] != d:
            raise SbdiffError(f"potential means have dimension {qm.shape[1]}, the source has {d}")
        self.source_weights, self.source_means, self.source_covs = pw / pw.sum(), pm, pS
        self.potential_weights, self.potential_means, self.potential_covs = qw, qm, qS
        self._source_chol = np.linalg.cholesky(pS)
        lam, U = np.linalg.eigh(qS)  # S_k = U diag(λ) Uᵀ
        self._lam, self._U = lam, U
        self._r_rot = np.einsum("kij,ki->kj", U, qm)  # Uᵀ r_k, shape (K, d)
        self._logw = np.log(qw)
        self._target_moments: dict = {}

    @property
    def n_components(self) -> tuple[int, int]:
        """(number of source components, number of potential components)."""
        return len(self.source_weights), len(self.potential_weights)

    # -- the potential family h_c(x) = Σ w_k N(x | r_k, S_k + c I) ------------------------------
    def _log_terms(self, x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``log w_k + log N(x | r_k, S_k + c I)`` (n, K) and the rotated residuals ``Uᵀ(x − r_k)``
        divided by ``λ + c`` (K, n, d); ``c`` has shape (n,)."""
        K = len(self._logw)
        n, d = x.shape
        logs = np.empty((n, K))
        scaled = np.empty((K, n, d))
        same = n > 0 and bool(np.all(c == c[0]))
        for k in range(K):
            y = x @ self._U[k] - self._r_rot[k]  # Uᵀ(x − r_k), (n, d)
            if same:  # one time for the whole batch: one variance vector
                var = self._lam[k] + c[0]
                scaled[k] = y / var
                logdet = np.log(var).sum()
            else:
                var = self._lam[k][None, :] + c[:, None]
                scaled[k] = y / var
                logdet = np.log(var).sum(1)
            logs[:, k] = self._logw[k] - 0.5 * ((y * scaled[k]).sum(1) + logdet + d * _LOG2PI)
        return logs, scaled

    @single_blas_thread
    def component_probs(self, x) -> np.ndarray:
        """``g_k(x) ∝ w_k N(x | r_k, S_k + eps I)``: mixture weights of ``π*(· | x)``, shape (n, K)."""
        arr, _ = to_numpy(x, "x")
        check_points(arr, self.dim)
        logs, _ = self._log_terms(arr, np.full(arr.shape[0], self.eps))
        return softmax(logs, axis=1)

    @single_blas_thread
    def log_potential(self, x, t=0.0):
        """``log h_t(x) = log Σ_k w_k N(x | r_k, S_k + eps(1−t) I)`` (shape (n,)); ``v* = eps ∇ log h_t``."""
        arr, back = to_numpy(x, "x")
        check_points(arr, self.dim)
        ts = check_times(t, arr.shape[0])
        logs, _ = self._log_terms(arr, self.eps * (1.0 - ts))
        return back(logsumexp(logs, axis=1))

    @single_blas_thread
    def drift(self, x, t):
        """Exact SB drift ``v*(x, t) = eps ∇ log Σ_k w_k N(x | r_k, S_k + eps (1−t) I)``.

        ``x (n, d)``, ``t`` float or ``(n,)`` in ``[0, 1]`` -> ``(n, d)`` (input's kind). The SDE
        ``dX = v*(X, t) dt + √eps dW``, ``X0 ~ p0``, has ``(X0, X1) ~ π*`` (Gushchin et al. 2023, §3.2;
        the ``GroundTruthSDE`` of their repository).
        """
        arr, back = to_numpy(x, "x")
        check_points(arr, self.dim)
        ts = check_times(t, arr.shape[0])
        logs, scaled = self._log_terms(arr, self.eps * (1.0 - ts))
        g = softmax(logs, axis=1)  # (n, K)
        grad = np.zeros_like(arr)
        for k in range(len(self._logw)):
            grad -= g[:, k:k + 1] * (scaled[k] @ self._U[k].T)
        return back(self.eps * grad)

    # -- the plan ---------------------------------------------------------------------------------
    def _component_mean(self, x: np.ndarray, k: int) -> np.ndarray:
        """``μ_k(x) = U diag(eps/(λ+eps)) Uᵀ r_k + U diag(λ/(λ+eps)) Uᵀ x``, shape (n, d)."""
        lam = self._lam[k]
        rot = (self.eps * self._r_rot[k] + lam * (x @ self._U[k])) / (lam + self.eps)
        return rot @ self._U[k].T

    def _component_means(self, x: np.ndarray) -> np.ndarray:
        """All ``μ_k(x)``, shape (K, n, d)."""
        return np.stack([self._component_mean(x, k) for k in range(len(self._logw))])

    def _component_cov_sqrt(self) -> np.ndarray:
        """``Λ_k^{½} = U diag(√(λ eps/(λ+eps)))``, so that ``Λ_k^{½} Λ_k^{½ᵀ} = Λ_k``; (K, d, d)."""
        s = np.sqrt(self._lam * self.eps / (self._lam + self.eps))
        return self._U * s[:, None, :]

    def component_covs(self) -> np.ndarray:
        """``Λ_k = (S_k⁻¹ + I/eps)⁻¹``, shape (K, d, d)."""
        L = self._component_cov_sqrt()
        return L @ np.swapaxes(L, 1, 2)

    @single_blas_thread
    def conditional_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean (n, d) and covariance (n, d, d) of ``π*(· | x)`` for ``x (n, d)``:
        ``E = Σ g_k μ_k``, ``Cov = Σ g_k (Λ_k + μ_k μ_kᵀ) − E Eᵀ``."""
        arr, _ = to_numpy(x, "x")
        check_points(arr, self.dim)
        g = self.component_probs(arr)
        mu = self._component_means(arr)  # (K, n, d)
        mean = np.einsum("nk,knd->nd", g, mu)
        lam = self.component_covs()
        cov = np.einsum("nk,kij->nij", g, lam)
        dev = mu - mean[None]
        cov += np.einsum("nk,kni,knj->nij", g, dev, dev)
        return mean, 0.5 * (cov + np.swapaxes(cov, 1, 2))

    @single_blas_thread
    def sample_conditional(self, x, seed=None):
        """Draws ``y ~ π*(· | x)`` for each row of ``x (n, d)``; returns ``(n, d)`` (input's kind)."""
        arr, back = to_numpy(x, "x")
        check_points(arr, self.dim)
        rng = rng_from(seed)
        g = self.component_probs(arr)
        u = rng.random((arr.shape[0], 1))
        comp = np.minimum((np.cumsum(g, axis=1) < u).sum(1), g.shape[1] - 1)
        z = rng.standard_normal(arr.shape)
        out = np.empty_like(arr)
        L = self._component_cov_sqrt()
        for k in range(len(self._logw)):
            rows = np.nonzero(comp == k)[0]
            if rows.size:
                out[rows] = self._component_mean(arr[rows], k) + z[rows] @ L[k].T
        return back(out)

    @single_blas_thread
    def sample_source(self, n: int, seed=None) -> np.ndarray:
        """``n`` draws of ``p0``, shape ``(n, d)``."""
        n, rng = check_n(n), rng_from(seed)
        comp = rng.choice(len(self.source_weights), size=n, p=self.source_weights)
        out = rng.standard_normal((n, self.dim))
        for m in range(len(self.source_weights)):
            rows = np.nonzero(comp == m)[0]
            out[rows] = self.source_means[m] + out[rows] @ self._source_chol[m].T
        return out

    def sample_plan(self, n: int, seed=None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws ``(x, y)`` of ``π*``, each ``(n, d)``."""
        rng = rng_from(seed)
        x = self.sample_source(n, rng)
        return x, self.sample_conditional(x, rng)

    def sample_target(self, n: int, seed=None) -> np.ndarray:
        """``n`` draws of ``p1`` (the second marginal of ``π*``), shape ``(n, d)``."""
        return self.sample_plan(n, seed)[1]

    @single_blas_thread
    def target_moments(self, n_ref: int = 200_000, seed: int = 12345, chunk: int = 5000
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Mean (d,) and covariance (d, d) of ``p1``, by the law of total covariance over ``n_ref``
        draws ``x ~ p0`` with the exact conditional moments (Rao–Blackwellised: no sampling of ``y``).
        Cached per ``(n_ref, seed)``."""
        key = (n_ref, seed)
        if key not in self._target_moments:
            rng = rng_from(seed)
            d, K = self.dim, len(self._logw)
            s1, s2, gsum, done = np.zeros(d), np.zeros((d, d)), np.zeros(K), 0
            while done < n_ref:
                m = min(chunk, n_ref - done)
                x = self.sample_source(m, rng)
                g = self.component_probs(x)
                mu = self._component_means(x)
                s1 += np.einsum("nk,knd->d", g, mu)
                for k in range(K):
                    s2 += (mu[k] * g[:, k:k + 1]).T @ mu[k]
                gsum += g.sum(0)
                done += m
            mean = s1 / n_ref
            cov = s2 / n_ref + np.einsum("k,kij->ij", gsum / n_ref, self.component_covs()) - np.outer(mean, mean)
            self._target_moments[key] = (mean, 0.5 * (cov + cov.T))
        mean, cov = self._target_moments[key]
        return mean.copy(), cov.copy()

    def __repr__(self) -> str:
        M, K = self.n_components
        fam = "" if self.family is None else f", family={self.family}"
        return f"EOTPair(dim={self.dim}, eps={self.eps:g}, source components={M}, potential components={K}{fam})"


def check_family(family) -> str:
    """``family`` if it names a pair family of :func:`make_pair`, else one SbdiffError line."""
    if not isinstance(family, str) or family not in FAMILIES:
        raise SbdiffError(f"unknown pair family {family!r}; choose from {', '.join(FAMILIES)}")
    return family


def make_pair(dim: int, eps: float, seed: int = 0, family: str = DEFAULT_FAMILY) -> EOTPair:
    """The benchmark pair for dimension ``dim`` and entropy weight ``eps``.

    Parameters
    ----------
    dim : int >= 1
    eps : float > 0
    seed : int >= 0
    family : {"draft-recipe", "rotated"}
        The recipe (module docstring): ``draft-recipe`` (default) follows the benchmark authors' draft
        generator, ``rotated`` is sbdiff's earlier draw (bit-identical per seed).

    Returns
    -------
    EOTPair
        With ``family`` set. The source depends on ``(dim, seed)`` only, the potential on
        ``(dim, eps, seed)``, as in the original benchmark (one source file per dimension, one
        potential per (dim, eps)).
    """
    dim, eps, family = check_dim(dim), check_eps(eps), check_family(family)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SbdiffError(f"seed must be an integer >= 0, got {seed!r}")
    pair = _DRAWS[family](dim, eps, seed)
    pair.family = family
    return pair


def _eps_key(eps: float) -> int:
    return int(round(eps * 1_000_000))


def _rotated_pair(dim: int, eps: float, seed: int) -> EOTPair:
    """Full covariances with random orientation, equal source weights (module docstring)."""
    rs = rng_from([seed, dim, 0])
    src_means = rs.uniform(-2.0, 2.0, (3, dim))
    src_covs = np.stack([random_spd(dim, rs, 0.1, 1.0) for _ in range(3)])
    rp = rng_from([seed, dim, 1, _eps_key(eps)])
    w = rp.uniform(0.5, 1.5, 5)
    pot_means = rp.uniform(-2.0, 2.0, (5, dim))
    pot_covs = np.stack([random_spd(dim, rp, 0.1, 1.0) for _ in range(5)])
    return EOTPair(np.full(3, 1.0 / 3.0), src_means, src_covs, w / w.sum(), pot_means, pot_covs, eps)


def _draft_scale(dim: int, eps: float) -> float:
    """``s(eps, D)`` of :data:`DRAFT_POTENTIAL_SCALE`; off the table: the tabulated eps nearest in
    log scale, the largest tabulated ``D <= dim`` (D = 2's for dim = 1)."""
    row = DRAFT_POTENTIAL_SCALE[min(DRAFT_POTENTIAL_SCALE, key=lambda e: abs(math.log(e / eps)))]
    below = [d for d in row if d <= dim]
    return row[max(below) if below else min(row)]


def _grid_centres(n: int, dim: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` centres ``(n, dim)``: in each coordinate, the grid ``spacing * (0, 1, …, n−1)`` centred on
    0, in an independent random order (the draft's ``initialize_centers``)."""
    ranks = rng.permuted(np.tile(np.arange(n)[:, None], (1, dim)), axis=0)
    return spacing * (ranks - (n - 1) / 2.0)


def _unit_weights(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` weights ``U(0, 1]`` normalised to sum 1 (``1 − U[0, 1)``: never 0)."""
    w = 1.0 - rng.random(n)
    return w / w.sum()


def _isotropic(n: int, dim: int, std: float) -> np.ndarray:
    return np.broadcast_to(std**2 * np.eye(dim), (n, dim, dim)).copy()


def _draft_recipe_pair(dim: int, eps: float, seed: int) -> EOTPair:
    """The authors' draft recipe with our seeds (module docstring)."""
    rs = rng_from([seed, dim, 2])
    src_w = _unit_weights(3, rs)
    src_means = _grid_centres(3, dim, 2.0, rs)
    rp = rng_from([seed, dim, 3, _eps_key(eps)])
    pot_w = _unit_weights(5, rp)
    pot_means = _grid_centres(5, dim, 1.0, rp)
    pot_std = 0.5 * _draft_scale(dim, eps)
    return EOTPair(src_w, src_means, _isotropic(3, dim, 0.5), pot_w, pot_means, _isotropic(5, dim, pot_std), eps)


_DRAWS = {"draft-recipe": _draft_recipe_pair, "rotated": _rotated_pair}
