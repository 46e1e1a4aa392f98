"""VSDM (issue 7): D = I is the VP SGM exactly; the stochastic-approximation update moves the encoder so
that its terminal law approaches the prior (Gaussian data, exact decoder); the schedule, the EMA pairing
and a bit-identical resume; the command line on vectors and images; clear config errors."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sbdiff._utils import SbdiffError
from sbdiff.cli import main
from sbdiff.config import Config, config_from_dict
from sbdiff.methods import make_method
from sbdiff.methods.vsdm import VSDM
from sbdiff.train import fit, load_run, resume_run

from conftest import assert_train_refused

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for this module


def _config(method="vsdm", **vsdm) -> Config:
    cfg = config_from_dict({"method": method, "seed": 3, "data": {"data": "moons", "n_samples": 2000},
                            "model": {"hidden": 32, "blocks": 1, "time_dim": 16},
                            "train": {"batch_size": 64, "log_every": 15, "checkpoint_every": 20,
                                      "checkpoint_minutes": 0.0},
                            "sample": {"nfe": 10}, "vsdm": vsdm})
    return cfg.validate()


def test_identity_encoder_gives_the_sgm_loss_exactly():
    """Same network weights and random numbers: VSDM's loss at D = I is SGM's, bit for bit."""
    data = np.random.default_rng(0).normal(size=(500, 2)) * [2.0, 0.5]
    sgm_m, vsdm_m = make_method(_config("sgm")), make_method(_config())
    sgm, vsdm = sgm_m.build(data), vsdm_m.build(data)
    vsdm.decoder.net.load_state_dict(sgm.decoder.net.state_dict())
    assert vsdm.encoder.family == "full" and not vsdm.encoder.log_d.any()
    batch = sgm.to_model(torch.as_tensor(data[:128], dtype=torch.float32))
    a = sgm_m.losses(sgm, batch, torch.Generator().manual_seed(5))["loss"]
    b = vsdm_m.losses(vsdm, batch, torch.Generator().manual_seed(5))["loss"]
    assert torch.equal(a, b), (a, b)
    b.backward()
    assert vsdm.encoder.log_d.grad is None  # the encoder is not trained by the loop
    assert {id(p) for p in vsdm_m.trainable(vsdm)} == {id(p) for p in vsdm.decoder.parameters()}


class _GaussianScore:
    """The exact score of q_t for data N(0, C0) under the model's current linear encoder."""

    def __init__(self, enc, C0):
        self.enc, self.C0 = enc, C0

    def cov(self, t: float) -> torch.Tensor:
        U, lam = spec = self.enc.spectrum()
        a, v = self.enc.coeffs(0.0, t, torch.zeros(1, 2, dtype=F64), spec)
        M, S = U @ torch.diag(a[0]) @ U.T, U @ torch.diag(v[0]) @ U.T
        return M @ self.C0 @ M.T + S

    def __call__(self, y, t):
        return -y @ torch.linalg.inv(self.cov(float(t[0]))).T  # path_moments uses one time per call


