"""The official Gaussian-mixture pairs of Gushchin et al. (NeurIPS 2023, "Building the bridge of
Schrödinger: a continuous entropic optimal transport benchmark"; ngushchin/EntropicOTBenchmark), read
from their downloaded parameter files into an :class:`~sbdiff.bench.eot.EOTPair` (DESIGN §6.2).

sbdiff's own pairs (:func:`~sbdiff.bench.eot.make_pair`) are a different draw (the authors' recipe
for the ``draft-recipe`` family, another structure for ``rotated``); only these files give numbers
comparable with the published tables.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .._utils import SbdiffError
from ._common import check_dim, check_eps
from .eot import EOTPair

__all__ = ["load_official_pair", "official_data_dir", "OFFICIAL_SUBDIR"]

OFFICIAL_SUBDIR = "gaussian_mixture_benchmark_data"


def official_data_dir() -> Path:
    """The default data directory of the official benchmark: ``$EOT_BENCHMARK_DATA`` when set,
    else ``~/eot_benchmark_data``."""
    env = os.environ.get("EOT_BENCHMARK_DATA")
    return Path(env).expanduser() if env else Path.home() / "eot_benchmark_data"


def _eps_tags(eps) -> list[str]:
    """File-name spellings of ``eps``: the ``:g`` form (``0.1``, ``1``, ``10``: what their f-strings
    give for the values ``0.1, 1, 10``), then ``str(float(eps))`` (``1.0``, ``10.0``)."""
    tags = [f"{float(eps):g}", str(float(eps))]
    return list(dict.fromkeys(tags))


def _first_existing(paths: list[Path]) -> Path | None:
    for p in paths:
        if p.is_file():
            return p
    return None


def _missing(what: str, paths: list[Path]) -> SbdiffError:
    alt = "" if len(paths) == 1 else " (also tried " + ", ".join(str(p) for p in paths[1:]) + ")"
    return SbdiffError(f"official benchmark file for the {what} not found: {paths[0]}{alt}")


def _short(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 120:
        msg = msg[:117] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _load_tensor(path: Path, what: str) -> np.ndarray:
    """A ``torch.save``-d tensor as a float64 array, or one SbdiffError line naming the file."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message here suggests weights_only=False: not for us
        raise SbdiffError(f"cannot read the {what} file {path} (not a torch.save file of a tensor, "
                          "or it holds other objects)") from None
    except OSError as exc:  # permissions, ...
        raise SbdiffError(f"cannot read the {what} file {path} ({_short(exc)})") from None
    except Exception as exc:  # corrupt or truncated file, ...
        raise SbdiffError(f"cannot read the {what} file {path} (corrupt or truncated: {_short(exc)})") from None
    if not torch.is_tensor(obj):
        raise SbdiffError(f"the {what} file {path} does not hold a tensor (got {type(obj).__name__})")
    if obj.is_complex() or obj.dtype == torch.bool:
        raise SbdiffError(f"the {what} file {path} holds a {obj.dtype} tensor, expected real numbers")
    arr = obj.detach().to("cpu", torch.float64).numpy().copy()
    if not np.all(np.isfinite(arr)):
        raise SbdiffError(f"the {what} file {path} contains NaN or infinite values")
    return arr


def _check_shape(arr: np.ndarray, shape: tuple, path: Path, what: str, why: str = "") -> None:
    if arr.shape != shape:
        want = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise SbdiffError(f"the {what} file {path} has shape {tuple(arr.shape)}, expected {want}{why}")


def _resolve(directory, dim: int) -> Path:
    """``directory`` itself, or its ``gaussian_mixture_benchmark_data/`` subfolder (older layout),
    whichever holds the source files for ``dim``."""
    try:
        root = official_data_dir() if directory is None else Path(os.fspath(directory)).expanduser()
    except TypeError:
        raise SbdiffError(f"the official benchmark directory must be a path, got {type(directory).__name__}") from None
    if not root.is_dir():
        raise SbdiffError(f"official benchmark directory not found: {root} (download the Gaussian-mixture "
                          "files of ngushchin/EntropicOTBenchmark there, or set $EOT_BENCHMARK_DATA)")
    name = f"input_probs_dim_{dim}.torch"
    for cand in (root, root / OFFICIAL_SUBDIR):
        if (cand / name).is_file():
            return cand.resolve()
    raise _missing("source weights", [root / name, root / OFFICIAL_SUBDIR / name])


