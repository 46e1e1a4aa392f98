"""VSDM: the path VAE with a linear encoder learned by stochastic approximation (DESIGN §4.4).

Deng, Luo, Tan, Biloš, Chen, Nevmyvaka, Chen, *Variational Schrödinger Diffusion Models*, ICML 2024
(seed ``003_…``); reference code WayneDW/Variational_Schrodinger_Diffusion_Model. The preset is
linear encoder / DSM / alternating (DESIGN §2):

* **Decoder** (every step, the loop's Adam): denoising score matching with the exact multivariate
  transition ``q(x_t | x_0) = N(M_t x_0, Σ_t)`` of the current encoder (estimator 1,
  :func:`~sbdiff.objectives.dsm_loss`, noise prediction weighted by ``Σ_t``; Deng et al. eq. 15),
  simulation-free. With ``D = I`` this is the VP SGM exactly (same transition, same loss).
* **Encoder** (:meth:`VSDM.begin_step`, after ``vsdm.warmup`` steps and then every ``vsdm.interval``
  steps): one stochastic-approximation update of the variational score ``A_t = ½(I − D_t)``,

      ``θ_{n+1} = θ_n − η_n ∇_θ J(θ_n; X^{(n)})``,   ``η_n = sa_lr · n^{−sa_decay}``

  (Deng et al. 2024, Alg. 1 and the step-size conditions of their convergence theorem:
  ``Σ η_n = ∞``, ``Σ η_n² < ∞``), where ``X^{(n)}`` are fresh decoder trajectories from the
  reference prior ``N(0, I)`` and ``J`` is the encoder-side loss of DESIGN §2 (the SB-FBSDE forward
  loss, Chen et al. 2022 eq. 18, used by the reference code's ``compute_sb_nll_alternate_train``):

      ``J(θ) = E_P ∫₀ᵀ [½‖z_θ‖² + z_θᵀ ẑ + ζ g ∇·z_θ] dt``,

  with ``ẑ`` the decoder's control recorded along the paths. The encoder's control is linear,
  ``z_θ = g G_t x`` with ``G_t = A_t``, so its divergence is exact, ``g∇·z_θ = β tr G_t``, and ``J``
  depends on the paths only through the second moments ``E[x xᵀ]`` and ``E[ẑ xᵀ]`` at each time
  (:func:`path_moments`): the update costs one decoder simulation. ``ζ = vsdm.interact`` weights the
  divergence term (``interact_coef``, 0.75 in the reference code; ``ζ = 1`` is DESIGN §2 exactly).
* **Prior** ``N(0, Σ_T)`` of the current encoder (:meth:`LinearEncoder.prior_sampling`), for
  sampling and likelihoods; the paths that drive the update start from the reference prior
  ``N(0, I)``, as in the reference code, so that the update pulls the encoder's terminal law towards it
  (IPF's forward half-step).

The encoder's parameters are not optimised by the loop (``requires_grad = False``; excluded from
:meth:`trainable` and from DDP's gradient reduction); the update evaluates ``G_t`` at leaf copies
through ``torch.func.functional_call``. The trainer mirrors parameters it does not optimise into the
EMA model after every step, so the averaged decoder is always paired with the encoder the live
decoder is training against. The step-size schedule is a function of the step number, so a resumed
run repeats it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._controlled import control_at
from .._utils import SbdiffError, append_dims
from ..config import Config, Section, set_resolved
from ..distributed import step_generator
from ..decoders import ScoreDecoder
from ..linear_encoder import LinearEncoder
from ..model import PathVAE
from ..objectives import gaussian_kl_estimate
from ..solvers import sdeint, time_grid
from .base import build_network, check_flat, register
from .sgm import SGM

__all__ = ["VSDM", "VSDMConfig", "path_moments", "encoder_loss"]

#: Stream of :func:`~sbdiff.distributed.step_generator` for the decoder paths of an encoder update.
SA_STREAM = 1000
#: Stream of the training contexts drawn for those paths (a conditional run).
CONTEXT_DRAW_STREAM = 1001
#: Truncation of the stochastic approximation (Andrieu, Moulines, Priouret 2005): the eigenvalues of
#: ``D`` stay in ``[1/D_BOUND, D_BOUND]`` (projection after each step) and one gradient
#: step changes no parameter by more than ``MAX_STEP`` (in ``log D`` units; the step is scaled down).
#: Neither binds on a healthy run; they keep a decoder that is still poor from throwing ``D`` to 0 or ∞.
D_BOUND = 100.0
MAX_STEP = 1.0
#: Up to this dimension every eigenvalue of ``D`` is logged (``d_eig_0 <= d_eig_1 <= …``); above it
#: only ``d_min`` and ``d_max``.
LOGGED_EIGENVALUES = 8


@dataclass
class VSDMConfig(Section):
    """Settings of ``method = "vsdm"``, the ``[vsdm]`` section (DESIGN §4.4; Deng et al. 2024; docs/vsdm.md).

    The encoder ``dX = −½β(t) D_t X dt + √β(t) dW`` starts at ``D = I`` (the VP reference: the first
    ``warmup`` steps are SGM) and is updated every ``interval`` decoder steps by one stochastic-
    approximation step ``θ ← θ − η_n ∇J(θ)`` with ``η_n = sa_lr·n^(−sa_decay)`` on the encoder-side loss
    ``J`` of DESIGN §2 evaluated on ``paths`` decoder trajectories.
    """

    encoder: str = "auto"        # auto (diagonal for images, full for vectors) | full (D = exp(S), S symmetric) | diagonal | isotropic (D = e^s I)
    time_varying: bool = False   # D_t = I − c(t)(I − D), c(t) = exp(MLP(t)) (the reference code's A_t = A·exp(MLP(t)))
    warmup: int = 1000           # decoder steps before the first encoder update
    interval: int = 500          # decoder steps between encoder updates
    freeze: int = 0              # step from which the encoder stays fixed (0: never)
    sa_lr: float = 0.5           # first step size η_1 of η_n = sa_lr·n^(−sa_decay), n = 1, 2, … the update count
    sa_decay: float = 0.6        # 0 (constant) or in (0.5, 1] (Robbins–Monro: Σ η_n = ∞, Σ η_n² < ∞)
    sa_iters: int = 1            # gradient steps per update on the same decoder paths
    interact: float = 0.75       # ζ, weight of the divergence term of J (reference code's interact_coef; 1: DESIGN §2 exactly)
    paths: int = 256             # decoder trajectories per update, started from the reference prior N(0, I)
    path_steps: int = 100        # stochastic-Heun steps of those trajectories
    hidden: int = 32             # width of c(t)'s MLP (time_varying)


def _project(log_d: Tensor, family: str) -> Tensor:
    """Project the parameter of ``log D`` so that the eigenvalues of ``D`` lie in
    ``[1/D_BOUND, D_BOUND]`` (unchanged when they already do)."""
    bound = math.log(D_BOUND)
    if family != "full":
        return log_d.clamp(-bound, bound)
    S = 0.5 * (log_d + log_d.T)
    mu, U = torch.linalg.eigh(S)
    if bool((mu.abs() <= bound).all()):
        return log_d
    return (U * mu.clamp(-bound, bound)) @ U.T


@torch.no_grad()
def path_moments(model: PathVAE, n_paths: int, n_steps: int, generator: torch.Generator,
                 diagonal: bool = False, context: Tensor | None = None) -> dict[str, Tensor]:
    """Simulate ``n_paths`` decoder paths from the reference prior ``N(0, I)`` and return the moments
    that the encoder-side loss needs at the times ``t_k = T − k h``, ``h = (T − t_min)/n_steps``,
    ``k = 0, …, n_steps − 1``.

    The paths follow the decoder SDE ``dX = [f − g ẑ] dt + g dW̄`` backward with the stochastic Heun
    scheme (additive noise: weak order 2, Kloeden & Platen 1992 §15.1): the loss depends on the paths
    only through their time marginals, and Euler–Maruyama's bias at ``β h`` of order 0.1–1 (it
    inflates the variance of an OU chain by ``1/(1 − βh/4)``) would otherwise drive the update.

    Returns a dict with ``t`` (``(K,)``), ``w`` (``(K,)``, the Riemann weights ``h``), ``xx`` = ``E[x xᵀ]``
    and ``zx`` = ``E[ẑ xᵀ]`` at each ``t_k`` (``(K, d, d)``; with ``diagonal`` only the diagonals,
    ``(K, d)``), and ``zz`` = ``Σ_k w_k E‖ẑ_k‖²`` (scalar).

    A conditional decoder (DESIGN §4.6) runs path ``i`` under the context ``context[i]`` (``(n_paths,)``
    or ``(n_paths, k)``, model form: draws of the training contexts), so that the moments are those of
    the decoder's marginal over ``c``, which the unconditional linear encoder is fitted to.
    """
    ref, dec = model.reference, model.decoder
    device, dtype = model.data_mean.device, model.data_mean.dtype
    x = ref.prior_sampling((n_paths, model.dim), generator=generator, dtype=dtype, device=device)
    ts = time_grid(ref.T, model.t_min, n_steps, power=1.0, dtype=dtype, device=device)
    xx, zx, acc = [], [], {"zz": x.new_zeros(())}

    def drift(y, t):
        zhat = control_at(dec, y, t, context)
        f, g = ref.sde(y, t)
        return f - append_dims(g, y.ndim) * zhat, zhat

    def record(k: int, y: Tensor, tk: Tensor) -> None:  # the moments at t_k (and the drift the step uses)
        t = tk.expand(n_paths)
        b, zhat = drift(y, t)
        if diagonal:
            xx.append((y * y).mean(0))
            zx.append((zhat * y).mean(0))
        else:
            xx.append(y.T @ y / n_paths)
            zx.append(zhat.T @ y / n_paths)
        acc["zz"] = acc["zz"] + (-(ts[k + 1] - ts[k])) * zhat.pow(2).sum(1).mean()
        acc["b"] = b

    def heun(k: int, y: Tensor, t0: Tensor, t1: Tensor, noise: Tensor) -> Tensor:  # stochastic Heun, backward
        t, tt = t0.expand(n_paths), t1.expand(n_paths)
        h = t1 - t0  # negative: backward in time
        dw = torch.sqrt(-h) * noise
        g0, g1 = ref.g(t[:1]), ref.g(tt[:1])
        b = acc["b"]
        b1, _ = drift(y + b * h + g0 * dw, tt)
        return y + 0.5 * (b + b1) * h + 0.5 * (g0 + g1) * dw

    sdeint(heun, x, ts[:-1], generator=generator, observe=record)  # the last point, t_min, is not used
    zz = acc["zz"]
    return {"t": ts[:-1], "w": (ts[:-1] - ts[1:]), "xx": torch.stack(xx), "zx": torch.stack(zx), "zz": zz}


def encoder_loss(gain: Tensor, moments: dict[str, Tensor], g: Tensor, zeta: float) -> Tensor:
    """The encoder-side loss ``J = Σ_k w_k E[½‖z‖² + zᵀẑ + ζ g ∇·z]`` for the linear control
    ``z = g_k G_k x`` (DESIGN §2; SB-FBSDE forward loss), from the path moments (:func:`path_moments`).

    With ``X = E[x xᵀ]``, ``Y = E[ẑ xᵀ]``: ``E½‖z‖² = ½g² tr(G X Gᵀ)``, ``E zᵀẑ = g Σ_ij G_ij Y_ij``,
    ``g∇·z = g² tr G`` (exact: the divergence of a linear field).

    Parameters
    ----------
    gain : Tensor
        ``G_k`` at the path times: ``(K, d, d)``, or ``(K, d)`` for a diagonal encoder.
    moments : dict from :func:`path_moments` (matching layout).
    g : Tensor, shape (K,)
        ``g(t_k)``.
    zeta : float
        Weight of the divergence term.

    Returns
    -------
    Tensor
        Scalar.
    """
    w, xx, zx = moments["w"], moments["xx"], moments["zx"]
    if gain.ndim == 3:
        quad = ((gain @ xx) * gain).sum((1, 2))
        cross = (gain * zx).sum((1, 2))
        trace = torch.diagonal(gain, dim1=1, dim2=2).sum(1)
    else:
        quad = (gain.pow(2) * xx).sum(1)
        cross = (gain * zx).sum(1)
        trace = gain.sum(1)
    per_time = 0.5 * g**2 * quad + g * cross + zeta * g**2 * trace
    return (w * per_time).sum()


@register("vsdm")
class VSDM(SGM):
    """Linear encoder (stochastic approximation) / DSM decoder / alternating (module docstring)."""

    settings = VSDMConfig
    # the encoder update simulates U-Net paths on images: 128 x 50 Heun steps (~6 % of the time)
    image_defaults = {"paths": 128, "path_steps": 50}
    # encoder updates every 4 steps after 4 warm-up steps, on 16 short paths
    smoke = "[vsdm]\nwarmup = 4\ninterval = 4\npaths = 16\npath_steps = 5\n"

    def __init__(self, config: Config):
        super().__init__(config)
        #: diagnostics of the last encoder update, logged with every step's losses (and checkpointed)
        self._last: dict[str, float] = {}

    @classmethod
    def check(cls, config: Config) -> None:
        """Check ``[vsdm]`` and resolve ``encoder = "auto"`` (diagonal for images, full for vectors)."""
        v = config.vsdm
        if v.encoder not in ("auto", "full", "diagonal", "isotropic"):
            raise SbdiffError(f"vsdm.encoder must be auto, full, diagonal or isotropic, got '{v.encoder}'")
        if v.encoder == "auto":
            set_resolved(v, "encoder", "diagonal" if config.data.shape() is not None else "full")
        for name in ("warmup", "freeze"):
            if getattr(v, name) < 0:
                raise SbdiffError(f"vsdm.{name} must be >= 0, got {getattr(v, name)}")
        for name in ("interval", "sa_iters", "paths", "path_steps", "hidden"):
            if getattr(v, name) < 1:
                raise SbdiffError(f"vsdm.{name} must be at least 1, got {getattr(v, name)}")
        if not (v.sa_lr > 0 and math.isfinite(v.sa_lr)):
            raise SbdiffError(f"vsdm.sa_lr must be a finite positive number, got {v.sa_lr}")
        if not (v.sa_decay == 0 or 0.5 < v.sa_decay <= 1):
            raise SbdiffError(f"vsdm.sa_decay must be 0 (constant step size) or lie in (0.5, 1] (Robbins–Monro), "
                              f"got {v.sa_decay}")
        if not 0 <= v.interact <= 1:
            raise SbdiffError(f"vsdm.interact (zeta) must lie in [0, 1], got {v.interact}")
        if config.method == cls.name and config.reference.get("kind") != "vp":
            raise SbdiffError(f"method vsdm needs the VP reference (its encoder is dX = -1/2 beta(t) D_t X dt + "
                              f"sqrt(beta(t)) dW with the VP beta), got reference.kind = "
                              f"'{config.reference.get('kind')}'")

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        cfg = self.config
        self.check(cfg)  # the VP reference; encoder = auto resolved (a config built in code, not validated)
        v = cfg.vsdm
        reference = self.make_reference()
        dim = check_flat(data)
        encoder = LinearEncoder(reference, dim, v.encoder, time_varying=v.time_varying, hidden=v.hidden)
        encoder.requires_grad_(False)  # updated by stochastic approximation in begin_step, not by the loop
        net = build_network(cfg, dim, reference.T)
        return self.assemble(encoder, ScoreDecoder(encoder, net, "noise"), data)

    def trainable(self, model: PathVAE) -> list[torch.nn.Parameter]:
        """The decoder's parameters (the encoder is updated in :meth:`begin_step`)."""
        return [p for p in model.decoder.parameters() if p.requires_grad]

    # -- the encoder's schedule ---------------------------------------------------------------------
    def update_index(self, step: int) -> int:
        """``n >= 1`` when an encoder update happens before optimiser step ``step``, else 0."""
        v = self.config.vsdm
        if step < v.warmup or (v.freeze and step >= v.freeze) or (step - v.warmup) % v.interval:
            return 0
        return (step - v.warmup) // v.interval + 1

    def step_size(self, n: int) -> float:
        """``η_n = sa_lr · n^{−sa_decay}``."""
        v = self.config.vsdm
        return v.sa_lr * n ** (-v.sa_decay)

    def begin_step(self, model: PathVAE, step: int) -> None:
        n = self.update_index(step)
        if not n:
            return
        v = self.config.vsdm
        enc = model.encoder
        gen = step_generator(self.config.seed, step, SA_STREAM, model.data_mean.device)
        diagonal = enc.family != "full"
        context = None
        if self.context_pool is not None:  # a conditional decoder: paths under drawn training contexts
            pool = self.context_pool
            pick = step_generator(self.config.seed, step, CONTEXT_DRAW_STREAM, pool.device)
            context = pool[torch.randint(0, len(pool), (v.paths,), generator=pick, device=pool.device)]
        mom = path_moments(model, v.paths, v.path_steps, gen, diagonal=diagonal, context=context)
        g = model.reference.g(mom["t"])
        eta = self.step_size(n)
        names = [k for k, _ in enc.named_parameters()]
        theta = {k: p.detach().clone() for k, p in enc.named_parameters()}
        loss0 = None
        with torch.enable_grad():
            for _ in range(v.sa_iters):
                leaves = {k: p.requires_grad_(True) for k, p in theta.items()}
                gain = torch.func.functional_call(enc, leaves, (mom["t"],))
                loss = encoder_loss(gain, mom, g, v.interact)
                grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
                if loss0 is None:
                    loss0 = float(loss.detach())
                if not math.isfinite(float(loss.detach())) or not all(gr is None or bool(torch.isfinite(gr).all())
                                                             for gr in grads):
                    self._last = {**self._last, "sa_skipped": self._last.get("sa_skipped", 0.0) + 1.0}
                    return  # a non-finite update is dropped (the encoder keeps its value)
                steps = {k: eta * gr for k, gr in zip(names, grads) if gr is not None}
                largest = max((float(st.abs().max()) for st in steps.values()), default=0.0)
                shrink = min(1.0, MAX_STEP / largest) if largest > 0 else 1.0
                theta = {k: (leaves[k] - shrink * steps[k] if k in steps else leaves[k]).detach() for k in names}
                theta["log_d"] = _project(theta["log_d"], enc.family)
        with torch.no_grad():
            for k, p in enc.named_parameters():
                p.copy_(theta[k])  # the trainer mirrors it into the EMA model (a parameter it does not optimise)
            lam = torch.sort(enc.spectrum()[1]).values
            eig = {f"d_eig_{i}": float(v) for i, v in enumerate(lam)} if lam.numel() <= LOGGED_EIGENVALUES else {}
            self._last = {**self._last, "sa_loss": loss0 + float(mom["zz"]) / 2, "sa_updates": float(n),
                          "sa_lr": eta, "d_min": float(lam[0]), "d_max": float(lam[-1]), **eig}

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator,
               context: Tensor | None = None) -> dict[str, Tensor]:
        """SGM's DSM loss (with this encoder's transitions) plus the last encoder update's diagnostics:
        ``sa_loss`` (``J + ½E∫‖ẑ‖²``, the forward half-bridge's path KL up to a constant), ``d_min``,
        ``d_max`` (extreme eigenvalues of ``D``; every one, ascending, as ``d_eig_i`` for ``d <= 8``),
        ``sa_lr`` and ``sa_updates``."""
        out = super().losses(model, batch, generator, context=context)
        for k, val in self._last.items():
            out[k] = torch.tensor(val, dtype=out["loss"].dtype, device=out["loss"].device)
        return out

    @torch.no_grad()
    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Gaussian-moment KL of the encoder's ``X_T`` (drawn in closed form from the batch) against the
        prior ``N(0, Σ_T)``, computed after whitening by ``Σ_T`` (KL is invariant under the map), with the
        estimator of every preset's monitor (:meth:`~sbdiff.methods.Method.prior_kl`)."""
        enc = model.encoder
        x_T, _, _ = enc.sample_transition(batch, 0.0, model.reference.T, generator=generator)
        U, lam = spec = enc.spectrum()
        _, v = enc.coeffs(0.0, model.reference.T, x_T[:1], spec)
        return gaussian_kl_estimate(enc.to_eig(x_T, U) / torch.sqrt(v), prior_var=1.0)

    def state_dict(self) -> dict:
        return {"last": dict(self._last)}

    def load_state_dict(self, state: dict) -> None:
        self._last = {k: float(v) for k, v in dict(state.get("last", {})).items()}
