"""SGM end to end on Gaussian data, against the exact score and the exact density."""

import numpy as np
import pytest
import torch

from sbdiff import Config, fit

from conftest import GaussianData, stderr
from sbdiff.references import VP


@pytest.fixture(scope="module")
def trained():
    data = GaussianData([1.0, -2.0], [[2.0, 1.2], [1.2, 1.0]], VP())
    cfg = Config()
    cfg.model.hidden, cfg.model.blocks = 64, 2
    # 1000 steps (seeds 0, 1, 2): score error 0.003, NLL gap +0.003, sample mean/cov off by 0.035/0.052 at
    # most, against 0.005, +0.0025, 0.040/0.029 after 1500 (the bounds: 0.02, 0.05, 0.1/0.15)
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr = 1000, 512, 2e-3
    cfg.train.ema_decay = 0.995
    x = data.sample(20000, seed=0).numpy()
    result = fit(cfg, data=x, progress=False)
    return data, result.model


def test_decoder_recovers_the_exact_score(trained):
    data, model = trained
    model = model.double()
    gen = torch.Generator().manual_seed(0)
    x0 = model.to_model(data.sample(20000, seed=1))  # model coordinates: standardised data
    t = model.t_min + (1 - model.t_min) * torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    x_t, _, _ = model.encoder.sample_transition(x0, 0.0, t, generator=gen)
    scale = model.data_scale.double()
    standardized = GaussianData((data.m - model.data_mean.double()) / scale,
                                data.S / torch.outer(scale, scale), data.ref)
    exact = standardized.score(x_t, t)
    learned = model.decoder.score(x_t, t)
    rel = ((learned - exact).pow(2).sum(1).mean() / exact.pow(2).sum(1).mean()).item()
    print(f"relative score error E|s_θ − s|² / E|s|² = {rel:.4f}")
    assert rel < 0.02
    model.float()


def test_nll_matches_exact_cross_entropy_and_nelbo_bounds_it(trained):
    data, model = trained
    x = data.sample(500, seed=2).float()
    nll = -model.log_prob(x, rtol=1e-4, atol=1e-4).double()  # the mean within 3e-4 nats of 1e-5's
    exact = -data.log_prob(x)
    gap = (nll - exact).mean().item()
    nelbo = -model.elbo(x, n_time=64, generator=torch.Generator().manual_seed(0)).double()
    print(f"NLL {nll.mean():.4f}, exact {exact.mean():.4f} (gap {gap:+.4f}), NELBO {nelbo.mean():.4f} ± {stderr(nelbo):.4f}")
    assert abs(gap) < 0.05
    assert nelbo.mean().item() >= nll.mean().item() - 2 * stderr(nelbo - nll)
    assert np.isfinite(nelbo.numpy()).all()


def test_samples_follow_the_data_law(trained):
    data, model = trained
    x = model.sample(5000, nfe=200, generator=torch.Generator().manual_seed(3)).double()
    assert (x.mean(0) - data.m).abs().max() < 0.1
    assert (torch.cov(x.T) - data.S).abs().max() < 0.15
