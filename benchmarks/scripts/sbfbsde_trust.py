"""Issue 26 acceptance: sbfbsde as a new user runs it, through the command line, on pairs no one tuned for.

    python benchmarks/scripts/sbfbsde_trust.py bridge --problem eot --dim 16 --seeds 7 --methods sbfbsde dsb --minutes 10
    python benchmarks/scripts/sbfbsde_trust.py bridge --problem gaussian --dim 5 --seeds 11 12 13 14 15 --minutes 8
    python benchmarks/scripts/sbfbsde_trust.py checkerboard --seeds 0 1 2 --methods sbfbsde sgm --minutes 6

``bridge``: a pair (``eot``: the entropic-OT benchmark's draft-recipe family, eps = 1,
:func:`sbdiff.bench.eot.make_pair`; ``gaussian``: ``random_gaussian_bridge(dim, 1, seed)``), 20 000
unpaired points per side written to ``target.npy`` (data, t = 0) and ``source.npy`` (prior, t = T),
then exactly the issue's command::

    sbdiff train --method METHOD --data target.npy --prior source.npy --eps 1 --max-minutes M

(every setting at its default), and the run scored from its saved model: the final ``prior_loss``
of ``metrics.jsonl`` and any end-of-training warning; ``eot``: cBW2-UVP (``--n-test`` test points ×
1000 draws) and the decoded marginal's BW2-UVP (:func:`sbdiff.bench.metrics.plan_metrics`);
``gaussian``: also the relative error of the cross-covariance of (prior point, decoded point)
against the closed form ``C_σ`` (10⁵ pairs, :func:`sbdiff.bench.runner.cross_cov_error`).

``checkerboard``: 20 000 training points uniform on the 8 dark squares of the 4×4 board on
``[−4, 4]²`` (seed ``100 + s``), ``sbdiff train --method METHOD --data checker.npy --seed s
--max-minutes M``, then ``sbdiff eval RUN --data held-out.npy --n 2000`` (2 000 fresh points):
``nll``, ``nelbo``, their standard errors, ``dm_residual``, ``consistent``, and the share of 5 000
samples on the dark squares.

Run it alone on the machine (the budgets are wall-clock). Prints one JSON row per run and appends it
to ``--out`` (default ``benchmarks/results/sbfbsde_trust_<what>.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from sbdiff.bench.metrics import plan_metrics
from sbdiff.bench.runner import cross_cov_error, make_problem
from sbdiff.data import make_builtin, on_checkerboard
from sbdiff.train import load_run

N_TRAIN = 20_000


def cli(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "sbdiff.cli", *args, "--quiet"], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"sbdiff {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def last_rows(run: Path) -> tuple[dict, list[str]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    warnings = [r["warning"] for r in rows if "warning" in r]
    train_rows = [r for r in rows if "warning" not in r]
    return train_rows[-1], warnings


def bridge(args, work: Path) -> list[dict]:
    out = []
    for seed in args.seeds:
        pair = make_problem(args.problem, args.dim, 1.0, seed, None, args.family)
        if args.problem == "eot":
            target = pair.sample_target(N_TRAIN, np.random.default_rng([seed, 10]))
            source = pair.sample_source(N_TRAIN, np.random.default_rng([seed, 11]))
        else:
            target, source = pair.sample_target(N_TRAIN, seed + 10), pair.sample_source(N_TRAIN, seed + 11)
        d = work / f"{args.problem}{args.dim}_s{seed}"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "target.npy", np.asarray(target, np.float32))
        np.save(d / "source.npy", np.asarray(source, np.float32))
        for method in args.methods:
            run = d / method
            res = cli("train", "--method", method, "--data", str(d / "target.npy"), "--prior", str(d / "source.npy"),
                      "--eps", "1", "--max-minutes", str(args.minutes), "--out", str(run))
            last, warnings = last_rows(run)
            cfg, model = load_run(run)

            def sampler(x, rng):
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                return model.decode(torch.as_tensor(x, dtype=torch.float32), generator=gen).double().numpy()

            row = {"problem": args.problem, "family": args.family if args.problem == "eot" else None, "dim": args.dim,
                   "seed": seed, "method": method, "minutes": args.minutes, "steps": last["step"],
                   "final_prior_loss": last.get("prior_loss"), "warnings": warnings,
                   "normalize": cfg.data.normalize, "train_stderr_tail": res.stderr.strip().splitlines()[-2:]}
            row.update(plan_metrics(pair, sampler, n_test=args.n_test, n_samples=1000, n_marginal=10_000, seed=seed))
            if args.problem == "gaussian":
                row["cross_cov_err"] = cross_cov_error(pair, sampler, seed=seed)
            print(json.dumps(row), flush=True)
            out.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return out


def checkerboard(args, work: Path) -> list[dict]:
    out = []
    for seed in args.seeds:
        d = work / f"checker_s{seed}"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "checker.npy", make_builtin("checkerboard", N_TRAIN, seed=100 + seed).astype(np.float32))
        np.save(d / "held_out.npy", make_builtin("checkerboard", 2000, seed=200 + seed).astype(np.float32))
        for method in args.methods:
            run = d / method
            cli("train", "--method", method, "--data", str(d / "checker.npy"), "--seed", str(seed),
                "--max-minutes", str(args.minutes), "--out", str(run))
            res = cli("eval", str(run), "--data", str(d / "held_out.npy"), "--n", "2000", "--json", str(run / "eval.json"))
            ev = json.loads((run / "eval.json").read_text())
            last, warnings = last_rows(run)
            _, model = load_run(run)
            samples = model.sample(5000, generator=torch.Generator().manual_seed(seed)).numpy()
            row = {"problem": "checkerboard", "seed": seed, "method": method, "minutes": args.minutes,
                   "steps": last["step"], "warnings": warnings,
                   "eval_warning": [line for line in res.stderr.splitlines() if "warning" in line],
                   "on_dark_squares": float(on_checkerboard(samples).mean()),
                   **{k: ev[k] for k in ("nll", "nll_stderr", "nelbo", "nelbo_stderr", "nll_minus_nelbo", "consistent",
                                         "dm_residual", "w2", "sliced_w2") if k in ev}}
            print(json.dumps(row), flush=True)
            out.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("bridge", "checkerboard"))
    p.add_argument("--problem", choices=("eot", "gaussian"), default="eot")
    p.add_argument("--family", default="draft-recipe")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[7])
    p.add_argument("--methods", nargs="+", default=["sbfbsde"])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--n-test", type=int, default=250)
    p.add_argument("--work", default=None, help="where the data files and runs go (default: a temporary directory)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    name = args.what if args.what == "checkerboard" else f"{args.problem}{args.dim}"
    args.out = args.out or str(Path(__file__).resolve().parent.parent / "results" / f"sbfbsde_trust_{name}.jsonl")
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        (bridge if args.what == "bridge" else checkerboard)(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory(prefix="sbfbsde-trust-") as tmp:
            (bridge if args.what == "bridge" else checkerboard)(args, Path(tmp))


if __name__ == "__main__":
    main()
