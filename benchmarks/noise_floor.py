"""Noise floor of the entropic-OT benchmark protocol: the exact conditional sampler of each pair
scored by cBW2-UVP and BW2-UVP, for the 12 cells D ∈ {2, 16, 64, 128} × eps ∈ {0.1, 1, 10}.

Run: ``python benchmarks/noise_floor.py [--n-test 1000] [--n-samples 1000] [--n-marginal 10000]
[--seed 0] [--problem eot|gaussian] [--family rotated|draft-recipe]``; prints a markdown table (the
one in benchmarks/README.md, measured on the ``rotated`` pairs: this script's default family, unlike
the CLI's). Equivalent CLI: ``sbdiff bench eot --all --family rotated`` (method ``exact`` is the default).
"""

from __future__ import annotations

import argparse
import time

from sbdiff.bench.eot import FAMILIES
from sbdiff.bench.runner import format_table, run_sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="eot", choices=("eot", "gaussian"))
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--n-marginal", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=FAMILIES, default="rotated",
                   help="eot pair family (default rotated: the table in benchmarks/README.md)")
    a = p.parse_args()
    start = time.monotonic()
    print("\n".join(format_table([])), flush=True)
    rows = run_sweep(a.problem, "exact", seed=a.seed, n_test=a.n_test, n_samples=a.n_samples,
                     n_marginal=a.n_marginal, family=a.family,
                     callback=lambda r: print(format_table([r], header=False)[0], flush=True))
    print(f"\n{len(rows)} cells in {time.monotonic() - start:.0f} s "
          f"(scoring only: {sum(r['eval_seconds'] for r in rows):.0f} s)")


if __name__ == "__main__":
    main()
