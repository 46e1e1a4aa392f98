"""The closed-form Gaussian SB (DESIGN §6.1) against independent computations: log-domain Sinkhorn on
grids, Euler–Maruyama simulation of its own drift, the Lyapunov equation, the W2 map, IPF."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal as mvn

from sbdiff import SbdiffError
from sbdiff.bench.gaussian import GaussianBridge, entropic_cross_cov, gaussian_ipf, random_gaussian_bridge, w2_map

S0_2D = [[1.0, 0.5], [0.5, 0.8]]
S1_2D = [[0.7, -0.3], [-0.3, 1.2]]


def grid_sinkhorn_cross_cov(gb: GaussianBridge, n: int, width: float) -> np.ndarray:
    """Cov(X0, X1) of the discrete EOT plan between the two Gaussians restricted to tensor grids
    (weights ∝ density), cost ‖x − y‖² with reg 2·eps (= cost ½‖x − y‖² with reg eps), log domain."""
    import ot

    def grid(m, S):
        axes = [np.linspace(m[i] - width * np.sqrt(S[i, i]), m[i] + width * np.sqrt(S[i, i]), n) for i in range(len(m))]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(m))
        logw = mvn(m, S).logpdf(pts)
        w = np.exp(logw - logw.max())
        return pts, w / w.sum()

    X, a = grid(gb.m0, gb.S0)
    Y, b = grid(gb.m1, gb.S1)
    P = ot.sinkhorn(a, b, ot.dist(X, Y), reg=2 * gb.eps, method="sinkhorn_log", numItermax=20000, stopThr=1e-12)
    mx, my = P.sum(1) @ X, P.sum(0) @ Y
    return X.T @ P @ Y - np.outer(mx, my)


@pytest.mark.parametrize("eps", [0.1, 0.5, 2.0])
def test_cross_cov_equals_log_sinkhorn_on_a_1d_grid(eps):
    gb = GaussianBridge([0.3], [[1.5]], [-1.0], [[0.6]], eps)
    C = grid_sinkhorn_cross_cov(gb, 400, 7.0)
    assert abs(C - gb.cross_cov).max() <= 2e-3
    # the 1-D closed form c² + eps c − s0 s1 = 0 (precision off-diagonal = −1/eps)
    c = gb.cross_cov[0, 0]
    assert abs(c * c + eps * c - 1.5 * 0.6) < 1e-12


def test_cross_cov_equals_log_sinkhorn_on_a_2d_grid():
    gb = GaussianBridge([0.0, 1.0], S0_2D, [1.0, -1.0], S1_2D, 1.0)
    C = grid_sinkhorn_cross_cov(gb, 30, 6.0)
    assert abs(C - gb.cross_cov).max() <= 2e-3
    assert abs(gb.cross_cov - gb.cross_cov.T).max() > 0.05  # a non-trivial, non-symmetric case
    M = np.linalg.solve(gb.S0, gb.cross_cov)
    assert np.allclose(M, M.T, atol=1e-12)  # S0⁻¹ C is symmetric


def simulate(gb: GaussianBridge, n: int, steps: int, seed: int):
    """Euler–Maruyama of dX = b_t(X) dt + √eps dW, float64."""
    rng = np.random.default_rng(seed)
    x0 = gb.sample_source(n, rng)
    x, dt, mid = x0.copy(), 1.0 / steps, None
    for k in range(steps):
        x = x + gb.drift(x, k * dt) * dt + np.sqrt(gb.eps * dt) * rng.standard_normal(x.shape)
        if k + 1 == steps // 2:
            mid = x.copy()
    return x0, mid, x


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_em_simulation_of_the_drift_reproduces_coupling_and_marginals(alpha):
    gb = GaussianBridge([0.0, 1.0], S0_2D, [1.0, -1.0], S1_2D, 0.5, alpha=alpha)
    n = 20000
    x0, xm, x1 = simulate(gb, n, 200, seed=1)
    se = 5 * np.sqrt(2.0 / n) * 1.5  # five standard errors of a second moment of order 1.5
    joint = np.cov(np.hstack([x0, x1]).T)
    assert abs(joint[:2, 2:] - gb.cross_cov).max() < se
    for xt, t in ((xm, 0.5), (x1, 1.0)):
        m, S = gb.marginal(t)
        assert abs(xt.mean(0) - m).max() < 5 * np.sqrt(S.diagonal().max() / n)
        assert abs(np.cov(xt.T) - S).max() < se


@pytest.mark.parametrize("alpha", [0.0, 0.7, -0.5])
def test_drift_matrix_is_symmetric_and_solves_the_lyapunov_equation(alpha):
    gb = random_gaussian_bridge(4, 0.5, seed=3, alpha=alpha)
    h = 1e-5
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        A = gb.drift_matrix(t)
        assert np.allclose(A, A.T, atol=1e-12)
        lo, hi = max(t - h, 0.0), min(t + h, 1.0)
        dS = (gb.marginal(hi)[1] - gb.marginal(lo)[1]) / (hi - lo)
        dm = (gb.marginal(hi)[0] - gb.marginal(lo)[0]) / (hi - lo)
        _, S = gb.marginal(t)
        tol = 1e-8 if 0 < t < 1 else 2e-5  # central vs one-sided differences
        assert abs(A @ S + S @ A.T + gb.eps * np.eye(4) - dS).max() < tol  # dΣ/dt = AΣ + ΣAᵀ + eps I
        assert abs(gb.mean_velocity(t) - dm).max() < tol
    # the marginals meet the endpoints, and the score is −Σ_t⁻¹(x − m_t)
    assert np.allclose(gb.marginal(0.0)[1], gb.S0) and np.allclose(gb.marginal(1.0)[1], gb.S1)
    x = np.random.default_rng(0).normal(size=(5, 4))
    m, S = gb.marginal(0.3)
    assert np.allclose(gb.score(x, 0.3), -np.linalg.solve(S, (x - m).T).T)


def test_small_eps_recovers_the_w2_map():
    S0, S1 = np.array(S0_2D), np.array(S1_2D)
    T = w2_map(S0, S1)
    assert np.allclose(T @ S0 @ T, S1, atol=1e-12)  # T pushes N(0, S0) to N(0, S1)
    errs = []
    for eps in (1e-2, 1e-4, 1e-6):
        gb = GaussianBridge([0, 1], S0, [1, -1], S1, eps)
        errs.append(abs(gb.cross_cov - S0 @ T).max())
        x = np.array([[0.3, -0.2]])
        mean, cov = gb.conditional_moments(x)
        assert abs(mean[0] - (gb.m1 + T @ (x[0] - gb.m0))).max() < 20 * eps
        assert abs(cov[0]).max() < 20 * eps
    assert errs[2] < 1e-5 and errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_gaussian_ipf_converges_linearly_to_the_sb_coupling(alpha):
    gb = random_gaussian_bridge(3, 0.5, seed=1, alpha=alpha)
    its = gaussian_ipf(gb.m0, gb.S0, gb.m1, gb.S1, gb.eps, 25, alpha=alpha)
    assert len(its) == 51 and its[0].side == "reference"
    d = gb.dim
    for it in its[1:]:
        if it.side == "backward":  # X1 marginal reset to ν
            assert np.allclose(it.cov[d:, d:], gb.S1) and np.allclose(it.mean[d:], gb.m1)
        else:  # X0 marginal reset to μ
            assert it.side == "forward" and np.allclose(it.cov[:d, :d], gb.S0) and np.allclose(it.mean[:d], gb.m0)
    errs = np.array([np.linalg.norm(it.cross_cov - gb.cross_cov) for it in its[2::2]])  # after each iteration
    ratios = errs[1:] / errs[:-1]
    assert np.all(ratios < 1)
    assert abs(ratios[-1] - ratios[-5]) < 1e-3 and ratios[-1] < 0.9  # a constant contraction: linear
    assert errs[-1] < 1e-8
    # the fixed point is the SB: the last iterate's means are the endpoint means too
    assert np.allclose(its[-1].mean, np.concatenate([gb.m0, gb.m1]), atol=1e-8)


def test_ou_reference_tends_to_brownian_and_differs_from_it():
    args = ([0.0, 1.0], S0_2D, [1.0, -1.0], S1_2D, 0.5)
    b, o_small, o = GaussianBridge(*args), GaussianBridge(*args, alpha=1e-7), GaussianBridge(*args, alpha=1.0)
    assert abs(b.cross_cov - o_small.cross_cov).max() < 1e-6
    x = np.random.default_rng(0).normal(size=(4, 2))
    assert abs(b.drift(x, 0.4) - o_small.drift(x, 0.4)).max() < 1e-6
    assert abs(b.cross_cov - o.cross_cov).max() > 1e-2


def test_plan_sampler_matches_the_joint_covariance_and_torch_round_trip():
    gb = GaussianBridge([0.0, 1.0], S0_2D, [1.0, -1.0], S1_2D, 1.0)
    x0, x1 = gb.sample_plan(40000, seed=0)
    assert abs(np.cov(np.hstack([x0, x1]).T) - gb.joint_cov).max() < 0.04
    xt = torch.tensor([[0.1, 0.2], [0.3, -0.4]], dtype=torch.float32)
    out = gb.drift(xt, torch.tensor([0.2, 0.7]))
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    ref = np.stack([gb.drift(xt.double().numpy()[i:i + 1], t)[0] for i, t in enumerate((0.2, 0.7))])
    assert np.allclose(out.numpy(), ref, atol=1e-6)
    assert np.allclose(entropic_cross_cov(gb.S0, gb.S1, 1.0), gb.cross_cov)


@pytest.mark.parametrize("kwargs, match", [
    (dict(S0=[[1.0, 2.0], [2.0, 1.0]]), "not positive definite"),
    (dict(S0=[[1.0, 0.5], [0.0, 1.0]]), "not symmetric"),
    (dict(eps=0.0), "eps must be a finite number > 0"),
    (dict(eps=-1.0), "eps must be a finite number > 0"),
    (dict(eps=float("nan")), "eps must be a finite number > 0"),
    (dict(m1=[0.0, 1.0, 2.0]), "m1 must have shape"),
    (dict(S1=np.eye(3)), r"S1 must have shape \(2, 2\)"),
    (dict(m0=[], S0=np.zeros((0, 0))), "dim >= 1"),
])
def test_bad_parameters_get_clear_errors(kwargs, match):
    args = dict(m0=[0.0, 0.0], S0=np.eye(2), m1=[1.0, 1.0], S1=np.eye(2), eps=1.0)
    args.update(kwargs)
    with pytest.raises(SbdiffError, match=match):
        GaussianBridge(**args)


def test_bad_call_arguments_get_clear_errors():
    gb = GaussianBridge([0.0, 0.0], np.eye(2), [1.0, 1.0], np.eye(2), 1.0)
    with pytest.raises(SbdiffError, match=r"shape \(n, 2\)"):
        gb.drift(np.zeros((3, 3)), 0.5)
    with pytest.raises(SbdiffError, match=r"\[0, 1\]"):
        gb.drift(np.zeros((3, 2)), 1.5)
    with pytest.raises(SbdiffError, match=r"shape \(3,\)"):
        gb.score(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(SbdiffError, match="n_iter"):
        gaussian_ipf(gb.m0, gb.S0, gb.m1, gb.S1, 1.0, -1)
    with pytest.raises(SbdiffError, match="dim must be"):
        random_gaussian_bridge(0, 1.0)
