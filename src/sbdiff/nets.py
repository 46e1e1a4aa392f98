"""Networks: sinusoidal time embedding, a time-conditioned residual MLP for vectors and a small U-Net
for images (DESIGN §5), and EMA.

Every network maps flat vectors ``(B, D)`` and times ``(B,)`` to ``(B, D)``: the U-Net reshapes to
``(B, C, H, W)`` internally, so that trainers, samplers, divergences and likelihoods treat images
and vectors alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ._utils import SbdiffError, as_time

__all__ = ["TimeEmbedding", "LabelEmbedding", "VectorEmbedding", "context_embedding", "drop_context", "TimeMLP", "UNet",
           "WindowNet", "make_ema", "update_ema"]


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


class LabelEmbedding(nn.Module):
    """A class label ``c ∈ {0, …, K−1}`` of shape ``(B,)`` (int64) to ``(B, dim)``; the null label ``K``
    (a dropped context, classifier-free guidance) maps to exactly 0, so that a conditional network
    given the null label is the unconditional network with the same weights (DESIGN §4.6)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.table = nn.Embedding(self.num_classes, dim)

    def forward(self, c: Tensor) -> Tensor:
        keep = c < self.num_classes
        return self.table(torch.where(keep, c, torch.zeros_like(c))) * keep[:, None].to(self.table.weight.dtype)


class VectorEmbedding(nn.Module):
    """Observed values ``c`` of shape ``(B, k)`` (in model coordinates) to ``(B, dim)`` by a two-layer
    MLP; a row of NaN (a dropped context) maps to exactly 0, as for :class:`LabelEmbedding`."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.mlp = nn.Sequential(nn.Linear(self.size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c: Tensor) -> Tensor:
        keep = ~torch.isnan(c).any(1)
        return self.mlp(torch.nan_to_num(c)) * keep[:, None].to(c.dtype)


def drop_context(c: Tensor, mask: Tensor, context: tuple[str, int]) -> Tensor:
    """``c`` with the rows where ``mask`` (``(B,)`` bool) is true replaced by the null context of the
    embeddings above: the label ``K`` for ``("label", K)``, a row of NaN for ``("vector", k)``."""
    kind, size = context
    if kind == "label":
        return torch.where(mask, torch.full_like(c, size), c)
    return c.masked_fill(mask[:, None], float("nan"))


def context_embedding(context: tuple[str, int] | None, dim: int) -> nn.Module | None:
    """The embedding of a context ``(kind, size)``: ``("label", K)`` (:class:`LabelEmbedding`) or
    ``("vector", k)`` (:class:`VectorEmbedding`), output ``(B, dim)``; ``None`` for no context."""
    if context is None:
        return None
    kind, size = context
    if kind == "label":
        return LabelEmbedding(size, dim)
    if kind == "vector":
        return VectorEmbedding(size, dim)
    raise ValueError(f"unknown context kind {kind!r}")


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
    context : tuple (kind, size), optional
        A context ``c`` (DESIGN §4.6; :func:`context_embedding`) whose embedding is added to the time
        embedding; ``forward(x, t, c)``. ``c = None`` is the null context. Without it the network is
        unconditional (and creates no extra parameters).
    """

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 3, time_dim: int = 64, T: float = 1.0,
                 context: tuple[str, int] | None = None):
        super().__init__()
        self.embed = TimeEmbedding(time_dim, T)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.context = context_embedding(context, hidden)

    def forward(self, x: Tensor, t: Tensor | float, c: Tensor | None = None) -> Tensor:
        t = as_time(t, x)
        emb = _with_context(self, self.time_mlp(self.embed(t)), c)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


