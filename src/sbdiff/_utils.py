"""Small helpers shared by every module: errors, time broadcasting, divergence."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


class SbdiffError(ValueError):
    """A user-facing error: bad input, bad configuration or an unknown name.

    The command-line tool prints the message of this error (one line) and exits non-zero;
    library users can catch it like any ``ValueError``.
    """


def append_dims(t: Tensor, ndim: int) -> Tensor:
    """Reshape a batch of times ``(B,)`` to ``(B, 1, ..., 1)`` with ``ndim`` dimensions in all."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def as_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a tensor of shape ``(B,)`` on the device and dtype of ``x`` (shape ``(B, ...)``)."""
    if not torch.is_tensor(t):
        return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    t = t.to(device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    return t


def divergence(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    exact: bool | None = None,
    probes: int = 1,
    create_graph: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Value and divergence ``∇·fn(x)`` of a vector field, per sample.

    Parameters
    ----------
    fn : callable
        Maps ``x`` of shape ``(B, d)`` to a field of shape ``(B, d)``; sample ``i`` of the output
        may depend on sample ``i`` of the input only.
    x : Tensor, shape (B, d)
    exact : bool, optional
        Exact trace by ``d`` vector-Jacobian products, or Hutchinson's estimator with Rademacher
        probes (Hutchinson 1989), unbiased, one product per probe. Default: exact for ``d <= 64``.
    probes : int
        Number of Rademacher probes for the Hutchinson estimator.
    create_graph : bool
        Keep the graph so that the divergence can be differentiated (training losses).

    Returns
    -------
    value : Tensor, shape (B, d)
    div : Tensor, shape (B,)
    """
    d = x[0].numel()
    if exact is None:
        exact = d <= 64
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        out = fn(x)
        flat_out = out.reshape(out.shape[0], -1)
        div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if exact:
            for i in range(d):
                (grad,) = torch.autograd.grad(
                    flat_out[:, i].sum(), x, create_graph=create_graph, retain_graph=True
                )
                div = div + grad.reshape(x.shape[0], -1)[:, i]
        else:
            for _ in range(probes):
                v = torch.randint(0, 2, x.shape, device=x.device, generator=generator).to(x.dtype)
                v = 2 * v - 1
                (grad,) = torch.autograd.grad(
                    (out * v).sum(), x, create_graph=create_graph, retain_graph=True
                )
                div = div + (grad * v).reshape(x.shape[0], -1).sum(1)
            div = div / probes
    if not create_graph:
        out, div = out.detach(), div.detach()
    return out, div


def gaussian_log_prob(x: Tensor, var: float | Tensor = 1.0) -> Tensor:
    """Log density of ``N(0, var·I)`` at ``x`` of shape ``(B, ...)``; returns shape ``(B,)``."""
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    return -0.5 * (flat.pow(2).sum(1) / var + d * torch.log(2 * math.pi * var))
