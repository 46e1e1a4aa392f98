"""SB-FBSDE (issue 6): the divergence form of drift matching, the simulated-path ELBO and the
prior-loss estimate against closed forms (exact Gaussian SB drifts, float64), the SGM equivalence,
the schedule, checkpoint/resume and config errors."""

import json
import math

import numpy as np
import pytest
import torch

from sbdiff import Config, fit
from sbdiff.config import config_from_dict
from sbdiff._utils import SbdiffError, divergence
from sbdiff.bench.gaussian import random_gaussian_bridge
from sbdiff.decoders import Decoder, ScoreDecoder
from sbdiff.encoders import Encoder, FixedEncoder
from sbdiff.methods._schedule import OPEN, PhaseSchedule
from sbdiff.nets import TimeMLP
from sbdiff.objectives import (divergence_matching, dsm_loss, gaussian_kl_estimate, gaussian_moment_kl,
                               reference_prior_kl_bound, simulate_controlled, simulated_path_elbo)
from sbdiff.references import VP, Brownian

from conftest import GaussianData, assert_train_refused, stderr


# -- the exact Gaussian SB as differentiable torch fields ----------------------------------------
class TorchBridge:
    """``GaussianBridge``'s drift ``b_t(x) = ṁ_t + A_t(x − m_t)`` and score ``−Σ_t⁻¹(x − m_t)`` as torch
    functions of ``x`` (so that autograd gives their divergence), per distinct time."""

    def __init__(self, bridge):
        self.b = bridge
        self._mats = {}

    def _m(self, t: float):
        if t not in self._mats:
            m, S = self.b.marginal(t)
            self._mats[t] = tuple(torch.as_tensor(a) for a in (m, np.linalg.inv(S), self.b.drift_matrix(t),
                                                                   self.b.mean_velocity(t)))
        return self._mats[t]

    def _per_time(self, x, t, which):
        if bool((t == t[0]).all()):  # one time (paths on a grid): no masked writes
            m, Si, A, v = (a.to(x) for a in self._m(float(t[0])))
            return v + (x - m) @ A.T if which == "drift" else -((x - m) @ Si.T)
        out = torch.empty_like(x)
        for tu in torch.unique(t):
            rows = t == tu
            m, Si, A, v = (a.to(x) for a in self._m(float(tu)))
            xr = x[rows] - m
            out[rows] = v + xr @ A.T if which == "drift" else -(xr @ Si.T)
        return out

    def drift(self, x, t):
        return self._per_time(x, t, "drift")

    def score(self, x, t):
        return self._per_time(x, t, "score")


class BridgeEncoder(Encoder):
    """The SB's forward drift as an encoder on ``brownian(eps)``: ``z = b_t/√eps``."""

    def __init__(self, tb, eps, scale=1.0):
        super().__init__(Brownian(eps))
        self.tb, self.eps, self.scale = tb, eps, scale

    def control(self, x, t):
        return self.scale * self.tb.drift(x, t) / math.sqrt(self.eps)


class ReversalDecoder(Decoder):
    """The exact reversal of an encoder with marginal scores ``score``: ``ẑ = g∇log q_t − z``."""

    def __init__(self, tb, encoder, scale=1.0):
        super().__init__(encoder.reference)
        self.tb, self.enc, self.scale = tb, encoder, scale

    def control(self, x, t):
        g = math.sqrt(self.enc.eps)
        return self.scale * (g * self.tb.score(x, t) - self.enc.control(x, t))


def gauss_entropy(S):
    S = np.asarray(S)
    return 0.5 * (len(S) * (1 + math.log(2 * math.pi)) + np.linalg.slogdet(S)[1])