def _with_context(net: nn.Module, emb: Tensor, c: Tensor | None) -> Tensor:
    """``emb + context(c)`` for a conditional network given a context; ``emb`` otherwise (``c = None``:
    the null context)."""
    if c is None:
        return emb
    if net.context is None:
        raise ValueError("a context was given to an unconditional network")
    return emb + net.context(c)


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs one)."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class _ConvResBlock(nn.Module):
    """GroupNorm, SiLU, 3×3 conv, GroupNorm with a time-dependent scale and shift, SiLU, 3×3 conv;
    residual (1×1 conv when the width changes). The time embedding enters as ``h·(1 + a(t)) + b(t)``
    after the second normalisation (the scale-shift norm of Nichol & Dhariwal 2021; a per-channel
    shift added before a GroupNorm whose groups are single channels would be normalised away). The
    second conv starts at zero, so a block starts as the identity."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.conv1(self.act(self.norm1(h)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        r = self.conv2(self.drop(self.act(self.norm2(r) * (1 + scale) + shift)))
        return self.skip(h) + r


class _SelfAttention(nn.Module):
    """Single-head self-attention over the ``H·W`` positions, residual, zero-initialised output."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        B, C, H, W = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, C, H * W).unbind(1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return h + self.proj(out.transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """A small time-conditioned U-Net on flat image vectors ``(x, t) -> y`` (Ronneberger et al. 2015,
    in the form of Ho et al. 2020 / Song et al. 2021: residual blocks with GroupNorm and SiLU, the
    sinusoidal time embedding entering every block as a scale and shift, skip connections by
    concatenation).

    Parameters
    ----------
    image_shape : tuple (C, H, W)
        Input ``x`` has shape ``(B, C·H·W)`` (row-major ``C, H, W``) and so does the output.
    channels : int
        Width at the finest resolution.
    channel_mult : sequence of int
        Width multipliers per resolution; ``len(channel_mult)`` resolutions, each after the first at
        half the previous size, so ``H`` and ``W`` must be divisible by ``2**(len − 1)``.
    res_blocks : int
        Residual blocks per resolution on the way down (one more on the way up).
    attention : bool
        Self-attention at the coarsest resolution and in the middle (off by default: at 8×8 it
        costs more than it gives on CPU).
    time_dim : int
        Size of the sinusoidal time embedding.
    T : float
        Time horizon, used to scale ``t`` to ``[0, 1]``.
    dropout : float
        Dropout inside the residual blocks.
    context : tuple (kind, size), optional
        A context added to the time embedding, as in :class:`TimeMLP`.

    The output convolution starts at zero, so an untrained network outputs 0 (for the noise
    parametrisation of :class:`~sbdiff.decoders.ScoreDecoder`: the Gaussian skip alone).
    """

    def __init__(self, image_shape: tuple[int, int, int], channels: int = 32, channel_mult=(1, 2),
                 res_blocks: int = 1, attention: bool = False, time_dim: int = 64, T: float = 1.0,
                 dropout: float = 0.0, context: tuple[str, int] | None = None):
        super().__init__()
        C, H, W = (int(s) for s in image_shape)
        mult = tuple(int(m) for m in channel_mult)
        if min(C, H, W) < 1 or channels < 1 or not mult or min(mult) < 1 or res_blocks < 1:
            raise SbdiffError(f"U-Net: invalid settings (image_shape={image_shape}, channels={channels}, "
                              f"channel_mult={channel_mult}, res_blocks={res_blocks})")
        factor = 2 ** (len(mult) - 1)
        if H % factor or W % factor:
            raise SbdiffError(f"U-Net: image size {H}x{W} is not divisible by 2**{len(mult) - 1} = {factor} "
                              f"({len(mult)} resolutions); use fewer entries in model.unet_mult")
        self.image_shape = (C, H, W)
        self.dim = C * H * W
        emb_dim = 4 * channels
        self.embed = TimeEmbedding(time_dim, T)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(C, channels, 3, padding=1)
        widths = [channels * m for m in mult]
        self.down = nn.ModuleList()
        skips = [channels]
        ch = channels
        for level, w in enumerate(widths):
            for _ in range(res_blocks):
                self.down.append(_ConvResBlock(ch, w, emb_dim, dropout))
                ch = w
                skips.append(ch)
                if attention and level == len(widths) - 1:
                    self.down.append(_SelfAttention(ch))
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = _ConvResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = _SelfAttention(ch) if attention else nn.Identity()
        self.mid2 = _ConvResBlock(ch, ch, emb_dim, dropout)
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            w = widths[level]
            for _ in range(res_blocks + 1):
                self.up.append(_ConvResBlock(ch + skips.pop(), w, emb_dim, dropout))
                ch = w
                if attention and level == len(widths) - 1:
                    self.up.append(_SelfAttention(ch))
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, C, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.context = context_embedding(context, emb_dim)

    def forward(self, x: Tensor, t: Tensor | float, c: Tensor | None = None) -> Tensor:
        t = as_time(t, x)
        B = x.shape[0]
        emb = _with_context(self, self.time_mlp(self.embed(t)), c)
        h = self.inp(x.reshape(B, *self.image_shape))
        hs = [h]
        for layer in self.down:
            if isinstance(layer, _ConvResBlock):
                h = layer(h, emb)
                hs.append(h)
            elif isinstance(layer, _SelfAttention):
                h = layer(h)
                hs[-1] = h
            else:  # downsampling
                h = layer(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, _ConvResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:  # attention or upsampling
                h = layer(h)
        return self.out(h).reshape(B, self.dim)


def _time_conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A conv over time with the length kept, on ``(B, C, 1, N)``: the map of ``nn.Conv1d(c_in, c_out,
    kernel, dilation=dilation, padding=dilation·(kernel−1)/2)`` on ``(B, C, N)``, as a ``(1, kernel)``
    Conv2d that runs on channels-last tensors: on CPU (oneDNN) its forward and backward pass takes
    half to three quarters of Conv1d's, about a tenth off a :class:`WindowNet` step."""
    return nn.Conv2d(c_in, c_out, (1, kernel), padding=(0, dilation * (kernel - 1) // 2), dilation=(1, dilation))


class _DilatedResBlock(nn.Module):
    """A residual block over time for :class:`WindowNet`: GroupNorm with the time-dependent scale and
    shift ``h·(1 + a(t)) + b(t)`` (as in :class:`_ConvResBlock`), SiLU, a dilated conv (kernel 3, the
    length kept); ``h + conv(…)``. One conv per block, not two as there: the convs are most of the
    cost on CPU (a forward and backward pass of :class:`WindowNet` at ``B = 256``, 60 steps, width 64
    and four blocks: 70–90 ms on two cores). ``h`` has shape ``(B, C, 1, N)`` (:func:`_time_conv`),
    ``emb`` ``(B, emb_dim)``."""

    def __init__(self, channels: int, emb_dim: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.emb = nn.Linear(emb_dim, 2 * channels)
        self.conv = _time_conv(channels, channels, 3, dilation)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        return h + self.conv(self.act(torch.addcmul(shift, self.norm(h), 1 + scale)))


class WindowNet(nn.Module):
    """A time-conditioned 1-D convolutional denoiser for forecasting windows ``(x, t, c) -> y``: time
    is the convolution axis and the ``d`` series are channels, as in CSDI (Tashiro et al. 2021) and
    TSDiff (Kollovieh et al. 2023), where a flat MLP over ``past·d`` history and ``H·d`` forecast
    numbers scales badly with the window.

    The history ``c`` and the forecast ``x`` are laid side by side on ``N = past + H`` time steps with
    ``d + 1`` channels: the values and the observed mask (1 on the history when it is given, 0 on the
    forecast). A 1×1 conv lifts them to ``channels``, a learned positional embedding (``channels × N``)
    marks where the forecast begins, and ``blocks`` residual blocks mix along time (GroupNorm, the
    time embedding as a scale and shift, SiLU, a dilated conv with kernel 3; dilations 1, 2, 4, 8, …
    up to the largest power of two below ``N``, then again from 1). GroupNorm, SiLU and a 1×1 conv
    (zero at initialisation: an untrained network outputs 0) map the last ``H`` steps to ``d``
    channels. The convs reach ``Σ dilations`` steps either side (15 for four blocks); the whole
    history also enters every block through its embedding (:class:`VectorEmbedding`, added to the
    time embedding as in :class:`TimeMLP`), so the far end of a long forecast still sees it. Inside,
    the sequence is ``(B, channels, 1, N)``, channels-last, for speed (:func:`_time_conv`).

    Parameters
    ----------
    horizon : int
        Forecast length ``H``; ``x`` has shape ``(B, H·d)``, time-major (``x.reshape(B, H, d)``: the
        ``d`` series at step 0, then at step 1, …), and so does the output.
    past : int
        History length; ``c`` has shape ``(B, past·d)``, time-major like ``x``.
    series : int
        Number of series ``d``.
    channels : int
        Width of the residual stream.
    blocks : int
        Number of residual blocks.
    time_dim : int
        Size of the sinusoidal time embedding.
    T : float
        Time horizon, used to scale ``t`` to ``[0, 1]``.
    context : tuple (kind, size), optional
        ``("vector", past·d)``: the history, standardised. ``c = None`` or a row of ``c`` with a NaN
        (a dropped context, :func:`drop_context`) is the null context: zero history, zero mask and
        zero history embedding, the same for every such row (classifier-free guidance). Without a
        context the network is unconditional and sees the ``H`` forecast steps only (``N = H``).

    Output row ``i`` depends on row ``i`` of ``x``, ``t`` and ``c`` only (GroupNorm is per sample).
    """

    def __init__(self, horizon: int, past: int, series: int, channels: int = 64, blocks: int = 4,
                 time_dim: int = 64, T: float = 1.0, context: tuple[str, int] | None = None):
        super().__init__()
        H, P, d = int(horizon), int(past), int(series)
        if H < 1 or P < 0 or d < 1 or channels < 1 or blocks < 1:
            raise SbdiffError(f"WindowNet: invalid settings (horizon={horizon}, past={past}, series={series}, "
                              f"channels={channels}, blocks={blocks})")
        if context is not None and (context[0] != "vector" or int(context[1]) != P * d or P == 0):
            raise SbdiffError(f"WindowNet: the context must be ('vector', past·series) = ('vector', {P * d}), "
                              f"not {tuple(context)!r}")
        self.horizon, self.series, self.dim = H, d, H * d
        self.past = P if context is not None else 0  # the length of history the network sees
        N = self.past + H
        cycle = max(1, (N - 1).bit_length())  # dilations 1, 2, …, 2**(cycle − 1) < N
        self.embed = TimeEmbedding(time_dim, T)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.inp = _time_conv(d + 1, channels)
        self.pos = nn.Parameter(0.02 * torch.randn(channels, 1, N))
        self.blocks = nn.ModuleList(_DilatedResBlock(channels, channels, 2 ** (i % cycle)) for i in range(blocks))
        self.out = nn.Sequential(nn.GroupNorm(_groups(channels), channels), nn.SiLU(), _time_conv(channels, d))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.context = context_embedding(context, channels)

    def forward(self, x: Tensor, t: Tensor | float, c: Tensor | None = None) -> Tensor:
        t = as_time(t, x)
        B, H, d, P = x.shape[0], self.horizon, self.series, self.past
        emb = _with_context(self, self.time_mlp(self.embed(t)), c)  # raises for a c on an unconditional net
        seq = x.new_zeros(B, 1, P + H, d + 1)  # (B, 1, N, d + 1): values, then the observed mask
        seq[:, 0, P:, :d] = x.reshape(B, H, d)
        if c is not None:
            keep = (~torch.isnan(c).any(1)).to(x.dtype)[:, None, None]
            seq[:, 0, :P, :d] = torch.nan_to_num(c).to(x.dtype).reshape(B, P, d) * keep
            seq[:, 0, :P, d] = keep[:, :, 0]
        h = self.inp(seq.permute(0, 3, 1, 2)) + self.pos  # (B, C, 1, N), channels-last
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h[..., P:]).permute(0, 2, 3, 1).reshape(B, self.dim)


def make_ema(module: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of ``module``'s parameters (``torch.optim.swa_utils``)."""
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def update_ema(ema: AveragedModel, module: nn.Module, frozen: tuple[str, ...] = (), *,
               decay: float | None = None) -> None:
    """One EMA update of ``ema`` towards ``module``, leaving the entries whose state-dict names start
    with a prefix in ``frozen`` as they are (a network frozen by an alternating schedule keeps its
    averaged weights: they are the snapshot the other network trains against).

    ``decay``: this update's decay instead of the EMA's own (``ema ← decay·ema + (1 − decay)·module``
    on every parameter and floating buffer outside ``frozen``; 0 copies), for an average restarted at
    a phase (:func:`debiased_decay`)."""
    if decay is not None:
        for (name, q), (_, p) in zip(_averaged(ema.module), _averaged(module)):
            if not name.startswith(frozen):
                q.copy_(p) if decay == 0 or not q.is_floating_point() else q.lerp_(p, 1.0 - decay)
        ema.n_averaged += 1
        return
    if not frozen:
        ema.update_parameters(module)
        return
    if ema.multi_avg_fn is None:  # not make_ema's average: update all, then restore the frozen entries
        state = ema.module.state_dict()
        kept = {k: v.clone() for k, v in state.items() if k.startswith(frozen)}
        ema.update_parameters(module)
        for k, v in kept.items():
            state[k].copy_(v)
        return
    # AveragedModel.update_parameters on the entries outside ``frozen`` only (the same arithmetic on
    # each tensor: a copy at the first update, then the EMA's multi-tensor lerp per device and dtype),
    # instead of updating all and restoring the frozen ones: ~2× faster a step on small networks
    keys = getattr(ema, "_state_keys", None)  # the state-dict names, fixed with the module
    if keys is None:
        keys = ema._state_keys = frozenset(ema.module.state_dict())
    groups: dict = {}
    for (name, q), (_, p) in zip(_averaged(ema.module), _averaged(module)):
        if not (name in keys and name.startswith(frozen)):
            qs, ps = groups.setdefault((q.device, q.dtype), ([], []))
            qs.append(q.detach())
            ps.append(p.detach().to(q.device))
    for (device, _), (qs, ps) in groups.items():
        if ema.n_averaged == 0:
            for q, p in zip(qs, ps):
                q.copy_(p)
        else:
            ema.multi_avg_fn(qs, ps, ema.n_averaged.to(device))
    ema.n_averaged += 1


def _averaged(module: nn.Module):
    """``(name, tensor)`` of the parameters, then the buffers, in ``AveragedModel``'s order."""
    yield from module.named_parameters()
    yield from module.named_buffers()


def debiased_decay(decay: float, n: int) -> float:
    """The decay of update ``n >= 1`` of an exponential average restarted ``n − 1`` updates ago and
    corrected for its start (Adam's bias correction): with ``β_n = decay·(1 − decay^(n−1)) / (1 −
    decay^n)`` the average after ``n`` updates is ``Σ_i (1 − decay)·decay^(n−i)·w_i / (1 − decay^n)``,
    a weighted mean of the ``n`` weights since the restart only (``β_1 = 0``: a copy)."""
    return decay * (1.0 - decay ** (n - 1)) / (1.0 - decay ** n)

