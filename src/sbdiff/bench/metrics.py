"""Sample-based metrics for data without ground truth (DESIGN §6.3): exact and sliced W2 (POT),
energy distance."""

from __future__ import annotations

import numpy as np

from .._utils import SbdiffError

# POT is imported inside the functions: it takes about a second to import, and `import sbdiff`
# (every CLI call) should not pay for it.

__all__ = ["w2_exact", "sliced_w2", "energy_distance", "sample_metrics"]


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
