"""The mixture-potential Schrödinger bridge (sbdiff.mixture_sb, DESIGN §4.7) against independent
closed forms, float64: the drift against autograd of the heat semigroup written with full matrices,
``c`` and ``v`` against torch.distributions, the exact plan sampler against the SDE of its drift
(a two-sample test), and the objective's minimum on a two-component potential."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from sbdiff._utils import SbdiffError
from sbdiff.bench.metrics import energy_distance
from sbdiff.mixture_sb import MixturePotential, default_lr, fit_mixture_sb
from sbdiff.solvers import euler_maruyama


def _random_potential(dim, K, eps, covariance, seed=0):
    torch.manual_seed(seed)
    pot = MixturePotential(dim, K, eps, covariance=covariance).double()
    with torch.no_grad():
        pot.r.normal_()
        pot.log_s.normal_(0.0, 0.5)
        pot.log_alpha_raw.normal_()
        if pot.A is not None:
            pot.A.normal_(0.0, 0.5)
    return pot


def _log_h(pot, x, s):
    """``log h_s(x) = log ∫ N(y | x, eps(1 − s) I) exp(‖y‖²/(2 eps)) v(y) dy`` by the Gaussian integral
    in full matrices (no cancellation by hand), for one point ``x`` ``(d,)``."""
    eps, d = pot.eps, pot.dim
    S, la, r = pot.covariances(), pot.log_alpha(), pot.r
    eye = torch.eye(d, dtype=x.dtype)
    terms = []
    for k in range(pot.components):
        P = (eye / (1 - s) - eye + torch.linalg.inv(S[k])) / eps  # precision in y
        b = (x / (1 - s) + torch.linalg.solve(S[k], r[k])) / eps
        const = -(x @ x) / (2 * eps * (1 - s)) - r[k] @ torch.linalg.solve(S[k], r[k]) / (2 * eps)
        terms.append(la[k] - 0.5 * torch.logdet(2 * math.pi * eps * S[k]) - 0.5 * d * math.log(2 * math.pi * eps * (1 - s))
                     + 0.5 * d * math.log(2 * math.pi) - 0.5 * torch.logdet(P) + const
                     + 0.5 * b @ torch.linalg.solve(P, b))
    return torch.logsumexp(torch.stack(terms), 0)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_drift_is_eps_grad_log_h_and_c_v_are_the_mixtures(covariance):
    pot = _random_potential(3, 4, 0.7, covariance)
    gen = torch.Generator().manual_seed(1)
    for s in (0.0, 0.3, 0.9):
        for _ in range(3):
            x = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
            expected = pot.eps * torch.autograd.grad(_log_h(pot, x, s), x)[0]
            torch.testing.assert_close(pot.drift(x[None].detach(), s)[0], expected, rtol=1e-9, atol=1e-10)
    S, la, r = pot.covariances(), pot.log_alpha(), pot.r
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    log_c = torch.stack([torch.logsumexp(la + torch.stack([(p @ S[k] @ p + 2 * r[k] @ p) / (2 * pot.eps)
                                                           for k in range(4)]), 0) for p in x])
    torch.testing.assert_close(pot.log_c(x), log_c)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=la), torch.distributions.MultivariateNormal(r, pot.eps * S))
    torch.testing.assert_close(pot.log_v(x), mix.log_prob(x) + torch.logsumexp(la, 0))


def test_diagonal_and_full_with_no_rotation_agree():
    """``full`` with ``A = 0`` (``U = I``) is the diagonal potential: every closed form agrees."""
    diag = _random_potential(4, 3, 1.3, "diagonal")
    full = MixturePotential(4, 3, 1.3, covariance="full").double()
    full.load_state_dict({**diag.state_dict(), "A": torch.zeros(3, 4, 4, dtype=torch.float64)})
    x = torch.randn(10, 4, dtype=torch.float64)
    for f in ("log_c", "log_v"):
        torch.testing.assert_close(getattr(full, f)(x), getattr(diag, f)(x))
    s = torch.rand(10, dtype=torch.float64)  # a time per row
    torch.testing.assert_close(full.drift(x, s), diag.drift(x, s))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(full.sample_plan(x, g1), diag.sample_plan(x, g2))


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_plan_sampler_has_the_mixtures_moments(covariance):
    """Draws of ``π(y | x)`` at one ``x``: mean ``Σ γ_k (r_k + S_k x)`` and covariance of the mixture,
    within 5 standard errors."""
    pot = _random_potential(2, 3, 0.5, covariance, seed=4)
    x = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    n = 200_000
    y = pot.sample_plan(x.expand(n, 2), torch.Generator().manual_seed(0))
    S, la, r = pot.covariances(), pot.log_alpha(), pot.r
    gam = torch.softmax(la + torch.stack([(x[0] @ S[k] @ x[0] + 2 * r[k] @ x[0]) / (2 * pot.eps) for k in range(3)]), 0)
    means = r + (S @ x[0])
    mean = gam @ means
    cov = sum(gam[k] * (pot.eps * S[k] + torch.outer(means[k] - mean, means[k] - mean)) for k in range(3))
    se = (torch.diagonal(cov) / n).sqrt()
    assert bool(((y.mean(0) - mean).abs() < 5 * se).all()), (y.mean(0), mean)
    torch.testing.assert_close(torch.cov(y.T), cov, rtol=0.03, atol=0.01)


def _energy_test(a, b, permutations=100, seed=0):
    """p-value of the energy-distance permutation test of ``a`` and ``b`` ``(n, d)``. Each relabelling's
    statistic (``energy_distance`` of the two groups) comes from the one distance matrix of the pooled
    points: with ``u`` the indicator of the first group, its three mean distances are ``uᵀDu``,
    ``uᵀD(1 − u)`` and ``(1 − u)ᵀD(1 − u)`` over the group sizes."""
    both = np.concatenate([a, b])
    dist = cdist(both, both)
    n, m = len(a), len(b)

    def stat(u):
        du = dist @ u
        aa, ab = u @ du, (1 - u) @ du
        bb = dist.sum() - aa - 2 * ab
        return float(2 * ab / (n * m) - aa / n**2 - bb / m**2)

    def indicator(first):
        u = np.zeros(n + m)
        u[first] = 1.0
        return u

    rng = np.random.default_rng(seed)
    observed = stat(indicator(np.arange(n)))
    assert observed == pytest.approx(energy_distance(a, b), rel=1e-9, abs=1e-12)
    null = [stat(indicator(rng.permutation(n + m)[:n])) for _ in range(permutations)]
    return (1 + sum(v >= observed for v in null)) / (1 + permutations)


def test_sde_of_the_closed_form_drift_has_the_plans_law():
    """From fixed source points, Euler–Maruyama on the drift (200 steps, noise in the last step too)
    and the exact plan sampler agree in law (energy-distance permutation test, p > 0.01), while one
    step (right mean, isotropic spread), which a test of this size can tell apart, is rejected (p < 0.01)."""
    pot = _random_potential(2, 3, 0.5, "full", seed=2).requires_grad_(False)
    x = torch.tensor([[0.5, -0.3], [-1.0, 1.2]], dtype=torch.float64).repeat_interleave(500, 0)
    gen = torch.Generator().manual_seed(0)
    exact = pot.sample_plan(x, gen).numpy()

    def sde(steps):
        ts = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        return euler_maruyama(lambda y, s: pot.drift(y, s), lambda s: torch.full_like(s, math.sqrt(pot.eps)), x, ts,
                              generator=gen, noise_last=True).detach().numpy()

    fine, coarse = sde(200), sde(1)
    for start in (0, 500):  # each source point on its own
        block = slice(start, start + 500)
        assert _energy_test(fine[block], exact[block]) > 0.01
    assert _energy_test(coarse[:500], exact[:500]) < 0.01


def test_objective_descends_to_the_closed_form_optimum_on_two_components():
    """A two-component potential ``v*`` and a Gaussian source define a plan and its target marginal;
    the objective fitted from samples (K = 2) ends within 0.005 nats of its value at ``v*`` on held-out
    samples (the minimum: the difference is ``KL(π* ‖ π_θ)``), from a start over 1 nat above it."""
    torch.manual_seed(0)
    true = MixturePotential(2, 2, 1.0).double()
    with torch.no_grad():
        true.r.copy_(torch.tensor([[2.0, 0.0], [-1.0, 1.5]]))
        true.log_s.copy_(torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.8]]) - true.s_floor))
        true.log_alpha_raw.copy_(torch.log(torch.tensor([0.3, 0.7])))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40_000, 2, generator=gen, dtype=torch.float64)
    y = true.sample_plan(x, gen)
    xe, ye = x[20_000:], y[20_000:]  # held out: the fit sees the first half
    start = MixturePotential(2, 2, 1.0).double()
    start.init_means(y[:2])
    fitted = fit_mixture_sb(x[:20_000], y[:20_000], 1.0, components=2, steps=3000, batch_size=256, lr=0.02,
                            generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        optimum = float(true.loss(xe, ye))
        gap_start, gap_fit = float(start.loss(xe, ye)) - optimum, float(fitted.loss(xe, ye)) - optimum
    assert gap_start > 1.0 and -0.005 < gap_fit < 0.005, (gap_start, gap_fit)  # measured: 4.29, 0.0009


def test_bad_settings_are_refused():
    for kwargs in ({"covariance": "banded"}, {"s_floor": 0.0}, {"s_init": 1e-5}):
        with pytest.raises(SbdiffError):
            MixturePotential(2, 3, 1.0, **kwargs)
    with pytest.raises(SbdiffError):
        MixturePotential(2, 0, 1.0)
    assert default_lr(0.1) == pytest.approx(1e-2) and default_lr(1.0) == pytest.approx(3e-3)
    assert default_lr(10.0) == pytest.approx(6e-2) and default_lr(100.0) == pytest.approx(6e-2)
    assert default_lr(0.01) == pytest.approx(1e-2) and 3e-3 < default_lr(0.3) < 1e-2
    assert 3e-3 < default_lr(3.0) < 6e-2
