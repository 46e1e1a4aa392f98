"""Solvers side by side on the entropic-OT benchmark: same pair, same unpaired samples, same
wall-clock budget, same scoring (cBW2-UVP with its noise floor, BW2-UVP of the target marginal,
train seconds and steps); harness :mod:`sbdiff.bench.table`.

    pip install -c constraints.txt -e '.[bench]'             # the peer (torchcfm) for the sf2m rows
    python benchmarks/eot_table.py                         # lightsb, dsbm, sf2m, sbfbsde, dsb; eps = 1, D = 2, 16, 64; 5 min each
    python benchmarks/eot_table.py --solvers lightsb --dims 2 16 64 128 --eps 0.1 1 10 --minutes 2 --steps 10000 \
        --config benchmarks/configs/lightsb_eot.toml --out benchmarks/results/eot_table_lightsb_seed0   # issue 38
    python benchmarks/eot_table.py --dims 128 --eps 0.1 10 --out benchmarks/results/eot_table_gpu
    python benchmarks/eot_table.py --official-dir ~/eot_benchmark_data   # Gushchin et al.'s own pairs
    python benchmarks/eot_table.py --family rotated --out DIR   # sbdiff's first pairs (the older tables)

Writes ``OUT/eot_table.json``, ``.md`` and ``.png`` after every cell (``OUT`` defaults to
``benchmarks/results/eot_table``); run it again with the same settings and it resumes from the cells
already done. The pairs are sbdiff's own draw of the ``draft-recipe`` family (the benchmark authors'
recipe, :mod:`sbdiff.bench.eot`) unless ``--family rotated`` or ``--official-dir``; the JSON's
settings and rows and the markdown say which (the committed ``benchmarks/results/eot_table`` was
measured on ``rotated``: resume it with ``--family rotated``). Timed: run it alone on the machine.
``--config FILE`` overlays TOML settings on every solver (e.g. ``[model] hidden = 128``; the peer
reads ``model`` and ``train`` widths and rates).
"""

from __future__ import annotations

import argparse
import sys
import time

from sbdiff._utils import SbdiffError
from sbdiff.bench.eot import DEFAULT_FAMILY, FAMILIES
from sbdiff.bench.table import DEFAULT_SOLVERS, run_table


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solvers", nargs="+", default=list(DEFAULT_SOLVERS),
                   help=f"sbdiff methods and peers (default: {' '.join(DEFAULT_SOLVERS)})")
    p.add_argument("--dims", nargs="+", type=_positive(int), default=[2, 16, 64])
    p.add_argument("--eps", nargs="+", type=_positive(float), default=[1.0])
    p.add_argument("--minutes", type=_positive(float), default=5.0, help="training budget per solver and cell")
    p.add_argument("--steps", type=_positive(int), help="step budget per solver and cell (with --minutes: both)")
    p.add_argument("--out", default="benchmarks/results/eot_table")
    p.add_argument("--official-dir", help="score on the official pairs of Gushchin et al. read from this "
                   "directory (their downloaded parameter files; see sbdiff.bench.official)")
    p.add_argument("--family", choices=FAMILIES, help=f"the family of sbdiff's own pairs (default {DEFAULT_FAMILY}; "
                   "rotated: sbdiff's first draw, that of the tables before it)")
    p.add_argument("--config", help="TOML settings overlaid on every solver's default config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=_positive(int), default=1000)
    p.add_argument("--n-samples", type=_positive(int), default=1000)
    p.add_argument("--n-marginal", type=_positive(int), default=10_000)
    p.add_argument("--n-train", type=_positive(int), default=50_000)
    p.add_argument("--nfe", type=_positive(int), help="sampling steps (default: each solver's own)")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")
    a = p.parse_args(argv)
    start = time.monotonic()
    try:
        if a.family is not None and a.official_dir is not None:
            raise SbdiffError("--family chooses sbdiff's own pairs, --official-dir reads the official ones: give one")
        overrides = None
        if a.config:
            from sbdiff.config import load_config

            _, overrides = load_config(a.config)
        state = run_table(a.out, a.solvers, [(d, e) for e in a.eps for d in a.dims], minutes=a.minutes,
                          steps=a.steps, seed=a.seed, n_test=a.n_test, n_samples=a.n_samples,
                          n_marginal=a.n_marginal, n_train=a.n_train, nfe=a.nfe, official_dir=a.official_dir,
                          family=a.family or DEFAULT_FAMILY, overrides=overrides, progress=not a.quiet)
    except SbdiffError as err:
        print(f"eot_table: error: {err}", file=sys.stderr)
        return 2
    print(open(f"{a.out}/eot_table.md").read())
    print(f"{len(state['rows'])} rows in {a.out}/eot_table.{{json,md,png}} ({time.monotonic() - start:.0f} s this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
