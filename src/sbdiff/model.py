"""The path VAE: an encoder (forward SDE), a decoder (backward SDE) and a prior (DESIGN §2, §3).

A trained method returns a :class:`PathVAE`. It works in *model coordinates* ``y = (x − mean)/scale``
(a per-coordinate standardisation of the data, identity when disabled); ``encode``, ``decode``,
``sample``, ``log_prob`` and ``elbo`` take and return data coordinates and account for the
Jacobian of that map.

Images are flat vectors of dimension ``D = C·H·W`` here too (the network reshapes internally); for
them the map is one scalar affine map onto ``[−1, 1]`` and integer-valued images are dequantised by
uniform noise of one level's width ``Δ`` (:class:`sbdiff.data.ImageScaling`), so that
:meth:`PathVAE.bits_per_dim` bounds the discrete data's code length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._utils import SbdiffError, append_dims, as_time
from ._controlled import control_at
from .decoders import Decoder
from .encoders import Encoder
from .objectives import path_elbo, simulated_path_elbo
from .solvers import ODE_SOLVERS, euler_maruyama, ode_adaptive, ode_fixed, ode_log_det, time_grid

__all__ = ["PathVAE"]


class PathVAE(nn.Module):
    """Encoder, decoder and Gaussian prior on ``[t_min, T]``.

    Parameters
    ----------
    encoder : Encoder
        Forward SDE ``dX = [f + g z_φ] dt + g dW`` (data -> prior).
    decoder : Decoder
        Backward SDE ``dX = [f − g ẑ_θ] dt + g dW̄`` (prior -> data).
    dim : int
        Data dimension ``d``.
    t_min : float
        Small time where paths stop on the data side (the score is singular at ``t = 0``).
    data_mean, data_scale : Tensor, shape (d,), optional
        The standardisation of the data; identity when omitted.
    image_shape : tuple (C, H, W), optional
        For image data (``d = C·H·W``): the shape of one image (a plain attribute, rebuilt from the
        run's config by :func:`sbdiff.train.load_run`).
    dequant_step : float
        Width ``Δ`` of one quantisation level in data units (integer-valued images: the data are
        points ``x`` on the grid and the model is a density of ``x + Δu``, ``u ~ U[0,1)^d``);
        0 for continuous data.
    prior_data : Tensor, shape (M, d), optional
        Bridge mode: samples of the second data set, the prior at ``t = T``, in data coordinates
        (a plain attribute, not saved with the weights; :func:`sbdiff.train.load_run` reloads it from
        ``data.prior``). :meth:`sample_prior` then draws rows of it, and the prior has no density
        (:meth:`log_prob` and :meth:`elbo` raise).
    sde_grid : Tensor, shape (N+1,), optional
        A fixed increasing time grid ``0 = t_0 < … < t_N = T`` on which the SDEs are defined (DSB's
        discrete chains, DESIGN §4.2): :meth:`decode` and :meth:`encode` then run Euler–Maruyama on it
        whatever ``nfe`` says (``nfe`` still sets the ODE's steps). Saved as a buffer.
    context : tuple (kind, size), optional
        A conditional model (DESIGN §4.6): ``("label", K)`` for class labels ``0 … K−1``, or
        ``("vector", k)`` for observed values of ``k`` coordinates (a series' history), standardised
        by the buffers ``context_mean``, ``context_scale`` (:meth:`fit_context_scaling`). Every
        generating and scoring method then takes ``cond`` (labels ``(N,)`` or values ``(N, k)`` in data
        units), and the likelihoods are ``log p(x | c)``.
    """

    def __init__(self, encoder: Encoder, decoder: Decoder, dim: int, t_min: float = 1e-3,
                 data_mean: Tensor | None = None, data_scale: Tensor | None = None,
                 image_shape: tuple[int, int, int] | None = None, dequant_step: float = 0.0,
                 prior_data: Tensor | None = None, sde_grid: Tensor | None = None,
                 context: tuple[str, int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.reference = encoder.reference
        self.dim = int(dim)
        self.t_min = float(t_min)
        if not 0 <= self.t_min < self.reference.T:
            raise SbdiffError(f"t_min must lie in [0, T={self.reference.T}), got {t_min}")
        mean = torch.zeros(dim) if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32)
        scale = torch.ones(dim) if data_scale is None else torch.as_tensor(data_scale, dtype=torch.float32)
        self.register_buffer("data_mean", mean.clone())
        self.register_buffer("data_scale", scale.clone())
        if image_shape is not None and math.prod(image_shape) != self.dim:
            raise SbdiffError(f"image_shape {tuple(image_shape)} does not match the dimension {dim}")
        if not dequant_step >= 0:
            raise SbdiffError(f"dequant_step must be >= 0, got {dequant_step}")
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else None
        self.dequant_step = float(dequant_step)
        self.prior_data = None
        if prior_data is not None:
            self.set_prior_data(prior_data)
        if sde_grid is not None:
            grid = torch.as_tensor(sde_grid, dtype=torch.float32)
            if grid.ndim != 1 or len(grid) < 2 or not bool((grid[1:] > grid[:-1]).all()):
                raise SbdiffError("sde_grid must be an increasing 1-D grid of at least two times")
            self.register_buffer("sde_grid", grid.clone())
        else:
            self.sde_grid = None
        self.context = None if context is None else (str(context[0]), int(context[1]))
        if self.context is not None and self.context[0] == "vector":
            self.register_buffer("context_mean", torch.zeros(self.context[1]))
            self.register_buffer("context_scale", torch.ones(self.context[1]))

    # -- context (DESIGN §4.6) ------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """True when the model generates under a context (:attr:`context`)."""
        return self.context is not None

    def fit_context_scaling(self, c: Tensor) -> None:
        """Vector contexts: standardise by the mean and standard deviation of the training contexts
        ``c`` ``(N, k)`` (data units; a constant coordinate keeps scale 1)."""
        if self.context is None or self.context[0] != "vector":
            return
        c = torch.as_tensor(c, dtype=torch.float64)
        std = c.std(0) if len(c) > 1 else torch.ones(c.shape[1], dtype=torch.float64)
        self.context_mean.copy_(c.mean(0).float())
        self.context_scale.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)).float())

    def context_to_model(self, cond, n: int | None = None) -> Tensor | None:
        """Check a context and bring it to the form the networks take: labels ``(N,)`` as int64 in
        ``0 … K−1`` (one label, an int, is repeated ``n`` times), values ``(N, k)`` standardised.
        ``"null"``: the null context for every row (the unconditional model a run trained with
        ``cond.p_uncond > 0`` holds). ``None`` for an unconditional model; :class:`~sbdiff.SbdiffError`
        for a missing context, a label
        never seen in training, values of another width, NaN or inf, or ``N`` other than ``n``."""
        if self.context is None:
            if cond is not None:
                raise SbdiffError("this model is unconditional: it takes no context (cond)")
            return None
        kind, size = self.context
        if isinstance(cond, str) and cond == "null":  # the null context: the model with c dropped (CFG)
            rows = 1 if n is None else int(n)
            c = torch.zeros(rows, dtype=torch.int64) if kind == "label" else torch.zeros(rows, size)
            return self.drop_context(c.to(self.data_mean.device), torch.ones(rows, dtype=torch.bool,
                                                                           device=self.data_mean.device))
        if cond is None:
            what = "a class label" if kind == "label" else f"observed values ({size} per sample)"
            raise SbdiffError(f"this model is conditional: give {what} as cond")
        device = self.data_mean.device
        if kind == "label":
            c = torch.as_tensor(cond)
            if c.ndim == 0:
                c = c.reshape(1).expand(1 if n is None else int(n))
            if c.ndim != 1:
                raise SbdiffError(f"labels: expected one integer label per sample, shape (N,), got {tuple(c.shape)}")
            if c.is_floating_point():
                if not bool(torch.isfinite(c).all()) or not bool((c == c.round()).all()):
                    raise SbdiffError("labels must be integers")
            elif c.dtype == torch.bool or c.is_complex():
                raise SbdiffError(f"labels must be integers, got {c.dtype}")
            c = c.to(torch.int64)
            bad = c[(c < 0) | (c >= size)]
            if len(bad):
                raise SbdiffError(f"label {int(bad[0])} was never seen in training (this run's classes are "
                                  f"0 … {size - 1})")
            out = c.to(device)
        else:
            c = torch.as_tensor(cond, dtype=torch.float32)
            if c.ndim == 1 and n is not None and len(c) == size:
                c = c.reshape(1, size).expand(int(n), size)
            if c.ndim != 2 or c.shape[1] != size:
                raise SbdiffError(f"context: expected shape (N, {size}), got {tuple(c.shape)}")
            if not bool(torch.isfinite(c).all()):
                raise SbdiffError("context: contains NaN or inf")
            out = (c.to(device) - self.context_mean) / self.context_scale
        if n is not None and len(out) != int(n):
            raise SbdiffError(f"context: {len(out)} rows for {int(n)} samples")
        return out

    def drop_context(self, c: Tensor, mask: Tensor) -> Tensor:
        """The model-form context ``c`` with the rows where ``mask`` ``(B,)`` is true replaced by the
        null context (:func:`~sbdiff.nets.drop_context`; classifier-free guidance's training)."""
        from .nets import drop_context

        return drop_context(c, mask, self.context)

    @property
    def bridge(self) -> bool:
        """True when the prior is a second data set (:attr:`prior_data`), not a Gaussian."""
        return self.prior_data is not None

    def set_prior_data(self, prior_data) -> None:
        """Use the points ``prior_data`` (``(M, d)``, data coordinates) as the prior (bridge mode)."""
        prior = torch.as_tensor(prior_data, dtype=torch.float32)
        if prior.ndim != 2 or prior.shape[1] != self.dim or len(prior) < 1:
            raise SbdiffError(f"prior data: expected shape (M, {self.dim}), got {tuple(prior.shape)}")
        if not torch.isfinite(prior).all():
            raise SbdiffError("prior data: contains NaN or inf")
        self.prior_data = prior

    def networks(self) -> list[nn.Module]:
        """The distinct neural networks of the encoder and the decoder, encoder first.

        A part's network is its ``net`` attribute when that is an :class:`~torch.nn.Module` with
        parameters (:class:`~sbdiff.encoders.NeuralEncoder`, the decoders); closed-form encoders
        (the fixed reference, VSDM's :class:`~sbdiff.linear_encoder.LinearEncoder`, whose
        parameters are updated outside the optimiser) have none. A network shared by both parts is
        listed once. ``train.compile`` compiles these.

        Returns
        -------
        list of nn.Module
        """
        nets: list[nn.Module] = []
        for part in (self.encoder, self.decoder):
            net = getattr(part, "net", None)
            if (isinstance(net, nn.Module) and next(net.parameters(), None) is not None
                    and all(net is not n for n in nets)):
                nets.append(net)
        return nets

    # -- coordinates --------------------------------------------------------------------------
    def to_model(self, x: Tensor) -> Tensor:
        return (x - self.data_mean.to(x.dtype)) / self.data_scale.to(x.dtype)

    def to_data(self, y: Tensor) -> Tensor:
        return y * self.data_scale.to(y.dtype) + self.data_mean.to(y.dtype)

    def as_images(self, x: Tensor) -> Tensor:
        """Flat points ``(N, D)`` (or paths ``(K+1, N, D)``) reshaped to images ``(..., C, H, W)``."""
        if self.image_shape is None:
            raise SbdiffError("this model was not trained on images")
        return x.reshape(*x.shape[:-1], *self.image_shape)

    def dequantize(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Uniform dequantisation ``x + Δ·u``, ``u ~ U[0, 1)^d`` of grid points ``x`` (data units,
        shape ``(N, d)``); ``x`` itself for continuous data (``Δ = 0``)."""
        if self.dequant_step == 0:
            return x
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.dequant_step * u

    def dequantize_model(self, y: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The same in model coordinates: ``y + (Δ/scale)·u`` for ``y = to_model(x)``, shape ``(N, d)``
        (training batches arrive in model coordinates)."""
        if self.dequant_step == 0:
            return y
        u = torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y + (self.dequant_step / self.data_scale.to(y.dtype)) * u

    @property
    def log_scale(self) -> float:
        return float(torch.log(self.data_scale.double()).sum())

    def _check(self, x: Tensor, what: str) -> Tensor:
        if not torch.is_tensor(x):
            x = torch.as_tensor(x)
        if self.image_shape is not None and x.ndim == 4 and tuple(x.shape[1:]) == self.image_shape:
            x = x.reshape(x.shape[0], self.dim)  # images (N, C, H, W) -> flat
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise SbdiffError(f"{what}: expected shape (N, {self.dim}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise SbdiffError(f"{what}: contains NaN or inf")
        return x.to(dtype=self.data_mean.dtype, device=self.data_mean.device)

    # -- fields ---------------------------------------------------------------------------------
    def velocity(self, y: Tensor, t: Tensor | float, c: Tensor | None = None, guidance: float = 0.0) -> Tensor:
        """Probability-flow velocity ``f + ½ g (z − ẑ)`` (DESIGN §3), model coordinates, ``(B, d)``;
        given the model-form context ``c`` (:meth:`context_to_model`), with ``ẑ`` guided by weight
        ``guidance`` (:meth:`~sbdiff.decoders.Decoder.guided_control`)."""
        t = as_time(t, y)
        f, g = self.reference.sde(y, t)
        z = control_at(self.encoder, y, t, c)
        zhat = self.decoder.guided_control(y, t, c, guidance)
        return f + 0.5 * append_dims(g, y.ndim) * (z - zhat)

    def _fields(self, c: Tensor | None, guidance: float):
        """``(velocity, decoder drift, encoder drift)`` given the model-form context ``c`` (the
        model's own methods when there is none)."""
        if c is None:
            return self.velocity, self.decoder.drift, self.encoder.drift

        def decoder_drift(y, t):
            t = as_time(t, y)
            f, g = self.reference.sde(y, t)
            return f - append_dims(g, y.ndim) * self.decoder.guided_control(y, t, c, guidance)

        return (lambda y, t: self.velocity(y, t, c, guidance)), decoder_drift, (lambda y, t: self.encoder.drift(y, t, c))

    def prior_logp(self, y: Tensor) -> Tensor:
        """Log density of the prior at ``y`` (model coordinates, ``(B, d)``); returns ``(B,)``."""
        if self.bridge:
            raise SbdiffError("this is a bridge between two data sets: its prior is a sample set without a "
                              "density, so likelihoods (log_prob, elbo) are not defined")
        return self.encoder.prior_logp(y)

    def _grid(self, t_start: float, t_end: float, nfe: int, ode: bool, like: Tensor) -> Tensor:
        if self.sde_grid is not None and not ode:
            grid = self.sde_grid.to(dtype=like.dtype, device=like.device)
            return grid.flip(0) if t_start > t_end else grid
        return time_grid(t_start, t_end, nfe, dtype=like.dtype, device=like.device)

    # -- transport ----------------------------------------------------------------------------
    def _integrate(self, y: Tensor, ts: Tensor, sde_drift, *, ode: bool, solver: str,
                   trajectory: bool, generator, progress: bool, velocity=None, noise_last: bool = False) -> Tensor:
        velocity = self.velocity if velocity is None else velocity
        if ode:
            if solver not in ODE_SOLVERS:
                raise SbdiffError(f"unknown ODE solver '{solver}'; choose from {', '.join(ODE_SOLVERS)}")
            if solver == "dopri5":
                return ode_adaptive(velocity, y, ts, trajectory=trajectory)
            return ode_fixed(velocity, y, ts, method=solver, trajectory=trajectory, progress=progress)
        # on a fixed chain grid (DSB) a step's noise is the forward chain's step's: g at its data-side end
        noise_at = "lower" if self.sde_grid is not None else "start"
        return euler_maruyama(sde_drift, self.reference.g, y, ts, generator=generator, noise_at=noise_at,
                              noise_last=noise_last, trajectory=trajectory, progress=progress)

    @staticmethod
    def plan_sampler(part, ode: bool, sde: bool, trajectory: bool):
        """``part.sample_plan`` when ``part`` (an encoder or a decoder) draws its end points in closed form
        (LightSB's mixtures, DESIGN §4.7) and neither the ODE, the SDE nor a path was asked for; else None."""
        if ode or sde or trajectory:
            return None
        return getattr(part, "sample_plan", None)

    @torch.no_grad()
    def decode(self, z: Tensor, *, nfe: int = 500, ode: bool = False, solver: str = "heun",
               trajectory: bool = False, generator: torch.Generator | None = None,
               progress: bool = False, cond=None, guidance: float = 0.0, sde: bool = False) -> Tensor:
        """Prior side -> data side: the decoder SDE (Euler–Maruyama) or the PF-ODE, from ``T`` to ``t_min``;
        or, for a decoder with a closed-form plan (``sample_plan``: lightsb, DESIGN §4.7), exact draws
        of the plan unless ``ode``, ``sde`` or ``trajectory`` is asked for.

        ``z`` are prior-side points in model coordinates (Gaussian prior) or, in bridge mode, in data
        coordinates (points of the second data set).

        Parameters
        ----------
        z : Tensor, shape (N, d)
            Prior-side points (model coordinates, e.g. draws of the prior).
        nfe : int
            Number of steps (for ``dopri5``: number of reported intervals of the trajectory).
        ode : bool
            Probability-flow ODE instead of the SDE.
        solver : {"euler", "heun", "dopri5"}
            ODE solver.
        trajectory : bool
            Return the path ``(nfe+1, N, d)`` (data coordinates) instead of the end ``(N, d)``.
        cond : labels ``(N,)`` (or one int) or values ``(N, k)``, optional
            The context of a conditional model (:meth:`context_to_model`), one per point.
        guidance : float
            Classifier-free guidance weight ``w`` (0: the plain conditional model; DESIGN §4.6).
        sde : bool
            Integrate the decoder SDE even when the decoder has a closed-form plan.
        """
        z = self._check(z, "decode input")
        c = self.context_to_model(cond, len(z))
        if guidance != 0 and c is None:
            raise SbdiffError("guidance needs a conditional model and its context")
        if not (guidance >= 0 and math.isfinite(guidance)):
            raise SbdiffError(f"guidance must be a finite number >= 0, got {guidance}")
        if self.bridge:  # the prior side is a data set: its points come in data coordinates
            z = self.to_model(z)
        plan = self.plan_sampler(self.decoder, ode, sde, trajectory)
        if plan is not None:
            return self.to_data(plan(z, generator))
        ts = self._grid(self.reference.T, self.t_min, nfe, ode, z)
        velocity, drift, _ = self._fields(c, guidance)
        out = self._integrate(z, ts, drift, ode=ode, solver=solver, trajectory=trajectory, generator=generator,
                              progress=progress, velocity=velocity,
                              noise_last=getattr(self.decoder, "noise_last", False))
        return self.to_data(out)

    @torch.no_grad()
    def encode(self, x: Tensor, *, nfe: int = 500, ode: bool = False, solver: str = "heun",
               trajectory: bool = False, generator: torch.Generator | None = None,
               progress: bool = False, cond=None, sde: bool = False) -> Tensor:
        """Data side -> prior side: the encoder SDE or the PF-ODE, from ``t_min`` to ``T``; exact draws
        of the encoder's plan where it has one in closed form (as :meth:`decode`, ``sde`` likewise).

        ``x`` has shape ``(N, d)`` in data coordinates; returns prior-side points ``(N, d)`` in model
        coordinates (bridge mode: data coordinates), or the path ``(nfe+1, N, d)`` in data
        coordinates when ``trajectory``.
        """
        y = self.to_model(self._check(x, "encode input"))
        velocity, _, drift = self._fields(self.context_to_model(cond, len(y)), 0.0)
        plan = self.plan_sampler(self.encoder, ode, sde, trajectory)
        if plan is not None:
            out = plan(y, generator)
            return self.to_data(out) if self.bridge else out
        ts = self._grid(self.t_min, self.reference.T, nfe, ode, y)
        out = self._integrate(y, ts, drift, ode=ode, solver=solver, trajectory=trajectory, generator=generator,
                              progress=progress, velocity=velocity,
                              noise_last=getattr(self.encoder, "noise_last", False))
        return self.to_data(out) if trajectory or self.bridge else out

    def sample_prior(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of the prior, shape ``(n, d)``, in the coordinates :meth:`decode` takes: the
        Gaussian prior in model coordinates, or in bridge mode rows of :attr:`prior_data` drawn with
        replacement, in data coordinates (:meth:`prior_model_points` gives model coordinates in
        both modes)."""
        device = self.data_mean.device
        if self.bridge:
            if len(self.prior_data) == 0:
                raise SbdiffError("this bridge run's prior data file is missing: give start points instead "
                                  "(sbdiff decode --from FILE)")
            idx = torch.randint(0, len(self.prior_data), (int(n),), generator=generator, device=device)
            return self.prior_data.to(device)[idx]
        return self.encoder.prior_sampling((int(n), self.dim), generator=generator, device=device)

    def prior_model_points(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of the prior in model coordinates, shape ``(n, d)`` (both modes)."""
        z = self.sample_prior(n, generator=generator)
        return self.to_model(z) if self.bridge else z

    @torch.no_grad()
    def sample(self, n: int, **kwargs) -> Tensor:
        """``n`` samples of the model, shape ``(n, d)`` (data coordinates); keywords as :meth:`decode`
        (a conditional model: ``cond``, one label for all or one context per sample, and ``guidance``)."""
        if int(n) < 1:
            raise SbdiffError(f"number of samples must be at least 1, got {n}")
        return self.decode(self.sample_prior(n, generator=kwargs.get("generator")), **kwargs)

    # -- likelihood -----------------------------------------------------------------------------
    def log_prob(self, x: Tensor, *, exact: bool | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                 batch_size: int = 1000, generator: torch.Generator | None = None, cond=None) -> Tensor:
        """Log density (nats) of the PF-ODE model at data points ``x`` of shape ``(N, d)``; returns ``(N,)``.

        ``log p(x) = log p_T(y_T) + ∫_{t_min}^T ∇·v dt − Σ log scale`` (DESIGN §3), adaptive ``dopri5``,
        exact divergence for ``d <= 64`` unless ``exact=False`` (Hutchinson). A conditional model
        gives ``log p(x | c)`` for the contexts ``cond`` (one per point; DESIGN §4.6).
        """
        x = self._check(x, "log_prob input")
        c_all = self.context_to_model(cond, len(x))
        out = []
        for i, chunk in enumerate(torch.split(x, batch_size)):
            y = self.to_model(chunk)
            c = None if c_all is None else c_all[i * batch_size:i * batch_size + len(chunk)]
            y_T, int_div = ode_log_det(self._fields(c, 0.0)[0], y, self.t_min, self.reference.T, exact=exact,
                                       rtol=rtol, atol=atol, generator=generator)
            out.append(self.prior_logp(y_T) + int_div - self.log_scale)
        return torch.cat(out)

    def elbo(self, x: Tensor, *, n_time: int = 64, exact: bool | None = None, batch_size: int = 250,
             generator: torch.Generator | None = None, cond=None) -> Tensor:
        """Path ELBO (nats) at data points ``x`` of shape ``(N, d)``; returns ``(N,)``; a lower bound
        of the decoder SDE's log-likelihood (see :func:`sbdiff.objectives.path_elbo`; encoders without
        closed-form transitions, e.g. SB-FBSDE's neural encoder, simulate their paths:
        :func:`sbdiff.objectives.simulated_path_elbo`, ``n_time`` integrand evaluations per path)."""
        x = self._check(x, "elbo input")
        c_all = self.context_to_model(cond, len(x))
        out = []
        closed = getattr(self.encoder, "closed_form", False)
        if c_all is not None and not closed:
            raise SbdiffError("the conditional path ELBO needs an encoder with closed-form transitions (sgm, vsdm)")
        for i, chunk in enumerate(torch.split(x, batch_size)):
            if closed:
                c = None if c_all is None else c_all[i * batch_size:i * batch_size + len(chunk)]
                e = path_elbo(self.encoder, self.decoder, self.prior_logp, self.to_model(chunk),
                              t_min=self.t_min, n_time=n_time, exact=exact, generator=generator, context=c)
            else:
                e = simulated_path_elbo(self.encoder, self.decoder, self.prior_logp, self.to_model(chunk),
                                        t_min=self.t_min, n_time=n_time, exact=exact, generator=generator)
            out.append(e - self.log_scale)
        return torch.cat(out)

    def bits_per_dim(self, nats: Tensor | float) -> Tensor | float:
        """Convert a negative log-likelihood (nats per sample, data units) to bits per dimension.

        Continuous data (``Δ = 0``): ``bpd = nll/(D log 2)``, the differential code length.

        Dequantised images (``Δ > 0``): ``nats`` must be the NLL of the dequantised points
        ``x + Δu`` (see :meth:`dequantize`, :func:`sbdiff.evaluation.evaluate`). A grid point's
        probability is the density's mass over its cell of volume ``Δ^D``, so by Jensen
        ``−log P(x) ≤ E_u[−log p(x + Δu)] − D log Δ`` (Theis et al. 2016 eq. 13) and

            ``bpd = (nll/D − log Δ)/log 2``.

        In the unit-cube units of the literature, ``y = (k + u)/L ∈ [0, 1)^D`` for level ``k``, this
        is ``bpd = (nll_y/D + log L)/log 2`` with ``nll_y = nll − D log(LΔ)`` (the log-Jacobian of
        ``y ↦ x``): the two agree. The model-coordinate scaling ``[−1, 1]`` is already inside
        ``nll`` (:meth:`log_prob` subtracts ``Σ log scale``).
        """
        per_dim = nats / self.dim
        if self.dequant_step > 0:
            per_dim = per_dim - math.log(self.dequant_step)
        return per_dim / math.log(2.0)
