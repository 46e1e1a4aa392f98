"""The benchmark harness behind ``sbdiff bench gaussian|eot``: build a pair, train a method on its
samples, score it, return one table row.

Problems: ``gaussian`` (:func:`~sbdiff.bench.gaussian.random_gaussian_bridge`, closed form) and
``eot`` (:func:`~sbdiff.bench.eot.make_pair`, Gushchin et al. 2023; pair family ``draft-recipe`` by
default, or ``rotated``: :mod:`sbdiff.bench.eot`); cells ``D ∈ {2, 16, 64, 128}`` × ``eps ∈ {0.1, 1, 10}``.

Methods:

* ``exact`` — the pair's own conditional sampler: its scores are the protocol's noise floor.
* generative methods (``Method.bridges`` false, e.g. ``sgm``) — trained on ``n_train`` samples of the
  target ``p1`` with their usual prior ``N(0, I)``; only the target-marginal BW2-UVP applies
  (``cbw2_uvp`` is None and ``cbw2_note`` says why).
* bridge methods (``Method.bridges`` true; DSB, SB-FBSDE, VSDM once they exist) — the convention,
  which such a method must follow to plug in here without changes:

  - ``data`` = ``n_train`` samples of the target ``p1`` (data side, ``t = 0``), passed as
    ``sbdiff.train.fit(config, None, data=target)``;
  - prior = ``n_train`` samples of the source ``p0`` (prior side, ``t = T = 1``): written to a
    ``.npy`` file in a temporary directory that lives while ``fit`` runs, and named by
    ``config.data.prior`` (exactly what ``sbdiff train --prior FILE`` does; DESIGN §8);
    ``config.data.data`` likewise names a ``.npy`` of the target samples;
  - reference ``brownian(eps)`` (``config.reference``), and ``config.data.normalize = False``: the
    problem is entropic OT with cost ``½‖x − y‖²`` *in data coordinates*, which a per-coordinate
    standardisation would change;
  - ``model.decode(x0)`` with ``x0`` a float32 tensor ``(m, d)`` of source points (data coordinates,
    as ``sbdiff decode --from``) returns ``(m, d)`` draws of ``π̂(· | x0)``.

* peer solvers (:data:`sbdiff.bench.peers.PEERS`: ``sf2m``, torchcfm's SF²M-Sink) — trained by
  their own library on the same ``n_train`` unpaired source and target samples (the same arrays), with
  the network width and optimiser settings of the config, and scored through the same protocol.

Training sees samples only, never the closed form. Scores: :func:`~sbdiff.bench.metrics.plan_metrics`.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from .._utils import SbdiffError
from .eot import BENCH_DIMS, BENCH_EPS, DEFAULT_FAMILY, check_family, make_pair
from .gaussian import random_gaussian_bridge
from .metrics import plan_metrics
from .peers import is_peer

__all__ = ["PROBLEMS", "make_problem", "pair_family", "run_bench", "run_sweep", "format_table", "BENCH_DIMS",
           "BENCH_EPS"]

PROBLEMS = ("gaussian", "eot")


def pair_family(problem: str, family: str = DEFAULT_FAMILY, official_dir=None) -> str | None:
    """What a row records as its ``family``: the ``eot`` pair family (``draft-recipe``, ``rotated``),
    ``official`` for the official files, None for the ``gaussian`` problem."""
    family = check_family(family)
    if problem != "eot":
        return None
    return "official" if official_dir is not None else family


def make_problem(problem: str, dim: int, eps: float, seed: int = 0, official_dir=None,
                 family: str = DEFAULT_FAMILY):
    """The benchmark pair of a cell: a :class:`GaussianBridge` or an :class:`EOTPair` of ``family``
    (:func:`~sbdiff.bench.eot.make_pair`; with ``official_dir``: the official pair of Gushchin et
    al. read from their downloaded files, :func:`~sbdiff.bench.official.load_official_pair`, and
    ``family`` is not used)."""
    check_family(family)
    if official_dir is not None:
        if problem != "eot":
            raise SbdiffError("official benchmark files exist for the eot problem only")
        from .official import load_official_pair

        return load_official_pair(official_dir, dim, eps)
    if problem == "gaussian":
        return random_gaussian_bridge(dim, eps, seed)
    if problem == "eot":
        return make_pair(dim, eps, seed, family=family)
    raise SbdiffError(f"unknown benchmark problem '{problem}'; choose from {', '.join(PROBLEMS)}")


def _training_target(pair, n_train: int, seed: int) -> np.ndarray:
    """The ``n_train`` training samples of ``p1`` every solver of a cell sees, float32 ``(n, d)``."""
    return pair.sample_target(n_train, np.random.default_rng([seed, 10])).astype(np.float32)


def _training_source(pair, n_train: int, seed: int) -> np.ndarray:
    """The ``n_train`` training samples of ``p0`` (unpaired with the target's), float32 ``(n, d)``."""
    return pair.sample_source(n_train, np.random.default_rng([seed, 11])).astype(np.float32)


def _train_peer(method: str, pair, eps: float, *, seed: int, minutes, steps, n_train: int, nfe, progress: bool,
                overrides: dict | None):
    """Train a peer solver (:mod:`sbdiff.bench.peers`) on the cell's samples with the network and
    optimiser settings a bridge preset resolves from the (overridden) default config (DSB's method
    defaults: two 128×2 MLPs, EMA 0.99, the width SB-FBSDE's nets have too); returns (sampler, steps,
    seconds)."""
    from ..config import Config, config_from_dict
    from .peers import PEER_NFE, PEERS

    cfg = config_from_dict(overrides or {}, Config())
    cfg.validate(defaults_of="dsb")  # the bridge presets' settings: DSB's (and SB-FBSDE's) 128×2 nets, EMA 0.99
    if minutes is None and steps is None:
        steps = cfg.train.steps
    m, t = cfg.model, cfg.train
    return PEERS[method](_training_source(pair, n_train, seed), _training_target(pair, n_train, seed), eps,
                         seed=seed, minutes=minutes, steps=steps, hidden=m.hidden, blocks=m.blocks,
                         time_dim=m.time_dim, batch_size=t.batch_size, lr=t.lr, ema_decay=t.ema_decay,
                         grad_clip=t.grad_clip, nfe=nfe or PEER_NFE, progress=progress)


def _train(method: str, problem: str, pair, dim: int, eps: float, *, seed: int, minutes, steps, n_train: int,
           progress: bool, overrides: dict | None = None, run_dir=None):
    """Train ``method`` on samples of ``pair``; returns (method object, TrainResult). ``run_dir``:
    where ``fit`` writes its log and checkpoints (None: in memory, as the bench does)."""
    from ..config import Config, config_from_dict
    from ..methods import make_method
    from ..train import fit

    cfg = config_from_dict(overrides or {}, Config())
    cfg.method = method
    cfg.seed = seed
    if minutes is not None:
        cfg.train.max_minutes = float(minutes)
        cfg.train.steps = 0 if steps is None else int(steps)
    elif steps is not None:
        cfg.train.steps = int(steps)
    obj = make_method(cfg)  # raises for methods that do not exist yet
    target = _training_target(pair, n_train, seed)
    with tempfile.TemporaryDirectory(prefix="sbdiff-bench-") as tmp:
        # the config names files (as `sbdiff train` would); the arrays are also passed directly
        np.save(Path(tmp) / f"{problem}-target.npy", target)
        cfg.data.data = str(Path(tmp) / f"{problem}-target.npy")
        if getattr(obj, "bridges", False):
            source = _training_source(pair, n_train, seed)
            np.save(Path(tmp) / f"{problem}-source.npy", source)
            cfg.data.prior = str(Path(tmp) / f"{problem}-source.npy")
            cfg.reference = {"kind": "brownian", "eps": float(eps)}
            cfg.data.normalize = False
        return obj, fit(cfg.validate(), run_dir, data=target, progress=progress)


def run_bench(problem: str, method: str = "exact", dim: int = 2, eps: float = 1.0, *, seed: int = 0,
              minutes: float | None = None, steps: int | None = None, n_test: int = 1000,
              n_samples: int = 1000, n_marginal: int = 10_000, n_train: int = 50_000, nfe: int | None = None,
              overrides: dict | None = None, official_dir=None, family: str = DEFAULT_FAMILY,
              progress: bool = False) -> dict:
    """Train (unless ``method == "exact"``) and score one cell; returns a row (dict, JSON-ready).

    Parameters
    ----------
    problem : {"gaussian", "eot"}
    method : str
        ``exact``, a method name of :data:`sbdiff.methods.REGISTRY` or a peer solver of
        :data:`sbdiff.bench.peers.PEERS` (``sf2m``: torchcfm's SF²M-Sink).
    dim, eps, seed : the cell and the seed of the pair, the test points and the training.
    minutes, steps : training budget (``minutes`` alone: time only; neither: the config default).
    n_test, n_samples, n_marginal : protocol sizes (:func:`~sbdiff.bench.metrics.plan_metrics`).
    n_train : number of training samples of each side.
    nfe : sampling steps of the trained model (default: the config's ``sample.nfe``).
    overrides : nested dict overlaid on the default :class:`~sbdiff.config.Config` before the
        harness sets method, seed, budget, data and (bridges) prior/reference, e.g.
        ``{"model": {"hidden": 64}, "train": {"batch_size": 256}}`` (a peer reads ``model.hidden``,
        ``blocks``, ``time_dim`` and ``train.batch_size``, ``lr``, ``ema_decay``, ``grad_clip``).
    official_dir : path, optional
        ``eot`` only: score on the official pair read from Gushchin et al.'s files in this directory
        (their fixed test inputs and target variance where present) instead of sbdiff's own draw.
    family : {"draft-recipe", "rotated"}
        ``eot``: the family of sbdiff's own pair (:func:`~sbdiff.bench.eot.make_pair`).

    Returns
    -------
    dict with keys ``problem, method, dim, eps, seed, family, cbw2_uvp, bw2_uvp, cbw2_note, n_test,
    n_samples, n_marginal, train_steps, train_seconds, eval_seconds`` (and ``overrides`` when given);
    ``family`` is :func:`pair_family`'s (``draft-recipe``, ``rotated``, ``official`` or None);
    on the Gaussian problem, for ``exact`` and bridge methods, also ``cross_cov_err``
    (:func:`cross_cov_error`, 10⁵ pairs).
    """
    import torch

    if method is None:
        method = "exact"
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise SbdiffError(f"minutes must be a finite number > 0, got {minutes}")
    if steps is not None and steps < 1:
        raise SbdiffError(f"steps must be at least 1, got {steps}")
    for name, v in (("n_train", n_train), ("nfe", nfe if nfe is not None else 1)):
        if v < 1:
            raise SbdiffError(f"{name} must be at least 1, got {v}")
    pair = make_problem(problem, dim, eps, seed, official_dir, family)
    row = {"problem": problem, "method": method, "dim": int(dim), "eps": float(eps), "seed": int(seed),
           "family": pair_family(problem, family, official_dir), "cbw2_uvp": None, "bw2_uvp": None,
           "cbw2_note": None, "train_steps": 0, "train_seconds": 0.0}
    sizes = dict(n_test=n_test, n_samples=n_samples, n_marginal=n_marginal, seed=seed)
    sampler = None
    if method == "exact":
        start = time.monotonic()
        sampler = pair.sample_conditional
        res = plan_metrics(pair, sampler, **sizes)
    elif is_peer(method):
        sampler, n_steps, seconds = _train_peer(method, pair, eps, seed=seed, minutes=minutes, steps=steps,
                                                n_train=n_train, nfe=nfe, progress=progress, overrides=overrides)
        row.update(train_steps=n_steps, train_seconds=round(seconds, 1))
        start = time.monotonic()
        res = plan_metrics(pair, sampler, **sizes)
    else:
        obj, result = _train(method, problem, pair, dim, eps, seed=seed, minutes=minutes, steps=steps,
                             n_train=n_train, progress=progress, overrides=overrides)
        row.update(train_steps=result.steps, train_seconds=round(result.seconds, 1))
        model = result.model
        steps_ = nfe or obj.config.sample.nfe
        start = time.monotonic()
        if getattr(obj, "bridges", False):
            def sampler(x, rng):
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                z = torch.as_tensor(x, dtype=torch.float32)
                return model.decode(z, nfe=steps_, generator=gen).double().numpy()

            res = plan_metrics(pair, sampler, **sizes)
        else:
            gen = torch.Generator().manual_seed(seed + 20)
            samples = model.sample(n_marginal, nfe=steps_, generator=gen).double().numpy()
            res = plan_metrics(pair, None, marginal_samples=samples, **sizes)
            row["cbw2_note"] = (f"not applicable: {method} is a generative method (N(0, I) -> p1), not a bridge "
                                "from p0, so it has no conditional plan pi(.|x) to score")
    row.update(res)
    if overrides:
        row["overrides"] = overrides
    if official_dir is not None:
        row["official"] = str(official_dir)
    if problem == "gaussian" and sampler is not None:  # the coupling itself: Cov(prior point, decoded point) vs C_σ
        row["cross_cov_err"] = cross_cov_error(pair, sampler, seed=seed)
    row["eval_seconds"] = round(time.monotonic() - start, 1)
    return row


def cross_cov_error(pair, sampler, n: int = 100_000, seed: int = 0) -> float:
    """Relative Frobenius error ``‖Ĉ − C_σ‖_F / ‖C_σ‖_F`` [%] of the cross-covariance ``Ĉ`` of ``n`` pairs
    ``(x, y)``, ``x ~ p0`` (the prior side) and ``y`` the sampler's draw of ``π̂(·|x)``, against the
    closed form ``C_σ = Cov(X0, X1)`` of a :class:`~sbdiff.bench.gaussian.GaussianBridge`. Its own
    sampling noise (the exact sampler's score) is ≈ 1–2 % at ``n = 10⁵`` for D = 5, eps = 1 (4 % at 10⁴)."""
    x = pair.sample_source(n, np.random.default_rng([seed, 5]))
    y = np.asarray(sampler(x, np.random.default_rng([seed, 6])), np.float64)
    C = (x - x.mean(0)).T @ (y - y.mean(0)) / (n - 1)
    return float(100.0 * np.linalg.norm(C - pair.cross_cov) / np.linalg.norm(pair.cross_cov))


def run_sweep(problem: str, method: str = "exact", *, dims=BENCH_DIMS, epss=BENCH_EPS, callback=None,
              **kwargs) -> list[dict]:
    """:func:`run_bench` over the cells ``dims × epss`` (default: the 12 cells); ``callback(row)``
    after each."""
    rows = []
    for dim in dims:
        for eps in epss:
            row = run_bench(problem, method, dim, eps, **kwargs)
            rows.append(row)
            if callback is not None:
                callback(row)
    return rows


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_table(rows: list[dict], header: bool = True) -> list[str]:
    """Markdown table lines for result rows (the last column: the row's pair family)."""
    lines = []
    if header:
        lines.append("| problem | method | D | eps | cBW2-UVP % | BW2-UVP % | test x × samples | marginal samples | train steps | train s | C_σ err % | pairs |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        test = f"{r['n_test']}×{r['n_samples']}" if r.get("n_test") else "—"
        lines.append(f"| {r['problem']} | {r['method']} | {r['dim']} | {r['eps']:g} | {_fmt(r['cbw2_uvp'])} | "
                     f"{_fmt(r['bw2_uvp'])} | {test} | {r['n_marginal']} | {r['train_steps']} | {r['train_seconds']} | "
                     f"{_fmt(r.get('cross_cov_err'))} | {r.get('family') or '—'} |")
    return lines
