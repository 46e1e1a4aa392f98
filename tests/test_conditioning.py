"""Conditional generation (DESIGN §4.6): the context through networks, objectives, samplers and the
trainer; the conditional likelihood against a closed form; classifier-free guidance."""

import math

import numpy as np
import pytest
import torch

from sbdiff import SbdiffError
from sbdiff.conditioning import check_labels, load_training_set, resolve_context
from sbdiff.config import Config
from sbdiff.methods import make_method
from sbdiff.nets import TimeMLP, UNet
from sbdiff.train import fit


def _gaussian_pairs(n, rng):
    """``c ~ N(0, 1)`` and ``x | c ~ N(A c + b, S)`` in 2-D: the conditional density in closed form."""
    A = np.array([[1.5], [-1.0]])
    b = np.array([0.5, 0.0])
    L = np.array([[0.5, 0.0], [0.3, 0.4]])
    c = rng.normal(size=(n, 1))
    x = c @ A.T + b + rng.normal(size=(n, 2)) @ L.T
    S = L @ L.T
    r = x - (c @ A.T + b)
    logp = -0.5 * np.einsum("ni,ij,nj->n", r, np.linalg.inv(S), r) - 0.5 * np.log(np.linalg.det(2 * np.pi * S))
    return x, c, logp


def test_conditional_sgm_log_prob_matches_the_closed_form_conditional_density():
    """Jointly Gaussian ``(x, c)``: the trained conditional SGM's PF-ODE ``log p(x | c)`` on held-out
    pairs is the closed-form conditional density within 0.1 nats (mean over 400 points; the
    unconditional density of ``x`` is ~1 nat lower, so a model that ignored ``c`` would fail)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, c, _ = _gaussian_pairs(10_000, rng)
    cfg = Config(method="sgm", seed=0)
    cfg.train.steps = 600  # -0.020 / -0.023 / -0.013 nats on seeds 0, 1, 2; without c the gap is > 0.5 (below)
    cfg.train.batch_size = 256
    cfg.train.ema_decay = 0.98
    cfg.model.hidden = 64
    cfg.model.blocks = 2
    cfg.cond.p_uncond = 0.0
    model = fit(cfg, None, data=x, context=c, progress=False).model
    assert cfg.cond.kind == "vector" and cfg.cond.size == 1
    xt, ct, true = _gaussian_pairs(400, np.random.default_rng(1))
    # the ODE at rtol = atol = 1e-4: the mean within 5e-4 nats of 1e-5's, at a fifth of the cost
    lp = model.log_prob(torch.tensor(xt, dtype=torch.float32), cond=ct, rtol=1e-4, atol=1e-4).double().numpy()
    assert abs(lp.mean() - true.mean()) < 0.1, (lp.mean(), true.mean())
    marginal = np.cov(np.concatenate([x, xt]).T)  # the unconditional Gaussian fit, for scale
    r = xt - x.mean(0)
    logp_x = (-0.5 * np.einsum("ni,ij,nj->n", r, np.linalg.inv(marginal), r)
              - 0.5 * np.log(np.linalg.det(2 * np.pi * marginal)))
    assert true.mean() - logp_x.mean() > 0.5


def _sgm(cfg, data, context=None):
    from sbdiff.conditioning import resolve_context

    resolve_context(cfg, data, context)
    method = make_method(cfg)
    return method, method.build(data)


def test_p_uncond_one_is_the_unconditional_model():
    """Every context dropped (``p_uncond = 1``): the conditional model's loss on a batch equals the
    unconditional model's with the same weights, and training gives the unconditional run's weights
    bit for bit (the null context embeds to exactly 0, the drop mask has its own random stream)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    labels = rng.integers(0, 3, 500)
    cfg_u, cfg_c = Config(method="sgm"), Config(method="sgm")
    for cfg in (cfg_u, cfg_c):
        cfg.model.hidden = 32
        cfg.train.steps = 30
        cfg.train.batch_size = 64
        cfg.train.warmup = 1
    cfg_c.cond.p_uncond = 1.0
    method_u, model_u = _sgm(cfg_u, x)
    method_c, model_c = _sgm(cfg_c, x, labels)
    torch.nn.init.normal_(model_u.decoder.net.out[-1].weight, std=0.1)  # a network that is not zero
    missing, unexpected = model_c.load_state_dict(model_u.state_dict(), strict=False)
    assert not unexpected and missing and all(".context." in k for k in missing)
    batch = model_u.to_model(torch.tensor(x[:64], dtype=torch.float32))
    c = model_c.context_to_model(labels[:64])
    dropped = model_c.drop_context(c, torch.ones(64, dtype=torch.bool))
    with torch.no_grad():
        lu = method_u.losses(model_u, batch, torch.Generator().manual_seed(3))["loss"]
        lc = method_c.losses(model_c, batch, torch.Generator().manual_seed(3), context=dropped)["loss"]
        lk = method_c.losses(model_c, batch, torch.Generator().manual_seed(3), context=c)["loss"]
    assert torch.equal(lu, lc)
    assert not torch.equal(lu, lk)  # a kept context changes the loss (the embedding is not zero)

    ru = fit(cfg_u, None, data=x, progress=False).model
    rc = fit(cfg_c, None, data=x, context=labels, progress=False).model
    cu, cc = ru.state_dict(), rc.state_dict()
    assert all(torch.equal(cu[k], cc[k]) for k in cu)