def path_term(encoder, decoder, xs, ts, *, swapped=False):
    """``Σ_k w_k E[½‖z + ẑ‖² + ∇·(g ẑ − f)]`` (decoder side) or ``… + ∇·(g z + f)`` (``swapped``) on
    paths ``xs`` (trapezoid weights), built from :func:`divergence_matching`; per-path values."""
    dt = ts[1:] - ts[:-1]
    w = torch.zeros_like(ts)
    w[:-1] += dt / 2
    w[1:] += dt / 2
    total = torch.zeros(xs.shape[1], dtype=xs.dtype)
    ref = encoder.reference
    for k in range(len(ts)):
        t = ts[k].expand(xs.shape[1])
        x = xs[k]
        z, zhat = encoder.control(x, t), decoder.control(x, t)
        trained, other = (encoder, zhat) if swapped else (decoder, z)
        integ, _ = divergence_matching(trained.control, x, t, other, ref.g(t), exact=True, create_graph=False)
        other_sq = 0.5 * other.pow(2).sum(1)
        div_f = -ref.h(t) * x.shape[1]
        total = total + w[k] * (integ + other_sq + (div_f if swapped else -div_f))
    return total


@pytest.fixture(scope="module")
def bridge():
    eps = 1.0
    br = random_gaussian_bridge(2, eps, 3)
    tb = TorchBridge(br)
    enc = BridgeEncoder(tb, eps)
    return br, tb, enc, ReversalDecoder(tb, enc)


