"""Networks: sinusoidal time embedding and a time-conditioned residual MLP (DESIGN §5), and EMA."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ._utils import as_time

__all__ = ["TimeEmbedding", "TimeMLP", "make_ema"]


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``t/T`` at geometric frequencies (Vaswani et al. 2017; Ho et al. 2020).

    Maps ``t`` of shape ``(B,)`` to ``(B, dim)``.
    """

    def __init__(self, dim: int = 64, T: float = 1.0, max_period: float = 1000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_period), half))
        self.register_buffer("freqs", freqs, persistent=False)
        self.T = T
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        arg = (t / self.T)[:, None] * self.freqs[None, :].to(t.dtype) * math.pi
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        if emb.shape[1] < self.dim:
            emb = torch.cat([emb, (t / self.T)[:, None]], dim=1)
        return emb


class _ResBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.act(r))


class TimeMLP(nn.Module):
    """Time-conditioned residual MLP ``(x, t) -> y`` for vector data.

    Parameters
    ----------
    dim : int
        Data dimension ``d``; input ``x`` has shape ``(B, d)``, output has shape ``(B, d)``.
    hidden : int
        Width of the residual stream.
    blocks : int
        Number of residual blocks (each: LayerNorm, SiLU, Linear + time, SiLU, Linear).
    time_dim : int
        Size of the sinusoidal time embedding.
    T : float
        Time horizon, used to scale ``t`` to ``[0, 1]``.
    """

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 3, time_dim: int = 64, T: float = 1.0):
        super().__init__()
        self.embed = TimeEmbedding(time_dim, T)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = as_time(t, x)
        emb = self.time_mlp(self.embed(t))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def make_ema(module: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of ``module``'s parameters (``torch.optim.swa_utils``)."""
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
