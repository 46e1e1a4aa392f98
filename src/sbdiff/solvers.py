"""Integrators: Euler–Maruyama for SDEs, fixed-step and adaptive (torchdiffeq) ODE solvers, and the
instantaneous change of variables for exact likelihoods (DESIGN §3).

All functions take a drift ``(x, t) -> (B, ...)`` and integrate over an explicit time grid ``ts``
(increasing for the encoder, decreasing for the decoder); ``t`` is passed as a tensor of shape
``(B,)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._utils import SbdiffError, append_dims, divergence

__all__ = ["time_grid", "euler_maruyama", "ode_fixed", "ode_adaptive", "ode_log_det"]

Field = Callable[[Tensor, Tensor], Tensor]

ODE_SOLVERS = ("euler", "heun", "dopri5")


def time_grid(t_start: float, t_end: float, steps: int, *, power: float = 2.0, dtype=torch.float32,
              device="cpu") -> Tensor:
    """Grid of ``steps + 1`` times from ``t_start`` to ``t_end`` (either direction), dense near the
    smaller end (the data side): ``t = lo + (hi − lo)·u^power`` with ``u`` uniform.

    Near the data side the score varies on the scale ``σ_t → 0`` and explicit solvers need small
    steps there (the same reason as the ``ρ``-spacing of Karras et al. 2022); ``power=1`` is uniform.
    """
    if int(steps) < 1:
        raise SbdiffError(f"the number of steps (nfe) must be at least 1, got {steps}")
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    u = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64) ** power
    ts = lo + (hi - lo) * u
    ts[0], ts[-1] = lo, hi
    if t_start > t_end:
        ts = ts.flip(0)
    return ts.to(dtype=dtype, device=device)


def _bt(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x.dtype).expand(x.shape[0])


def euler_maruyama(
    drift: Field,
    diffusion: Callable[[Tensor], Tensor],
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    noise_last: bool = False,
    noise_at: str = "start",
    trajectory: bool = False,
    progress: bool = False,
) -> Tensor:
    """Euler–Maruyama for ``dX = drift(X, t) dt + g(t) dW`` along the grid ``ts``.

    One step: ``x ← x + drift(x, t_k)·Δ + g(s)·√|Δ|·ξ`` with ``Δ = t_{k+1} − t_k`` (negative for a
    backward SDE read in forward time, Anderson 1982) and ``s = t_k`` (``noise_at = "start"``) or
    ``s = min(t_k, t_{k+1})`` (``"lower"``: the data-side end of the step, so that a backward chain's
    step ``k`` has the noise of the forward chain's step ``k``, as DSB's mean matching assumes). The
    last step adds no noise unless ``noise_last`` (it returns the final mean, as in Song et al. 2021).

    Parameters
    ----------
    x : Tensor, shape (B, ...)
        State at ``ts[0]``.
    ts : Tensor, shape (K+1,)
    trajectory : bool
        Return the whole path, shape ``(K+1, B, ...)``, both endpoints included.

    Returns
    -------
    Tensor, shape (B, ...) or (K+1, B, ...)
    """
    path = [x] if trajectory else None
    steps = len(ts) - 1
    for k in tqdm(range(steps), desc="sde", disable=None if progress else True, leave=False):
        t = _bt(ts[k], x)
        dt = (ts[k + 1] - ts[k]).item()
        x = x + drift(x, t) * dt
        if k < steps - 1 or noise_last:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            s = t if noise_at == "start" or dt > 0 else _bt(ts[k + 1], x)
            x = x + append_dims(diffusion(s), x.ndim) * abs(dt) ** 0.5 * noise
        if trajectory:
            path.append(x)
    return torch.stack(path) if trajectory else x


def ode_fixed(velocity: Field, x: Tensor, ts: Tensor, *, method: str = "heun",
              trajectory: bool = False, progress: bool = False) -> Tensor:
    """Fixed-step ODE solve of ``dx/dt = velocity(x, t)`` along ``ts`` (``euler`` or ``heun``).

    Returns the final state ``(B, ...)`` or the path ``(K+1, B, ...)``.
    """
    if method not in ("euler", "heun"):
        raise SbdiffError(f"unknown fixed-step ODE solver '{method}'; choose euler or heun")
    path = [x] if trajectory else None
    for k in tqdm(range(len(ts) - 1), desc="ode", disable=None if progress else True, leave=False):
        t0, t1 = _bt(ts[k], x), _bt(ts[k + 1], x)
        dt = (ts[k + 1] - ts[k]).item()
        v0 = velocity(x, t0)
        if method == "euler":
            x = x + v0 * dt
        else:
            x_pred = x + v0 * dt
            x = x + 0.5 * (v0 + velocity(x_pred, t1)) * dt
        if trajectory:
            path.append(x)
    return torch.stack(path) if trajectory else x


def ode_adaptive(velocity: Field, x: Tensor, ts: Tensor, *, rtol: float = 1e-5, atol: float = 1e-5,
                 trajectory: bool = False) -> Tensor:
    """Adaptive Dormand–Prince (``torchdiffeq.odeint``, ``dopri5``) solve, reporting at ``ts``.

    Returns the final state ``(B, ...)`` or the states at every time of ``ts``, ``(K+1, B, ...)``.
    """
    from torchdiffeq import odeint

    def rhs(t, y):
        return velocity(y, _bt(t, y))

    ts = ts.to(x.dtype)
    # step_t makes the last step land on the end time: dopri5 would otherwise overshoot it and
    # evaluate the field outside [t_min, T] (where the transition variance is negative)
    path = odeint(rhs, x, ts, rtol=rtol, atol=atol, method="dopri5", options={"step_t": ts[-1:]})
    return path if trajectory else path[-1]


def ode_log_det(
    velocity: Field,
    x: Tensor,
    t_start: float,
    t_end: float,
    *,
    exact: bool | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate ``dx/dt = v(x, t)`` together with ``∫ ∇·v dt`` (instantaneous change of variables,
    Chen et al. 2018 eq. 4; Grathwohl et al. 2019), adaptive ``dopri5``.

    Returns ``(x_end, int_div)`` with ``x_end`` shape ``(B, ...)`` and ``int_div`` shape ``(B,)``,
    so that ``log p_start(x) = log p_end(x_end) + int_div``. The divergence is exact for ``d <= 64``
    (``exact=None``), otherwise Hutchinson's estimator with one Rademacher probe fixed along the
    path (unbiased for the log-density).
    """
    from torchdiffeq import odeint

    d = x[0].numel()
    if exact is None:
        exact = d <= 64
    probe = None
    if not exact:
        probe = 2 * torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) - 1

    def rhs(t, state):
        y, _ = state
        tb = _bt(t, y)
        if exact:
            v, div = divergence(lambda z: velocity(z, tb), y, exact=True)
        else:
            with torch.enable_grad():
                yg = y.detach().requires_grad_(True)
                v = velocity(yg, tb)
                (grad,) = torch.autograd.grad((v * probe).sum(), yg)
            v, div = v.detach(), (grad * probe).reshape(y.shape[0], -1).sum(1)
        return v, div

    ts = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
    zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xs, divs = odeint(rhs, (x, zero), ts, rtol=rtol, atol=atol, method="dopri5", options={"step_t": ts[-1:]})
    return xs[-1], divs[-1]
