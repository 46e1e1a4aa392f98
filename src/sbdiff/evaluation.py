"""Evaluation of a trained model against data: likelihoods and sample metrics (DESIGN §3, §6.3).

On images the likelihoods are reported in bits/dim of the discrete data (the dequantisation bound of
:meth:`sbdiff.model.PathVAE.bits_per_dim`) beside an isotropic-Gaussian baseline with the same
accounting (:func:`isotropic_gaussian_nll`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ._utils import gaussian_log_prob
from .bench.metrics import sample_metrics
from .model import PathVAE

__all__ = ["evaluate", "isotropic_gaussian_nll"]


def isotropic_gaussian_nll(fit_x: np.ndarray, eval_x: np.ndarray) -> np.ndarray:
    """NLL (nats per sample) of ``eval_x`` ``(M, D)`` under the maximum-likelihood ``N(μ, s²I)`` of
    ``fit_x`` ``(N, D)``: ``μ`` the mean image, ``s²`` the mean squared deviation over all pixels;
    ``−log p(x) = D/2·log(2π s²) + ‖x − μ‖²/(2 s²)``. Returns shape ``(M,)``."""
    fit_x = np.asarray(fit_x, np.float64)
    mu = fit_x.mean(0)
    s2 = float(((fit_x - mu) ** 2).mean())
    centred = torch.as_tensor(np.asarray(eval_x, np.float64) - mu)
    return -gaussian_log_prob(centred, s2).numpy()


def evaluate(model: PathVAE, data: np.ndarray, *, n_nll: int = 1000, n_samples: int = 2000,
             nfe: int = 500, elbo_time_points: int = 64, seed: int = 0, progress: bool = False,
             samples: np.ndarray | None = None, exact: bool | None = None) -> dict[str, float]:
    """Score ``model`` on ``data`` (shape ``(N, d)``, data coordinates).

    Returns a dict with (likelihoods only when the prior is Gaussian, not for a bridge between two
    data sets)
    ``nll`` (PF-ODE negative log-likelihood, nats per sample, on ``n_nll`` points),
    ``nll_stderr``, ``nll_bpd`` (bits per dimension), ``nelbo`` (negative path ELBO, nats per sample,
    same points; an upper bound of the SDE model's NLL), ``nelbo_stderr``,
    and ``w2``, ``sliced_w2``, ``energy_distance`` of ``n_samples`` SDE samples (``nfe`` steps)
    against the data; pass ``samples`` (shape ``(M, d)``) to score samples already drawn instead.

    ``exact`` chooses the divergence (exact trace or Hutchinson); default: exact for ``d <= 64``
    except on images, where a U-Net's ``D`` vector-Jacobian products per evaluation cost too much and
    Hutchinson's unbiased estimator (one Rademacher probe per point; its variance is in the stderr)
    is used for both the PF-ODE NLL and the ELBO.

    Images with dequantisation (``model.dequant_step = Δ > 0``): the ``n_nll`` points are dequantised
    once, ``x + Δu`` (seeded), and both likelihoods are of those points; ``nll_bpd`` and ``nelbo_bpd``
    are bits/dim of the discrete data (:meth:`~sbdiff.model.PathVAE.bits_per_dim`, an upper bound of
    ``−log₂ P(x)/D``), and ``gauss_bpd`` is the same bound for the isotropic Gaussian ``N(μ, s²I)``
    fitted to all of ``data`` dequantised (:func:`isotropic_gaussian_nll`). Continuous images get the
    same keys with ``Δ = 0`` (differential bits/dim).
    """
    model = model.eval()
    gen = torch.Generator(device=model.data_mean.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = np.asarray(data, np.float64).reshape(len(data), -1)
    x = data[rng.choice(len(data), min(n_nll, len(data)), replace=False)]
    images = model.image_shape is not None
    if exact is None and images:
        exact = False
    step = model.dequant_step
    if step > 0:  # one seeded draw of the dequantisation noise, shared by every likelihood below
        x = x + step * rng.random(x.shape)
    xt = torch.as_tensor(x, dtype=torch.float32, device=model.data_mean.device)
    start = time.monotonic()
    out = {}
    n = len(x)
    if not model.bridge:  # a bridge's prior is a sample set: no density, no likelihoods
        nll = -model.log_prob(xt, generator=gen, exact=exact).double()
        nelbo = -model.elbo(xt, n_time=elbo_time_points, generator=gen, exact=exact).double()
        out.update({
            "nll": float(nll.mean()),
            "nll_stderr": float(nll.std() / math.sqrt(n)),
            "nll_bpd": float(model.bits_per_dim(nll.mean())),
            "nelbo": float(nelbo.mean()),
            "nelbo_stderr": float(nelbo.std() / math.sqrt(n)),
            "nelbo_bpd": float(model.bits_per_dim(nelbo.mean())),
            "n_eval": n,
        })
    if samples is None:
        samples = model.sample(n_samples, nfe=nfe, generator=gen, progress=progress).cpu().numpy()
    out.update({"n_samples": len(samples), "nfe": int(nfe)})
    if images:
        fit_x = data + step * rng.random(data.shape) if step > 0 else data
        gauss = isotropic_gaussian_nll(fit_x, x)
        out["gauss_nll"] = float(gauss.mean())
        out["gauss_bpd"] = float(model.bits_per_dim(float(gauss.mean())))
        out["dequant_step"] = step
    samples = np.asarray(samples).reshape(len(samples), -1)
    out.update(sample_metrics(samples, data, seed=seed))
    out["eval_seconds"] = round(time.monotonic() - start, 2)
    return out
