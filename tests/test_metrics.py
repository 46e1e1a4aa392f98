"""Sample metrics (POT): invariants that hold exactly."""

import numpy as np
import pytest

from sbdiff import SbdiffError
from sbdiff.bench.metrics import energy_distance, sample_metrics, sliced_w2, w2_exact


def test_w2_of_a_translate_is_the_shift():
    x = np.random.default_rng(0).normal(size=(300, 3))
    c = np.array([0.5, -1.0, 2.0])
    assert abs(w2_exact(x, x) - 0.0) < 1e-9
    assert abs(w2_exact(x, x + c) - np.linalg.norm(c)) < 1e-9


def test_sliced_w2_is_below_w2_and_energy_distance_separates():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) * 2 + 1
    assert sliced_w2(x, y) <= w2_exact(x, y)
    assert abs(energy_distance(x, x)) < 1e-12
    assert energy_distance(x, y) > 0.1


def test_sample_metrics_subsamples_and_checks_shapes():
    rng = np.random.default_rng(2)
    res = sample_metrics(rng.normal(size=(3000, 2)), rng.normal(size=(2500, 2)), max_points=500)
    assert set(res) == {"w2", "sliced_w2", "energy_distance"} and all(np.isfinite(v) for v in res.values())
    with pytest.raises(SbdiffError, match="equal d"):
        w2_exact(np.zeros((3, 2)), np.zeros((3, 3)))


# -- Bures–Wasserstein scores, Sinkhorn, straightness (DESIGN §6.3) ---------------------------------
from sbdiff.bench.gaussian import GaussianBridge  # noqa: E402
from sbdiff.bench.metrics import (bures_wasserstein2, bw2_uvp, fit_gaussian, noise_floor,  # noqa: E402
                                  path_straightness, plan_metrics, sinkhorn_w2)


def test_bures_wasserstein_closed_forms():
    # commuting (diagonal) covariances: ‖m1 − m2‖² + Σ (√a − √b)²
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert abs(bures_wasserstein2(m1, np.diag(a), m2, np.diag(b)) - want) < 1e-12
    # a rotated pair equals W2² between the Gaussians (the W2 map cost), and it is symmetric
    gb = GaussianBridge([0, 0], [[1.0, 0.5], [0.5, 0.8]], [1, -1], [[0.7, -0.3], [-0.3, 1.2]], 1e-8)
    T = np.linalg.solve(gb.S0, gb.cross_cov)  # ≈ the W2 map matrix
    w2 = 2.0 + np.trace(gb.S0 + gb.S1) - 2 * np.trace(gb.S0 @ T)
    assert abs(bures_wasserstein2(gb.m0, gb.S0, gb.m1, gb.S1) - w2) < 1e-6
    assert abs(bures_wasserstein2(gb.m0, gb.S0, gb.m1, gb.S1) - bures_wasserstein2(gb.m1, gb.S1, gb.m0, gb.S0)) < 1e-12
    # batched
    out = bures_wasserstein2(np.stack([m1, m2]), np.stack([np.diag(a)] * 2), np.stack([m2, m2]), np.stack([np.diag(b)] * 2))
    assert out.shape == (2,) and abs(out[0] - want) < 1e-12


def test_bw2_uvp_of_a_shift_and_of_exact_samples():
    gb = GaussianBridge([0.0, 0.0], [[1.0, 0.5], [0.5, 0.8]], [1.0, -1.0], [[0.7, -0.3], [-0.3, 1.2]], 1.0)
    y = gb.sample_target(20000, seed=0)
    delta = np.array([0.3, -0.2])
    exact = bw2_uvp(y, gb.target_moments())
    shifted = bw2_uvp(y + delta, gb.target_moments())
    assert exact < 0.1  # only sampling noise
    # the shift adds ‖δ‖² (plus a cross term 2δ·(m̂ − m) of order 1/√n)
    assert abs(shifted - exact - 100 * delta @ delta / np.trace(gb.S1)) < 100 * 2 * 0.4 * 0.02 / np.trace(gb.S1)
    m, C = fit_gaussian(y)
    assert np.allclose(C, np.cov(y.T)) and np.allclose(m, y.mean(0))


def test_plan_metrics_detect_a_shifted_plan_and_the_floor_shrinks_with_samples():
    gb = GaussianBridge([0.0, 0.0], [[1.0, 0.5], [0.5, 0.8]], [1.0, -1.0], [[0.7, -0.3], [-0.3, 1.2]], 1.0)
    delta = np.array([0.2, 0.1])
    sizes = dict(n_test=200, n_samples=500, n_marginal=5000)
    floor = noise_floor(gb, **sizes)
    shifted = plan_metrics(gb, lambda x, rng: gb.sample_conditional(x, rng) + delta, **sizes)
    gap = 100 * delta @ delta / np.trace(gb.S1)
    assert floor["cbw2_uvp"] < 0.2 * gap
    assert abs(shifted["cbw2_uvp"] - floor["cbw2_uvp"] - gap) < 0.1 * gap  # same draws: the shift exactly
    small = noise_floor(gb, n_test=200, n_samples=50, n_marginal=5000)
    assert small["cbw2_uvp"] > 4 * floor["cbw2_uvp"]  # the floor is O(d²/n_samples)
    with pytest.raises(SbdiffError, match="n_test"):
        noise_floor(gb, n_test=1)


def test_sinkhorn_w2_tends_to_exact_w2():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) * 1.5 + 1
    w = w2_exact(x, y)
    s1, s2, s3 = (sinkhorn_w2(x, y, reg=r) for r in (0.2, 0.05, 0.02))
    assert s1 > s2 > s3 >= w - 1e-9 and s3 - w < 0.03 * w  # measured: 1.957, 1.691, 1.632 vs 1.602
    with pytest.raises(SbdiffError, match="reg"):
        sinkhorn_w2(x, y, reg=0)


def test_path_straightness():
    t = np.linspace(0, 1, 2001)
    x0, x1 = np.random.default_rng(0).normal(size=(2, 5, 3))
    straight = x0[None] + t[:, None, None] * (x1 - x0)[None]
    assert path_straightness(straight) < 1e-20
    # a half circle from (1, 0) to (−1, 0): ∫ ‖π(−sin πt, cos πt) − (−2, 0)‖² dt = π² − 4
    arc = np.stack([np.cos(np.pi * t), np.sin(np.pi * t)], -1)[:, None, :]
    assert abs(path_straightness(arc) - (np.pi**2 - 4)) < 1e-4
    assert abs(path_straightness(arc[::-1], t[::-1]) - (np.pi**2 - 4)) < 1e-4  # decreasing time grid
    with pytest.raises(SbdiffError, match="trajectory"):
        path_straightness(np.zeros((1, 3, 2)))
