"""Input handling shared by the ground-truth modules: float64 arrays, numpy/torch round trips,
SPD validation, random streams and random SPD matrices."""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np

from .._utils import SbdiffError

SeedLike = "int | np.random.Generator | None"


def rng_from(seed) -> np.random.Generator:
    """A numpy Generator from an int, a Generator (returned as is) or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, numbers.Integral):
        return np.random.default_rng(seed)
    if isinstance(seed, (list, tuple)):
        return np.random.default_rng(list(seed))
    raise SbdiffError(f"seed must be an integer, a numpy Generator or None, got {type(seed).__name__}")


def to_numpy(x, name: str = "x") -> tuple[np.ndarray, Callable[[np.ndarray], object]]:
    """``x`` (numpy array, torch tensor or nested list) as a float64 array, and a function that turns
    a result back into the input's kind (torch: same dtype and device; otherwise float64 numpy)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and torch.is_tensor(x):
        dtype, device = x.dtype, x.device
        if not dtype.is_floating_point:
            dtype = torch.float64
        arr = x.detach().to("cpu", torch.float64).numpy()

        def back(y: np.ndarray):
            return torch.as_tensor(np.asarray(y), dtype=dtype, device=device)

        return arr, back
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise SbdiffError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    return arr, lambda y: np.asarray(y, dtype=np.float64)


def check_points(x: np.ndarray, dim: int, name: str = "x") -> np.ndarray:
    """Validate a batch of points of shape ``(n, dim)``."""
    if x.ndim != 2 or x.shape[1] != dim:
        raise SbdiffError(f"{name} must have shape (n, {dim}), got {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise SbdiffError(f"{name} contains NaN or infinite values")
    return x


def check_times(t, n: int, name: str = "t") -> np.ndarray:
    """``t`` (float, 0-d or ``(n,)``) as a float64 array of shape ``(n,)`` in ``[0, 1]``."""
    arr, _ = to_numpy(t, name)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise SbdiffError(f"{name} must be a number or have shape ({n},), got {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)) or arr.min(initial=0.0) < 0 or arr.max(initial=0.0) > 1:
        raise SbdiffError(f"{name} must lie in [0, 1]")
    return arr


def check_eps(eps, name: str = "eps") -> float:
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise SbdiffError(f"{name} must be a number, got {eps!r}") from None
    if not (np.isfinite(eps) and eps > 0):
        raise SbdiffError(f"{name} must be a finite number > 0, got {eps}")
    return eps


def check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise SbdiffError(f"dim must be an integer >= 1, got {dim!r}")
    return int(dim)


def check_mean(m, name: str) -> np.ndarray:
    m, _ = to_numpy(m, name)
    if m.ndim != 1 or m.shape[0] < 1:
        raise SbdiffError(f"{name} must be a vector of length dim >= 1, got shape {tuple(m.shape)}")
    if not np.all(np.isfinite(m)):
        raise SbdiffError(f"{name} contains NaN or infinite values")
    return m


def check_spd(S, dim: int, name: str) -> np.ndarray:
    """A symmetric positive-definite ``(dim, dim)`` matrix (symmetrised), or an SbdiffError."""
    S, _ = to_numpy(S, name)
    if S.shape != (dim, dim):
        raise SbdiffError(f"{name} must have shape ({dim}, {dim}), got {tuple(S.shape)}")
    if not np.all(np.isfinite(S)):
        raise SbdiffError(f"{name} contains NaN or infinite values")
    scale = max(np.abs(S).max(), 1e-300)
    if np.abs(S - S.T).max() > 1e-8 * scale:
        raise SbdiffError(f"{name} is not symmetric")
    S = 0.5 * (S + S.T)
    lam = np.linalg.eigvalsh(S)
    if lam[0] <= 1e-12 * max(lam[-1], 0.0) or lam[0] <= 0:
        raise SbdiffError(f"{name} is not positive definite (smallest eigenvalue {lam[0]:.3g})")
    return S


def sym_sqrt(S: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Symmetric square root (or inverse square root) of a symmetric PSD matrix via ``eigh``;
    works on stacks ``(..., d, d)``."""
    lam, U = np.linalg.eigh(S)
    lam = np.clip(lam, 0.0, None)
    f = 1.0 / np.sqrt(lam) if inverse else np.sqrt(lam)
    return (U * f[..., None, :]) @ np.swapaxes(U, -1, -2)


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal ``(dim, dim)`` matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def random_spd(dim: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """``O diag(λ) Oᵀ`` with ``O`` Haar-orthogonal and ``λ_i ~ U[low, high]`` (shape ``(dim, dim)``)."""
    O = random_rotation(dim, rng)
    lam = rng.uniform(low, high, dim)
    S = (O * lam) @ O.T
    return 0.5 * (S + S.T)


def sample_gaussian(mean: np.ndarray, cov_sqrt: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of ``N(mean, L Lᵀ)`` given a square root ``L`` of the covariance; shape ``(n, d)``."""
    return mean + rng.standard_normal((n, len(mean))) @ cov_sqrt.T


def check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SbdiffError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def single_blas_thread(fn):
    """Run ``fn`` with numpy's BLAS limited to one thread (``threadpoolctl``, a dependency of
    scikit-learn). The ground-truth code does many small matrix products and decompositions; on a
    shared 2-core machine a multi-threaded BLAS spins against other jobs and runs them up to 100×
    slower than one thread does (measured: 100 eighs of 64×64, 8.5 s vs 0.06 s under load)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            return fn(*args, **kwargs)
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper
