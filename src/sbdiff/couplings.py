"""Couplings of two sample sets and the pinned bridges of a reference SDE (DESIGN §4.5).

Bridge matching regresses each drift on bridges of the reference pinned at pairs ``(x0, x1)`` of a
coupling. This module supplies both halves:

* :func:`minibatch_coupling` — pairs of two sample sets: ``independent`` (the product of the
  marginals), or a minibatch optimal-transport plan on blocks of the sets, exact (``ot``: POT's
  ``ot.emd``) or entropic (``entropic``: POT's Sinkhorn with regularisation ``2·eps`` for
  the cost ``‖x0 − x1‖²``, i.e. the entropic-OT plan of cost ``½‖x0 − x1‖²`` and weight ``eps``, the
  static SB of ``brownian(eps)``; Tong et al. 2024). POT works on the torch tensors directly.
* :func:`bridge_sample` and :func:`bridge_targets` — the bridge of a linear reference with scalar
  transitions ``q(x_t | x_s) = N(a(s, t) x_s, v(s, t) I)`` pinned at ``x0`` (``t = 0``) and ``x1``
  (``t = T``), and the controls of its forward and backward drifts; :class:`BridgeTimes` — the
  regression's time sampling, which keeps the gradient's variance finite near the pinned ends.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ._utils import SbdiffError, append_dims

__all__ = ["COUPLINGS", "minibatch_coupling", "bridge_sample", "bridge_targets", "bridge_variances", "BridgeTimes",
           "bridge_matching_loss"]

#: The iteration-0 couplings of :func:`minibatch_coupling`.
COUPLINGS = ("independent", "ot", "entropic")


def _plan(x0: Tensor, x1: Tensor, kind: str, eps: float, max_iter: int) -> Tensor:
    """The minibatch plan ``(n, m)`` of :func:`_solve` (the plan alone)."""
    return _solve(x0, x1, kind, eps, max_iter)[0]


def _solve(x0: Tensor, x1: Tensor, kind: str, eps: float, max_iter: int) -> tuple[Tensor, str]:
    """The minibatch plan ``(n, m)`` between uniform weights on ``x0`` ``(n, d)`` and ``x1`` ``(m, d)``.

    ``entropic``: POT's Sinkhorn in the scaling domain on the cost shifted by its row and then its
    column minima. The shift leaves the entropic plan unchanged (it is absorbed by the dual
    potentials) and puts a 1 in every row and column of the Gibbs kernel, so no row underflows; in
    float64 it agreed with POT's log-domain solver to ``|ΔP|₁ ≤ 3e-3`` on 512 × 512 blocks at
    ``D ≤ 64``, ``eps ∈ {0.1, 1, 10}`` of the rotated pairs, 6–130× faster (commit 4dbd558;
    tests/test_dsbm.py). Where it fails (a non-finite plan, or marginals off by more than 1 % in total
    variation after ``max_iter`` iterations: ``2·eps`` tiny against the cost), the plan is the exact
    one (``ot.emd``), the entropic plan's limit as ``2·eps``/cost → 0. On draft-recipe pairs at
    eps = 0.1 (512 × 512 blocks, shifted costs up to 200 at D = 16 and 700 at D = 64) no Sinkhorn of
    POT's converged in 1000 iterations (scaling, stabilised, log-domain), the log-domain one taking 8.6
    and 13.9 s a block, ``ot.emd`` 45 and 50 ms; a 5-minute dsbm run on the log-domain fallback spent
    most of its budget in two coupling draws (1001 steps in 463 s).

    Returns the plan and the kind solved (``"ot"`` where the entropic plan fell back to the exact one).
    """
    import ot  # POT: imported here, its import costs ~0.3 s

    a = torch.full((len(x0),), 1.0 / len(x0), dtype=x0.dtype, device=x0.device)
    b = torch.full((len(x1),), 1.0 / len(x1), dtype=x1.dtype, device=x1.device)
    cost = torch.cdist(x0, x1).pow(2)
    if kind == "ot":
        return ot.emd(a, b, cost), "ot"
    cost = cost - cost.min(1, keepdim=True).values
    cost = cost - cost.min(0, keepdim=True).values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": the iteration cap is a budget
        plan = ot.sinkhorn(a, b, cost, 2.0 * eps, method="sinkhorn", numItermax=max_iter, stopThr=1e-6)
    if not _solved(plan, a, b):
        return ot.emd(a, b, cost), "ot"
    return plan, kind


def _solved(plan: Tensor, a: Tensor, b: Tensor) -> bool:
    """True when ``plan`` is finite and its marginals are within 1 % (total variation) of ``a``, ``b``."""
    if not bool(torch.isfinite(plan).all()):
        return False
    return float((plan.sum(1) - a).abs().sum() + (plan.sum(0) - b).abs().sum()) < 1e-2


def minibatch_coupling(x0: Tensor, x1: Tensor, kind: str, *, eps: float = 1.0, block: int = 512,
                       max_iter: int = 1000, generator: torch.Generator | None = None) -> Tensor:
    """Indices ``j`` ``(n,)`` pairing ``x0[i]`` with ``x1[j[i]]``: a draw of the coupling ``kind``.

    ``independent``: ``j`` uniform (the product coupling). ``ot`` / ``entropic``: the sets are cut
    into consecutive blocks of ``block`` rows (``x0`` and ``x1`` alike; ``n = len(x0)`` must equal
    ``len(x1)``), the exact or entropic OT plan of each block pair is solved with POT and each row of
    ``x0`` draws its partner from its row of the plan (the minibatch OT coupling of Tong et al. 2024,
    one plan for ``block`` pairs). Where Sinkhorn cannot solve a block within ``max_iter`` iterations
    (``2·eps`` tiny against the cost), that block's and the later blocks' plans are exact
    (:func:`_solve`).

    Parameters
    ----------
    x0, x1 : Tensor, shape (n, d)
        The two sample sets (model coordinates).
    kind : {"independent", "ot", "entropic"}
    eps : float
        Entropy weight of the reference (``entropic``: Sinkhorn's regularisation ``2·eps``).
    block : int
        Rows per OT problem.
    max_iter : int
        Sinkhorn iteration cap (``entropic``).
    generator : torch.Generator, optional

    Returns
    -------
    Tensor, shape (n,), int64
    """
    if kind not in COUPLINGS:
        raise SbdiffError(f"unknown coupling '{kind}'; choose from {', '.join(COUPLINGS)}")
    n = len(x0)
    if kind == "independent":
        return torch.randint(0, len(x1), (n,), generator=generator, device=x0.device)
    if len(x1) != n:
        raise SbdiffError(f"an OT coupling pairs sets of one size, got {n} and {len(x1)}")
    out = torch.empty(n, dtype=torch.long, device=x0.device)
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        # a block Sinkhorn could not solve makes the rest exact too (alike blocks: no more failed tries)
        plan, kind = _solve(x0[lo:hi].double(), x1[lo:hi].double(), kind, eps, max_iter)
        rows = plan.clamp_min(0)
        rows = torch.where(rows.sum(1, keepdim=True) > 0, rows, torch.ones_like(rows))  # a row Sinkhorn lost
        out[lo:hi] = lo + torch.multinomial(rows.float(), 1, generator=generator).squeeze(1)
    return out


def _bridge_coefficients(reference, t: Tensor):
    """``(a_s, v_s, a_e, v_e)`` ``(B,)``: the reference's transition ``0 → t`` (mean coefficient,
    variance) and ``t → T``."""
    zero = torch.zeros_like(t)
    T = torch.full_like(t, reference.T)
    a_s = torch.exp(reference.log_mean_coeff(zero, t))
    a_e = torch.exp(reference.log_mean_coeff(t, T))
    return a_s, reference.transition_var(zero, t), a_e, reference.transition_var(t, T)


def bridge_sample(reference, x0: Tensor, x1: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """``X_t`` of the reference pinned at ``X_0 = x0``, ``X_T = x1``: ``(B, d)``.

    The law ``∝ q(x | x0) q(x1 | x)`` is ``N(μ, σ² I)`` with ``σ⁻² = 1/v_s + a_e²/v_e`` and
    ``μ = σ² (a_s x0/v_s + a_e x1/v_e)`` (``a_s, v_s``: transition ``0 → t``; ``a_e, v_e``:
    ``t → T``). For ``brownian(eps)`` on ``[0, 1]``: ``(1 − t) x0 + t x1 + √(eps t (1 − t)) ε``.
    ``t`` ``(B,)`` in ``(0, T)``; ``noise`` ``ε`` of the shape of ``x0``.
    """
    a_s, v_s, a_e, v_e = _bridge_coefficients(reference, t)
    var = 1.0 / (1.0 / v_s + a_e ** 2 / v_e)
    mean = append_dims(var * a_s / v_s, x0.ndim) * x0 + append_dims(var * a_e / v_e, x0.ndim) * x1
    return mean + append_dims(var.sqrt(), x0.ndim) * noise


def bridge_targets(reference, x0: Tensor, x1: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The controls of the bridge's drifts at ``X_t = x_t``, ``(B, d)`` each.

    Forward drift ``f + g z`` with ``z* = g ∇log q(x1 | x_t) = g a_e (x1 − a_e x_t)/v_e``; backward
    drift read in forward time ``f − g ẑ`` with ``ẑ* = g ∇log q(x_t | x0) = g (a_s x0 − x_t)/v_s``
    (the reversed bridge is the reference reversed and pinned at ``x0``). For ``brownian(eps)``:
    ``z* = (x1 − x_t)/(√eps (1 − t))``, ``ẑ* = (x0 − x_t)/(√eps t)``.
    """
    a_s, v_s, a_e, v_e = _bridge_coefficients(reference, t)
    g = reference.g(t)
    z = append_dims(g * a_e / v_e, x0.ndim) * (x1 - append_dims(a_e, x0.ndim) * x_t)
    zhat = append_dims(g / v_s, x0.ndim) * (append_dims(a_s, x0.ndim) * x0 - x_t)
    return z, zhat


