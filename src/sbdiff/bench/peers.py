"""Peer solvers for the benchmark harness: other libraries' SB / entropic-OT solvers, trained and
scored on the same pairs, with the same samples, network width and wall-clock budget as sbdiff's
bridge presets (:mod:`sbdiff.bench.runner`, ``benchmarks/eot_table.py``).

``sf2m`` — torchcfm's SF²M-Sink (Tong et al. 2024, "Simulation-free Schrödinger bridges via score
and flow matching", AISTATS; ``torchcfm==1.0.7``):

* coupling: ``SchrodingerBridgeConditionalFlowMatcher(sigma=√eps, ot_method="sinkhorn")`` draws
  ``(x0, x1)`` from the minibatch Sinkhorn plan of cost ``‖x0 − x1‖²`` and regularisation
  ``2σ² = 2 eps`` (= the entropic plan of cost ``½‖x0 − x1‖²`` and weight ``eps``, the benchmark's);
  then ``t ~ U[0, 1]`` and ``x_t = (1−t) x0 + t x1 + σ√(t(1−t)) ε`` on the Brownian bridge of the
  reference ``brownian(eps)``;
* flow matching (their eq. 13): ``v_θ(x_t, t) ≈ u_t = (1−2t)/(2t(1−t)) (x_t − μ_t) + x1 − x0``;
* score matching (their eq. 14) with torchcfm's weighting ``λ_t = compute_lambda(t) = 2σ_t/σ²``:
  ``‖λ_t s_θ(x_t, t) + ε‖²``. Its minimiser is ``s_θ = −σ² ε / (2σ_t) = (σ²/2) ∇log p_t``: the net
  learns the score **times g²/2**, not the score;
* sampling (their eq. 8 with ``g = σ``): Euler–Maruyama on ``dX = [v_θ + s_θ](X, t) dt + σ dW`` from
  ``X0 = x`` (the source point) to ``t = 1``: ``v + (g²/2)∇log p_t`` is the SB's forward drift.

Both nets are sbdiff's :class:`~sbdiff.nets.TimeMLP` of the width the bridge presets resolve (the
harness passes DSB's ``model.hidden`` × ``model.blocks`` = 128 × 2, which SB-FBSDE's two nets have
too), trained jointly by Adam at ``train.lr`` on ``train.batch_size`` pairs per step, with the EMA
(DSB's ``train.ema_decay`` 0.99) and gradient clipping of sbdiff's loop, so that a cell compares
objectives and samplers, not network sizes or optimiser settings. torchcfm is imported only here and only
when the peer runs: install it with ``pip install -c constraints.txt -e '.[bench]'``.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from .._utils import SbdiffError

__all__ = ["PEERS", "PEER_NFE", "train_sf2m", "is_peer"]

#: Euler–Maruyama steps of the peer's sampler: the chain length of DSB's and SB-FBSDE's defaults (50).
PEER_NFE = 50


def _import_torchcfm():
    try:
        import torchcfm
    except ImportError as exc:
        raise SbdiffError("the peer solver 'sf2m' needs torchcfm (not a dependency of sbdiff): "
                          "pip install -c constraints.txt -e '.[bench]'") from exc
    return torchcfm


class SF2MSampler:
    """Draws of the trained SF²M plan ``π̂(· | x)``: Euler–Maruyama on ``dX = [v + s](X, t) dt + σ dW``.

    ``__call__(x (m, d) ndarray, rng) -> (m, d) float64``: the ``sampler`` of
    :func:`~sbdiff.bench.metrics.plan_metrics`.
    """

    def __init__(self, flow, score, sigma: float, nfe: int = PEER_NFE, chunk: int = 50_000):
        self.flow, self.score, self.sigma, self.nfe, self.chunk = flow, score, float(sigma), int(nfe), chunk

    def __call__(self, x, rng) -> np.ndarray:
        import torch

        from ..solvers import euler_maruyama

        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x = np.asarray(x, np.float64)
        out = np.empty_like(x)
        ts = torch.linspace(0.0, 1.0, self.nfe + 1)

        def drift(z, t):
            return self.flow(z, t) + self.score(z, t)

        def diffusion(t):
            return torch.full_like(t, self.sigma)

        with torch.no_grad():
            for i in range(0, len(x), self.chunk):
                z = torch.as_tensor(x[i:i + self.chunk], dtype=torch.float32)
                # noise on every step, the last too: y ~ π̂(·|x) is the SDE's endpoint, not its mean
                z = euler_maruyama(drift, diffusion, z, ts, generator=gen, noise_last=True)
                out[i:i + self.chunk] = z.double().numpy()
        return out


def train_sf2m(source: np.ndarray, target: np.ndarray, eps: float, *, seed: int = 0, minutes: float | None = None,
               steps: int | None = None, hidden: int = 128, blocks: int = 2, time_dim: int = 64,
               batch_size: int = 512, lr: float = 2e-3, ema_decay: float = 0.99, grad_clip: float = 1.0,
               nfe: int = PEER_NFE, progress: bool = False) -> tuple[SF2MSampler, int, float]:
    """Train torchcfm's SF²M-Sink on unpaired samples (module docstring for the objective).

    Parameters
    ----------
    source, target : ndarray (n, d)
        Unpaired training samples of ``p0`` (``t = 0``) and ``p1`` (``t = 1``).
    eps : float
        Entropy weight: ``sigma = √eps``.
    minutes, steps : training budget (wall clock and/or optimiser steps; at least one).
    hidden, blocks, time_dim : the two :class:`~sbdiff.nets.TimeMLP` nets (default: the bridge presets').
    batch_size, lr, ema_decay, grad_clip : optimisation (default: DSB's resolved settings).
    nfe : Euler–Maruyama steps of the returned sampler.

    Returns
    -------
    (sampler, steps done, train seconds)
    """
    import torch

    from ..nets import TimeMLP, make_ema, update_ema

    tcfm = _import_torchcfm()
    if minutes is None and steps is None:
        raise SbdiffError("train_sf2m needs a budget: minutes and/or steps")
    source = torch.as_tensor(np.asarray(source), dtype=torch.float32)
    target = torch.as_tensor(np.asarray(target), dtype=torch.float32)
    if source.ndim != 2 or source.shape[1:] != target.shape[1:] or target.ndim != 2:
        raise SbdiffError(f"train_sf2m needs (n, d) source and target of equal d, got {tuple(source.shape)} "
                          f"and {tuple(target.shape)}")
    d = source.shape[1]
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # torchcfm draws from the Sinkhorn plan with numpy's global generator
    gen = torch.Generator().manual_seed(seed)
    sigma = math.sqrt(eps)
    matcher = tcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=sigma, ot_method="sinkhorn")
    flow = TimeMLP(d, hidden, blocks, time_dim)
    score = TimeMLP(d, hidden, blocks, time_dim)
    nets = torch.nn.ModuleDict({"flow": flow, "score": score})
    ema = make_ema(nets, ema_decay)
    opt = torch.optim.Adam(nets.parameters(), lr=lr)
    budget = math.inf if minutes is None else 60.0 * minutes
    max_steps = math.inf if steps is None else steps
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(steps) if minutes is None else round(budget), unit="step" if minutes is None else "s",
                   desc=f"sf2m d={d} eps={eps:g}", leave=False)
    start, step, shown = time.monotonic(), 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("once")  # Sinkhorn's "did not converge" once, not per step
        while step < max_steps and time.monotonic() - start < budget:
            x0 = source[torch.randint(len(source), (batch_size,), generator=gen)]
            x1 = target[torch.randint(len(target), (batch_size,), generator=gen)]
            t, xt, ut, noise = matcher.sample_location_and_conditional_flow(x0, x1, return_noise=True)
            lam = matcher.compute_lambda(t)[:, None]
            loss = ((flow(xt, t) - ut) ** 2).mean() + ((lam * score(xt, t) + noise) ** 2).mean()
            if not torch.isfinite(loss):
                raise SbdiffError(f"sf2m: non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(nets.parameters(), grad_clip)
            opt.step()
            update_ema(ema, nets)
            step += 1
            if bar is not None and step % 50 == 0:
                now = step if minutes is None else int(time.monotonic() - start)
                bar.update(max(0, min(now, bar.total) - shown))
                shown = min(now, bar.total)
                bar.set_postfix(loss=f"{loss.item():.3f}", steps=step)
    seconds = time.monotonic() - start
    if bar is not None:
        bar.close()
    avg = ema.module
    return SF2MSampler(avg["flow"], avg["score"], sigma, nfe), step, seconds


#: name -> trainer ``(source, target, eps, **budget_and_settings) -> (sampler, steps, seconds)``.
PEERS = {"sf2m": train_sf2m}


def is_peer(method: str) -> bool:
    """Whether ``method`` names a peer solver (of another library) rather than an sbdiff method."""
    return method in PEERS