def test_guidance_combines_the_conditional_and_unconditional_controls():
    """``ẑ_w = (1 + w) ẑ(x, t, c) − w ẑ(x, t, ∅)`` (DESIGN §4.6), and the samplers use it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    cfg = Config(method="sgm")
    cfg.model.hidden = 16
    _, model = _sgm(cfg, x, rng.integers(0, 4, 200))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    y = torch.randn(5, 2)
    t = torch.full((5,), 0.4)
    c = model.context_to_model(np.array([0, 1, 2, 3, 1]))
    dec = model.decoder
    w = 2.5
    expect = (1 + w) * dec.control(y, t, c) - w * dec.control(y, t, None)
    assert torch.allclose(dec.guided_control(y, t, c, w), expect)
    assert not torch.allclose(dec.control(y, t, c), dec.control(y, t, None))
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = model.sample(5, cond=1, guidance=w, nfe=5, generator=gen())
    b = model.sample(5, cond=1, nfe=5, generator=gen())
    assert not torch.allclose(a, b)


def test_networks_given_a_context_and_the_null_context():
    """Both networks take labels and vectors; the null context (``None``, a dropped label, a NaN row)
    is the unconditional network with the same weights; an unconditional network refuses a context."""
    torch.manual_seed(0)
    x, t = torch.randn(4, 64), torch.rand(4)
    for ctx, c, null in ((("label", 3), torch.tensor([0, 1, 2, 1]), torch.tensor([3, 3, 3, 3])),
                         (("vector", 5), torch.randn(4, 5), torch.full((4, 5), float("nan")))):
        for net in (TimeMLP(64, 32, 2, context=ctx), UNet((1, 8, 8), 8, context=ctx)):
            for p in net.parameters():
                torch.nn.init.normal_(p, std=0.2)
            assert torch.equal(net(x, t, null), net(x, t))
            assert not torch.allclose(net(x, t, c), net(x, t))
    with pytest.raises(ValueError):
        TimeMLP(64, 32, 2)(x, t, torch.tensor([0, 1, 2, 1]))


def test_labels_are_checked():
    assert check_labels(np.array([1, 0, 2, 2]), 4).tolist() == [1, 0, 2, 2]
    for bad, n, msg in ((np.array([0, 1]), 3, "2 labels for 3 rows"), (np.array([0.5, 1.0]), 2, "integers"),
                        (np.array([0, 2]), 2, "class 1 has none"), (np.array([-1, 0]), 2, ">= 0"),
                        (np.zeros((2, 2), int), 2, "shape")):
        with pytest.raises(SbdiffError, match=msg):
            check_labels(bad, n)


def test_a_model_checks_its_context():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    _, model = _sgm(Config(method="sgm"), x, rng.integers(0, 3, 50))
    with pytest.raises(SbdiffError, match="never seen"):
        model.sample(2, cond=3, nfe=2)
    with pytest.raises(SbdiffError, match="conditional"):
        model.sample(2, nfe=2)
    with pytest.raises(SbdiffError, match="2 rows for 3"):
        model.log_prob(torch.zeros(3, 2), cond=np.array([0, 1]))
    _, vec = _sgm(Config(method="sgm"), x, rng.normal(size=(50, 4)))
    with pytest.raises(SbdiffError, match=r"shape \(N, 4\)"):
        vec.sample(2, cond=np.zeros((2, 3)), nfe=2)
    with pytest.raises(SbdiffError, match="NaN"):
        vec.sample(1, cond=np.full((1, 4), np.nan), nfe=2)
    _, plain = _sgm(Config(method="sgm"), x)
    with pytest.raises(SbdiffError, match="unconditional"):
        plain.sample(2, cond=1, nfe=2)


def test_config_refuses_conditioning_where_it_cannot_work():
    cfg = Config(method="dsb")
    cfg.cond.labels = "auto"
    with pytest.raises(SbdiffError, match="does not generate under a context"):
        cfg.validate()
    cfg = Config(method="sgm")
    cfg.cond.window, cfg.cond.horizon = 4, 4
    with pytest.raises(SbdiffError, match="horizon H = 4 must be less than the window L = 4"):
        cfg.validate()
    cfg = Config(method="sgm")
    cfg.data.data = "moons"
    cfg.cond.labels = "auto"
    cfg.validate()
    with pytest.raises(SbdiffError, match="carries no labels"):
        load_training_set(cfg)


def test_digits_carry_their_labels_and_series_give_windows():
    cfg = Config(method="sgm")
    cfg.data.data = "digits"
    cfg.cond.labels = "auto"
    x, y = load_training_set(cfg.validate())
    assert x.shape == (1797, 64) and y.shape == (1797,) and set(y.tolist()) == set(range(10))
    cfg = Config(method="vsdm")
    cfg.data.data = "macrodata"
    cfg.cond.window, cfg.cond.horizon = 12, 4
    x, c = load_training_set(cfg.validate())
    assert x.shape[1] == 4 * 3 and c.shape[1] == 8 * 3 and len(x) == len(c)
    resolve_context(cfg, x, c)
    assert (cfg.cond.kind, cfg.cond.size) == ("vector", 24)


@pytest.mark.parametrize("method", ["sgm", "vsdm"])
def test_conditional_training_saves_and_reloads_for_each_conditional_preset(method, tmp_path):
    """A short labelled run of each conditional preset trains, saves and reloads with its context
    (VSDM's encoder update simulates the decoder under drawn training contexts)."""
    from sbdiff.train import load_run

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    labels = rng.integers(0, 2, 300)
    cfg = Config(method=method)
    cfg.model.hidden = 16
    cfg.train.steps = 12
    cfg.train.batch_size = 32
    cfg.train.log_every = 4
    if method == "vsdm":
        cfg.vsdm.warmup, cfg.vsdm.interval, cfg.vsdm.paths, cfg.vsdm.path_steps = 4, 4, 16, 5
    res = fit(cfg, tmp_path / "run", data=x, context=labels, progress=False)
    assert math.isfinite(res.last["loss"])
    _, model = load_run(tmp_path / "run")
    assert model.context == ("label", 2)
    out = model.sample(4, cond=1, nfe=3)
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_series_runs_default_to_a_short_step_budget():
    """A series run trains 500 steps unless told otherwise (``config.SERIES_DEFAULTS``: longer runs
    memorise the few training windows), VSDM updating its encoder within them; ``--max-minutes``
    alone keeps that cap for a series run and replaces the step budget otherwise."""
    from sbdiff.cli import build_parser, build_train_config

    cfg = Config(method="vsdm")
    cfg.data.data = "macrodata"
    cfg.cond.window, cfg.cond.horizon = 12, 4
    cfg.validate()
    assert cfg.train.steps == 500 and cfg.vsdm.warmup == 200 and cfg.vsdm.interval == 100
    assert Config(method="vsdm").validate().train.steps == 20_000
    args = build_parser().parse_args(["train", "--data", "macrodata", "--window", "12", "--horizon", "4",
                                      "--max-minutes", "2"])
    assert build_train_config(args).train.steps == 500
    args = build_parser().parse_args(["train", "--data", "moons", "--max-minutes", "2"])
    assert build_train_config(args).train.steps == 0
