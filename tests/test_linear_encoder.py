"""The linear multivariate encoder of VSDM (issue 7) against closed forms, float64: transitions against
the matrix exponential (mean) and Van Loan's block exponential (covariance), against simulation, and
against an ODE solve (time-varying); D = I reduces exactly to the VP reference; the prior N(0, Σ_T);
the multivariate DSM loss at the exact score equals its closed form."""

import math

import numpy as np
import pytest
import torch
import scipy.linalg
from scipy.integrate import solve_ivp

from sbdiff._utils import SbdiffError
from sbdiff.decoders import ScoreDecoder
from sbdiff.encoders import FixedEncoder
from sbdiff.linear_encoder import LinearEncoder
from sbdiff.objectives import dsm_loss
from sbdiff.references import VE, VP

from conftest import stderr

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for this module


def _encoder(family="full", time_varying=False, seed=0, d=3, ref=None, tscale=0.5):
    """A float64 encoder with a random D (and a random c(t) when time-varying)."""
    ref = ref or VP()
    enc = LinearEncoder(ref, d, family, time_varying=time_varying).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        shape = {"full": (d, d), "diagonal": (d,), "isotropic": (1,)}[family]
        enc.log_d.copy_(0.6 * torch.randn(shape, generator=g, dtype=F64))
        if time_varying:
            for p in enc.time_scale.parameters():
                p.copy_(tscale * torch.randn(p.shape, generator=g, dtype=F64))
    return enc


def _int_beta(ref, s, t):
    return ref.beta_min * (t - s) + 0.5 * (ref.beta_max - ref.beta_min) * (t**2 - s**2) / ref.T


def _van_loan(D, dB, expm=torch.linalg.matrix_exp):
    """Mean map ``exp(−½ΔB D)`` and covariance of ``dX = −½βDX dt + √β dW`` over ``∫β = ΔB``, from the
    block matrix exponential of ``[[−½ΔB D, ΔB I], [0, ½ΔB Dᵀ]]`` (Van Loan 1978): ``Σ = C H⁻¹``."""
    d = D.shape[0]
    blk = torch.zeros(2 * d, 2 * d, dtype=F64)
    blk[:d, :d] = -0.5 * dB * D
    blk[:d, d:] = dB * torch.eye(d, dtype=F64)
    blk[d:, d:] = 0.5 * dB * D.T
    E = expm(blk)
    return expm(-0.5 * dB * D), E[:d, d:] @ torch.linalg.inv(E[d:, d:])


def _scipy_expm(a):
    return torch.as_tensor(scipy.linalg.expm(a.numpy()))


