"""Issue 26: why sbfbsde's bridge on a draft-recipe pair stops improving after one IPF iteration.

    python benchmarks/diagnostics/sbfbsde_ipf_floor.py population --seed 7
    python benchmarks/diagnostics/sbfbsde_ipf_floor.py phases --seed 7 --half-steps 2000 --iterations 5
    python benchmarks/diagnostics/sbfbsde_ipf_floor.py points RUN --seed 7

``population``: IPF without networks. On ``--n`` samples of each side (the same 20 000-point draws the
acceptance uses, ``benchmarks/sbfbsde_trust.py``, subsampled), the half-bridges of IPF are Sinkhorn's
half-steps on the kernel ``exp(−‖x − y‖²/(2 eps))``: iteration 0 is the reference's reversal from the
data, ``π⁰(y|x) ∝ p_data(y) N(x | y, eps)``, and each iteration matches the prior side, then the data
side. The decoder's conditional ``π^n(·|x)`` at the protocol's test points is a weighted sample of the
data side, scored by cBW2-UVP against the exact conditionals (its floor is the sample's own, ≈0.2 % at
``n = 5000``). Written in the log domain here (not POT) because the iterates themselves are the result.

``phases``: the preset itself (``sbdiff train --method sbfbsde --data target.npy --prior source.npy
--eps 1``, a fixed schedule of ``--iterations`` decoder phases of ``--half-steps`` steps, no freeze),
scored at the end of every decoder phase (the trainer writes a checkpoint at every phase end; this
script scores the EMA model there) on ``--n-test`` test points × 500 draws: cBW2-UVP, its mean part
``mean ‖m̂ − m‖² / tr Cov(p1)`` and the ratio of the conditional covariances' traces.

``points``: a trained run's cBW2-UVP point by point (250 × 1000, the protocol's test points), grouped
by the source component each test point is nearest to.

Prints JSON rows and appends them to ``--out`` (default ``benchmarks/results/sbfbsde_ipf_floor.jsonl``).
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sbdiff.bench.eot import make_pair
from sbdiff.bench.metrics import bures_wasserstein2, cbw2_uvp, fit_gaussian

N_TRAIN = 20_000


def pair_and_samples(seed: int):
    pair = make_pair(16, 1.0, seed, "draft-recipe")
    target = pair.sample_target(N_TRAIN, np.random.default_rng([seed, 10]))
    source = pair.sample_source(N_TRAIN, np.random.default_rng([seed, 11]))
    return pair, target, source


def conditional_scores(pm, pc, tm, tc, tr) -> dict:
    """cBW2-UVP %, its mean part % and the mean ratio of the conditional covariances' traces."""
    return {"cbw2_uvp": cbw2_uvp(pm, pc, tm, tc, tr),
            "mean_part": float(100 * np.mean(((pm - tm) ** 2).sum(-1)) / tr),
            "cov_trace_ratio": float(np.mean(np.trace(pc, axis1=1, axis2=2) / np.trace(tc, axis1=1, axis2=2)))}


