"""Reference SDEs: closed-form transitions against simulation and against each other."""

import math

import pytest
import torch

from sbdiff import SbdiffError
from sbdiff.references import OU, VE, VP, Brownian, make_reference
from sbdiff.solvers import euler_maruyama, time_grid

REFS = [Brownian(eps=0.7), VP(), VE(sigma_min=0.01, sigma_max=5.0), OU(alpha=1.5, sigma=1.0, T=2.0)]


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.name)
def test_marginal_matches_euler_maruyama(ref):
    """Simulate dX = f dt + g dW from x0 and compare mean/std with marginal_prob at T/2."""
    torch.manual_seed(0)
    n, t_end = 20000, ref.T / 2
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    ts = time_grid(0.0, t_end, 2000, power=1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    xt = euler_maruyama(ref.f, ref.g, x0, ts, generator=gen, noise_last=True)
    mean, std = ref.marginal_prob(x0[:1], t_end)
    se = std.item() / math.sqrt(n)
    assert abs(xt.mean().item() - mean.item()) < 4 * se + 2e-3 * abs(mean.item())
    assert abs(xt.std().item() / std.item() - 1) < 0.03


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.name)
def test_transitions_compose(ref):
    """X_t | X_s obtained by going through u must equal the direct transition (Chapman–Kolmogorov)."""
    s, u, t = 0.1 * ref.T, 0.4 * ref.T, 0.9 * ref.T
    x = torch.tensor([[2.0]], dtype=torch.float64)
    m_su, sd_su = ref.transition(x, s, u)
    m_ut, sd_ut = ref.transition(torch.ones_like(x), u, t)
    m_st, sd_st = ref.transition(x, s, t)
    assert torch.allclose(m_su * m_ut, m_st)
    assert torch.allclose(m_ut**2 * sd_su**2 + sd_ut**2, sd_st**2)


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.name)
def test_variance_ode(ref):
    """d/dt v(0,t) = −2h v + g² (the Lyapunov ODE of a scalar-linear SDE), by finite differences."""
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64) * ref.T
    dt = 1e-6 * ref.T
    v = lambda tt: ref.transition_var(torch.zeros_like(tt), tt)  # noqa: E731
    lhs = (v(t + dt) - v(t - dt)) / (2 * dt)
    rhs = -2 * ref.h(t) * v(t) + ref.g(t) ** 2
    assert torch.allclose(lhs, rhs, rtol=1e-5, atol=1e-6)


def test_sde_interface_shapes():
    ref = VP()
    x = torch.randn(5, 3)
    drift, diffusion = ref.sde(x, torch.rand(5))
    assert drift.shape == (5, 3) and diffusion.shape == (5,)
    assert ref.prior_sampling((4, 3)).shape == (4, 3)
    assert ref.prior_logp(torch.zeros(2, 3)).shape == (2,)
    assert torch.allclose(ref.prior_logp(torch.zeros(1, 3)), torch.tensor([-1.5 * math.log(2 * math.pi)]))


def test_reverse_drift_of_stationary_ou_is_time_reversible():
    """A stationary OU in N(0, I) is reversible: its reversal drift equals −f... read backwards."""
    ref = OU()
    x = torch.randn(7, 2, dtype=torch.float64)
    rev = ref.reverse(lambda y, t: -y)(x, 0.5)  # f − g² score = −x + 2x = x
    assert torch.allclose(rev, x)
    ode = ref.reverse(lambda y, t: -y, probability_flow=True)(x, 0.5)
    assert torch.allclose(ode, torch.zeros_like(x))


def test_vp_prior_is_reached():
    mean, std = VP().marginal_prob(torch.ones(1, 1), 1.0)
    assert mean.item() < 1e-2 and abs(std.item() - 1) < 1e-4


def test_make_reference_errors():
    with pytest.raises(SbdiffError, match="unknown reference 'vpp'"):
        make_reference("vpp")
    with pytest.raises(SbdiffError, match="unknown parameter.*beta"):
        make_reference("ve", beta_min=0.1)
    with pytest.raises(SbdiffError, match="eps must be a positive"):
        make_reference("brownian", eps=0.0)
    with pytest.raises(SbdiffError, match="beta_max >= beta_min"):
        make_reference("vp", beta_min=5, beta_max=1)
    assert make_reference("ou", alpha=2.0).params() == {"alpha": 2.0, "sigma": math.sqrt(2.0), "T": 5.0}
