"""Shared fixtures: Gaussian data with its exact diffused law, and small helpers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# One process per core under pytest-xdist (`make test`: -n auto), each with one intra-op thread;
# two threads in a single process.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors: fastest there, and immune to oversubscribed
    cores (subprocesses that must match a float reduction use the same count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class GaussianData:
    """Data ``N(m, S)`` pushed through a scalar-linear reference: ``q_t = N(α_t m, α_t² S + σ_t² I)``."""

    def __init__(self, m, S, reference):
        self.m = torch.as_tensor(m, dtype=torch.float64)
        self.S = torch.as_tensor(S, dtype=torch.float64)
        self.ref = reference
        self.d = len(self.m)

    def moments(self, t: torch.Tensor):
        """Mean ``(B, d)`` and covariance ``(B, d, d)`` of ``q_t`` at times ``t`` of shape ``(B,)``."""
        ones = torch.ones(t.shape[0], self.d, dtype=torch.float64)
        alpha, std = self.ref.marginal_prob(ones, t)
        a = alpha[:, 0]
        cov = a[:, None, None] ** 2 * self.S + (std**2)[:, None, None] * torch.eye(self.d, dtype=torch.float64)
        return a[:, None] * self.m, cov

    def score(self, x, t):
        t = t if torch.is_tensor(t) and t.ndim else torch.full((x.shape[0],), float(t), dtype=x.dtype)
        t = t.double()
        if bool((t == t[0]).all()):  # one time for the whole batch (samplers): one solve
            mean, cov = self.moments(t[:1])
            return (-torch.linalg.solve(cov[0], (x.double() - mean).T).T).to(x.dtype)
        mean, cov = self.moments(t)
        sol = torch.linalg.solve(cov, (x.double() - mean).unsqueeze(-1)).squeeze(-1)
        return (-sol).to(x.dtype)

    def log_prob(self, x):
        dist = torch.distributions.MultivariateNormal(self.m, self.S)
        return dist.log_prob(torch.as_tensor(x, dtype=torch.float64))

    def sample(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        L = torch.linalg.cholesky(self.S)
        return self.m + torch.randn(n, self.d, generator=g, dtype=torch.float64) @ L.T


@pytest.fixture
def gauss2d():
    from sbdiff.references import VP

    return GaussianData([1.0, -2.0], [[2.0, 1.2], [1.2, 1.0]], VP())


def exact_model(gdata, t_min=1e-3):
    """A float64 PathVAE whose decoder uses the exact score of ``gdata`` (no network)."""
    from sbdiff.decoders import ScoreDecoder
    from sbdiff.encoders import FixedEncoder
    from sbdiff.model import PathVAE

    ref = gdata.ref
    dec = ScoreDecoder(ref, gdata.score, parametrization="score")
    return PathVAE(FixedEncoder(ref), dec, gdata.d, t_min).double()


def stderr(x) -> float:
    x = torch.as_tensor(x, dtype=torch.float64)
    return float(x.std() / math.sqrt(x.numel()))


def write_array(path, arr):
    np.save(path, np.asarray(arr))
    return str(path)


def assert_train_refused(tmp_path, capsys, method: str, args: list[str], message: str) -> None:
    """``sbdiff train --method METHOD ARGS`` on bad input: exit status 2, one line naming the problem
    (``message``), and no run directory. File arguments (``*.toml``, ``*.npy``) are names in
    ``tmp_path``; ``--data moons`` is added unless ``args`` set the data."""
    from sbdiff.cli import main

    args = [str(tmp_path / a) if a.endswith((".toml", ".npy")) else a for a in args]
    if "--data" not in args:
        args = ["--data", "moons", *args]
    code = main(["train", "--method", method, *args, "--out", str(tmp_path / "r"), "--steps", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sbdiff: error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def write_gluonts(root: Path, series: np.ndarray, *, windows: int = 3, horizon: int = 5, train_len: int | None = None,
                  lines: list[dict] | None = None) -> Path:
    """A GluonTS-format folder of the series ``(T, d)``: train = the first ``train_len`` rows, test =
    ``windows`` rolling windows of ``horizon`` steps after it (window-major, as GluonTS writes them)."""
    T, d = series.shape
    train_len = T - windows * horizon if train_len is None else train_len
    for part in ("metadata", "train", "test"):
        (root / part).mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "metadata.json").write_text(json.dumps({"freq": "B"}))
    rows = lines if lines is not None else [{"start": "2000-01-03", "target": series[:train_len, j].tolist()}
                                            for j in range(d)]
    (root / "train" / "train.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    test = [{"start": "2000-01-03", "target": series[:train_len + (k + 1) * horizon, j].tolist()}
            for k in range(windows) for j in range(d)]
    (root / "test" / "test.json").write_text("\n".join(json.dumps(r) for r in test) + "\n")
    return root
