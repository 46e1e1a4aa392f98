"""The two terms of the path-VAE objective (DESIGN §2) and the path ELBO (DESIGN §3, §4.3).

``KL(Q_φ ‖ P_θ) = KL(q_φ,T ‖ p_prior) + E_Q ∫₀ᵀ ½‖z_φ + ẑ_θ − g∇log q_φ,t‖² dt``
(Kaba et al. 2024): the *prior loss* trains the encoder, *drift matching* trains the decoder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import SbdiffError, append_dims, as_time, divergence
from .decoders import Decoder
from .encoders import Encoder

__all__ = ["dsm_loss", "gaussian_moment_kl", "path_elbo", "importance_times"]


def dsm_loss(encoder: Encoder, decoder: Decoder, x0: Tensor, t: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
    """Drift matching by denoising score matching (estimator 1 of DESIGN §2), per sample.

    For an encoder with closed-form transitions ``q(x_t | x_0) = N(M_t x_0, σ_t² I)`` the integrand of
    drift matching is, up to a constant in θ, ``‖ẑ_θ + z_φ + g σ_t⁻² (x_t − M_t x_0)‖²`` (Vincent 2011;
    Song et al. 2021 eq. 7). We weight it by ``λ(t) = σ_t²/g(t)²``, which turns it into the noise
    regression ``‖(ẑ_θ + z_φ)·σ_t/g + ε‖²`` (Ho et al. 2020).

    Parameters
    ----------
    x0 : Tensor, shape (B, d)
        Data-side points.
    t : Tensor, shape (B,)
        Times in ``(0, T]``.

    Returns
    -------
    Tensor, shape (B,)
        The weighted residual, summed over coordinates.
    """
    if not getattr(encoder, "closed_form", False):
        raise SbdiffError("denoising score matching needs an encoder with closed-form transitions")
    x_t, noise, std = encoder.sample_transition(x0, 0.0, t, generator=generator)
    g = append_dims(encoder.reference.g(t), x0.ndim)
    z_sum = decoder.control(x_t, t) + encoder.control(x_t, t)
    residual = z_sum * append_dims(std, x0.ndim) / g + noise
    return residual.pow(2).reshape(x0.shape[0], -1).sum(1)


def gaussian_moment_kl(samples: Tensor, prior_var: float) -> Tensor:
    """``KL(N(m̂, Ĉ) ‖ N(0, prior_var·I))`` with ``m̂, Ĉ`` the moments of ``samples`` (shape ``(B, d)``).

    This is the prior loss of DESIGN §2 under a Gaussian-moment proxy: exact when the encoder's
    terminal law is Gaussian, otherwise a lower bound on nothing in particular but a faithful
    monitor of mismatched mean and covariance. Uses the diagonal of ``Ĉ`` when ``B <= d``.
    Returns a scalar tensor (nats).
    """
    x = samples.reshape(samples.shape[0], -1).double()
    n, d = x.shape
    mean = x.mean(0)
    xc = x - mean
    if n > d + 1:
        cov = xc.T @ xc / (n - 1)
        logdet = torch.linalg.slogdet(cov)[1]
        trace = torch.diagonal(cov).sum()
    else:
        var = xc.pow(2).sum(0) / max(n - 1, 1)
        logdet, trace = torch.log(var).sum(), var.sum()
    kl = 0.5 * (trace / prior_var + mean.pow(2).sum() / prior_var - d + d * math.log(prior_var) - logdet)
    return kl.to(samples.dtype)


def importance_times(n: int, t_min: float, T: float, *, generator=None, dtype=torch.float32,
               device="cpu") -> tuple[Tensor, Tensor]:
    """Times on ``[t_min, T]`` with importance weights for integrals that may grow like ``1/t``.

    Returns ``(t, w)`` of shape ``(n,)`` with ``E[mean(w·h(t))] = ∫ h(t) dt``. Half the points are
    stratified uniform, half stratified log-uniform (``t = t_min (T/t_min)^u``, the density that
    flattens the ``1/t`` growth of the ELBO integrand near ``t = 0`` on data with sharp features,
    Song et al. 2021b §5); all are weighted by the mixture density (the balance heuristic of Veach
    1997), so that smooth integrands keep the low variance of uniform sampling.
    """
    n_log = n // 2
    n_uni = n - n_log
    kw = dict(generator=generator, dtype=dtype, device=device)
    u_uni = (torch.arange(n_uni, dtype=dtype, device=device) + torch.rand(n_uni, **kw)) / n_uni
    u_log = (torch.arange(n_log, dtype=dtype, device=device) + torch.rand(n_log, **kw)) / max(n_log, 1)
    span = math.log(T / t_min)
    t = torch.cat([t_min + (T - t_min) * u_uni, t_min * torch.exp(u_log * span)])
    density = 0.5 / (T - t_min) + 0.5 / (t * span) if n_log else torch.full_like(t, 1 / (T - t_min))
    return t, 1.0 / density


def path_elbo(encoder: Encoder, decoder: Decoder, prior_logp, x0: Tensor, *, t_min: float,
              n_time: int = 64, exact: bool | None = None, generator=None) -> Tensor:
    """Path ELBO ``log p_θ(x_0) ≥ E[log p_T(X_T)] − ∫ E[½‖ẑ‖² + ∇·(g ẑ − f) + ẑᵀz] dt``.

    SB-FBSDE Theorem 4 (Chen et al. 2022); with ``z = 0`` it is the bound of Huang et al. 2021.
    Expectations are over encoder paths started at ``x_0`` at time ``t_min``; with a closed-form
    encoder, ``X_t | x_0`` is drawn directly at ``n_time`` times per point (:func:`importance_times`), and
    ``log p_T(X_T)`` is averaged over ``n_time`` draws of ``X_T``.

    Parameters
    ----------
    x0 : Tensor, shape (B, d)
    prior_logp : callable, ``(B, d) -> (B,)``

    Returns
    -------
    Tensor, shape (B,)
        ELBO in nats per sample (model coordinates).
    """
    if not getattr(encoder, "closed_form", False):
        raise SbdiffError("this ELBO estimator needs an encoder with closed-form transitions")
    T = encoder.reference.T
    B = x0.shape[0]
    rep = x0.repeat_interleave(n_time, 0)
    t, w = importance_times(n_time, t_min, T, generator=generator, dtype=x0.dtype, device=x0.device)
    t, w = t.repeat(B), w.repeat(B)
    x_t, _, _ = encoder.sample_transition(rep, t_min, t, generator=generator)
    ref = encoder.reference

    def field(x):  # g ẑ − f
        return append_dims(ref.g(t), x.ndim) * decoder.control(x, t) - ref.f(x, t)

    gz_minus_f, div = divergence(field, x_t, exact=exact, generator=generator)
    zhat = (gz_minus_f + ref.f(x_t, t)) / append_dims(ref.g(t), x_t.ndim)
    z = encoder.control(x_t, t)
    integrand = (0.5 * zhat.pow(2) + zhat * z).reshape(zhat.shape[0], -1).sum(1) + div
    integral = (w * integrand).reshape(B, n_time).mean(1)
    x_T, _, _ = encoder.sample_transition(rep, t_min, as_time(T, rep), generator=generator)
    return prior_logp(x_T).reshape(B, n_time).mean(1) - integral.detach()
