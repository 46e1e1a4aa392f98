"""Issue 24 acceptance for DSBM (bridge matching): the Gaussian bridge and entropic-OT cells, side
by side with other solvers on the same pair.

    python benchmarks/dsbm_acceptance.py gaussian [--minutes 8] [--dim 5] [--seeds 0 1 2]
    python benchmarks/dsbm_acceptance.py eot [--minutes 5] [--dim 16] [--solvers dsbm sf2m] [--family draft-recipe]

Every number is measured from samples only (training sees sample files, never a closed form); run
it alone on the machine (the budgets are wall-clock).

* ``gaussian``: ``sbdiff bench gaussian --method dsbm`` on the pairs ``random_gaussian_bridge(dim,
  1, seed)``: the relative Frobenius error of the cross-covariance of ``(prior point, decoded point)``
  against ``C_σ`` (``cross_cov_err``, %, 10⁵ pairs) and the decoded marginal's BW2-UVP (targets
  ≤ 5 % and ≤ 1 %). One row per seed.
* ``eot``: one cell of ``sbdiff bench eot`` for each solver, the same pair, budget and protocol.

``--n-test`` below the protocol's 1000 shortens the evaluation (a decode of ``n_test × n_samples``
points, 10 minutes at 1000 on a slow 2-core machine) for pilot runs; ``cross_cov_err`` always uses
10⁵ pairs.

Prints one JSON row per run and writes ``benchmarks/results/dsbm_<what>_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sbdiff.bench.runner import run_bench

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("gaussian", "eot"))
    p.add_argument("--minutes", type=float)
    p.add_argument("--dim", type=int)
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--solvers", nargs="+", default=["dsbm"])
    p.add_argument("--family", default="draft-recipe", help="eot: draft-recipe | rotated")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--tag", default="", help="suffix of the results file")
    a = p.parse_args()
    start = time.monotonic()
    minutes = a.minutes or (8.0 if a.what == "gaussian" else 5.0)
    rows = []
    for seed in a.seeds:
        for solver in a.solvers:
            if a.what == "gaussian":
                row = run_bench("gaussian", solver, a.dim or 5, a.eps, seed=seed, minutes=minutes,
                                n_test=a.n_test)
            else:
                row = run_bench("eot", solver, a.dim or 16, a.eps, seed=seed, minutes=minutes,
                                family=a.family, n_test=a.n_test)
            row.update(what=a.what, minutes=minutes)
            print(json.dumps(row), flush=True)
            rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    name = f"dsbm_{a.what}_d{a.dim or (5 if a.what == 'gaussian' else 16)}{'_' + a.tag if a.tag else ''}.json"
    (RESULTS / name).write_text(json.dumps(rows, indent=1))
    print(f"total {time.monotonic() - start:.0f} s -> {RESULTS / name}")


if __name__ == "__main__":
    main()
