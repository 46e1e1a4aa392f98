"""Evaluation of a trained model against data: likelihoods and sample metrics (DESIGN §3, §6.3)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .bench.metrics import sample_metrics
from .model import PathVAE

__all__ = ["evaluate"]


def evaluate(model: PathVAE, data: np.ndarray, *, n_nll: int = 1000, n_samples: int = 2000,
             nfe: int = 500, elbo_time_points: int = 64, seed: int = 0, progress: bool = False,
             samples: np.ndarray | None = None) -> dict[str, float]:
    """Score ``model`` on ``data`` (shape ``(N, d)``, data coordinates).

    Returns a dict with
    ``nll`` (PF-ODE negative log-likelihood, nats per sample, on ``n_nll`` points),
    ``nll_stderr``, ``nll_bpd`` (bits per dimension), ``nelbo`` (negative path ELBO, nats per sample,
    same points; an upper bound of the SDE model's NLL), ``nelbo_stderr``,
    and ``w2``, ``sliced_w2``, ``energy_distance`` of ``n_samples`` SDE samples (``nfe`` steps)
    against the data; pass ``samples`` (shape ``(M, d)``) to score samples already drawn instead.
    """
    model = model.eval()
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = data[rng.choice(len(data), min(n_nll, len(data)), replace=False)]
    xt = torch.as_tensor(x, dtype=torch.float32)
    start = time.monotonic()
    nll = -model.log_prob(xt, generator=gen).double()
    nelbo = -model.elbo(xt, n_time=elbo_time_points, generator=gen).double()
    if samples is None:
        samples = model.sample(n_samples, nfe=nfe, generator=gen, progress=progress).cpu().numpy()
    n = len(x)
    out = {
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std() / math.sqrt(n)),
        "nll_bpd": float(model.bits_per_dim(nll.mean())),
        "nelbo": float(nelbo.mean()),
        "nelbo_stderr": float(nelbo.std() / math.sqrt(n)),
        "n_eval": n,
        "n_samples": len(samples),
        "nfe": int(nfe),
    }
    out.update(sample_metrics(samples, data, seed=seed))
    out["eval_seconds"] = round(time.monotonic() - start, 2)
    return out
