"""Metrics (DESIGN §6.3): the Bures–Wasserstein scores of the entropic-OT benchmark (BW2-UVP,
cBW2-UVP, their protocol and its noise floor), and sample-based metrics for data without ground truth
(exact, sliced and Sinkhorn W2 via POT, energy distance, path straightness)."""

from __future__ import annotations

import numpy as np

from .._utils import SbdiffError
from ._common import single_blas_thread

# POT is imported inside the functions: it takes about a second to import, and `import sbdiff`
# (every CLI call) should not pay for it.

__all__ = ["w2_exact", "sliced_w2", "energy_distance", "sample_metrics", "sinkhorn_w2", "path_straightness",
           "fit_gaussian", "bures_wasserstein2", "bw2_uvp", "cbw2_uvp", "plan_metrics", "noise_floor"]


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise SbdiffError(f"metrics need two (N, d) arrays of equal d, got {x.shape} and {y.shape}")
    return x, y


def w2_exact(x, y) -> float:
    """Exact 2-Wasserstein distance between two empirical measures (uniform weights).

    ``x`` shape ``(N, d)``, ``y`` shape ``(M, d)``; network simplex ``ot.emd2`` on the squared
    Euclidean cost, ``O(N·M)`` memory: keep ``N, M <= 5000``.
    """
    import ot

    x, y = _pair(x, y)
    cost = ot.dist(x, y, metric="sqeuclidean")
    return float(np.sqrt(max(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), cost, numItermax=10_000_000), 0.0)))


