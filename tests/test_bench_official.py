"""The official Gushchin et al. (2023) Gaussian-mixture files: read into an EOTPair, their fixed test
points and target variance used by the metrics, and one-line errors for broken files."""

import numpy as np
import pytest
import torch

from sbdiff import SbdiffError
from sbdiff.bench import load_official_pair
from sbdiff.bench.eot import EOTPair, make_pair
from sbdiff.bench.metrics import plan_metrics


def official_params(dim, seed=0):
    """A small pair with the official structure: unequal weights, isotropic covariances s I;
    float32 as their files are."""
    rng = np.random.default_rng([seed, dim])
    eye = np.eye(dim)
    src = {"probs": rng.dirichlet(np.ones(3)), "mus": rng.uniform(-2, 2, (3, dim)),
           "sigmas": np.stack([s * eye for s in rng.uniform(0.2, 1.0, 3)])}
    pot = {"probs": rng.dirichlet(np.ones(5)), "mus": rng.uniform(-2, 2, (5, dim)),
           "sigmas": np.stack([s * eye for s in rng.uniform(0.2, 1.0, 5)])}
    to32 = lambda d: {k: torch.tensor(v, dtype=torch.float32) for k, v in d.items()}  # noqa: E731
    return to32(src), to32(pot)


def write_official(directory, dim, eps_tag, seed=0, test_points=None, y_var=None):
    directory.mkdir(parents=True, exist_ok=True)
    src, pot = official_params(dim, seed)
    for k, t in src.items():
        torch.save(t, directory / f"input_{k}_dim_{dim}.torch")
    for k, t in pot.items():
        torch.save(t, directory / f"potential_{k}_dim_{dim}_eps_{eps_tag}.torch")
    if test_points is not None:
        (directory / "test_inputs").mkdir(exist_ok=True)
        path = directory / "test_inputs" / f"test_data_dim_{dim}.torch"
        torch.save(torch.tensor(test_points, dtype=torch.float32), path)
    if y_var is not None:
        (directory / "y_vars").mkdir(exist_ok=True)
        np.save(directory / "y_vars" / f"y_var_dim_{dim}_eps_{eps_tag}.npy", np.float64(y_var))
    return src, pot


def direct_pair(src, pot, eps):
    f = lambda t: t.numpy().astype(np.float64)  # noqa: E731
    return EOTPair(f(src["probs"]), f(src["mus"]), f(src["sigmas"]), f(pot["probs"]), f(pot["mus"]),
                   f(pot["sigmas"]), eps)


@pytest.mark.parametrize("dim, eps, tag", [(2, 1, "1"), (3, 0.1, "0.1")])
def test_loaded_pair_reproduces_the_parameters(tmp_path, dim, eps, tag):
    src, pot = write_official(tmp_path, dim, tag)
    pair = load_official_pair(tmp_path, dim, eps)
    ref = direct_pair(src, pot, eps)
    assert pair.dim == dim and pair.eps == eps and pair.n_components == (3, 5)
    p = src["probs"].double().numpy()
    assert np.allclose(pair.source_weights, p / p.sum(), rtol=1e-15, atol=0)
    assert np.array_equal(pair.source_means, src["mus"].double().numpy())
    assert np.array_equal(pair.source_covs, src["sigmas"].double().numpy())
    assert np.array_equal(pair.potential_weights, pot["probs"].double().numpy())
    assert np.array_equal(pair.potential_means, pot["mus"].double().numpy())
    assert np.array_equal(pair.potential_covs, pot["sigmas"].double().numpy())
    assert pair.source_means.dtype == np.float64
    x = ref.sample_source(7, seed=1)
    m, c = pair.conditional_moments(x)
    m0, c0 = ref.conditional_moments(x)
    assert np.allclose(m, m0, rtol=1e-12, atol=1e-12) and np.allclose(c, c0, rtol=1e-12, atol=1e-12)
    assert np.allclose(pair.drift(x, 0.3), ref.drift(x, 0.3), rtol=1e-12, atol=1e-12)
    assert pair.test_inputs is None and pair.target_variance is None
    assert pair.official == str(tmp_path.resolve())


