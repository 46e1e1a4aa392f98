"""Where a mixture is the wrong model: lightsb on the 2-D bridge 8 gaussians -> moons and on the
generative checkerboard, for several numbers of components K, beside dsbm's stored rows (issue 38).

    python benchmarks/scripts/lightsb_mixture2d.py [--ks 10 50 200] [--seed 0]

* ``bridge``: ``data = moons`` (t = 0), ``prior = 8gaussians`` (t = 1), eps = 1, lightsb's defaults
  (10 000 steps) with ``lightsb.components = K``; the exact W2 and the sliced W2 of 2000 decoded fresh
  8-gaussians points against 2000 fresh moons points, beside the same distances between two draws of
  moons (the floor): the protocol of ``dsbm_acceptance.py bridge2d`` (the same draws), whose row is
  ``results/dsbm_bridge2d.json``.
* ``checkerboard``: generative mode on the checkerboard of ``sbfbsde_checkerboard.py`` (50 000 points,
  seed 123; test set seed 456), eps = 1 (prior ``N(0, I)`` in standardised coordinates): the share of
  5000 samples on the dark squares and the PF-ODE ``nll`` (nats) of 2000 test points; dsbm's and
  SGM's rows are ``results/dsbm_checkerboard_6min.json``.

Timed: run it alone. Writes ``results/lightsb_mixture2d.json`` and ``results/lightsb_mixture2d.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sbdiff.bench.metrics import sliced_w2, w2_exact
from sbdiff.config import Config, config_from_dict
from sbdiff.data import load_data, make_builtin, on_checkerboard
from sbdiff.train import fit

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _config(raw: dict, k: int, seed: int) -> Config:
    return config_from_dict({"method": "lightsb", "seed": seed, "reference": {"kind": "brownian", "eps": 1.0},
                             "lightsb": {"components": k}, **raw}, Config()).validate()


def bridge(k: int, seed: int) -> tuple[dict, np.ndarray]:
    cfg = _config({"data": {"data": "moons", "prior": "8gaussians"}}, k, seed)
    res = fit(cfg, None, data=load_data("moons", cfg.data.n_samples, seed), progress=False)
    model, gen = res.model, torch.Generator().manual_seed(seed + 1)
    src = torch.as_tensor(load_data("8gaussians", 2000, seed + 12345), dtype=torch.float32)
    moons = load_data("moons", 2000, seed + 54321)
    decoded = model.decode(src, generator=gen).double().numpy()
    ref = load_data("moons", 2000, seed + 777)
    return {"what": "bridge", "K": k, "seed": seed, "steps": res.steps, "seconds": round(res.seconds, 1),
            "w2": w2_exact(decoded, ref), "w2_floor": w2_exact(moons, ref),
            "sliced_w2": sliced_w2(decoded, ref, seed=seed), "sliced_w2_floor": sliced_w2(moons, ref, seed=seed)}, decoded


def checkerboard(k: int, seed: int) -> tuple[dict, np.ndarray]:
    train = make_builtin("checkerboard", 50_000, seed=123)
    test = make_builtin("checkerboard", 5_000, seed=456)[:2000]
    cfg = _config({"data": {"data": "checkerboard"}}, k, seed)
    res = fit(cfg, None, data=train, progress=False)
    model, gen = res.model, torch.Generator().manual_seed(seed + 1)
    samples = model.sample(5000, generator=gen).double().numpy()
    nll = -model.log_prob(torch.as_tensor(test, dtype=torch.float32)).double().numpy()
    return {"what": "checkerboard", "K": k, "seed": seed, "steps": res.steps, "seconds": round(res.seconds, 1),
            "on_dark_squares": float(on_checkerboard(samples).mean()), "nll": float(nll.mean()),
            "nll_stderr": float(nll.std() / np.sqrt(len(nll))),
            "w2": w2_exact(samples[:2000], test)}, samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    start = time.monotonic()
    rows, pictures = [], {}
    for what, run in (("bridge", bridge), ("checkerboard", checkerboard)):
        for k in a.ks:
            row, points = run(k, a.seed)
            rows.append(row)
            pictures[what, k] = points
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lightsb_mixture2d.json").write_text(json.dumps(rows, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, len(a.ks), figsize=(4 * len(a.ks), 8), squeeze=False)
    for j, k in enumerate(a.ks):
        for i, what in enumerate(("bridge", "checkerboard")):
            row = next(r for r in rows if r["what"] == what and r["K"] == k)
            pts = pictures[what, k]
            ax[i, j].scatter(pts[:2000, 0], pts[:2000, 1], s=1, alpha=0.6)
            label = (f"W2 {row['w2']:.3f} (floor {row['w2_floor']:.3f})" if what == "bridge"
                     else f"{100 * row['on_dark_squares']:.1f} % on dark squares, nll {row['nll']:.3f}")
            ax[i, j].set_title(f"lightsb {what}, K = {k}\n{label}", fontsize=9)
            ax[i, j].set_aspect("equal")
    fig.tight_layout()
    fig.savefig(RESULTS / "lightsb_mixture2d.png", dpi=100)
    print(f"total {time.monotonic() - start:.0f} s -> {RESULTS / 'lightsb_mixture2d.json'}")


if __name__ == "__main__":
    main()
