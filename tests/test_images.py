"""Images: loading and quantisation, the scalar scaling with uniform dequantisation, bits/dim
accounting against closed forms, and an SGM image run end to end (U-Net, load_run, sample grids)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sbdiff import SbdiffError
from sbdiff.cli import main
from sbdiff.config import Config, config_from_dict
from sbdiff.data import ImageInfo, ImageScaling, image_info, load_data, load_images
from sbdiff.decoders import ScoreDecoder
from sbdiff.encoders import FixedEncoder
from sbdiff.evaluation import isotropic_gaussian_nll
from sbdiff.methods import make_method
from sbdiff.model import PathVAE
from sbdiff.nets import UNet
from sbdiff.references import VP

from conftest import GaussianData


# -- loading ------------------------------------------------------------------------------------
def test_digits_are_8x8_images_with_17_levels():
    x, info = load_images("digits")
    assert x.shape == (1797, 64) and info == ImageInfo((1, 8, 8), 17, 16.0)
    assert np.array_equal(x, np.round(x)) and x.min() == 0 and x.max() == 16
    assert image_info("digits") == info and image_info("moons").image_shape is None
    assert np.array_equal(load_data("digits"), x)


@pytest.mark.parametrize(
    "arr, shape, levels, max_value",
    [
        (np.random.default_rng(0).integers(0, 256, (5, 6, 4)).astype(np.uint8), (1, 6, 4), 256, 255.0),
        (np.random.default_rng(1).integers(0, 10, (5, 3, 4, 4)), (3, 4, 4), 10, 9.0),  # int64 0..9
        (np.random.default_rng(2).integers(0, 256, (5, 1, 4, 4)) / 255.0, (1, 4, 4), 256, 1.0),  # 8-bit floats
        (np.random.default_rng(3).random((5, 4, 4)), (1, 4, 4), 0, 1.0),  # continuous floats
        (np.random.default_rng(4).random((5, 4, 4)) > 0.5, (1, 4, 4), 2, 1.0),  # binary
        (np.random.default_rng(5).integers(0, 17, (5, 8, 8)).astype(np.float64), (1, 8, 8), 17, 16.0),
    ],
)
def test_user_images(tmp_path, arr, shape, levels, max_value):
    path = str(tmp_path / "im.npy")
    np.save(path, arr)
    x, info = load_images(path)
    assert info == ImageInfo(shape, levels, max_value) and image_info(path) == info
    assert x.shape == (5, math.prod(shape)) and x.dtype == np.float64
    assert np.array_equal(x, np.asarray(arr, np.float64).reshape(5, -1))  # row-major C, H, W
    np.savez(tmp_path / "im.npz", data=arr)
    assert image_info(str(tmp_path / "im.npz")) == info
    assert np.array_equal(load_data(path), x)


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.full((3, 4, 4), np.nan), "NaN or inf"),
        (np.zeros((0, 4, 4)), "empty"),
        (np.zeros((1, 4, 4)), "at least 2 samples"),
        (np.zeros((3, 2, 2, 2, 2)), r"\(N, C, H, W\) or \(N, H, W\), got shape \(3, 2, 2, 2, 2\)"),
        (-np.ones((3, 4, 4), np.int64), "integer-valued images must be >= 0"),
        (np.full((3, 4, 4), 1.5), r"float images must lie in \[0, 1\]"),
    ],
)
def test_bad_images(tmp_path, arr, message):
    path = str(tmp_path / "bad.npy")
    np.save(path, arr)
    with pytest.raises(SbdiffError, match=message):
        load_images(path)


def test_not_images(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((4, 3)))
    with pytest.raises(SbdiffError, match=r"images must be a .npy/.npz array of shape \(N, C, H, W\)"):
        load_images(str(tmp_path / "v.npy"))
    with pytest.raises(SbdiffError, match="not an image data set"):
        load_images("moons")
    with pytest.raises(SbdiffError, match="data file not found"):
        load_images(str(tmp_path / "none.npy"))


# -- scaling and dequantisation --------------------------------------------------------------------
@pytest.mark.parametrize("levels, max_value", [(17, 16.0), (256, 255.0), (256, 1.0), (2, 1.0)])
def test_scaling_maps_cells_onto_the_unit_cube(levels, max_value):
    s = ImageScaling(levels, max_value)
    step = max_value / (levels - 1)
    assert s.step == pytest.approx(step)
    grid = np.arange(levels) * step
    assert s.to_model(grid[0]) == pytest.approx(-1.0)
    assert s.to_model(grid[-1] + step) == pytest.approx(1.0)  # the top cell ends at +1
    # each cell [kΔ, (k+1)Δ) goes onto [2k/L − 1, 2(k+1)/L − 1)
    assert np.allclose(s.to_model(grid), 2 * np.arange(levels) / levels - 1)


def _image_config(levels=17, shape="1x8x8", data="digits", **model):
    raw = {"data": {"data": data, "image_shape": shape}, "model": {"unet_channels": 8, **model}}
    if levels:
        raw["data"].update(levels=levels, dequantize="uniform")
    return config_from_dict(raw).validate()


def test_dequantised_training_batches_fill_the_cells():
    cfg = _image_config()
    x = load_data("digits")
    model = make_method(cfg).build(x)
    assert isinstance(model.decoder.net, UNet) and model.image_shape == (1, 8, 8)
    assert model.dequant_step == 1.0
    y = model.to_model(torch.as_tensor(x[:200], dtype=torch.float32))
    yd = model.dequantize_model(y, generator=torch.Generator().manual_seed(0))
    assert yd.min() >= -1 and yd.max() < 1
    back = model.to_data(yd)
    assert torch.equal(torch.floor(back), torch.as_tensor(x[:200], dtype=torch.float32))  # same cell
    frac = (back - torch.floor(back)).flatten()
    assert abs(float(frac.mean()) - 0.5) < 0.01 and abs(float(frac.var()) - 1 / 12) < 0.005  # U[0, 1)


def test_config_resolves_images_and_rejects_bad_keys(tmp_path):
    cfg = config_from_dict({"data": {"data": "digits"}}).validate()
    assert (cfg.data.image_shape, cfg.data.dequantize, cfg.data.levels, cfg.data.max_value) == \
        ("1x8x8", "uniform", 17, 16.0)
    assert cfg.data.shape() == (1, 8, 8)
    assert (cfg.train.batch_size, cfg.train.ema_decay) == (128, 0.995)  # image defaults for auto
    kept = config_from_dict({"data": {"data": "digits"}, "train": {"batch_size": 64}}).validate()
    assert kept.train.batch_size == 64
    explicit = config_from_dict({"data": {"data": "digits", "image_shape": "1x8x8"}}).validate()
    assert explicit.train.batch_size == Config().train.batch_size and explicit.data.levels == 17
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((4, 3, 4, 4)))
    cfg = config_from_dict({"data": {"data": str(tmp_path / "c.npy")}}).validate()
    assert (cfg.data.image_shape, cfg.data.dequantize, cfg.data.max_value) == ("3x4x4", "none", 1.0)
    vec = Config().validate()
    assert vec.data.image_shape == "none" and vec.data.dequantize == "none"
    for raw, message in [
        ({"data": {"image_shape": "8x8"}}, "data.image_shape must be auto, none or CxHxW"),
        ({"data": {"dequantize": "gauss"}}, "data.dequantize must be auto, uniform or none"),
        ({"data": {"dequantize": "uniform"}}, "applies to image data"),
        ({"data": {"levels": 1}}, "data.levels must be 0"),
        ({"model": {"net": "unet"}}, "model.net = unet needs image data"),
        ({"model": {"net": "cnn"}}, "model.net must be auto, mlp, unet or window"),
        ({"model": {"unet_mult": "1,x"}}, "model.unet_mult must be comma-separated"),
        ({"model": {"unet_channels": 0}}, "model.unet_channels >= 1"),
        ({"data": {"data": str(tmp_path / "c.npy"), "dequantize": "uniform"}}, "not integer-valued; set data.levels"),
    ]:
        with pytest.raises(SbdiffError, match=message):
            config_from_dict(raw).validate()


def test_network_follows_the_data_shape():
    x = load_data("digits")
    assert isinstance(make_method(_image_config(net="mlp")).build(x).decoder.net, torch.nn.Module)
    assert not isinstance(make_method(_image_config(net="mlp")).build(x).decoder.net, UNet)
    assert not isinstance(make_method(Config().validate()).build(np.zeros((3, 2))).decoder.net, UNet)
    with pytest.raises(SbdiffError, match="does not match the data's dimension"):
        make_method(_image_config(shape="1x4x4")).build(x)


def test_flat_round_trip_through_the_model():
    cfg = _image_config()
    x = load_data("digits")
    model = make_method(cfg).build(x).eval()
    imgs = torch.as_tensor(x[:6], dtype=torch.float32).reshape(6, 1, 8, 8)
    flat = imgs.reshape(6, 64)
    assert torch.allclose(model.to_data(model.to_model(flat)), flat)
    assert model.as_images(flat).shape == (6, 1, 8, 8) and torch.equal(model.as_images(flat), imgs)
    g = torch.Generator().manual_seed(0)
    s = model.sample(3, nfe=4, generator=g)
    assert s.shape == (3, 64) and model.as_images(s).shape == (3, 1, 8, 8)
    traj = model.decode(model.sample_prior(2, generator=g), nfe=3, ode=True, trajectory=True)
    assert model.as_images(traj).shape == (4, 2, 1, 8, 8)
    dq = model.dequantize(flat, generator=g)
    lp_flat = model.log_prob(dq, generator=torch.Generator().manual_seed(1), exact=False)
    lp_img = model.log_prob(dq.reshape(6, 1, 8, 8), generator=torch.Generator().manual_seed(1), exact=False)
    assert torch.allclose(lp_flat, lp_img)


# -- bits/dim against closed forms ---------------------------------------------------------------
def _exact_image_model(gdata, scaling: ImageScaling, t_min=1e-3):
    """A float64 PathVAE with the exact score of ``gdata`` (model coordinates) and the image scaling."""
    ref = gdata.ref
    d = gdata.d
    return PathVAE(FixedEncoder(ref), ScoreDecoder(ref, gdata.score, parametrization="score"), d, t_min,
                   torch.full((d,), scaling.center), torch.full((d,), scaling.scale),
                   image_shape=(1, 1, d), dequant_step=scaling.step).double()


@pytest.mark.parametrize("levels, max_value", [(6, 5.0), (6, 1.0)])  # Δ = 1 and Δ = 1/5
def test_bits_per_dim_matches_the_discrete_bound_in_closed_form(levels, max_value):
    """A Gaussian model of dequantised data (PF-ODE with the exact score): ``bits_per_dim`` of its NLL
    equals the dequantisation bound ``E[−log p_y(y)]/D + log L`` (bits) computed directly in the
    unit-cube units ``y = (k + u)/L``, and that bound lies above the exact ``−log₂ P(k)/D``."""
    scaling = ImageScaling(levels, max_value)
    t_min = 1e-3
    ref = VP()
    gdata = GaussianData([0.1, -0.2], [[0.16, 0.0], [0.0, 0.09]], ref)
    model = _exact_image_model(gdata, scaling, t_min)
    # the model's density at t_min is the Gaussian diffused to t_min (closed form, model coordinates)
    mean, cov = gdata.moments(torch.tensor([t_min], dtype=torch.float64))
    mean, cov = mean[0], cov[0]
    gen = torch.Generator().manual_seed(0)
    k = torch.tensor([[2, 3], [3, 2], [1, 2], [2, 2], [3, 1]], dtype=torch.float64)  # level indices
    x = k * scaling.step
    xd = model.dequantize(x.repeat(8, 1), generator=gen)  # 8 noise draws per grid point
    nll = -model.log_prob(xd, exact=True, rtol=1e-7, atol=1e-7)
    bpd = float(model.bits_per_dim(nll.mean()))
    # direct: y in [0, 1)^D, model coordinate 2y − 1, density p_y(y) = 2^D N(2y − 1)
    y = xd / (levels * scaling.step)
    dist = torch.distributions.MultivariateNormal(mean, cov)
    log_py = dist.log_prob(2 * y - 1) + 2 * math.log(2.0)
    # the PF-ODE model's log-density is log q_{t_min} plus the prior's mismatch at T (N(0, I) is not
    # exactly q_T), evaluated at the ODE's end point y_T
    y_T = model.encode(xd, ode=True, solver="dopri5")
    mT, cT = gdata.moments(torch.tensor([ref.T], dtype=torch.float64))
    mismatch = (ref.prior_logp(y_T) - torch.distributions.MultivariateNormal(mT[0], cT[0]).log_prob(y_T)).mean()
    direct = float(((-log_py.mean() - mismatch) / 2 + math.log(levels)) / math.log(2.0))
    assert bpd == pytest.approx(direct, abs=1e-6)
    # the exact discrete probability of each cell (diagonal covariance: product of 1-D masses)
    lo = (2 * k / levels - 1 - mean) / cov.diagonal().sqrt()
    hi = (2 * (k + 1) / levels - 1 - mean) / cov.diagonal().sqrt()
    log_P = np.log(norm.cdf(hi.numpy()) - norm.cdf(lo.numpy())).sum(1)
    exact_bpd = float(-log_P.mean() / 2 / math.log(2.0))
    # Jensen's bound: each grid point's expected −log p over its cell is >= −log P; check with the
    # closed-form density on a fine quadrature of every cell (no Monte Carlo noise)
    u = (torch.arange(400, dtype=torch.float64) + 0.5) / 400
    uu = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    quad = [float(-(dist.log_prob(2 * (kk + uu) / levels - 1) + 2 * math.log(2.0)).mean()) for kk in k]
    quad_bpd = (np.mean(quad) / 2 + math.log(levels)) / math.log(2.0)
    assert quad_bpd >= exact_bpd
    assert quad_bpd - exact_bpd < 0.05  # small cells against the Gaussian's width: a tight bound
    assert abs(bpd - quad_bpd) < 0.1  # the Monte Carlo estimate of the same bound (8 draws per point)


def test_isotropic_gaussian_baseline_is_the_closed_form():
    rng = np.random.default_rng(0)
    fit_x = rng.normal(size=(500, 6)) * 2 + 1
    ev = rng.normal(size=(7, 6))
    mu, s2 = fit_x.mean(0), ((fit_x - fit_x.mean(0)) ** 2).mean()
    expected = -torch.distributions.MultivariateNormal(
        torch.as_tensor(mu), torch.eye(6, dtype=torch.float64) * s2).log_prob(torch.as_tensor(ev)).numpy()
    assert np.allclose(isotropic_gaussian_nll(fit_x, ev), expected)


# -- end to end --------------------------------------------------------------------------------------
IMAGE_METHODS = {"sgm": "", "vsdm": "[vsdm]\nwarmup = 2\ninterval = 2\npaths = 4\npath_steps = 3\n"}


@pytest.mark.parametrize("method", list(IMAGE_METHODS))
def test_image_run_end_to_end(tmp_path, capsys, method):
    from PIL import Image

    from sbdiff.train import load_run

    rng = np.random.default_rng(0)
    imgs = np.zeros((64, 8, 8), np.uint8)
    imgs[:, 2:6, 2:6] = rng.integers(100, 256, (64, 1, 1))  # bright squares on black
    np.save(tmp_path / "sq.npy", imgs)
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(
        f'method = "{method}"\n[data]\ndata = "{tmp_path / "sq.npy"}"\n[model]\nunet_channels = 8\ntime_dim = 16\n'
        "[train]\nsteps = 6\nbatch_size = 16\nlog_every = 3\n[sample]\nnfe = 5\n" + IMAGE_METHODS[method])
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "--quiet"]) == 0
    for name in ("samples.png", "trajectories.png"):
        assert Image.open(run / name).size[0] > 50
    cfg, model = load_run(run)
    assert cfg.data.image_shape == "1x8x8" and cfg.data.levels == 256 and cfg.data.dequantize == "uniform"
    assert isinstance(model.decoder.net, UNet) and model.image_shape == (1, 8, 8) and model.dequant_step == 1.0
    if method == "vsdm":  # the diagonal encoder, updated at steps 2 and 4
        assert model.encoder.family == "diagonal" and float(model.encoder.log_d.abs().max()) > 0
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "--n", "5", "--out", str(out), "--nfe", "4", "--png", str(tmp_path / "g.png"),
                 "--quiet"]) == 0
    s = np.load(out)
    assert s.shape == (5, 1, 8, 8) and s.dtype == np.float32
    assert (tmp_path / "g.png").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "8", "--samples", "8", "--nfe", "4", "--quiet",
                 "--json", str(tmp_path / "e.json")]) == 0
    import json

    res = json.loads((tmp_path / "e.json").read_text())
    for key in ("nll_bpd", "nelbo_bpd", "gauss_bpd"):
        assert math.isfinite(res[key]) and res[key] > 0
    assert res["dequant_step"] == 1.0