def test_eps_spellings_and_the_subfolder_layout(tmp_path):
    write_official(tmp_path / "a", 2, "1")
    write_official(tmp_path / "b", 2, "1.0")
    write_official(tmp_path / "c" / "gaussian_mixture_benchmark_data", 2, "10")
    for eps in (1, 1.0):
        assert load_official_pair(tmp_path / "a", 2, eps).eps == 1.0
        assert load_official_pair(tmp_path / "b", 2, eps).eps == 1.0
    pair = load_official_pair(tmp_path / "c", 2, 10)
    assert pair.eps == 10.0 and pair.official == str((tmp_path / "c" / "gaussian_mixture_benchmark_data").resolve())
    with pytest.raises(SbdiffError, match="potential_probs_dim_2_eps_0.1.torch"):
        load_official_pair(tmp_path / "a", 2, 0.1)


def test_default_directory_from_the_environment(tmp_path, monkeypatch):
    write_official(tmp_path, 2, "1")
    monkeypatch.setenv("EOT_BENCHMARK_DATA", str(tmp_path))
    assert load_official_pair(None, 2, 1).official == str(tmp_path.resolve())


def test_test_inputs_and_target_variance_drive_plan_metrics(tmp_path):
    dim, eps = 2, 1
    rng = np.random.default_rng(5)
    pts = rng.uniform(-2, 2, (20, dim))
    write_official(tmp_path / "full", dim, "1", test_points=pts, y_var=3.5)
    write_official(tmp_path / "double", dim, "1", test_points=pts, y_var=7.0)
    pair = load_official_pair(tmp_path / "full", dim, eps)
    assert pair.test_inputs.shape == (20, dim) and pair.test_inputs.dtype == np.float64
    assert np.array_equal(pair.test_inputs, torch.tensor(pts, dtype=torch.float32).double().numpy())
    assert pair.target_variance == 3.5

    seen = []

    def sampler(x, rng):
        seen.append(np.array(x))
        return pair.sample_conditional(x, rng)

    kw = dict(n_test=1000, n_samples=50, n_marginal=200, seed=0)
    res = plan_metrics(pair, sampler, **kw)
    assert res["n_test"] == 20 and res["n_samples"] == 50
    assert np.array_equal(seen[0][::50], pair.test_inputs)  # the file's points, in order
    # the normaliser is the file's y_var: doubling it halves cBW2-UVP (same draws)
    other = load_official_pair(tmp_path / "double", dim, eps)
    res2 = plan_metrics(other, other.sample_conditional, **kw)
    res1 = plan_metrics(pair, pair.sample_conditional, **kw)
    assert res1["cbw2_uvp"] > 0 and np.isclose(res2["cbw2_uvp"], 0.5 * res1["cbw2_uvp"], rtol=1e-12, atol=0)
    assert res2["bw2_uvp"] == res1["bw2_uvp"]  # BW2-UVP keeps the Rao-Blackwellised moments
    # fewer test points requested: the first n_test of them
    seen.clear()
    res = plan_metrics(pair, sampler, **dict(kw, n_test=5))
    assert res["n_test"] == 5 and np.array_equal(seen[0][::50], pair.test_inputs[:5])
    # without the attributes: sampled test points and tr Cov(p1), as for our own pairs
    pair.test_inputs = pair.target_variance = None
    base = plan_metrics(pair, pair.sample_conditional, **dict(kw, n_test=20))
    ref = direct_pair(*official_params(dim), eps)
    assert base == plan_metrics(ref, ref.sample_conditional, **dict(kw, n_test=20))


def test_our_pairs_have_no_fixed_test_points():
    pair = make_pair(2, 1.0)
    assert pair.test_inputs is None and pair.target_variance is None and not hasattr(pair, "official")


def test_a_row_on_the_official_pair_says_so(tmp_path):
    from sbdiff.bench.runner import run_bench

    write_official(tmp_path, 2, "1")
    row = run_bench("eot", "exact", 2, 1.0, official_dir=tmp_path, n_test=5, n_samples=20, n_marginal=100)
    assert row["family"] == "official" and row["official"] == str(tmp_path)


