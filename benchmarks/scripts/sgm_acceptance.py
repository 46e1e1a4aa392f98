"""The SGM acceptance runs, through the command line exactly as a user would type them.

1. A correlated 2-D Gaussian as a ``.npy`` file: ``sbdiff train --method sgm --max-minutes 4``,
   then ``sbdiff eval --json``; compare ``nll`` with the exact cross-entropy on the same points.
2. A checkerboard ``.npy`` (5 minutes): the share of 5000 samples on the dark squares.

Usage: ``python benchmarks/scripts/sgm_acceptance.py [--minutes-gauss 4] [--minutes-checker 5] [--out DIR]``.
Prints a table; run it alone on the machine (time budgets are wall-clock).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import multivariate_normal

from sbdiff.data import make_builtin, on_checkerboard

MEAN = np.array([1.0, -2.0])
COV = np.array([[2.0, 1.2], [1.2, 1.0]])


def sbdiff(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sbdiff.cli", *args, "--quiet"], check=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes-gauss", type=float, default=4.0)
    p.add_argument("--minutes-checker", type=float, default=5.0)
    p.add_argument("--out", default="runs/acceptance")
    args = p.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    rows = []

    # 1. Gaussian: NLL against the exact cross-entropy on held-out points
    np.save(out / "gauss_train.npy", rng.multivariate_normal(MEAN, COV, 50_000))
    test = rng.multivariate_normal(MEAN, COV, 2000)
    np.save(out / "gauss_test.npy", test)
    exact = float(-multivariate_normal(MEAN, COV).logpdf(test).mean())
    t0 = time.monotonic()
    sbdiff("train", "--method", "sgm", "--data", str(out / "gauss_train.npy"), "--max-minutes",
           str(args.minutes_gauss), "--out", str(out / "gauss_run"))
    train_s = time.monotonic() - t0
    sbdiff("eval", str(out / "gauss_run"), "--data", str(out / "gauss_test.npy"), "--json", str(out / "gauss_eval.json"),
           "--n", "2000")
    ev = json.loads((out / "gauss_eval.json").read_text())
    rows.append(("gaussian 2-D", f"{train_s:.0f}s", f"nll {ev['nll']:.4f} ± {ev['nll_stderr']:.4f}, exact {exact:.4f}, "
                 f"|gap| {abs(ev['nll'] - exact):.4f}; nelbo {ev['nelbo']:.4f} ± {ev['nelbo_stderr']:.4f}"))

    # 2. Checkerboard: share of samples on the dark squares
    np.save(out / "checker.npy", make_builtin("checkerboard", 50_000, seed=123))
    t0 = time.monotonic()
    sbdiff("train", "--method", "sgm", "--data", str(out / "checker.npy"), "--max-minutes",
           str(args.minutes_checker), "--out", str(out / "checker_run"))
    train_s = time.monotonic() - t0
    sbdiff("sample", str(out / "checker_run"), "--n", "5000", "--out", str(out / "checker_samples.npy"))
    share = on_checkerboard(np.load(out / "checker_samples.npy")).mean()
    sbdiff("eval", str(out / "checker_run"), "--data", str(out / "checker.npy"), "--json", str(out / "checker_eval.json"))
    ev = json.loads((out / "checker_eval.json").read_text())
    rows.append(("checkerboard", f"{train_s:.0f}s", f"{100 * share:.1f}% of 5000 samples on dark squares; "
                 f"nll {ev['nll']:.3f}, nelbo {ev['nelbo']:.3f}, w2 {ev['w2']:.3f}"))

    print(f"\n| run | wall time | result |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nartefacts in {out}")


if __name__ == "__main__":
    main()