def load_official_pair(directory, dim: int, eps: float) -> EOTPair:
    """The official benchmark pair for dimension ``dim`` and entropy weight ``eps``, from the
    parameter files of Gushchin et al. (2023).

    Parameters
    ----------
    directory : str, path-like or None
        The data directory (their ``get_data_home()``: ``~/eot_benchmark_data`` or
        ``$EOT_BENCHMARK_DATA``; None: that default). The files are read from ``directory`` itself,
        or from its subfolder ``gaussian_mixture_benchmark_data/`` (older versions of their code)
        when they are there.
    dim : int
        Dimension (theirs: 2, 4, 8, 16, 32, 64, 128).
    eps : float > 0
        Entropy weight (theirs: 0.1, 1, 10).

    Returns
    -------
    EOTPair
        ``π*(y | x) ∝ N(y | x, eps I) φ(y)`` with ``φ(y) = Σ_k probs_k N(y | mus_k, sigmas_k)``
        (their ``ConditionalPlan``), in float64, with three extra attributes:

        * ``test_inputs``: ndarray ``(n, dim)``, their fixed test points ``x`` of the conditional
          metric (used by :func:`~sbdiff.bench.metrics.plan_metrics`), or None when absent;
        * ``target_variance``: float > 0, their ``tr Cov(p1)`` (the cBW2-UVP normaliser), or None;
        * ``official``: the resolved directory (str).

    Notes
    -----
    File layout (their ``benchmark/gaussian_mixture_benchmark.py`` and ``benchmark/metrics.py``),
    each tensor written by ``torch.save(tensor, path)``:

    * ``input_probs_dim_{dim}.torch`` (M,), ``input_mus_dim_{dim}.torch`` (M, d),
      ``input_sigmas_dim_{dim}.torch`` (M, d, d): the source mixture ``p0``;
    * ``potential_probs_dim_{dim}_eps_{eps}.torch`` (K,), ``potential_mus_dim_{dim}_eps_{eps}.torch``
      (K, d), ``potential_sigmas_dim_{dim}_eps_{eps}.torch`` (K, d, d): the potential ``φ``;
    * optional ``test_inputs/test_data_dim_{dim}.torch`` (n, d): fixed source test points;
    * optional ``y_vars/y_var_dim_{dim}_eps_{eps}.npy`` (``np.save`` of a scalar): ``tr Cov(p1)``.

    ``{eps}`` is their f-string of the value: tried as ``f"{eps:g}"`` (``0.1``, ``1``, ``10``) first,
    then ``str(float(eps))`` (``1.0``, ``10.0``). Tensors are loaded with
    ``torch.load(..., map_location="cpu", weights_only=True)`` (no code is unpickled). A missing
    directory or file, a file that is not a tensor, a corrupt file, a wrong shape or a NaN raises
    :class:`~sbdiff.SbdiffError` with one line naming the file.
    """
    dim, eps = check_dim(dim), check_eps(eps)
    base = _resolve(directory, dim)
    tags = _eps_tags(eps)

    def need(what: str, names: list[str]) -> Path:
        paths = [base / n for n in names]
        found = _first_existing(paths)
        if found is None:
            raise _missing(what, paths)
        return found

    src, pot = {}, {}
    for key, what in (("probs", "source weights"), ("mus", "source means"), ("sigmas", "source covariances")):
        path = need(what, [f"input_{key}_dim_{dim}.torch"])
        src[key] = (_load_tensor(path, what), path, what)
    for key, what in (("probs", "potential weights"), ("mus", "potential means"),
                      ("sigmas", "potential covariances")):
        path = need(what, [f"potential_{key}_dim_{dim}_eps_{t}.torch" for t in tags])
        pot[key] = (_load_tensor(path, what), path, what)
    for part in (src, pot):
        probs, path, what = part["probs"]
        if probs.ndim != 1 or probs.shape[0] < 1:
            raise SbdiffError(f"the {what} file {path} has shape {tuple(probs.shape)}, expected (K,) with K >= 1")
        if np.any(probs <= 0):
            raise SbdiffError(f"the {what} file {path} has weights <= 0: {probs}")
        K = probs.shape[0]
        why = f" ({K} components in {path.name}, dimension {dim})"
        _check_shape(part["mus"][0], (K, dim), *part["mus"][1:], why)
        _check_shape(part["sigmas"][0], (K, dim, dim), *part["sigmas"][1:], why)
    try:
        pair = EOTPair(src["probs"][0], src["mus"][0], src["sigmas"][0], pot["probs"][0], pot["mus"][0],
                       pot["sigmas"][0], eps)
    except SbdiffError as exc:  # e.g. a covariance that is not SPD
        raise SbdiffError(f"official pair (dim {dim}, eps {eps:g}) in {base}: {exc}") from None

    test_inputs = None
    path = _first_existing([base / "test_inputs" / f"test_data_dim_{dim}.torch"])
    if path is not None:
        what = "test inputs"
        test_inputs = _load_tensor(path, what)
        if test_inputs.ndim != 2 or test_inputs.shape[1] != dim or test_inputs.shape[0] < 2:
            raise SbdiffError(f"the {what} file {path} has shape {tuple(test_inputs.shape)}, "
                              f"expected (n, {dim}) with n >= 2")

    target_variance = None
    path = _first_existing([base / "y_vars" / f"y_var_dim_{dim}_eps_{t}.npy" for t in tags])
    if path is not None:
        what = "target variance"
        try:
            val = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise SbdiffError(f"cannot read the {what} file {path} ({_short(exc)})") from None
        try:
            val = np.asarray(val, np.float64)
        except (TypeError, ValueError):
            raise SbdiffError(f"the {what} file {path} does not hold a number") from None
        if val.size != 1:
            raise SbdiffError(f"the {what} file {path} has shape {val.shape}, expected a scalar")
        target_variance = float(val.reshape(()))
        if not (np.isfinite(target_variance) and target_variance > 0):
            raise SbdiffError(f"the {what} file {path} holds {target_variance}, expected a finite number > 0")

    pair.test_inputs = test_inputs
    pair.target_variance = target_variance
    pair.official = str(base)
    return pair
