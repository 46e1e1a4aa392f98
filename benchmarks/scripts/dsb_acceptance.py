"""Issue 5 acceptance for DSB: the Gaussian bridge, the entropic-OT cell and 2-D generation.

    python benchmarks/scripts/dsb_acceptance.py gaussian [--minutes 8] [--dim 5]
    python benchmarks/scripts/dsb_acceptance.py eot [--minutes 10] [--dim 16]
    python benchmarks/scripts/dsb_acceptance.py generate [--minutes 3] [--data moons scurve 8gaussians]

Every number is measured from samples only (training sees sample files, never a closed form).

* ``gaussian``: ``sbdiff bench gaussian --method dsb`` (two random Gaussians,
  ``bench.gaussian.random_gaussian_bridge(dim, 1, seed 0)``, given to training as sample files;
  reference ``brownian(1)``). Reports the relative Frobenius error of the cross-covariance of
  ``(prior point, decoded point)`` against the closed form ``C_σ`` and the decoded marginal's
  BW2-UVP (targets: ≤ 10 %, ≤ 2 %).
* ``eot``: ``sbdiff bench eot --method dsb --family rotated`` on one cell (target: cBW2-UVP ≤ 1 % at
  D = 16, eps = 1; the ``rotated`` pairs of the results in benchmarks/README.md).
* ``generate``: data -> N(0, I) with 20 Euler steps (``dsb.num_steps = 20``), exact W2 (POT) on
  2000 samples against 2000 fresh data points (DSB's published 0.190 / 0.272 / 0.411 on moons,
  s-curve, 8 gaussians).

Prints a markdown table and writes ``benchmarks/results/dsb_<what>.json``.
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
PUBLISHED_W2 = {"moons": 0.190, "scurve": 0.272, "8gaussians": 0.411}


def gaussian(minutes: float, dim: int, seed: int = 0) -> dict:
    """``sbdiff bench gaussian --method dsb`` on one cell: C_σ err on 10⁵ (prior point, decoded point)
    pairs (``cross_cov_err``, %) and the decoded marginal's BW2-UVP."""
    row = run_bench("gaussian", "dsb", dim, 1.0, seed=seed, minutes=minutes)
    row["what"] = "gaussian"
    row["minutes"] = minutes
    return row


def eot(minutes: float, dim: int, seed: int = 0) -> dict:
    row = run_bench("eot", "dsb", dim, 1.0, seed=seed, minutes=minutes, family="rotated")
    row["what"] = "eot"
    row["minutes"] = minutes
    return row


def generate(minutes: float, name: str, seed: int = 0) -> dict:
    cfg = config_from_dict({"method": "dsb", "seed": seed, "data": {"data": name},
                            "dsb": {"num_steps": 20}, "train": {"steps": 0, "max_minutes": minutes}},
                           Config()).validate()
    data = load_data(name, cfg.data.n_samples, seed)
    res = fit(cfg, None, data=data, progress=False)
    samples = res.model.sample(2000, generator=torch.Generator().manual_seed(seed + 1)).double().numpy()
    fresh = load_data(name, 2000, seed + 12345)
    return {"what": "generate", "data": name, "minutes": minutes, "steps": res.steps, "euler_steps": 20,
            "w2": w2_exact(samples, fresh), "w2_data_vs_data": w2_exact(load_data(name, 2000, seed + 777), fresh),
            "published_dsb_w2": PUBLISHED_W2.get(name)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("gaussian", "eot", "generate"))
    p.add_argument("--minutes", type=float)
    p.add_argument("--dim", type=int)
    p.add_argument("--data", nargs="+", default=["moons", "scurve", "8gaussians"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    start = time.monotonic()
    if a.what == "gaussian":
        rows = [gaussian(a.minutes or 8.0, a.dim or 5, a.seed)]
    elif a.what == "eot":
        rows = [eot(a.minutes or 10.0, a.dim or 16, a.seed)]
    else:
        rows = [generate(a.minutes or 3.0, name, a.seed) for name in a.data]
    for row in rows:
        print(json.dumps(row))
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if a.what != "generate" else "_" + "_".join(a.data)
    (RESULTS / f"dsb_{a.what}{suffix}.json").write_text(json.dumps(rows, indent=1))
    print(f"total {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