def _one_line_error(fn, *names):
    with pytest.raises(SbdiffError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and info.value.__cause__ is None
    for name in names:
        assert name in msg, msg
    return msg


def test_broken_directories_and_files_give_one_line(tmp_path):
    dim = 2
    load = lambda d: load_official_pair(d, dim, 1)  # noqa: E731
    _one_line_error(lambda: load(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "directory not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: load(tmp_path / "empty"), "input_probs_dim_2.torch", "source weights")

    def fresh(name):
        d = tmp_path / name
        write_official(d, dim, "1")
        return d

    d = fresh("nopot")
    (d / "potential_mus_dim_2_eps_1.torch").unlink()
    msg = _one_line_error(lambda: load(d), str(d / "potential_mus_dim_2_eps_1.torch"), "potential means")
    assert "potential_mus_dim_2_eps_1.0.torch" in msg  # the other spelling was tried too

    d = fresh("shape")
    torch.save(torch.zeros(3, dim + 1), d / "input_mus_dim_2.torch")
    _one_line_error(lambda: load(d), str(d / "input_mus_dim_2.torch"), "shape (3, 3)", "(3, 2)")

    d = fresh("nan")
    bad = torch.eye(dim).repeat(5, 1, 1)
    bad[2, 0, 0] = float("nan")
    torch.save(bad, d / "potential_sigmas_dim_2_eps_1.torch")
    _one_line_error(lambda: load(d), str(d / "potential_sigmas_dim_2_eps_1.torch"), "NaN")

    d = fresh("garbage")
    (d / "input_sigmas_dim_2.torch").write_bytes(b"\x00not a torch file\xff" * 10)
    _one_line_error(lambda: load(d), str(d / "input_sigmas_dim_2.torch"), "cannot read", "source covariances")

    d = fresh("truncated")
    blob = (d / "potential_mus_dim_2_eps_1.torch").read_bytes()
    (d / "potential_mus_dim_2_eps_1.torch").write_bytes(blob[:len(blob) // 2])
    _one_line_error(lambda: load(d), str(d / "potential_mus_dim_2_eps_1.torch"), "corrupt or truncated")
    (d / "potential_mus_dim_2_eps_1.torch").write_bytes(b"")
    _one_line_error(lambda: load(d), str(d / "potential_mus_dim_2_eps_1.torch"), "cannot read")

    d = fresh("count")
    torch.save(torch.full((4,), 0.25), d / "input_probs_dim_2.torch")
    _one_line_error(lambda: load(d), str(d / "input_mus_dim_2.torch"), "expected (4, 2)", "input_probs_dim_2.torch")

    d = fresh("dict")
    torch.save({"probs": torch.ones(5)}, d / "potential_probs_dim_2_eps_1.torch")
    _one_line_error(lambda: load(d), str(d / "potential_probs_dim_2_eps_1.torch"), "not hold a tensor")
    torch.save(np.ones(5), d / "potential_probs_dim_2_eps_1.torch")  # a pickled numpy array
    msg = _one_line_error(lambda: load(d), str(d / "potential_probs_dim_2_eps_1.torch"))
    assert "cannot read" in msg or "not hold a tensor" in msg

    d = fresh("notspd")
    torch.save(-torch.eye(dim).repeat(3, 1, 1), d / "input_sigmas_dim_2.torch")
    _one_line_error(lambda: load(d), str(d), "positive definite")

    d = fresh("tests")
    (d / "test_inputs").mkdir()
    torch.save(torch.zeros(10, dim + 1), d / "test_inputs" / "test_data_dim_2.torch")
    _one_line_error(lambda: load(d), "test_data_dim_2.torch", "(n, 2)")

    d = fresh("yvar")
    (d / "y_vars").mkdir()
    np.save(d / "y_vars" / "y_var_dim_2_eps_1.npy", np.float64(-1.0))
    _one_line_error(lambda: load(d), "y_var_dim_2_eps_1.npy", "> 0")
    (d / "y_vars" / "y_var_dim_2_eps_1.npy").write_bytes(b"junk")
    _one_line_error(lambda: load(d), "y_var_dim_2_eps_1.npy", "cannot read")
