"""Samplers and likelihood with the exact score of Gaussian data (float64): the solvers must
reproduce the known laws and densities."""

import torch

from sbdiff._utils import divergence
from sbdiff.solvers import time_grid

from conftest import exact_model, stderr


def _moments(x):
    x = x.double()
    return x.mean(0), torch.cov(x.T)


def test_euler_maruyama_with_exact_reverse_drift_recovers_data_law(gauss2d):
    model = exact_model(gauss2d)
    gen = torch.Generator().manual_seed(0)
    x = model.sample(20000, nfe=500, generator=gen)
    mean, cov = _moments(x)
    n = x.shape[0]
    se_mean = torch.sqrt(torch.diagonal(gauss2d.S) / n)
    assert torch.all((mean - gauss2d.m).abs() < 4 * se_mean + 0.01), (mean, gauss2d.m)
    # covariance entries: standard error ~ sqrt((S_ii S_jj + S_ij²)/n)
    S = gauss2d.S
    se_cov = torch.sqrt((torch.outer(torch.diagonal(S), torch.diagonal(S)) + S**2) / n)
    assert torch.all((cov - S).abs() < 4 * se_cov + 0.02 * S.abs().max()), (cov, S)


def test_probability_flow_ode_maps_data_to_prior_and_back(gauss2d):
    model = exact_model(gauss2d)
    x0 = gauss2d.sample(4000, seed=1)
    z = model.encode(x0, ode=True, solver="dopri5")
    mean, cov = _moments(z)
    assert mean.abs().max() < 0.08 and (cov - torch.eye(2, dtype=torch.float64)).abs().max() < 0.08
    back = model.decode(z, ode=True, solver="dopri5")
    assert torch.allclose(back, x0, atol=2e-3)
    heun = model.decode(z, ode=True, solver="heun", nfe=200)
    assert (heun - x0).abs().max() < 0.02


def test_pf_ode_nll_matches_exact_density(gauss2d):
    """PF-ODE NLL of Gaussian data within 0.05 nats of the exact cross-entropy (same points)."""
    model = exact_model(gauss2d)
    x = gauss2d.sample(500, seed=2)
    nll = -model.log_prob(x)
    exact = -gauss2d.log_prob(x)
    gap = (nll - exact).mean().item()
    print(f"PF-ODE NLL {nll.mean():.4f} vs exact {exact.mean():.4f} nats (gap {gap:+.5f})")
    assert abs(gap) < 0.05
    assert (nll - exact).abs().max() < 0.05  # per point, not only on average


def test_hutchinson_nll_is_unbiased(gauss2d):
    model = exact_model(gauss2d)
    x = gauss2d.sample(2000, seed=3)
    nll_h = -model.log_prob(x, exact=False, generator=torch.Generator().manual_seed(0))
    exact = -gauss2d.log_prob(x)
    diff = nll_h - exact
    assert abs(diff.mean().item()) < 4 * stderr(diff) + 0.01


def test_divergence_exact_and_hutchinson():
    torch.manual_seed(0)
    A = torch.randn(5, 5, dtype=torch.float64)
    fn = lambda x: torch.tanh(x @ A.T) + x**2  # noqa: E731
    x = torch.randn(64, 5, dtype=torch.float64)
    _, div = divergence(fn, x, exact=True)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: torch.tanh(v @ A.T) + v**2))(x)
    assert torch.allclose(div, torch.diagonal(jac, dim1=1, dim2=2).sum(1))
    gen = torch.Generator().manual_seed(1)
    xr = x.repeat(2000, 1)
    _, div_h = divergence(fn, xr, exact=False, generator=gen)
    est = div_h.reshape(2000, 64).mean(0)
    se = div_h.reshape(2000, 64).std(0) / 2000**0.5
    assert torch.all((est - div).abs() < 5 * se + 1e-9)


def test_time_grid():
    ts = time_grid(1.0, 1e-3, 10)
    assert ts[0] == 1.0 and abs(ts[-1].item() - 1e-3) < 1e-9 and torch.all(ts[1:] < ts[:-1])
    up = time_grid(1e-3, 1.0, 10)
    assert torch.allclose(up, ts.flip(0))
    assert (up[1] - up[0]) < (up[-1] - up[-2])  # dense on the data side
    assert torch.allclose(time_grid(0.0, 1.0, 4, power=1.0), torch.linspace(0, 1, 5))


def test_trajectory_shapes_and_endpoints(gauss2d):
    model = exact_model(gauss2d)
    z = model.sample_prior(8).double()
    for ode in (False, True):
        traj = model.decode(z, nfe=20, ode=ode, trajectory=True, generator=torch.Generator().manual_seed(0))
        assert traj.shape == (21, 8, 2)
        assert torch.allclose(traj[0], model.to_data(z))
    end = model.decode(z, nfe=20, ode=True)
    assert torch.allclose(traj[-1], end)


def test_euler_maruyama_noise_at_the_lower_end_of_backward_steps():
    """``noise_at = "lower"``: a backward step from ``t_{k+1}`` to ``t_k`` takes its noise scale at
    ``t_k`` (the forward step's), a forward step at its start; with zero drift and ``g(t) = t`` the
    path's increments are ``t_k·√Δ·ξ`` with the same draws ``ξ``."""
    from sbdiff.solvers import euler_maruyama

    ts = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    x0 = torch.zeros(3, 2, dtype=torch.float64)
    drift = lambda x, t: torch.zeros_like(x)  # noqa: E731
    paths = {}
    for where in ("start", "lower"):
        paths[where] = euler_maruyama(drift, lambda t: t, x0, ts, generator=torch.Generator().manual_seed(0),
                                      noise_at=where, noise_last=True, trajectory=True)
    xi = torch.diff(paths["start"], dim=0) / (ts[:-1] * torch.diff(ts).abs().sqrt())[:, None, None]
    expect = (ts[1:] * torch.diff(ts).abs().sqrt())[:, None, None] * xi
    torch.testing.assert_close(torch.diff(paths["lower"], dim=0), expect)
    forward = euler_maruyama(drift, lambda t: t + 1, x0, ts.flip(0), generator=torch.Generator().manual_seed(0),
                             noise_at="lower", noise_last=True)
    plain = euler_maruyama(drift, lambda t: t + 1, x0, ts.flip(0), generator=torch.Generator().manual_seed(0),
                           noise_last=True)
    torch.testing.assert_close(forward, plain)