def bridge_variances(reference, t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate variances ``(V_f, V_b)`` ``(B,)`` of the targets ``z*`` and ``ẑ*`` over ``X_t``
    given the pair: ``V_f = g² a_e⁴ σ²/v_e²``, ``V_b = g² σ²/v_s²`` (``t/(1 − t)`` and ``(1 − t)/t`` for
    ``brownian``), unbounded at the pinned end."""
    a_s, v_s, a_e, v_e = _bridge_coefficients(reference, t)
    g2 = reference.g(t) ** 2
    var = 1.0 / (1.0 / v_s + a_e ** 2 / v_e)
    return g2 * a_e ** 4 * var / v_e ** 2, g2 * var / v_s ** 2


class BridgeTimes:
    """Importance sampling of the regression's time: ``t ~ p(t) ∝ max(1, √V(t))`` on
    ``(δT, (1 − δ)T)`` for each network, with the weight ``w(t) = 1/(L p(t))`` (``L`` the interval's
    length), so that ``E_p[w ℓ] = E_{U}[ℓ]``: the objective stays the path KL's (uniform time, weight
    1), while the gradient's variance, ``∫ V/p ∝ (∫ max(1, √V))²`` per coordinate, stays finite
    (``∫ √V dt < ∞``: ``V ~ 1/(distance to the pinned end)``); uniform sampling's, ``∫ V``, diverges
    logarithmically as ``δ → 0``. ``p`` is piecewise constant on ``bins`` equal bins (exact weights).

    Parameters
    ----------
    reference : ReferenceSDE
    margin : float
        ``δ``.
    bins : int
    """

    def __init__(self, reference, margin: float, bins: int = 1024):
        T = reference.T
        edges = torch.linspace(margin * T, (1 - margin) * T, bins + 1, dtype=torch.float64)
        width = torch.diff(edges)
        v_f, v_b = bridge_variances(reference, 0.5 * (edges[1:] + edges[:-1]))
        self.edges, self.width, self.length = edges, width, float(edges[-1] - edges[0])
        self.prob = {}
        for role, v in (("encoder", v_f), ("decoder", v_b)):
            mass = v.sqrt().clamp_min(1.0) * width
            self.prob[role] = mass / mass.sum()

    def sample(self, role: str, n: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device=None) -> tuple[Tensor, Tensor]:
        """``(t, w)``, ``(n,)`` each, for the network ``role`` (``"encoder"``: forward, ``"decoder"``)."""
        at = generator.device if generator is not None else torch.device("cpu")  # draws on the generator's device
        if self.edges.device != at:  # once: the tables follow the generator's device
            self.edges, self.width = self.edges.to(at), self.width.to(at)
            self.prob = {k: v.to(at) for k, v in self.prob.items()}
        prob, edges, width = self.prob[role], self.edges, self.width
        i = torch.multinomial(prob, n, replacement=True, generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=at)
        t = edges[i] + u * width[i]
        w = width[i] / (prob[i] * self.length)
        return t.to(dtype=dtype, device=device), w.to(dtype=dtype, device=device)


def bridge_matching_loss(control, reference, times: BridgeTimes, x0: Tensor, x1: Tensor, role: str,
                         generator: torch.Generator | None = None) -> Tensor:
    """Bridge matching of one control on the pairs ``(x0, x1)`` ``(B, d)`` each (DESIGN §4.5): the
    squared residual of ``control(X_t, t)`` against the bridge's own control (:func:`bridge_targets`:
    ``z*`` for ``role = "encoder"``, ``ẑ*`` for ``"decoder"``) at ``X_t`` of the reference pinned at
    the pair, summed over coordinates, at times drawn by ``times`` with their importance weights (the
    path KL's uniform time in expectation), mean over the batch. Draws, in order: the times, then
    the bridge's noise. Scalar."""
    B = x0.shape[0]
    t, w = times.sample(role, B, generator=generator, dtype=x0.dtype, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = bridge_sample(reference, x0, x1, t, noise)
    z, zhat = bridge_targets(reference, x0, x1, x_t, t)
    res = control(x_t, t) - (z if role == "encoder" else zhat)
    return (w * res.pow(2).reshape(B, -1).sum(1)).mean()