@pytest.mark.parametrize("family", ["full", "diagonal", "isotropic"])
def test_time_invariant_transition_matches_matrix_exponentials(family):
    enc = _encoder(family)
    D = enc.matrix().detach()
    assert torch.allclose(D, D.T) and bool((torch.linalg.eigvalsh(D) > 0).all())
    assert family != "full" or (D - torch.diag(torch.diagonal(D))).abs().max() > 0.1  # really non-diagonal
    s = torch.tensor([0.0, 0.0, 0.2, 0.5, 0.999], dtype=F64)
    t = torch.tensor([0.001, 0.3, 0.7, 1.0, 1.0], dtype=F64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    mean, L = enc.transition(x, s, t)
    cov = enc.covariance(s, t, x)
    for i in range(5):
        dB = float(_int_beta(enc.reference, s[i], t[i]))
        M, S = _van_loan(D, dB)  # torch.linalg.matrix_exp: only ~1e-11 absolute at small arguments
        assert torch.allclose(mean[i], M @ x[i], rtol=0, atol=1e-10)
        assert torch.allclose(cov[i], S, rtol=1e-8, atol=1e-12)
        M, S = _van_loan(D, dB, _scipy_expm)  # scipy's expm: to rounding
        assert torch.allclose(mean[i], M @ x[i], rtol=0, atol=1e-13)
        assert torch.allclose(cov[i], S, rtol=1e-11, atol=1e-15)
        Li = L[i] if family == "full" else torch.diag(L[i])
        assert torch.allclose(Li @ Li.T, S, rtol=1e-11, atol=1e-15)


def _simulate(enc, x0, t_end, n_steps, n_paths, seed, record, scheme):
    """Simulate ``dX = −½β D_t X dt + √β dW`` from ``x0`` at 0 to ``t_end`` with Euler–Maruyama or the
    stochastic Heun scheme (additive noise: weak order 2), ``D_t = I − 2 G_t`` from ``enc.gain`` at the
    grid times; returns the states ``(n_paths, d)`` after the steps listed in ``record``."""
    g = torch.Generator().manual_seed(seed)
    d = x0.shape[0]
    x = x0[:, None].expand(d, n_paths).contiguous()  # (d, paths)
    h = t_end / n_steps
    t = torch.arange(n_steps + 1, dtype=F64) * h
    sq = enc.reference.g(t)
    with torch.no_grad():
        G = enc.gain(t)
    eye = torch.eye(d, dtype=F64)
    Dt = eye - 2.0 * G if enc.family == "full" else torch.diag_embed(1.0 - 2.0 * G)
    F = -0.5 * (sq**2)[:, None, None] * Dt  # drift matrices at the grid times
    out = {}
    for k in range(n_steps):
        dw = (h**0.5) * torch.randn(x.shape, generator=g, dtype=F64)
        b0 = F[k] @ x
        x_pred = x + h * b0 + float(sq[k]) * dw
        if scheme == "euler":
            x = x_pred
        else:
            x = x + 0.5 * h * (b0 + F[k + 1] @ x_pred) + 0.5 * float(sq[k] + sq[k + 1]) * dw
        if k + 1 in record:
            out[k + 1] = x.T.clone()
    return out


@pytest.mark.parametrize("scheme", ["euler", "heun"])
@pytest.mark.parametrize("time_varying", [False, True])
def test_transition_matches_simulation_d3_full(time_varying, scheme):
    """Mean and covariance of X_t | X_0 = x0 at t = 0.4 and 1 from simulated paths lie within 4 standard
    errors of the closed form, plus the scheme's bias: Euler–Maruyama (25 000 paths, 1000 steps,
    relative bias O(β_max h/4) = 5e-3: 1 % allowed) or stochastic Heun (150 000 paths, 250 steps, bias
    O((βh)²): 0.3 % allowed; this one detects a 2 % error in the covariance)."""
    enc = _encoder("full", time_varying=time_varying, seed=3)
    x0 = torch.tensor([1.5, -1.0, 0.5], dtype=F64)
    n, n_paths = (1000, 25_000) if scheme == "euler" else (250, 150_000)
    paths = _simulate(enc, x0, 1.0, n, n_paths, seed=7, record=(n * 2 // 5, n), scheme=scheme)
    for t_end, xs in ((0.4, paths[n * 2 // 5]), (1.0, paths[n])):
        t = torch.full((1,), t_end, dtype=F64)
        mean, _ = enc.transition(x0[None], torch.zeros_like(t), t)
        cov = enc.covariance(torch.zeros_like(t), t, x0[None])[0]
        se_mean = xs.std(0) / math.sqrt(len(xs))
        assert bool(((xs.mean(0) - mean[0]).abs() < 4 * se_mean + 2e-3).all()), (xs.mean(0), mean[0])
        xc = xs - xs.mean(0)
        emp = xc.T @ xc / (len(xs) - 1)
        prod = xc[:, :, None] * xc[:, None, :]
        se_cov = prod.std(0) / math.sqrt(len(xs))
        bias = (1e-2 if scheme == "euler" else 3e-3) * cov.diagonal().max()
        assert bool(((emp - cov).abs() < 4 * se_cov + bias).all()), (emp, cov)
        assert (cov - cov.diagonal().diag()).abs().max() > 0.05  # the covariance is not diagonal


def test_time_varying_transition_matches_ode_solve():
    """Time-varying D_t = I − c(t)(I − D): mean and covariance from 0.1 to t against a tight
    Runge–Kutta solve of m' = −½βD_t m, Σ' = −½β(D_t Σ + Σ D_t) + β I (rtol 1e-11). The encoder's
    grid quadrature is O(h²), h = T/4000: within 3e-6 (relative) here, for c(t) varying 4- to 18-fold."""
    for family in ("full", "diagonal"):
        enc = _encoder(family, time_varying=True, seed=5, tscale=0.3)
        c = enc.time_factor(torch.linspace(0, 1, 101, dtype=F64)).detach()
        assert c.max() / c.min() > 3  # c(t) really varies
        eye = torch.eye(3, dtype=F64)

        def rhs(t, y):
            tt = torch.tensor([t], dtype=F64)
            beta = float(enc.reference.g(tt) ** 2)
            with torch.no_grad():
                G = enc.gain(tt)[0]
            Dt = (eye - 2 * G if family == "full" else torch.diag(1 - 2 * G)).numpy()
            m, S = y[:3], y[3:].reshape(3, 3)
            return np.concatenate([-0.5 * beta * Dt @ m, (-0.5 * beta * (Dt @ S + S @ Dt.T) + beta * np.eye(3)).ravel()])

        x_s = np.array([0.7, -1.2, 2.0])
        for t_end in (0.35, 0.8, 1.0):
            sol = solve_ivp(rhs, (0.1, t_end), np.concatenate([x_s, np.zeros(9)]), method="DOP853", rtol=1e-11, atol=1e-13)
            s, t = torch.tensor([0.1], dtype=F64), torch.tensor([t_end], dtype=F64)
            mean, _ = enc.transition(torch.as_tensor(x_s)[None], s, t)
            cov = enc.covariance(s, t, mean)[0]
            assert np.allclose(mean[0].detach().numpy(), sol.y[:3, -1], rtol=3e-6, atol=3e-6), family
            assert np.allclose(cov.detach().numpy(), sol.y[3:, -1].reshape(3, 3), rtol=3e-6, atol=3e-6), family


@pytest.mark.parametrize("family", ["full", "diagonal", "isotropic"])
def test_identity_D_is_the_vp_reference_exactly(family):
    """At the start (D = I) transitions, noise, control and the noise-parametrised decoder are those of
    the VP SGM bit for bit."""
    ref = VP()
    enc, fixed = LinearEncoder(ref, 3, family).double(), FixedEncoder(ref)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.999 + 0.001
    a = enc.sample_transition(x, 0.0, t, generator=torch.Generator().manual_seed(2))
    b = fixed.sample_transition(x, 0.0, t, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    std = a[2] if family != "full" else torch.diagonal(a[2], dim1=1, dim2=2)
    assert torch.equal(std, b[2][:, None].expand(-1, 3))
    assert torch.equal(enc.control(x, t), torch.zeros_like(x))
    net = torch.nn.Sequential(torch.nn.Linear(3, 3)).double()
    f = lambda y, tt: net(y) * (1 + tt[:, None])  # noqa: E731
    ours, sgm = ScoreDecoder(enc, f, "noise"), ScoreDecoder(ref, f, "noise")
    assert torch.equal(ours.control(x, t), sgm.control(x, t))
    la = dsm_loss(enc, ours, x, t, generator=torch.Generator().manual_seed(3))
    lb = dsm_loss(fixed, sgm, x, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(la, lb)


@pytest.mark.parametrize("family", ["full", "diagonal", "isotropic"])
def test_prior_is_the_terminal_transition_covariance(family):
    enc = _encoder(family, seed=7)
    cov = enc.prior_cov().detach()
    _, ref_cov = _van_loan(enc.matrix().detach(), float(_int_beta(enc.reference, 0.0, 1.0)))
    assert torch.allclose(cov, ref_cov, rtol=1e-11, atol=1e-15)
    z = enc.prior_sampling((100_000, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    emp = z.T @ z / len(z)
    assert torch.allclose(emp, cov, atol=0.02 * float(cov.diagonal().max()))
    y = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64), cov).log_prob(y)
    assert torch.allclose(enc.prior_logp(y).detach(), exact, rtol=1e-12, atol=1e-12)
    # D = I: N(0, (1 − e^{−B(T)}) I)
    eye_enc = LinearEncoder(VP(), 3, family).double()
    assert torch.allclose(eye_enc.prior_cov(), (1 - math.exp(-_int_beta(VP(), 0.0, 1.0))) * torch.eye(3, dtype=F64))


@pytest.mark.parametrize("family,time_varying", [("full", False), ("full", True), ("diagonal", True)])
def test_control_is_g_times_gain_and_drift_is_linear(family, time_varying):
    enc = _encoder(family, time_varying, seed=9)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.linspace(0.01, 1.0, 16, dtype=F64)
    G = enc.gain(t).detach()
    Gx = torch.einsum("bij,bj->bi", G, x) if family == "full" else G * x
    g = enc.reference.g(t)[:, None]
    assert torch.allclose(enc.control(x, t), g * Gx, rtol=1e-12, atol=1e-13)
    # drift f + g z = −½ β D_t x
    drift = enc.drift(x, t)
    assert torch.allclose(drift, -0.5 * g**2 * (x - 2 * Gx), rtol=1e-12, atol=1e-12)


def test_multivariate_dsm_at_the_exact_score_equals_closed_form():
    """Gaussian data N(0, C0), full D: at the exact score s = −C_t⁻¹x the Σ_t-weighted residual
    Lᵀ s + ε has E‖·‖² = d − tr(Lᵀ C_t⁻¹ L), with C_t = M C0 Mᵀ + Σ_t."""
    enc = _encoder("full", seed=11)
    C0 = torch.tensor([[2.0, 1.2, 0.3], [1.2, 1.0, 0.1], [0.3, 0.1, 0.5]], dtype=F64)
    D = enc.matrix().detach()
    n = 200_000
    x0 = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=F64) @ torch.linalg.cholesky(C0).T
    for t_val in (0.05, 0.4, 0.9):
        M, S = _van_loan(D, float(_int_beta(enc.reference, 0.0, t_val)))
        Ct = M @ C0 @ M.T + S
        Ct_inv = torch.linalg.inv(Ct)
        dec = ScoreDecoder(enc, lambda y, tt: -y @ Ct_inv.T, "score")
        t = torch.full((n,), t_val, dtype=F64)
        loss = dsm_loss(enc, dec, x0, t, generator=torch.Generator().manual_seed(1)).detach()
        L = torch.linalg.cholesky(S)  # any square root: tr(Lᵀ C⁻¹ L) = tr(C⁻¹ Σ)
        expected = 3 - float(torch.trace(L.T @ Ct_inv @ L))
        assert abs(loss.mean().item() - expected) < 4 * stderr(loss) + 1e-4, (t_val, loss.mean(), expected)
        # and a perturbed score does worse
        off = ScoreDecoder(enc, lambda y, tt: -1.1 * y @ Ct_inv.T, "score")
        assert dsm_loss(enc, off, x0, t, generator=torch.Generator().manual_seed(1)).mean() > loss.mean()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(SbdiffError, match="family 'lowrank'"):
        LinearEncoder(VP(), 2, "lowrank")
    with pytest.raises(SbdiffError, match="variance-preserving reference"):
        LinearEncoder(VE(), 2)
    with pytest.raises(SbdiffError, match="dimension >= 1"):
        LinearEncoder(VP(), 0)
    with pytest.raises(SbdiffError, match="parametrization"):
        ScoreDecoder(LinearEncoder(VP(), 2), lambda x, t: x, "velocity")


@pytest.mark.parametrize("time_varying", [False, True])
def test_all_families_agree_on_an_isotropic_D(time_varying):
    """D = c·I written as a full, a diagonal and an isotropic encoder: the same transitions, control,
    prior, noise-parametrised decoder and DSM loss (to rounding)."""
    ref, c = VP(), math.log(0.4)
    encs = {}
    for family, value in (("full", c * torch.eye(3, dtype=F64)), ("diagonal", torch.full((3,), c, dtype=F64)),
                          ("isotropic", torch.full((1,), c, dtype=F64))):
        enc = LinearEncoder(ref, 3, family, time_varying=time_varying).double()
        with torch.no_grad():
            enc.log_d.copy_(value)
            if time_varying:
                torch.manual_seed(5)  # the same c(t) for every family
                for p in enc.time_scale.parameters():
                    p.copy_(0.4 * torch.randn(p.shape, dtype=F64))
        encs[family] = enc
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.rand(32, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.89 + 0.11  # after s = 0.1
    net = torch.nn.Linear(3, 3).double()
    f = lambda y, tt: net(y) * (1 + tt[:, None])  # noqa: E731
    out = {}
    with torch.no_grad():
        for family, enc in encs.items():
            gen = torch.Generator().manual_seed(2)
            dec = ScoreDecoder(enc, f, "noise")
            out[family] = [enc.sample_transition(x, 0.1, t, generator=gen)[0], enc.covariance(0.1, t, x),
                           enc.control(x, t), enc.prior_cov(), enc.prior_logp(x), dec.control(x, t),
                           dsm_loss(enc, dec, x, t, generator=torch.Generator().manual_seed(3))]
    for family in ("diagonal", "isotropic"):
        for i, (a, b) in enumerate(zip(out["full"], out[family])):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (family, i)
