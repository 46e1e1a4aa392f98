"""The entropic-OT mixture benchmark (DESIGN §6.2): its closed-form conditional moments against its own
sampler, its exact SB drift simulated against the plan (both pair families), the families' recipes,
and the benchmark harness / CLI."""

import json
import math

import numpy as np
import pytest
import torch

from sbdiff import SbdiffError
from sbdiff.bench import eot, runner
from sbdiff.bench.eot import FAMILIES, EOTPair, make_pair
from sbdiff.cli import main


def empirical_moments(y):
    m = y.mean(1)
    dev = y - m[:, None]
    return m, np.einsum("nsi,nsj->nij", dev, dev) / (y.shape[1] - 1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim, eps", [(2, 0.1), (2, 10.0), (16, 1.0)])
def test_conditional_moments_agree_with_the_sampler(dim, eps, family):
    pair = make_pair(dim, eps, seed=0, family=family)
    x = pair.sample_source(3, seed=1)
    mean, cov = pair.conditional_moments(x)
    n = 20000
    y = pair.sample_conditional(np.repeat(x, n, 0), seed=2).reshape(3, n, dim)
    em, ec = empirical_moments(y)
    sd = np.sqrt(np.einsum("nii->ni", cov))
    assert np.all(np.abs(em - mean) < 5 * sd / math.sqrt(n))
    # standard error of a covariance entry: sqrt((C_ii C_jj + C_ij²)/n), non-Gaussian tails: factor 2
    se = np.sqrt((sd[:, :, None] ** 2 * sd[:, None, :] ** 2 + cov**2) / n)
    assert np.all(np.abs(ec - cov) < 2 * 5 * se)
    g = pair.component_probs(x)
    assert np.allclose(g.sum(1), 1) and g.shape == (3, 5)


@pytest.mark.parametrize("family", FAMILIES)
def test_component_formulas(family):
    pair = make_pair(3, 0.5, seed=4, family=family)
    S, eps = pair.potential_covs, pair.eps
    lam = pair.component_covs()
    assert np.allclose(lam, np.linalg.inv(np.linalg.inv(S) + np.eye(3) / eps))
    x = pair.sample_source(4, seed=0)
    mu = pair._component_means(x)
    for k in range(5):
        want = (lam[k] @ (np.linalg.solve(S[k], pair.potential_means[k])[:, None] + x.T / eps)).T
        assert np.allclose(mu[k], want)


@pytest.mark.parametrize("family", FAMILIES)
def test_drift_is_eps_times_the_gradient_of_the_log_potential(family):
    pair = make_pair(4, 1.0, seed=2, family=family)
    x = torch.tensor(pair.sample_source(6, seed=3), requires_grad=True)
    t = torch.tensor([0.0, 0.2, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    drift = pair.drift(x.detach(), t)
    h = 1e-6
    fd = np.zeros((6, 4))
    xn = x.detach().numpy()
    for i in range(4):
        e = np.zeros(4)
        e[i] = h
        fd[:, i] = (pair.log_potential(xn + e, t.numpy()) - pair.log_potential(xn - e, t.numpy())) / (2 * h)
    assert drift.dtype == torch.float64
    assert np.allclose(drift.numpy(), pair.eps * fd, atol=1e-6)


@pytest.mark.parametrize("family, dim, eps", [("rotated", 2, 1.0), ("rotated", 2, 0.1), ("rotated", 8, 1.0),
                                               ("draft-recipe", 2, 0.1), ("draft-recipe", 8, 1.0)])
def test_exact_drift_simulated_reproduces_the_plan(family, dim, eps):
    """Euler–Maruyama of dX = v*(X, t) dt + √eps dW from fixed x0 ends at π*(·|x0). 200 steps: their
    bias against 800 steps on the same Brownian paths is at most 0.0006 sd in the means and 0.01 sd² in
    the covariances over these cases, a thirtieth and a fifteenth of the allowances below."""
    pair = make_pair(dim, eps, seed=0, family=family)
    x0 = pair.sample_source(3, seed=5)
    n, steps = 4000, 200
    rng = np.random.default_rng(6)
    x = np.repeat(x0, n, 0)
    dt = 1.0 / steps
    for k in range(steps):
        x = x + pair.drift(x, k * dt) * dt + math.sqrt(eps * dt) * rng.standard_normal(x.shape)
    em, ec = empirical_moments(x.reshape(3, n, dim))
    mean, cov = pair.conditional_moments(x0)
    sd = np.sqrt(np.einsum("nii->ni", cov))
    # Monte Carlo (5 standard errors) plus the O(dt) Euler bias, in units of the conditional scale
    assert np.all(np.abs(em - mean) < 5 * sd / math.sqrt(n) + 0.02 * sd)
    assert np.all(np.abs(ec - cov) < 0.15 * sd[:, :, None] * sd[:, None, :] + 0.02 * eps)


def test_rotated_pair_is_reproducible_and_follows_its_recipe():
    a, b = make_pair(16, 1.0, seed=3, family="rotated"), make_pair(16, 1.0, seed=3, family="rotated")
    assert np.array_equal(a.potential_means, b.potential_means) and np.array_equal(a.source_covs, b.source_covs)
    c = make_pair(16, 10.0, seed=3, family="rotated")
    assert np.array_equal(a.source_means, c.source_means)  # the source does not depend on eps
    assert not np.allclose(a.potential_means, c.potential_means)
    assert a.n_components == (3, 5) and np.allclose(a.source_weights, 1 / 3)
    lam = np.linalg.eigvalsh(a.potential_covs)
    assert lam.min() >= 0.1 - 1e-9 and lam.max() <= 1.0 + 1e-9
    # target moments (Rao–Blackwellised) agree with raw target samples
    m, C = a.target_moments(n_ref=50_000)
    y = a.sample_target(50_000, seed=9)
    assert abs(y.mean(0) - m).max() < 5 * math.sqrt(C.diagonal().max() / 50_000) * 1.5
    assert abs(np.trace(np.cov(y.T)) - np.trace(C)) < 0.03 * np.trace(C)


def test_rotated_family_is_unchanged():
    """The rotated draw is sbdiff's first: the same numbers per seed as before the families (values
    of make_pair(3, 0.5, seed=4) at commit bc4ffeb)."""
    p = make_pair(3, 0.5, seed=4, family="rotated")
    assert p.family == "rotated" and np.allclose(p.source_weights, 1 / 3)
    assert np.allclose(p.source_means.ravel(), [0.655689080449084, -0.9579680129952295, -1.457285456178675,
                                                -0.43243965925367434, 0.46082526468832485, 0.793373235842584,
                                                1.7765895705730066, 1.0194285276576722, 1.1241170192571937],
                       rtol=1e-13, atol=0)
    assert np.allclose(p.potential_weights, [0.14664194769267014, 0.2528119671524052, 0.18625483294150866,
                                             0.19492432780037977, 0.21936692441303626], rtol=1e-13, atol=0)
    assert np.allclose(p.source_covs[1].ravel(), [0.9478400483604592, -0.00690811578574765, -0.017785760589028435,
                                                  -0.00690811578574765, 0.9417211761076646, -0.046424042606467625,
                                                  -0.017785760589028435, -0.046424042606467625, 0.8963807968230182],
                       rtol=0, atol=1e-12)
    assert np.allclose(p.potential_covs[4].ravel(), [0.6138832537231879, -0.14616124379139173, 0.1844432985385304,
                                                     -0.14616124379139173, 0.5041717138997184, -0.23850316464094418,
                                                     0.1844432985385304, -0.23850316464094418, 0.33471720240315445],
                       rtol=0, atol=1e-12)


@pytest.mark.parametrize("dim, eps, pot_var", [(2, 1.0, 0.25**2), (16, 0.1, 0.5**2), (64, 0.1, 4.0**2),
                                               (32, 10.0, 1.0**2)])
def test_draft_recipe_follows_the_authors_recipe(dim, eps, pot_var):
    """GaussianMixtureDraft.ipynb: source 3 × N(grid·2, 0.5² I), potential 5 × N(grid, (0.5 s)² I),
    s = s(eps, D) of its table, weights U(0, 1) normalised; the grids permuted per coordinate."""
    p = make_pair(dim, eps, seed=1)
    assert p.family == "draft-recipe" and p.n_components == (3, 5)
    assert np.array_equal(p.source_covs, np.broadcast_to(0.25 * np.eye(dim), (3, dim, dim)))
    assert np.allclose(p.potential_covs, np.broadcast_to(pot_var * np.eye(dim), (5, dim, dim)), rtol=1e-15, atol=0)
    # every coordinate of the centres is a permutation of the centred grid
    assert np.array_equal(np.sort(p.source_means, axis=0), np.tile([[-2.0], [0.0], [2.0]], (1, dim)))
    assert np.array_equal(np.sort(p.potential_means, axis=0), np.tile(np.arange(-2.0, 3.0)[:, None], (1, dim)))
    for w in (p.source_weights, p.potential_weights):
        assert np.all((w > 0) & (w < 1)) and math.isclose(w.sum(), 1.0)
    assert np.ptp(p.source_weights) > 1e-3  # unequal, as in the draft (not 1/3 each)


def test_draft_recipe_is_reproducible_and_splits_source_and_potential():
    a, b = make_pair(16, 1.0, seed=3), make_pair(16, 1.0, seed=3, family="draft-recipe")
    for name in ("source_weights", "source_means", "potential_weights", "potential_means", "potential_covs"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = make_pair(16, 10.0, seed=3)  # the source depends on (D, seed) only, the potential on eps too
    assert np.array_equal(a.source_means, c.source_means) and np.array_equal(a.source_weights, c.source_weights)
    assert not np.array_equal(a.potential_means, c.potential_means)
    d = make_pair(16, 1.0, seed=4)
    assert not np.array_equal(a.source_means, d.source_means)
    assert not np.array_equal(a.potential_means, d.potential_means)
    r = make_pair(16, 1.0, seed=3, family="rotated")
    assert not np.allclose(a.source_means, r.source_means)
    # target moments (Rao–Blackwellised) agree with raw target samples
    m, C = a.target_moments(n_ref=50_000)
    y = a.sample_target(50_000, seed=9)
    assert abs(y.mean(0) - m).max() < 5 * math.sqrt(C.diagonal().max() / 50_000) * 1.5
    assert abs(np.trace(np.cov(y.T)) - np.trace(C)) < 0.03 * np.trace(C)


def test_draft_scale_off_its_table():
    """Tabulated (eps, D): the draft's values; elsewhere the eps nearest in log scale and the largest
    tabulated D below."""
    assert [eot._draft_scale(d, 0.1) for d in (2, 4, 8, 16, 32, 64, 128)] == [0.5, 0.5, 1, 1, 4, 8, 8]
    assert [eot._draft_scale(d, 1.0) for d in (2, 16, 32, 128)] == [0.5, 1, 2, 2]
    assert eot._draft_scale(1, 1.0) == 0.5 and eot._draft_scale(3, 1.0) == 0.5 and eot._draft_scale(100, 0.1) == 8
    assert eot._draft_scale(500, 0.1) == 8 and eot._draft_scale(40, 0.3) == 4 and eot._draft_scale(40, 0.4) == 2
    assert eot._draft_scale(40, 1e-3) == 4 and eot._draft_scale(40, 1e3) == 2
    p = make_pair(3, 0.5, seed=0)
    assert np.allclose(p.potential_covs, 0.25**2 * np.eye(3))


@pytest.mark.parametrize("call, match", [
    (lambda: make_pair(0, 1.0), "dim must be an integer >= 1"),
    (lambda: make_pair(2.5, 1.0), "dim must be an integer >= 1"),
    (lambda: make_pair(2, 0.0), "eps must be a finite number > 0"),
    (lambda: make_pair(2, -1.0), "eps must be a finite number > 0"),
    (lambda: make_pair(2, 1.0, seed=-1), "seed"),
    (lambda: make_pair(2, 1.0, family="official"), "unknown pair family 'official'; choose from draft-recipe, rotated"),
    (lambda: make_pair(2, 1.0, family=None), "unknown pair family None"),
    (lambda: runner.run_bench("eot", "exact", 2, 1.0, family="Rotated"), "unknown pair family 'Rotated'"),
    (lambda: runner.make_problem("gaussian", 2, 1.0, family="nope"), "unknown pair family 'nope'"),
    (lambda: EOTPair([1.0], [[0.0, 0.0]], [np.eye(2)], [1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], 1.0),
     "potential covariance 0 is not positive definite"),
    (lambda: EOTPair([1.0], [[0.0, 0.0]], [np.eye(2)], [1.0], [[0.0, 0.0, 0.0]], [np.eye(3)], 1.0),
     "dimension 3, the source has 2"),
    (lambda: EOTPair([1.0, -1.0], [[0.0], [1.0]], [np.eye(1)] * 2, [1.0], [[0.0]], [np.eye(1)], 1.0),
     "positive numbers"),
    (lambda: make_pair(2, 1.0).drift(np.zeros((4, 3)), 0.5), r"shape \(n, 2\)"),
    (lambda: make_pair(2, 1.0).drift(np.zeros((4, 2)), -0.1), r"\[0, 1\]"),
])
def test_bad_parameters_get_clear_errors(call, match):
    with pytest.raises(SbdiffError, match=match):
        call()


# -- the harness ---------------------------------------------------------------------------------
def test_cli_bench_exact_writes_a_row(tmp_path, capsys):
    out = tmp_path / "row.json"
    assert main(["bench", "eot", "--dim", "2", "--eps", "0.1", "--n-test", "50", "--n-samples", "200",
                 "--n-marginal", "2000", "--json", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())
    assert row["method"] == "exact" and row["dim"] == 2 and row["eps"] == 0.1
    assert 0 < row["cbw2_uvp"] < 5 and 0 < row["bw2_uvp"] < 5 and row["n_test"] == 50
    assert row["family"] == "draft-recipe"  # the default pairs
    printed = capsys.readouterr().out
    assert "| eot | exact | 2 | 0.1 |" in printed and "| draft-recipe |" in printed and "| pairs |" in printed


def test_cli_bench_family_rotated_is_accepted_and_recorded(tmp_path):
    out = tmp_path / "row.json"
    sizes = dict(n_test=20, n_samples=100, n_marginal=500)
    assert main(["bench", "eot", "--family", "rotated", "--n-test", "20", "--n-samples", "100",
                 "--n-marginal", "500", "--json", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())
    assert row["family"] == "rotated"
    same = runner.run_bench("eot", "exact", 2, 1.0, family="rotated", **sizes)
    assert row["cbw2_uvp"] == same["cbw2_uvp"] and row["bw2_uvp"] == same["bw2_uvp"]
    assert runner.run_bench("eot", "exact", 2, 1.0, **sizes)["cbw2_uvp"] != row["cbw2_uvp"]
    assert runner.run_bench("gaussian", "exact", 2, 1.0, n_test=5, n_samples=20, n_marginal=100)["family"] is None


def test_cli_bench_errors(capsys):
    assert main(["bench", "eot", "--method", "nosuch"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "eot", "--all", "--dim", "2"]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["bench", "gaussian", "--eps", "0"]) == 2
    assert "--eps" in capsys.readouterr().err
    assert main(["bench", "gaussian", "--family", "rotated"]) == 2
    assert "--family chooses the eot pairs" in capsys.readouterr().err
    assert main(["bench", "eot", "--family", "rotated", "--official-dir", "nowhere"]) == 2
    assert "give one" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["bench", "eot", "--family", "official"])
    assert info.value.code == 2 and "invalid choice: 'official'" in capsys.readouterr().err


def test_cli_family_choices_are_the_modules():
    from sbdiff.cli import build_parser

    for family in FAMILIES:
        assert build_parser().parse_args(["bench", "eot", "--family", family]).family == family
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    assert next(a for a in bench._actions if a.dest == "family").choices == FAMILIES


@pytest.fixture
def one_torch_thread():
    # tiny networks: a second thread only adds contention on a shared 2-core machine (measured 10x)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sgm_bench_scores_the_marginal_only(one_torch_thread):
    row = runner.run_bench("gaussian", "sgm", 2, 1.0, steps=40, n_marginal=500, n_train=2000, nfe=20,
                           overrides={"model": {"hidden": 32, "blocks": 1}, "train": {"batch_size": 128}})
    assert row["cbw2_uvp"] is None and "not applicable" in row["cbw2_note"]
    assert row["train_steps"] == 40 and math.isfinite(row["bw2_uvp"]) and row["bw2_uvp"] > 0
    assert runner.format_table([row], header=False)[0].startswith("| gaussian | sgm | 2 | 1 | n/a |")


def test_bridge_hook_scores_decode_as_the_conditional_plan(monkeypatch):
    """A method with ``bridges = True`` is scored through ``model.decode`` on source points; here a
    stand-in whose decode is the exact sampler must score at the noise floor, and one that ignores
    its input must not."""
    pair = make_pair(2, 1.0, seed=0)

    class Exact:
        def __init__(self, shift=None):
            self.shift = shift

        def decode(self, z, nfe=None, generator=None):
            x = z.double().numpy()
            if self.shift is not None:
                x = np.zeros_like(x)
            return torch.as_tensor(pair.sample_conditional(x, int(torch.randint(0, 2**31, (1,), generator=generator))))

    def fake_train(model):
        class Obj:
            bridges = True

            class config:
                class sample:
                    nfe = 10

        class Result:
            steps, seconds = 1, 0.0

        Result.model = model
        return lambda *a, **k: (Obj(), Result())

    sizes = dict(n_test=100, n_samples=400, n_marginal=4000)
    floor = runner.run_bench("eot", "exact", 2, 1.0, **sizes)
    monkeypatch.setattr(runner, "_train", fake_train(Exact()))
    good = runner.run_bench("eot", "dsb", 2, 1.0, **sizes)
    monkeypatch.setattr(runner, "_train", fake_train(Exact(shift=True)))
    bad = runner.run_bench("eot", "dsb", 2, 1.0, **sizes)
    assert good["cbw2_note"] is None and good["cbw2_uvp"] < 3 * floor["cbw2_uvp"] + 0.5
    assert bad["cbw2_uvp"] > 10 * good["cbw2_uvp"]


def test_cli_bench_config_sets_the_training(tmp_path, capsys, one_torch_thread):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[model]\nhidden = 16\nblocks = 1\n[train]\nbatch_size = 64\n")
    out = tmp_path / "row.json"
    assert main(["bench", "gaussian", "--method", "sgm", "--steps", "5", "--n-marginal", "300", "--nfe", "5",
                 "--config", str(cfg), "--json", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())
    assert row["train_steps"] == 5 and row["overrides"] == {"model": {"hidden": 16, "blocks": 1},
                                                             "train": {"batch_size": 64}}
    cfg.write_text("[model]\nwidth = 16\n")
    capsys.readouterr()
    assert main(["bench", "gaussian", "--method", "sgm", "--steps", "5", "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown config key 'model.width'" in err and len(err.splitlines()) == 1