def sliced_w2(x, y, n_projections: int = 500, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (``ot.sliced_wasserstein_distance``), ``x (N, d)``, ``y (M, d)``."""
    import ot

    x, y = _pair(x, y)
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=n_projections, seed=seed))


def energy_distance(x, y) -> float:
    """Energy distance ``2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖`` (Székely & Rizzo 2013), V-statistic form."""
    import ot

    x, y = _pair(x, y)
    xy = ot.dist(x, y, metric="euclidean").mean()
    xx = ot.dist(x, x, metric="euclidean").mean()
    yy = ot.dist(y, y, metric="euclidean").mean()
    return float(2 * xy - xx - yy)


def sample_metrics(samples, data, max_points: int = 2000, seed: int = 0) -> dict[str, float]:
    """``w2``, ``sliced_w2`` and ``energy_distance`` of ``samples`` against ``data`` on at most
    ``max_points`` points of each (random subsets)."""
    x, y = _pair(samples, data)
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    if len(y) > max_points:
        y = y[rng.choice(len(y), max_points, replace=False)]
    return {"w2": w2_exact(x, y), "sliced_w2": sliced_w2(x, y, seed=seed), "energy_distance": energy_distance(x, y)}


def sinkhorn_w2(x, y, reg: float = 0.05, num_iter: int = 5000, tol: float = 1e-6) -> float:
    """Entropic approximation of W2 between two empirical measures: ``sqrt(<π_reg, M>)`` for the
    log-domain Sinkhorn plan ``π_reg`` (``ot.sinkhorn(..., method="sinkhorn_log")``; Cuturi 2013) of
    the squared Euclidean cost ``M``. ``reg`` is relative to the mean cost (absolute regularisation
    ``reg · mean(M)``), so the default suits any scale; the value tends to :func:`w2_exact` from above
    as ``reg → 0`` (slower convergence). ``x (N, d)``, ``y (M, d)``.
    """
    import ot

    x, y = _pair(x, y)
    if not reg > 0:
        raise SbdiffError(f"reg must be positive, got {reg}")
    M = ot.dist(x, y, metric="sqeuclidean")
    P = ot.sinkhorn(ot.unif(len(x)), ot.unif(len(y)), M, reg * max(M.mean(), 1e-300), method="sinkhorn_log",
                    numItermax=num_iter, stopThr=tol)
    return float(np.sqrt(max((P * M).sum(), 0.0)))


def path_straightness(trajectory, times=None) -> float:
    """Straightness ``E ∫ ‖v_t − (x_T − x_0)/T‖² dt`` of paths (DESIGN §6.3); 0 for straight paths
    traversed at constant speed.

    ``trajectory`` has shape ``(K+1, N, d)`` (as written by ``--trajectory``), ``times`` shape
    ``(K+1,)`` (default: uniform on ``[0, 1]``; decreasing grids, e.g. decoder paths, are fine). The
    velocity is the finite difference ``(x_{k+1} − x_k)/(t_{k+1} − t_k)`` on each interval, so this
    is meant for ODE paths (SDE paths have unbounded finite-difference velocity as the grid refines).
    """
    traj = np.asarray(trajectory, np.float64)
    if traj.ndim != 3 or traj.shape[0] < 2:
        raise SbdiffError(f"trajectory must have shape (K+1, N, d) with K >= 1, got {traj.shape}")
    ts = np.linspace(0.0, 1.0, traj.shape[0]) if times is None else np.asarray(times, np.float64)
    if ts.shape != (traj.shape[0],):
        raise SbdiffError(f"times must have shape ({traj.shape[0]},), got {ts.shape}")
    dt = np.diff(ts)
    if not (np.all(dt > 0) or np.all(dt < 0)):
        raise SbdiffError("times must be strictly monotone")
    span = ts[-1] - ts[0]
    v = np.diff(traj, axis=0) / dt[:, None, None]
    chord = (traj[-1] - traj[0]) / span
    per_interval = ((v - chord[None]) ** 2).sum(-1)  # (K, N)
    return float((np.abs(dt)[:, None] * per_interval).sum(0).mean())


# -- Bures–Wasserstein scores (Gushchin et al. 2023, §5 and their ``metrics.py``) -------------------
@single_blas_thread
def fit_gaussian(samples) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of samples ``(..., n, d)``: shapes ``(..., d)``, ``(..., d, d)``."""
    x = np.asarray(samples, np.float64)
    if x.ndim < 2 or x.shape[-2] < 2:
        raise SbdiffError(f"need at least 2 samples of shape (n, d), got {x.shape}")
    mean = x.mean(-2)
    dev = (x - mean[..., None, :]).reshape((-1,) + x.shape[-2:])
    cov = np.stack([np.dot(dv.T, dv) for dv in dev]) / (x.shape[-2] - 1)  # BLAS per block
    return mean, cov.reshape(x.shape[:-2] + (x.shape[-1], x.shape[-1]))


@single_blas_thread
def bures_wasserstein2(m1, C1, m2, C2) -> np.ndarray | float:
    """Squared Bures–Wasserstein (= W2² between Gaussians) ``‖m1−m2‖² + tr C1 + tr C2 −
    2 tr (C1^{½} C2 C1^{½})^{½}`` (DESIGN §6.3). Batched: means ``(..., d)``, covariances
    ``(..., d, d)`` (symmetric PSD); returns ``(...)`` (a float for single pairs)."""
    m1, m2 = np.asarray(m1, np.float64), np.asarray(m2, np.float64)
    C1, C2 = np.asarray(C1, np.float64), np.asarray(C2, np.float64)
    if C1.shape[-1] != C1.shape[-2] or C1.shape[-1] != m1.shape[-1] or C1.shape != C2.shape or m1.shape != m2.shape:
        raise SbdiffError(f"bures_wasserstein2: mismatched shapes {m1.shape}, {C1.shape}, {m2.shape}, {C2.shape}")
    lam, U = np.linalg.eigh(0.5 * (C1 + np.swapaxes(C1, -1, -2)))
    r1 = (U * np.sqrt(np.clip(lam, 0, None))[..., None, :]) @ np.swapaxes(U, -1, -2)
    M = r1 @ C2 @ r1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (M + np.swapaxes(M, -1, -2))), 0, None)).sum(-1)
    tr = np.trace(C1, axis1=-2, axis2=-1) + np.trace(C2, axis1=-2, axis2=-1)
    out = ((m1 - m2) ** 2).sum(-1) + np.clip(tr - 2 * cross, 0, None)
    return float(out) if np.ndim(out) == 0 else out


def bw2_uvp(samples, target) -> float:
    """BW2-UVP [%] ``= 100 · BW2²(N(m̂, Ĉ), N(m, C)) / tr C`` (Gushchin et al. 2023; DESIGN §6.3):
    ``samples (n, d)`` are fitted by a Gaussian; ``target`` is either samples ``(m, d)`` (fitted too) or
    the exact ``(mean (d,), cov (d, d))`` of the target."""
    m_hat, C_hat = fit_gaussian(samples)
    if isinstance(target, tuple):
        m, C = (np.asarray(a, np.float64) for a in target)
    else:
        m, C = fit_gaussian(target)
    if m.shape != m_hat.shape:
        raise SbdiffError(f"bw2_uvp: samples have dimension {m_hat.shape[-1]}, the target {m.shape[-1]}")
    return 100.0 * bures_wasserstein2(m_hat, C_hat, m, C) / float(np.trace(C))


def cbw2_uvp(pred_means, pred_covs, true_means, true_covs, target_trace: float) -> float:
    """cBW2-UVP [%] ``= 100 · mean_i BW2²(fitted π̂(·|x_i), exact π*(·|x_i)) / tr Cov(p1)``
    (DESIGN §6.3). Means ``(n, d)``, covariances ``(n, d, d)``."""
    bw = bures_wasserstein2(pred_means, pred_covs, true_means, true_covs)
    return float(100.0 * np.mean(bw) / target_trace)