def population(args) -> list[dict]:
    pair, target, source = pair_and_samples(args.seed)
    y = torch.as_tensor(target[:args.n], dtype=torch.float64)
    x = torch.as_tensor(source[:args.n], dtype=torch.float64)
    x_test = pair.sample_source(args.n_test, np.random.default_rng([args.seed, 1]))
    tm, tc = pair.conditional_moments(x_test)
    tr = float(np.trace(pair.target_moments()[1]))
    cost = torch.cdist(x, y) ** 2 / (2 * pair.eps)  # (n_x, n_y)
    cost_test = torch.cdist(torch.as_tensor(x_test), y) ** 2 / (2 * pair.eps)
    log_v = torch.zeros(len(y), dtype=torch.float64)  # the data side's potential: iteration 0 has none
    rows = []
    for n in range(args.iterations + 1):
        w = torch.softmax(-cost_test + log_v[None], 1)  # π^n(y_j | x): the decoder's conditional
        m = w @ y
        cov = torch.einsum("ij,jk,jl->ikl", w, y, y) - m[:, :, None] * m[:, None, :]
        row = {"what": "population", "seed": args.seed, "n": args.n, "n_test": args.n_test, "iteration": n,
               **conditional_scores(m.numpy(), cov.numpy(), tm, tc, tr)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        log_u = -torch.logsumexp(-cost + log_v[None], 1)  # encoder phase: the prior side matched
        log_v = -torch.logsumexp(-cost + log_u[:, None], 0)  # decoder phase: the data side matched
    return rows


def phases(args) -> list[dict]:
    import sbdiff.train as train
    from sbdiff.cli import main as cli_main

    pair, target, source = pair_and_samples(args.seed)
    x_test = pair.sample_source(args.n_test, np.random.default_rng([args.seed, 1]))
    tm, tc = pair.conditional_moments(x_test)
    tr = float(np.trace(pair.target_moments()[1]))
    rows, start = [], time.monotonic()
    save_checkpoint = train._save_checkpoint

    def scored_checkpoint(s, state):  # the trainer writes a checkpoint at the end of every phase
        save_checkpoint(s, state)
        schedule = s.method.schedule
        phase = schedule.phase(state.step - 1) if schedule is not None else None
        if phase is None or phase.end != state.step or phase.role != "decoder":
            return
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            yy = s.ema.module.decode(torch.as_tensor(np.repeat(x_test, 500, 0), dtype=torch.float32),
                                     generator=gen).double().numpy()
        pm, pc = fit_gaussian(yy.reshape(len(x_test), 500, -1))
        row = {"what": "phases", "seed": args.seed, "half_steps": args.half_steps, "n_test": args.n_test,
               "extra": args.extra, "step": state.step, "iteration": phase.iteration,
               **conditional_scores(pm, pc, tm, tc, tr), "wall_s": round(time.monotonic() - start, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    train._save_checkpoint = scored_checkpoint
    try:
        with tempfile.TemporaryDirectory(prefix="sbfbsde-ipf-") as tmp:
            d = Path(tmp)
            np.save(d / "target.npy", target.astype(np.float32))
            np.save(d / "source.npy", source.astype(np.float32))
            (d / "schedule.toml").write_text(f"[sbfbsde]\niterations = {args.iterations}\nfreeze_encoder = 0\n"
                                             f"half_steps = {args.half_steps}\n{args.extra}\n")
            cli_main(["train", "--method", "sbfbsde", "--data", str(d / "target.npy"), "--prior",
                      str(d / "source.npy"), "--eps", "1", "--config", str(d / "schedule.toml"), "--out",
                      str(d / "run"), "--quiet"])
    finally:
        train._save_checkpoint = save_checkpoint
    return rows


def points(args) -> list[dict]:
    from sbdiff.train import load_run

    pair = make_pair(16, 1.0, args.seed, "draft-recipe")
    _, model = load_run(args.run)
    x_test = pair.sample_source(250, np.random.default_rng([args.seed, 1]))
    tm, tc = pair.conditional_moments(x_test)
    tr = float(np.trace(pair.target_moments()[1]))
    gen = torch.Generator().manual_seed(0)
    y = model.decode(torch.as_tensor(np.repeat(x_test, 1000, 0), dtype=torch.float32), generator=gen)
    pm, pc = fit_gaussian(y.double().numpy().reshape(len(x_test), 1000, -1))
    per_point = 100 * bures_wasserstein2(pm, pc, tm, tc) / tr
    nearest = ((x_test[:, None, :] - pair.source_means[None]) ** 2).sum(-1).argmin(1)
    rows = []
    for k in range(len(pair.source_means)):
        sel = nearest == k
        rows.append({"what": "points", "run": str(args.run), "seed": args.seed, "source_component": k,
                     "weight": float(pair.source_weights[k]), "test_points": int(sel.sum()),
                     "mean_bw2_uvp": float(per_point[sel].mean()), "max_bw2_uvp": float(per_point[sel].max()),
                     "model_cov_trace": float(np.trace(pc[sel], axis1=1, axis2=2).mean()),
                     "true_cov_trace": float(np.trace(tc[sel], axis1=1, axis2=2).mean())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("population", "phases", "points"))
    p.add_argument("run", nargs="?", help="points: the run directory")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--n", type=int, default=5000, help="population: samples per side")
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--half-steps", type=int, default=2000)
    p.add_argument("--extra", default="", help="phases: more [sbfbsde] lines, e.g. 'probes = 4'")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results" / "sbfbsde_ipf_floor.jsonl"))
    args = p.parse_args()
    if args.what == "points" and not args.run:
        p.error("points needs the run directory")
    rows = {"population": population, "phases": phases, "points": points}[args.what](args)
    with open(args.out, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