@pytest.mark.parametrize("sa_iters", [1, 3])
def test_stochastic_approximation_moves_the_terminal_law_to_the_prior(sa_iters):
    """Anisotropic Gaussian data N(0, C0) (variances 4 and 1/4, rotated 30°) under a short VP reference
    (beta_max = 2: q_T is far from N(0, I)), exact decoder, ζ = 1: ten updates shrink
    KL(q_T ‖ N(0, I)) more than tenfold, by contracting more along the data's major axis (D > 1 there,
    the eigenvector aligned with it) and less along the minor one (D < 1). The EMA model gets each new
    encoder."""
    th = math.radians(30)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=F64)
    C0 = R @ torch.diag(torch.tensor([4.0, 0.25], dtype=F64)) @ R.T
    cfg = _config(warmup=0, interval=1, paths=2000, path_steps=50, sa_lr=0.5, sa_decay=0.0, interact=1.0,
                  sa_iters=sa_iters)
    cfg.data.normalize = False
    cfg.reference = {"kind": "vp", "beta_max": 2.0}
    cfg.validate()
    method = make_method(cfg)
    data = np.zeros((10, 2))
    model = method.build(data).double()
    exact = _GaussianScore(model.encoder, C0)
    del model.decoder.net
    model.decoder.net, model.decoder.parametrization = exact, "score"

    def kl_to_prior():
        S = exact.cov(1.0)
        return 0.5 * float(torch.trace(S) - 2 - torch.logdet(S))

    before = kl_to_prior()
    for step in range(10):
        method.begin_step(model, step)
    after = kl_to_prior()
    assert before > 0.15 and after < before / 10, (before, after)
    w, U = torch.linalg.eigh(model.encoder.matrix().detach())
    assert w[0] < 0.95 and w[1] > 1.5, w
    assert abs(float(U[:, 1] @ R[:, 0])) > 0.99  # strongest contraction along the data's major axis
    assert method._last["sa_updates"] == 10 and method._last["sa_lr"] == 0.5


def test_schedule_step_sizes_and_freeze():
    m = VSDM(_config(warmup=100, interval=50, freeze=260, sa_lr=0.4, sa_decay=0.75))
    due = [s for s in range(400) if m.update_index(s)]
    assert due == [100, 150, 200, 250]
    assert [m.update_index(s) for s in due] == [1, 2, 3, 4]
    assert m.step_size(1) == 0.4 and math.isclose(m.step_size(16), 0.4 / 8)