@single_blas_thread
def plan_metrics(pair, sampler=None, *, marginal_samples=None, n_test: int = 1000, n_samples: int = 1000,
                 n_marginal: int = 10_000, seed: int = 0, chunk_points: int = 50_000) -> dict:
    """Score a conditional sampler (or only marginal samples) on a benchmark pair: the protocol of
    DESIGN §6.3 / Gushchin et al. 2023.

    Parameters
    ----------
    pair : EOTPair or GaussianBridge
        Needs ``sample_source``, ``conditional_moments`` and ``target_moments``.
    sampler : callable ``(x (m, d) ndarray, rng) -> (m, d)`` or None
        Draws of ``π̂(· | x)`` row by row (a bridge model's ``decode``; the pair's own
        ``sample_conditional`` for the noise floor). None: no cBW2-UVP (generative methods).
    marginal_samples : ndarray (n, d), optional
        Model samples of the target marginal (required when ``sampler`` is None; otherwise the
        marginal is ``sampler`` applied to ``n_marginal`` fresh ``x ~ p0``).
    n_test, n_samples : int
        cBW2-UVP: ``n_test`` test points ``x_i ~ p0`` (drawn from the seed, the same for every
        method), ``n_samples`` draws of ``π̂(·|x_i)`` each; their fitted Gaussian is compared with
        the exact moments of ``π*(·|x_i)``, and the mean squared BW2 is divided by ``tr Cov(p1)``
        (``pair.target_moments()``). When the pair has fixed test points (``pair.test_inputs``, an
        ``(n, d)`` array: the official pairs of :func:`sbdiff.bench.official.load_official_pair`),
        the first ``min(n_test, n)`` of them are used instead of fresh draws; when it has
        ``pair.target_variance`` (their ``tr Cov(p1)``), that is the cBW2-UVP normaliser. Pairs
        without these attributes (or with None) are scored as described above.
    n_marginal : int
        BW2-UVP: number of model samples of ``p̂1``, compared with the moments of ``p1``
        (``pair.target_moments()``: exact for Gaussians, Rao–Blackwellised over 200k source draws
        for the mixtures; also for official pairs).

    Returns
    -------
    dict with ``cbw2_uvp`` (None without a sampler), ``bw2_uvp`` and the sizes used (``n_test``: the
    number of test points actually used).
    """
    if sampler is None and marginal_samples is None:
        raise SbdiffError("plan_metrics needs a conditional sampler or marginal samples")
    for name, v in (("n_test", n_test), ("n_samples", n_samples), ("n_marginal", n_marginal)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise SbdiffError(f"{name} must be an integer >= 2, got {v!r}")
    t_mean, t_cov = pair.target_moments()
    res: dict = {"cbw2_uvp": None, "bw2_uvp": None, "n_test": None, "n_samples": None, "n_marginal": None}
    if sampler is not None:
        fixed = getattr(pair, "test_inputs", None)
        if fixed is not None:
            x_test = np.asarray(fixed, np.float64)[:n_test]
            n_test = len(x_test)
        else:
            x_test = pair.sample_source(n_test, np.random.default_rng([seed, 1]))
        true_m, true_c = pair.conditional_moments(x_test)
        rng = np.random.default_rng([seed, 2])
        per = max(1, chunk_points // n_samples)
        pm, pc = np.empty_like(true_m), np.empty_like(true_c)
        for i in range(0, n_test, per):
            xs = x_test[i:i + per]
            y = np.asarray(sampler(np.repeat(xs, n_samples, axis=0), rng), np.float64)
            pm[i:i + per], pc[i:i + per] = fit_gaussian(y.reshape(len(xs), n_samples, -1))
        t_var = getattr(pair, "target_variance", None)
        t_var = float(np.trace(t_cov)) if t_var is None else float(t_var)
        res.update(cbw2_uvp=cbw2_uvp(pm, pc, true_m, true_c, t_var), n_test=n_test, n_samples=n_samples)
        if marginal_samples is None:
            x = pair.sample_source(n_marginal, np.random.default_rng([seed, 3]))
            marginal_samples = np.asarray(sampler(x, np.random.default_rng([seed, 4])), np.float64)
    marginal_samples = np.asarray(marginal_samples, np.float64)
    res.update(bw2_uvp=bw2_uvp(marginal_samples, (t_mean, t_cov)), n_marginal=len(marginal_samples))
    return res


def noise_floor(pair, *, n_test: int = 1000, n_samples: int = 1000, n_marginal: int = 10_000,
                seed: int = 0) -> dict:
    """The protocol's own noise floor: :func:`plan_metrics` of the exact sampler
    ``pair.sample_conditional`` (a perfect method scores this, up to the sampling noise)."""
    return plan_metrics(pair, pair.sample_conditional, n_test=n_test, n_samples=n_samples,
                        n_marginal=n_marginal, seed=seed)
