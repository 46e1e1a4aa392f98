"""Check a peer solver against the exact plan of a Gaussian pair before trusting its benchmark rows.

    python benchmarks/scripts/peer_gaussian_check.py                    # sf2m, D = 2, eps = 1, 5 minutes
    python benchmarks/scripts/peer_gaussian_check.py --minutes 2 --json benchmarks/results/peer_gaussian_check.json

The pair is :func:`sbdiff.bench.gaussian.random_gaussian_bridge` (closed-form SB, DESIGN §6.1),
trained on 50 000 unpaired samples of each side exactly as in ``sbdiff bench`` (the same arrays and
settings). The plan ``π*(y | x) = N(m1 + K (x − m0), Σ)`` is linear-Gaussian, so the peer's conditional
moments are read off ``n`` pairs ``(x, y ~ π̂(·|x))`` by least squares, ``y ≈ c + K̂ x`` with residual
covariance ``Σ̂``, and compared with the closed form:

* ``K err``: ``‖K̂ − K‖_F / ‖K‖_F`` [%] (the conditional mean's slope: the coupling);
* ``mean err``: RMS over the pairs of ``‖ĉ + K̂x − m1 − Kx‖`` over ``√tr Σ`` [%] (the conditional
  mean, relative to the conditional spread);
* ``Σ err``: ``‖Σ̂ − Σ‖_F / ‖Σ‖_F`` [%] (the conditional covariance);
* ``C_σ err``: :func:`~sbdiff.bench.runner.cross_cov_error` [%]; and cBW2-UVP / BW2-UVP by the protocol.

The ``exact`` row (the pair's own sampler) is the sampling noise of the same estimates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sbdiff._utils import SbdiffError
from sbdiff.bench.gaussian import random_gaussian_bridge
from sbdiff.bench.metrics import plan_metrics
from sbdiff.bench.runner import _train_peer, cross_cov_error


def moment_errors(pair, sampler, n: int, seed: int) -> dict:
    """The errors of the module docstring from ``n`` pairs ``(x ~ p0, y ~ sampler(x))``."""
    x = pair.sample_source(n, np.random.default_rng([seed, 30]))
    y = np.asarray(sampler(x, np.random.default_rng([seed, 31])), np.float64)
    X = np.hstack([np.ones((n, 1)), x])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)  # (1 + d, d): y ≈ X coef
    resid = y - X @ coef
    cov_hat = resid.T @ resid / (n - X.shape[1])
    mean_true, cov_true = pair.conditional_moments(x)
    K_true = pair.cross_cov.T @ np.linalg.inv(pair.S0)
    K_hat = coef[1:].T
    sd = np.sqrt(np.trace(cov_true[0]))
    return {"K_err": 100 * float(np.linalg.norm(K_hat - K_true) / np.linalg.norm(K_true)),
            "mean_err": 100 * float(np.sqrt(((X @ coef - mean_true) ** 2).sum(1).mean()) / sd),
            "cov_err": 100 * float(np.linalg.norm(cov_hat - cov_true[0]) / np.linalg.norm(cov_true[0]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", default="sf2m")
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=100_000, help="pairs for the moment estimates")
    p.add_argument("--n-test", type=int, default=1000, help="cBW2-UVP test points")
    p.add_argument("--n-samples", type=int, default=1000, help="cBW2-UVP samples per test point")
    p.add_argument("--json", help="write the rows to this JSON file")
    a = p.parse_args(argv)
    try:
        pair = random_gaussian_bridge(a.dim, a.eps, a.seed)
        peer, steps, seconds = _train_peer(a.peer, pair, a.eps, seed=a.seed, minutes=a.minutes, steps=None,
                                           n_train=50_000, nfe=None, progress=True, overrides=None)
    except SbdiffError as err:
        print(f"peer_gaussian_check: error: {err}", file=sys.stderr)
        return 2
    rows = []
    for name, sampler, st, sec in (("exact", pair.sample_conditional, 0, 0.0), (a.peer, peer, steps, seconds)):
        row = {"solver": name, "dim": a.dim, "eps": a.eps, "train_steps": st, "train_seconds": round(sec, 1)}
        row.update(moment_errors(pair, sampler, a.n, a.seed))
        row["cross_cov_err"] = cross_cov_error(pair, sampler, n=a.n, seed=a.seed)
        row.update({k: v for k, v in plan_metrics(pair, sampler, seed=a.seed, n_test=a.n_test, n_samples=a.n_samples).items() if k.endswith("uvp")})
        rows.append(row)
    print(f"Gaussian pair D = {a.dim}, eps = {a.eps:g}; {a.n} pairs\n"
          "| solver | train steps | train s | K err % | mean err % | Σ err % | C_σ err % | cBW2-UVP % | BW2-UVP % |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['train_steps']} | {r['train_seconds']} | {r['K_err']:.2f} | {r['mean_err']:.2f} | "
              f"{r['cov_err']:.2f} | {r['cross_cov_err']:.2f} | {r['cbw2_uvp']:.3f} | {r['bw2_uvp']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
