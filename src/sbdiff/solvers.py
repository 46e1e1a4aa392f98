"""Integrators: Euler–Maruyama for SDEs, fixed-step and adaptive (torchdiffeq) ODE solvers, and the
instantaneous change of variables for exact likelihoods (DESIGN §3).

All functions take a drift ``(x, t) -> (B, ...)`` and integrate over an explicit time grid ``ts``
(increasing for the encoder, decreasing for the decoder); ``t`` is passed as a tensor of shape
``(B,)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._utils import SbdiffError, append_dims, divergence

__all__ = ["time_grid", "make_grid", "sdeint", "euler_maruyama", "ode_fixed", "ode_adaptive", "ode_log_det"]

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


def make_grid(kind: str, t_start: float, t_end: float, steps: int, *, gamma_ratio: float = 0.1) -> Tensor:
    """The family of training grids, float64, ``steps + 1`` times from ``t_start`` to ``t_end > t_start``.

    ``uniform``: equal steps (``torch.linspace``). ``quadratic``: dense near ``t_start`` (the data
    side), :func:`time_grid` with ``power = 2``. ``symmetric``: step sizes rising linearly from
    ``γ_min`` to ``γ_max = γ_min/gamma_ratio`` over the first half and falling back over the second
    (De Bortoli et al. 2021 §5, their ``gamma_space = linspace``), scaled so that ``Σγ = t_end −
    t_start``: small steps at both ends (fewer than 3 steps, or ``gamma_ratio = 1``: equal steps).
    """
    if int(steps) < 1:
        raise SbdiffError(f"a grid needs at least 1 step, got {steps}")
    if kind == "uniform":
        return torch.linspace(t_start, t_end, int(steps) + 1, dtype=torch.float64)
    if kind == "quadratic":
        return time_grid(t_start, t_end, steps, dtype=torch.float64)
    if kind != "symmetric":
        raise SbdiffError(f"unknown grid '{kind}'; choose uniform, quadratic or symmetric")
    if steps < 3:
        gammas = np.full(steps, 1.0)
    else:
        half = np.linspace(gamma_ratio, 1.0, (steps + 1) // 2)
        gammas = np.concatenate([half, half[: steps // 2][::-1]])
    gammas = gammas / gammas.sum() * (t_end - t_start)
    grid = np.concatenate([[t_start], t_start + np.cumsum(gammas)])
    grid[-1] = t_end
    return torch.as_tensor(grid, dtype=torch.float64)


Step = Callable[[int, Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def sdeint(step: Step, x: Tensor, ts: Tensor, *, generator: torch.Generator | None = None, noise_last: bool = True,
           observe: Callable[[int, Tensor, Tensor], None] | None = None, trajectory: bool = False,
           progress: bool = False) -> Tensor:
    """The one path simulator: every SDE path of the library (samplers, training caches, the
    encoder updates and the joint loss) is drawn by this loop.

    At each grid point ``k = 0, …, K`` it calls ``observe(k, x, ts[k])`` (record the state, a control,
    moments; optional), then, for ``k < K``, draws ``ξ_k ~ N(0, I)`` of ``x``'s shape from ``generator``
    (``None`` for the last step unless ``noise_last``) and takes the scheme's step
    ``x ← step(k, x, ts[k], ts[k+1], ξ_k)``. The scheme decides the integrator (Euler–Maruyama,
    :func:`euler_maruyama_step`; an exponential integrator; stochastic Heun; a chain's kernel); the
    loop owns the order of the random numbers, so every scheme draws one normal vector per step,
    after ``observe`` at the step's start.

    Parameters
    ----------
    step : ``(k, x, t0, t1, noise) -> x`` with ``t0, t1`` the 0-d grid entries (either direction).
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
    for k in tqdm(range(steps + 1), desc="sde", disable=None if progress else True, leave=False):
        if observe is not None:
            observe(k, x, ts[k])
        if k == steps:
            break
        noise = (torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                 if k < steps - 1 or noise_last else None)
        x = step(k, x, ts[k], ts[k + 1], noise)
        if trajectory:
            path.append(x)
    return torch.stack(path) if trajectory else x


def euler_maruyama_step(drift: Field, diffusion: Callable[[Tensor], Tensor], noise_at: str = "start") -> Step:
    """The Euler–Maruyama scheme for :func:`sdeint`: ``x ← x + drift(x, t_k)·Δ + g(s)·√|Δ|·ξ`` with
    ``Δ = t_{k+1} − t_k`` and ``s`` as in :func:`euler_maruyama`; no noise when ``ξ`` is ``None``."""

    def step(k: int, x: Tensor, t0: Tensor, t1: Tensor, noise: Tensor | None) -> Tensor:
        t = _bt(t0, x)
        dt = (t1 - t0).item()
        x = x + drift(x, t) * dt
        if noise is not None:
            s = t if noise_at == "start" or dt > 0 else _bt(t1, x)
            x = x + append_dims(diffusion(s), x.ndim) * abs(dt) ** 0.5 * noise
        return x

    return step


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
    """Euler–Maruyama for ``dX = drift(X, t) dt + g(t) dW`` along the grid ``ts`` (:func:`sdeint` with
    :func:`euler_maruyama_step`).

    One step: ``x ← x + drift(x, t_k)·Δ + g(s)·√|Δ|·ξ`` with ``Δ = t_{k+1} − t_k`` (negative for a
    backward SDE read in forward time, Anderson 1982) and ``s = t_k`` (``noise_at = "start"``) or
    ``s = min(t_k, t_{k+1})`` (``"lower"``: the data-side end of the step, so that a backward chain's
    step ``k`` has the noise of the forward chain's step ``k``, as DSB's mean matching assumes). The
    last step adds no noise unless ``noise_last`` (it returns the final mean, as in Song et al. 2021).
    ``x`` ``(B, ...)`` is the state at ``ts[0]`` ``(K+1,)``; returns the final state, or with
    ``trajectory`` the path ``(K+1, B, ...)`` (:func:`sdeint`).
    """
    return sdeint(euler_maruyama_step(drift, diffusion, noise_at), x, ts, generator=generator,
                  noise_last=noise_last, trajectory=trajectory, progress=progress)


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