# -- estimators -----------------------------------------------------------------------------------
def test_hutchinson_divergence_is_unbiased_against_exact():
    torch.manual_seed(0)
    net = TimeMLP(4, 16, 1, 8).double()
    torch.nn.init.normal_(net.out[-1].weight, std=0.5)
    x = torch.randn(6, 4, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    other = torch.randn(6, 4, dtype=torch.float64)
    g = torch.full((6,), 0.7, dtype=torch.float64)
    exact, _ = divergence_matching(net, x, t, other, g, exact=True, create_graph=False)
    n = 20_000  # one Rademacher probe per copy of each point
    rep = lambda a: a.repeat(n, *([1] * (a.ndim - 1)))  # noqa: E731
    hutch, _ = divergence_matching(net, rep(x), rep(t), rep(other), rep(g), exact=False, create_graph=False,
                                   generator=torch.Generator().manual_seed(1))
    hutch = hutch.reshape(n, 6)
    err = (hutch.mean(0) - exact).abs()
    se = hutch.std(0) / math.sqrt(n)
    assert bool((se > 1e-4).all())  # the probes do vary: the test can fail
    assert bool((err < 4 * se).all()), (err, se)
    # and the divergence itself: exact trace of the Jacobian
    _, div = divergence(lambda y: net(y, t), x, exact=True)
    jac = torch.autograd.functional.jacobian(lambda y: net(y, t).sum(0), x).permute(1, 0, 2)
    assert torch.allclose(div, torch.diagonal(jac, dim1=1, dim2=2).sum(1), atol=1e-10)


def test_gaussian_kl_estimate_is_unbiased_where_the_plug_in_is_not():
    """Small batches of Gaussian samples: the bias-corrected estimate averages to the exact KL, the
    plug-in (``gaussian_moment_kl``) overshoots by about d(d+1)/(4n)."""
    gen = torch.Generator().manual_seed(0)
    d, n, reps = 3, 20, 1500
    m = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    L = torch.tensor([[1.2, 0, 0], [0.4, 0.8, 0], [-0.3, 0.2, 1.1]], dtype=torch.float64)
    S = L @ L.T
    exact = 0.5 * (torch.trace(S) + m @ m - d - torch.logdet(S))
    est, plug = [], []
    for _ in range(reps):
        x = m + torch.randn(n, d, generator=gen, dtype=torch.float64) @ L.T
        est.append(gaussian_kl_estimate(x, prior_var=1.0))
        plug.append(gaussian_moment_kl(x, 1.0))
    est, plug = torch.stack(est), torch.stack(plug)
    assert abs(est.mean() - exact) < 4 * stderr(est)
    assert plug.mean() - exact > 10 * stderr(plug)  # the plug-in's bias is real
    # a general prior N(μ, Σ) and the diagonal fallback (n <= d + 1)
    mu, Sig = torch.tensor([0.1, 0.0, -0.5], dtype=torch.float64), torch.diag(torch.tensor([2.0, 1.0, 0.5])).double()
    exact2 = 0.5 * (torch.trace(torch.linalg.solve(Sig, S)) + (m - mu) @ torch.linalg.solve(Sig, m - mu) - d
                    + torch.logdet(Sig) - torch.logdet(S))
    big = m + torch.randn(200_000, d, generator=gen, dtype=torch.float64) @ L.T
    assert abs(gaussian_kl_estimate(big, mu, Sig) - exact2) < 5e-3
    Sd = torch.diag(torch.diagonal(S))
    exact_diag = 0.5 * (torch.trace(Sd) + m @ m - d - torch.logdet(Sd))
    diag = torch.stack([gaussian_kl_estimate(m + torch.randn(3, d, generator=gen, dtype=torch.float64) @ L.T,
                                             prior_var=1.0) for _ in range(2000)])
    assert abs(diag.mean() - exact_diag) < 4 * stderr(diag)
    with pytest.raises(SbdiffError, match="at least 3 samples"):
        gaussian_kl_estimate(big[:2], prior_var=1.0)


def test_decoder_gradient_equals_sgms_with_the_reference_encoder(gauss2d):
    """``z ≡ 0``: at each time, ``∇_θ E[λ(½‖ẑ‖² + g∇·ẑ)] = ½ ∇_θ E[DSM]`` (``λ = σ²/g²``): the divergence
    form and SGM's denoising score matching have the same gradient, hence the same minimiser."""
    ref = gauss2d.ref
    torch.manual_seed(0)
    net = TimeMLP(2, 16, 1, 8).double()
    torch.nn.init.normal_(net.out[-1].weight, std=0.3)
    dec = ScoreDecoder(ref, net, "noise")
    enc = FixedEncoder(ref)
    x0 = gauss2d.sample(60_000, seed=7)
    params = list(net.parameters())
    for t_val in (0.05, 0.4):
        t = torch.full((len(x0),), t_val, dtype=torch.float64)
        gen = torch.Generator().manual_seed(3)
        dsm = dsm_loss(enc, dec, x0, t, generator=gen).mean()
        g_dsm = torch.cat([g.flatten() for g in torch.autograd.grad(dsm, params)])
        x_t, _, _ = enc.sample_transition(x0, 0.0, t, generator=torch.Generator().manual_seed(3))  # same x_t
        lam = ref.transition_var(torch.zeros_like(t), t) / ref.g(t) ** 2
        integ, _ = divergence_matching(dec.control, x_t, t, torch.zeros_like(x_t), ref.g(t), exact=True)
        g_div = torch.cat([g.flatten() for g in torch.autograd.grad((lam * integ).mean(), params)])
        rel = ((g_div - 0.5 * g_dsm).norm() / (0.5 * g_dsm).norm()).item()
        cos = torch.nn.functional.cosine_similarity(g_div, g_dsm, dim=0).item()
        print(f"t={t_val}: |g_div − g_dsm/2| / |g_dsm/2| = {rel:.4f}, cosine {cos:.5f}")
        assert rel < 0.03 and cos > 0.999


# -- the exact Gaussian SB -------------------------------------------------------------------------
def test_exact_sb_drifts_give_zero_prior_loss_and_drift_matching(bridge):
    """Encoder = the SB's forward drift, decoder = its reversal: the prior loss (``X_T`` against ``ν``)
    and drift matching vanish, and drift matching of a wrong decoder equals its closed form.

    ``drift_matching`` (the path term) is the drift-matching KL plus ``H(q_0) − H(q_T)``; both entropies
    are Gaussian here, so the KL itself is checked."""
    br, tb, enc, dec = bridge
    ts = torch.linspace(1e-4, 1.0, 101, dtype=torch.float64)
    x0 = torch.as_tensor(br.sample_source(10_000, 0))
    xs, _ = simulate_controlled(enc, x0, ts, generator=torch.Generator().manual_seed(0))
    prior = gaussian_kl_estimate(xs[-1], torch.as_tensor(br.m1), torch.as_tensor(br.S1))
    ref_xs, _ = simulate_controlled(FixedEncoder(enc.reference), x0, ts, generator=torch.Generator().manual_seed(0))
    prior_ref = gaussian_kl_estimate(ref_xs[-1], torch.as_tensor(br.m1), torch.as_tensor(br.S1))
    print(f"prior loss: exact SB {prior:.5f}, reference {prior_ref:.3f}")
    assert abs(prior) < 0.01 and prior_ref > 0.3
    sub = xs[:, :2000]
    dH = gauss_entropy(br.S0) - gauss_entropy(br.S1)
    pt = path_term(enc, dec, sub, ts)
    dm_exact = pt.mean().item() - dH
    wrong = ReversalDecoder(tb, enc, scale=0.5)
    pt_w = path_term(enc, wrong, sub, ts)
    dm_wrong = pt_w.mean().item() - dH
    # closed form of the wrong decoder's drift matching: E ∫ ½‖ẑ_w − ẑ*‖² dt = E ∫ ½ (0.5)² ‖ẑ*‖² dt
    w = torch.cat([(ts[1:] - ts[:-1]) / 2, torch.zeros(1, dtype=ts.dtype)])
    w[1:] += (ts[1:] - ts[:-1]) / 2
    closed = sum(float(w[k]) * 0.5 * 0.25 * dec.control(sub[k], ts[k].expand(sub.shape[1])).pow(2).sum(1).mean().item()
                 for k in range(len(ts)))
    print(f"drift matching: exact {dm_exact:+.4f} ± {stderr(pt):.4f}, wrong {dm_wrong:.4f} (closed form {closed:.4f})")
    assert abs(dm_exact) < 3 * stderr(pt) + 0.01
    assert abs(dm_exact) < 0.05 * dm_wrong
    assert abs(dm_wrong - closed) < 3 * stderr(pt_w - pt) + 0.01
    # the encoder side, on the decoder's paths from ν: the swapped path term is ≈ H(ν) − H(μ)
    x1 = torch.as_tensor(br.sample_target(2000, 1))
    ys, _ = simulate_controlled(dec, x1, ts.flip(0), generator=torch.Generator().manual_seed(2))
    pe = path_term(enc, dec, ys.flip(0), ts, swapped=True)
    assert abs(pe.mean().item() + dH) < 3 * stderr(pe) + 0.02, (pe.mean().item(), -dH)


def test_simulated_path_elbo_is_tight_for_the_exact_pair(bridge):
    """SB-FBSDE Thm 4 with ``½‖z + ẑ‖²``: at the exact reversal ``E[ELBO(x_0)] = log p_0(x_0)``; dropping
    ``½‖z‖²`` (the form that is exact for ``z = 0`` only) would overshoot ``log p_0``."""
    br, tb, enc, dec = bridge
    prior = torch.distributions.MultivariateNormal(torch.as_tensor(br.m1), torch.as_tensor(br.S1))
    p0 = torch.distributions.MultivariateNormal(torch.as_tensor(br.m0), torch.as_tensor(br.S0))
    x0 = torch.as_tensor(br.sample_source(600, 5))
    elbo = simulated_path_elbo(enc, dec, prior.log_prob, x0, t_min=1e-4, n_time=32, n_steps=128,
                               generator=torch.Generator().manual_seed(0))
    gap = elbo - p0.log_prob(x0)
    ts = torch.linspace(1e-4, 1.0, 101, dtype=torch.float64)
    xs, zs = simulate_controlled(enc, x0, ts, generator=torch.Generator().manual_seed(1))
    half_z2 = (0.5 * zs[:-1].pow(2).sum(2).mean(1) * (ts[1:] - ts[:-1])).sum().item()
    print(f"ELBO − log p0 = {gap.mean():+.4f} ± {stderr(gap):.4f}; E∫½‖z‖² = {half_z2:.3f}")
    assert abs(gap.mean().item()) < 3 * stderr(gap)
    assert half_z2 > 10 * stderr(gap)


# -- schedule --------------------------------------------------------------------------------------
def test_schedule_freezes_the_encoder():
    c = PhaseSchedule(0, 10, 20, 5, freeze_encoder=2)  # D0 20, E0 5, D1 10, E1 5, D2 open
    roles = [c.phase(s).role for s in (0, 19, 20, 24, 25, 34, 35, 39, 40, 10_000)]
    assert roles == ["decoder", "decoder", "encoder", "encoder", "decoder", "decoder", "encoder", "encoder",
                     "decoder", "decoder"]
    assert c.phase(40).start == 40 and c.phase(10_000).end == OPEN and c.phase(40).iteration == 2
    assert c.total_steps() is None and c.open_ended
    d = PhaseSchedule(3, 10, 0, 4)  # no freeze: ends after decoder phase 2
    assert d.total_steps() == 10 + 2 * 14 and d.phase(100).role == "decoder" and d.phase(100).end == 38
    assert PhaseSchedule(0, 10).total_steps() is None and PhaseSchedule(0, 10).phase(1000).index == 100
    with pytest.raises(SbdiffError, match="half_steps"):
        PhaseSchedule(1, 0)


# -- training: both modes, checkpoint/resume, eval ----------------------------------------------
def _bridge_files(tmp_path):
    br = random_gaussian_bridge(2, 1.0, 1)
    src = br.sample_source(2000, 1).astype(np.float32)
    tgt = br.sample_target(2000, 2).astype(np.float32)
    np.save(tmp_path / "src.npy", src)
    np.save(tmp_path / "tgt.npy", tgt)
    return str(tmp_path / "tgt.npy"), str(tmp_path / "src.npy")


def _tiny(cfg: Config) -> Config:
    cfg.method = "sbfbsde"
    cfg.model.time_dim = 8
    s = cfg.sbfbsde
    s.hidden, s.blocks, s.num_steps, s.cache_size, s.cache_refresh, s.half_steps = 16, 1, 8, 64, 7, 10
    s.ipf_tol = 0  # these runs test the alternation, also where the VP reference alone reaches the prior
    cfg.train.batch_size, cfg.train.log_every, cfg.train.checkpoint_every, cfg.train.warmup = 32, 5, 13, 5
    return cfg


def test_bridge_run_checkpoints_and_resumes_bit_identically(tmp_path):
    data, prior = _bridge_files(tmp_path)
    cfg = _tiny(Config())
    cfg.data.data, cfg.data.prior, cfg.data.normalize = data, prior, False
    cfg.reference = {"kind": "brownian", "eps": 1.0}
    cfg.sbfbsde.freeze_encoder = 2  # D0 E0 D1 E1 D2(open)
    cfg.train.steps = 53
    full = fit(cfg.validate(), tmp_path / "full", progress=False)
    cut = _tiny(Config())
    cut.data.data, cut.data.prior, cut.data.normalize = data, prior, False
    cut.reference = {"kind": "brownian", "eps": 1.0}
    cut.sbfbsde.freeze_encoder = 2
    cut.train.steps = 25  # D0 [0,10) E0 [10,20) D1 [20,30): stop inside D1, between cache refreshes (20, 27)
    fit(cut.validate(), tmp_path / "cut", progress=False)
    from sbdiff.train import load_run, resume_run

    resumed = resume_run(tmp_path / "cut", steps=53, progress=False)
    assert resumed.resumed_from == 25 and resumed.steps == 53
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda p: [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    ra, rb = rows(tmp_path / "full"), rows(tmp_path / "cut")
    strip = lambda r: {k: v for k, v in r.items() if k != "elapsed_s"}  # noqa: E731
    assert [strip(r) for r in ra] == [strip(r) for r in rb]
    phases = {r["phase"] for r in ra}
    assert phases == {0.0, 1.0, 2.0, 3.0, 4.0}
    assert all("prior_loss" in r for r in ra)
    assert any("encoder_matching" in r for r in ra) and any("objective" in r for r in ra)
    # the trained networks moved; the decoded plan has the data's shape and lives on the grid
    cfg2, model = load_run(tmp_path / "full")
    assert model.sde_grid is not None and len(model.sde_grid) == 9
    out = model.decode(torch.as_tensor(np.load(prior)[:5]), generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    assert model.encoder.net.out[-1].weight.abs().sum() > 0 and model.decoder.net.out[-1].weight.abs().sum() > 0


def test_generative_run_and_eval_report_nll_and_nelbo(tmp_path, capsys):
    gd = GaussianData([1.0, -2.0], [[2.0, 1.2], [1.2, 1.0]], VP())
    np.save(tmp_path / "g.npy", gd.sample(4000, seed=0).numpy().astype(np.float32))
    cfg = _tiny(Config())
    cfg.data.data = str(tmp_path / "g.npy")
    cfg.sample.nfe = 20
    cfg.train.steps = 32  # D0 (DSM warm start), E0, D1, E1 (2 steps)
    res = fit(cfg.validate(), tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("nelbo" in r for r in rows) and all(np.isfinite(r["loss"]) for r in rows)
    from sbdiff.cli import main

    assert main(["eval", str(tmp_path / "run"), "--n", "40", "--samples", "50", "--nfe", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nll=" in out and "nelbo=" in out
    nelbo = -res.model.elbo(torch.as_tensor(gd.sample(50, seed=1).numpy(), dtype=torch.float32), n_time=8)
    assert torch.isfinite(nelbo).all()


def test_joint_schedule_trains_both_networks(tmp_path):
    gd = GaussianData([0.5, 0.0], [[1.0, 0.3], [0.3, 0.5]], VP())
    cfg = _tiny(Config())
    cfg.sbfbsde.schedule = "joint"
    cfg.train.steps, cfg.train.batch_size = 6, 16
    model = fit(cfg.validate(), data=gd.sample(500, seed=0).numpy(), progress=False).model
    assert model.encoder.net.out[-1].weight.abs().sum() > 0 and model.decoder.net.out[-1].weight.abs().sum() > 0


@pytest.mark.parametrize("key, value, match", [
    ("schedule", "both", "sbfbsde.schedule must be alternating or joint"),
    ("divergence", "approx", "sbfbsde.divergence"),
    ("half_steps", 0, "sbfbsde.half_steps must be at least 1"),
    ("freeze_encoder", -1, "sbfbsde.freeze_encoder must be >= 0"),
    ("cache_size", 2, "sbfbsde.cache_size"),
    ("lr_final", 0.0, "sbfbsde.lr_final"),
    ("weighting", "uniform", "sbfbsde.weighting"),
])
def test_bad_config_values_are_named(key, value, match):
    cfg = Config()
    cfg.method = "sbfbsde"
    setattr(cfg.sbfbsde, key, value)
    with pytest.raises(SbdiffError, match=match):
        cfg.validate()


def test_joint_needs_the_gaussian_prior(tmp_path):
    _, prior = _bridge_files(tmp_path)
    cfg = Config()
    cfg.method, cfg.data.prior = "sbfbsde", prior
    cfg.sbfbsde.schedule = "joint"
    with pytest.raises(SbdiffError, match="joint needs the Gaussian prior"):
        cfg.validate()


def test_cross_cov_error_of_the_bench_row():
    from sbdiff.bench.runner import cross_cov_error

    pair = random_gaussian_bridge(3, 1.0, 0)
    exact = cross_cov_error(pair, pair.sample_conditional, n=20_000)
    indep = cross_cov_error(pair, lambda x, rng: pair.sample_target(len(x), rng), n=20_000)
    assert exact < 5 and 90 < indep < 110


@pytest.mark.parametrize("schedule", ["alternating", "joint"])
def test_dsm_warm_start_is_the_sgm_preset(tmp_path, schedule):
    """Iteration 0 with ``warm_start = "dsm"`` (joint: the first ``first_steps`` steps) trains exactly
    what ``method = "sgm"`` trains: same network (initialisation included), same loss, same random
    numbers: the trained decoders agree bit for bit (with SGM's constant learning rate, ``lr_final =
    1``, and SGM's network, ``hidden = 0``), and the encoder is still the reference."""
    from safetensors.torch import load_file

    gd = GaussianData([1.0, -2.0], [[2.0, 1.2], [1.2, 1.0]], VP())
    np.save(tmp_path / "g.npy", gd.sample(1000, seed=0).numpy())
    cfg = Config()
    cfg.data.data = str(tmp_path / "g.npy")
    cfg.model.hidden, cfg.model.blocks, cfg.model.time_dim = 16, 1, 8
    cfg.train.steps, cfg.train.batch_size = 12, 32
    fit(cfg.validate(), tmp_path / "sgm", progress=False)
    cfg.method = "sbfbsde"
    cfg.sbfbsde.hidden, cfg.sbfbsde.lr_final, cfg.sbfbsde.half_steps = 0, 1.0, 100
    cfg.sbfbsde.schedule, cfg.sbfbsde.first_steps = schedule, 100 if schedule == "joint" else 0
    fit(cfg.validate(), tmp_path / "sb", progress=False)
    a = {k: v for k, v in load_file(str(tmp_path / "sgm" / "checkpoint.safetensors")).items()
         if k.startswith("model.decoder.")}
    b = {k: v for k, v in load_file(str(tmp_path / "sb" / "checkpoint.safetensors")).items()
         if k.startswith("model.decoder.")}
    assert len(a) > 5 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_file(str(tmp_path / "sb" / "checkpoint.safetensors"))
    assert state["model.decoder.net.out.2.weight"].abs().sum() > 0  # trained: the zero-initialised output moved
    assert state["model.encoder.net.out.2.weight"].abs().sum() == 0  # the encoder is still the reference


@pytest.mark.parametrize("args, message", [
    (["--config", "bad_sb.toml"], "sbfbsde.schedule must be alternating or joint"),
    (["--data", "nan.npy"], "contain NaN or inf"),
    (["--prior", "three.npy"], "dimension"),
    (["--config", "joint.toml", "--prior", "moons"], "joint needs the Gaussian prior"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "bad_sb.toml").write_text('[sbfbsde]\nschedule = "both"\n')
    (tmp_path / "joint.toml").write_text('[sbfbsde]\nschedule = "joint"\n')
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]))
    np.save(tmp_path / "three.npy", np.zeros((50, 3)))
    assert_train_refused(tmp_path, capsys, "sbfbsde", args, message)


def test_freeze_last_turns_the_phase_average_off():
    """``train.phase_average`` (sbfbsde's default) hands a phase's average on; ``freeze = last`` hands
    on the last weights instead, and asking for both is refused in one line."""
    assert config_from_dict({"method": "sbfbsde"}).validate().train.phase_average is True
    assert config_from_dict({"method": "sgm"}).validate().train.phase_average is False
    last = config_from_dict({"method": "sbfbsde", "sbfbsde": {"freeze": "last"}}).validate()
    assert last.train.phase_average is False
    with pytest.raises(SbdiffError, match="set one of them"):
        config_from_dict({"method": "sbfbsde", "sbfbsde": {"freeze": "last"},
                          "train": {"phase_average": True}}).validate()



def test_encoder_phase_paths_start_at_the_prior_set_in_model_coordinates(tmp_path):
    """Issue 26: an encoder phase's decoder paths start at rows of the prior data set mapped to model
    coordinates (before, raw rows: with ``data.normalize`` on, the encoder fitted paths from a
    mis-scaled prior set and the bridge collapsed)."""
    from sbdiff.methods import make_method
    from sbdiff.methods._schedule import Phase

    data, prior = _bridge_files(tmp_path)
    cfg = _tiny(Config())
    cfg.data.data, cfg.data.prior, cfg.data.normalize = data, prior, True  # explicit: kept in bridge mode
    cfg.reference = {"kind": "brownian", "eps": 1.0}
    cfg.train.steps = 10
    method = make_method(cfg.validate())
    assert cfg.data.normalize
    tgt, src = np.load(data) * 3.0 + 1.0, np.load(prior)  # a data scale far from 1
    model = method.build(tgt, src)
    assert not torch.allclose(model.data_scale, torch.ones(2))
    cache = method.simulate(model, model.decoder, Phase(0, "encoder", 10, 20), torch.Generator().manual_seed(0))
    starts = cache.xs[-1]  # the paths at T (stored in forward time)
    rows = model.to_model(torch.as_tensor(src))
    dist = torch.cdist(starts, rows).min(1).values
    assert dist.max() < 1e-3  # float32 cdist; raw rows lie O(1) away


def test_bridge_mode_does_not_standardise_unless_asked():
    """Bridge mode poses entropic OT in the data's coordinates: ``data.normalize`` resolves to false
    there (an explicit true is kept); the Gaussian prior keeps the standardisation."""
    cfg = config_from_dict({"method": "sbfbsde", "data": {"prior": "source.npy"},
                            "reference": {"kind": "brownian", "eps": 1.0}}, Config()).validate()
    assert cfg.data.normalize is False
    cfg = config_from_dict({"method": "sbfbsde", "data": {"prior": "source.npy", "normalize": True},
                            "reference": {"kind": "brownian", "eps": 1.0}}, Config()).validate()
    assert cfg.data.normalize is True
    assert config_from_dict({"method": "sbfbsde"}, Config()).validate().data.normalize is True


# -- IPF's stopping rule before iteration 1 (issue 26) -------------------------------------------
def _gauss_kl(m1, C1, m2, C2):
    """``KL(N(m1, C1) ‖ N(m2, C2))``, float64."""
    mvn = torch.distributions.MultivariateNormal
    return float(torch.distributions.kl_divergence(mvn(m1, C1), mvn(m2, C2)))


def test_reference_prior_kl_bound_bounds_both_directions_of_the_exact_kl():
    """Gaussian data under a VP reference that stops short of its prior (``beta_max = 2``): the
    reference's ``q_T = N(aμ, a²Σ + s²I)`` is exact, so both KLs against the prior are known; the bound
    must lie above both, equal the larger closed-form mean of the per-point transition KLs, and be
    exact for a single point."""
    ref = VP(0.1, 2.0)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    Sigma = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=torch.float64)
    x0 = torch.distributions.MultivariateNormal(mu, Sigma).sample((200_000,))
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    a = math.exp(float(ref.log_mean_coeff(zero, one)))
    s2 = float(ref.transition_var(zero, one))
    eye, origin = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    q_T = (a * mu, a * a * Sigma + s2 * eye)
    exact = max(_gauss_kl(*q_T, origin, eye), _gauss_kl(origin, eye, *q_T))
    spread = float(mu @ mu) + float(torch.trace(Sigma))  # E‖x0‖²
    expected = max(0.5 * (2 * (s2 - 1 - math.log(s2)) + a * a * spread),
                   0.5 * (2 * (1 / s2 - 1 + math.log(s2)) + a * a * spread / s2))
    bound = float(reference_prior_kl_bound(ref, x0))
    assert bound == pytest.approx(expected, rel=0.01)
    assert exact < 0.8 * bound  # a strict bound here (the data's spread is what the convexity gives away)
    point = mu[None]
    assert float(reference_prior_kl_bound(ref, point)) == pytest.approx(
        max(_gauss_kl(a * mu, s2 * eye, origin, eye), _gauss_kl(origin, eye, a * mu, s2 * eye)), rel=1e-9)
    # the default VP reaches its prior: about 1e-5 nats per dimension for unit-scale data
    assert float(reference_prior_kl_bound(VP(), torch.randn(1000, 2, dtype=torch.float64))) < 1e-4


def _generative_run(tmp_path, capfd, reference=None, **sb):
    np.save(tmp_path / "g.npy", GaussianData([1.0, -2.0], [[2.0, 1.2], [1.2, 1.0]], VP()).sample(
        2000, seed=0).numpy().astype(np.float32))
    cfg = _tiny(Config())
    cfg.data.data = str(tmp_path / "g.npy")
    cfg.sbfbsde.ipf_tol = sb.get("ipf_tol", 1e-3)
    if reference is not None:
        cfg.reference = reference
    cfg.train.steps = 30  # D0 (10), E0 (10), D1 (10) when alternating
    run = tmp_path / "run"
    res = fit(cfg.validate(), run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return res, {r["phase"] for r in rows if "phase" in r}, capfd.readouterr().err


def test_a_reference_that_reaches_the_prior_ends_ipf_at_iteration_0(tmp_path, capfd):
    """The VP reference carries standardised data to N(0, I): one decoder phase (the DSM warm start)
    for the whole budget, the encoder left at the reference (its zero-initialised output), one line."""
    res, phases, err = _generative_run(tmp_path, capfd)
    assert phases == {0.0}
    assert "IPF has converged at iteration 0" in err and err.count("\n") >= 1
    assert res.model.encoder.net.out[2].weight.abs().sum() == 0
    assert res.model.decoder.net.out[2].weight.abs().sum() > 0


@pytest.mark.parametrize("case", ["brownian reference", "ipf_tol = 0"])
def test_a_reference_short_of_the_prior_or_ipf_tol_0_alternates(tmp_path, capfd, case):
    reference = {"kind": "brownian", "eps": 1.0} if case == "brownian reference" else None
    res, phases, err = _generative_run(tmp_path, capfd, reference, ipf_tol=0.0 if case == "ipf_tol = 0" else 1e-3)
    assert phases == {0.0, 1.0, 2.0}
    assert "converged" not in err
