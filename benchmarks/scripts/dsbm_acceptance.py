"""Issue 24 acceptance for DSBM (bridge matching): the Gaussian bridge and entropic-OT cells, side
by side with other solvers on the same pair.

    python benchmarks/scripts/dsbm_acceptance.py gaussian [--minutes 8] [--dim 5] [--seeds 0 1 2]
    python benchmarks/scripts/dsbm_acceptance.py eot [--minutes 5] [--dim 16] [--solvers dsbm sf2m] [--family draft-recipe]
    python benchmarks/scripts/dsbm_acceptance.py bridge2d [--minutes 3] [--seeds 0]

Every number is measured from samples only (training sees sample files, never a closed form); run
it alone on the machine (the budgets are wall-clock).

* ``gaussian``: ``sbdiff bench gaussian --method dsbm`` on the pairs ``random_gaussian_bridge(dim,
  1, seed)``: the relative Frobenius error of the cross-covariance of ``(prior point, decoded point)``
  against ``C_σ`` (``cross_cov_err``, %, 10⁵ pairs) and the decoded marginal's BW2-UVP (targets
  ≤ 5 % and ≤ 1 %). One row per seed.
* ``eot``: one cell of ``sbdiff bench eot`` for each solver, the same pair, budget and protocol.
* ``bridge2d``: the 2-D bridge 8 gaussians -> moons (``data = moons`` at t = 0, ``prior = 8gaussians``
  at t = T, eps = 1): the exact W2 of 2000 decoded fresh 8-gaussians points to 2000 fresh moons
  points and of 2000 encoded moons to fresh 8-gaussians, each beside the two-sample W2 of the data
  itself (the floor); a plot of both sets, the decoded points and 60 decoder paths
  (``results/dsbm_bridge2d.png``).

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

import torch

from sbdiff.bench.metrics import w2_exact
from sbdiff.bench.runner import run_bench
from sbdiff.config import Config, config_from_dict
from sbdiff.data import load_data
from sbdiff.train import fit

RESULTS = Path(__file__).resolve().parent.parent / "results"


def bridge2d(minutes: float, seed: int, plot: Path | None) -> dict:
    """dsbm's defaults on the bridge 8 gaussians (t = T) -> moons (t = 0), eps = 1, ``minutes`` of training."""
    cfg = config_from_dict({"method": "dsbm", "seed": seed, "data": {"data": "moons", "prior": "8gaussians"},
                            "reference": {"kind": "brownian", "eps": 1.0},
                            "train": {"steps": 0, "max_minutes": minutes}}, Config()).validate()
    res = fit(cfg, None, data=load_data("moons", cfg.data.n_samples, seed), progress=False)
    model, gen = res.model, torch.Generator().manual_seed(seed + 1)
    src = torch.as_tensor(load_data("8gaussians", 2000, seed + 12345), dtype=torch.float32)
    moons = torch.as_tensor(load_data("moons", 2000, seed + 54321), dtype=torch.float32)
    paths = model.decode(src, trajectory=True, generator=gen)  # (K+1, 2000, 2), data coordinates
    decoded, encoded = paths[-1], model.encode(moons, generator=gen)
    moons_ref, gaussians_ref = (load_data(name, 2000, seed + 777) for name in ("moons", "8gaussians"))
    row = {"what": "bridge2d", "minutes": minutes, "seed": seed, "steps": res.steps, "seconds": round(res.seconds, 1),
           "w2_decoded_vs_moons": w2_exact(decoded.double().numpy(), moons_ref),
           "w2_moons_vs_moons": w2_exact(moons.double().numpy(), moons_ref),
           "w2_encoded_vs_8gaussians": w2_exact(encoded.double().numpy(), gaussians_ref),
           "w2_8gaussians_vs_8gaussians": w2_exact(src.double().numpy(), gaussians_ref)}
    if plot is not None:
        import matplotlib

        src, moons, decoded, paths = (v.numpy() for v in (src, moons, decoded, paths))
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 5))
        ax[0].scatter(*src.T, s=2, c="tab:blue", label="8 gaussians (t = T)")
        ax[0].scatter(*moons.T, s=2, c="tab:orange", label="moons (t = 0)")
        for k in range(60):
            ax[0].plot(paths[:, k, 0], paths[:, k, 1], lw=0.5, c="grey", alpha=0.7)
        ax[0].set_title("data and 60 decoder paths")
        ax[1].scatter(*moons.T, s=2, c="tab:orange", label="moons (held out)")
        ax[1].scatter(*decoded.T, s=2, c="tab:green", label="decoded from 8 gaussians")
        ax[1].set_title(f"dsbm, {res.steps} steps: W2 {row['w2_decoded_vs_moons']:.3f} "
                        f"(floor {row['w2_moons_vs_moons']:.3f})")
        for a in ax:
            a.legend(loc="lower left", fontsize=7, markerscale=4)
            a.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
        plt.close(fig)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("gaussian", "eot", "bridge2d"))
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
    minutes = a.minutes or {"gaussian": 8.0, "eot": 5.0, "bridge2d": 3.0}[a.what]
    rows = []
    RESULTS.mkdir(exist_ok=True)
    for seed in a.seeds:
        if a.what == "bridge2d":
            rows.append(bridge2d(minutes, seed, RESULTS / f"dsbm_bridge2d{'_' + a.tag if a.tag else ''}.png"))
            print(json.dumps(rows[-1]), flush=True)
            continue
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
    dim = "" if a.what == "bridge2d" else f"_d{a.dim or (5 if a.what == 'gaussian' else 16)}"
    name = f"dsbm_{a.what}{dim}{'_' + a.tag if a.tag else ''}.json"
    (RESULTS / name).write_text(json.dumps(rows, indent=1))
    print(f"total {time.monotonic() - start:.0f} s -> {RESULTS / name}")


if __name__ == "__main__":
    main()