def test_resume_is_bit_identical(tmp_path):
    """A run stopped at step 30 and resumed to 60 equals the uninterrupted run: weights, EMA and every
    logged row (SA updates at steps 10, 25, 40, 55: on both sides of the stop)."""
    cfg = _config(warmup=10, interval=15, paths=64, path_steps=10)
    cfg.train.steps = 60
    fit(cfg, tmp_path / "base", progress=False)
    cfg.train.steps = 30
    fit(cfg, tmp_path / "split", progress=False)
    res = resume_run(tmp_path / "split", steps=60, progress=False)
    assert res.resumed_from == 30 and res.steps == 60
    a, b = load_file(str(tmp_path / "base" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    assert set(a) == set(b) and "ema.encoder.log_d" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["model.encoder.log_d"].abs().max() > 0  # the encoder moved
    assert torch.equal(a["model.encoder.log_d"], a["ema.encoder.log_d"])
    rows = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("base", "split")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [15, 30, 45, 60]
    for ra, rb in zip(*rows):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
        assert ra == rb
    # logged values are window means: steps 46-55 saw 3 updates, 56-60 four (the update before step 56)
    assert rows[0][0]["sa_updates"] == 1 and math.isclose(rows[0][-1]["sa_updates"], (10 * 3 + 5 * 4) / 15)


def test_cli_vectors_train_sample_trajectory_eval(tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nhidden = 32\nblocks = 1\ntime_dim = 16\n[train]\nbatch_size = 64\n"
                                     "[sample]\nnfe = 10\n[vsdm]\nwarmup = 5\ninterval = 5\npaths = 32\npath_steps = 8\n")
    data = np.random.default_rng(1).normal(size=(400, 2)) @ np.array([[1.0, 0.8], [0.0, 0.3]])
    np.save(tmp_path / "d.npy", data)
    run = tmp_path / "run"
    assert main(["train", "--method", "vsdm", "--data", str(tmp_path / "d.npy"), "--config", str(tmp_path / "c.toml"),
                 "--steps", "20", "--out", str(run), "--quiet"]) == 0
    cfg, model = load_run(run)
    assert cfg.vsdm.encoder == "full" and model.encoder.log_d.abs().max() > 0
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # window means
    assert last["d_eig_0"] == pytest.approx(last["d_min"]) and last["d_eig_1"] == pytest.approx(last["d_max"])
    assert last["d_eig_0"] < last["d_eig_1"] and {"drift_matching", "prior_loss", "sa_loss"} <= set(last)
    assert main(["sample", str(run), "--n", "16", "--ode", "--trajectory", str(tmp_path / "traj.npy"),
                 "--out", str(tmp_path / "s.npy"), "--quiet"]) == 0
    traj = np.load(tmp_path / "traj.npy")
    assert traj.shape == (11, 16, 2) and np.isfinite(traj).all()
    assert main(["eval", str(run), "--data", str(tmp_path / "d.npy"), "--json", str(tmp_path / "e.json"), "--n", "20",
                 "--quiet"]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert math.isfinite(ev["nll"]) and math.isfinite(ev["nelbo"])


def test_time_varying_encoder_trains_its_time_factor():
    """D_t = I − c(t)(I − D): c gets no gradient while D = I, then moves; the model samples."""
    cfg = _config(time_varying=True, warmup=5, interval=5, paths=64, path_steps=10)
    cfg.train.steps = 16
    res = fit(cfg, None, progress=False)
    enc = res.model.encoder
    assert enc.time_varying and enc.log_d.abs().max() > 0
    assert enc.time_scale.fc2.weight.abs().max() > 0  # c(t) moved (updates at steps 5, 10, 15)
    c = enc.time_factor(torch.linspace(0, 1, 11))
    assert torch.isfinite(c).all() and float(c.max() - c.min()) > 0
    x = res.model.sample(8, nfe=10)
    assert torch.isfinite(x).all()


def test_images_use_the_diagonal_encoder(tmp_path):
    cfg = config_from_dict({"method": "vsdm", "data": {"data": "digits"},
                            "model": {"unet_channels": 8, "time_dim": 16},
                            "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 0, "checkpoint_minutes": 0.0},
                            "sample": {"nfe": 4},
                            "vsdm": {"warmup": 1, "interval": 2, "paths": 4, "path_steps": 3}}).validate()
    assert cfg.vsdm.encoder == "diagonal"
    res = fit(cfg, tmp_path / "run", progress=False)
    enc = res.model.encoder
    assert enc.family == "diagonal" and enc.log_d.shape == (64,) and enc.log_d.abs().max() > 0
    x = res.model.sample(3, nfe=4)
    assert x.shape == (3, 64) and torch.isfinite(x).all()


@pytest.mark.parametrize("section,message", [
    ({"vsdm": {"encoder": "lowrank"}}, "vsdm.encoder must be auto, full, diagonal or isotropic"),
    ({"vsdm": {"sa_decay": 0.3}}, r"vsdm.sa_decay must be 0 \(constant step size\) or lie in \(0.5, 1\]"),
    ({"vsdm": {"sa_lr": 0.0}}, "vsdm.sa_lr must be a finite positive number"),
    ({"vsdm": {"interact": 1.5}}, r"vsdm.interact \(zeta\) must lie in \[0, 1\]"),
    ({"vsdm": {"interval": 0}}, "vsdm.interval must be at least 1"),
    ({"vsdm": {"warmup": -1}}, "vsdm.warmup must be >= 0"),
    ({"reference": {"kind": "ve"}}, "method vsdm needs the VP reference"),
    ({"data": {"prior": "moons"}}, "maps data to the Gaussian prior only"),
])
def test_bad_config_values_are_clear_errors(section, message):
    with pytest.raises(SbdiffError, match=message):
        config_from_dict({"method": "vsdm", **section}).validate()


@pytest.mark.parametrize("args,message", [
    (["--config", "bad_vsdm.toml"], "vsdm.encoder must be auto, full, diagonal or isotropic"),
    (["--data", "nan.npy"], "contain NaN or inf"),
    (["--prior", "moons"], "needs a bridge method"),
    (["--config", "bad_ref.toml"], "method vsdm needs the VP reference"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "bad_vsdm.toml").write_text('[vsdm]\nencoder = "lowrank"\n')
    (tmp_path / "bad_ref.toml").write_text('[reference]\nkind = "ve"\n')
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]))
    assert_train_refused(tmp_path, capsys, "vsdm", args, message)
