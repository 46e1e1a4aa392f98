"""VSDM against SGM on anisotropic 2-D data: straightness of the PF-ODE paths and sample quality (issue 7).

The data: the built-in checkerboard scaled by ``(1, 0.25)`` and rotated by 35° (a ``.npy`` file, so the
standardisation leaves a correlation of about 0.9 between the coordinates). A point is on a dark square
when its preimage under that map is (``sbdiff.data.on_checkerboard`` of the inverse map).

Both methods train through the command line, with the same wall-clock budget (``--minutes``) and the
same config (defaults, or ``--config FILE``), one after the other. Then, per method:

* **tortuosity** of ``--n`` (2000) PF-ODE paths (Heun, 100 steps, prior -> data, data coordinates):
  ``E[length − chord] / E[chord]`` with ``length = Σ_k ‖x_{k+1} − x_k‖`` and ``chord = ‖x_K − x_0‖``;
  0 for straight paths; also DESIGN §6.3's ``path_straightness`` (``E∫‖v − chord/T‖²``);
* **dark**: the share of 2000 samples (the decoder SDE with the run's ``sample.nfe`` steps) on the
  dark squares;
* **NFE vs quality**: 10, 20, 50, 100 steps of the PF-ODE (Heun: 2 network evaluations per step) and
  of the SDE (Euler–Maruyama: 1 per step), share on the dark squares and W2 (``w2_exact``, POT) of
  2000 samples against 2000 fresh data points (the default SDE samples get a W2 too).

Prints a markdown table; writes ``vsdm_straightness.json`` and ``vsdm_straightness_paths.png`` (the
SGM-vs-VSDM path plot) to ``--results`` (default ``benchmarks/results``) and the runs to ``--out``.

Usage: ``python benchmarks/vsdm_straightness.py --minutes 5`` (alone on the machine: the budgets are
wall-clock). Targets (issue 7): VSDM at least 20 % straighter than SGM (tortuosity), with at least
85 % of its samples on the dark squares.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from sbdiff.bench.metrics import path_straightness, w2_exact
from sbdiff.data import make_builtin, on_checkerboard
from sbdiff.plots import plot_path_comparison
from sbdiff.train import load_run

ANGLE_DEG = 35.0
SCALE = np.array([1.0, 0.25])
STEPS = (10, 20, 50, 100)


def rotation(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def make_data(n: int, seed: int, deg: float = ANGLE_DEG) -> np.ndarray:
    """The stretched, rotated checkerboard, shape ``(n, 2)``: ``x ↦ R(deg)·diag(SCALE)·x``."""
    return (make_builtin("checkerboard", n, seed=seed) * SCALE) @ rotation(deg).T


def on_dark(x: np.ndarray, deg: float = ANGLE_DEG) -> np.ndarray:
    """Which points ``(N, 2)`` lie on the dark squares: the inverse map, then the checkerboard test."""
    return on_checkerboard((np.asarray(x, np.float64) @ rotation(deg)) / SCALE)


def tortuosity(traj: np.ndarray) -> tuple[float, float]:
    """``(E[length − chord]/E[chord], E[chord])`` of paths ``(K+1, N, d)``."""
    length = np.linalg.norm(np.diff(traj, axis=0), axis=-1).sum(0)
    chord = np.linalg.norm(traj[-1] - traj[0], axis=-1)
    return float((length - chord).mean() / chord.mean()), float(chord.mean())


def train(method: str, data: Path, minutes: float, out: Path, config: str | None) -> float:
    cmd = [sys.executable, "-m", "sbdiff.cli", "train", "--method", method, "--data", str(data),
           "--max-minutes", str(minutes), "--out", str(out), "--quiet"]
    if config:
        cmd += ["--config", config]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    return time.monotonic() - t0


def evaluate(run: Path, test: np.ndarray, seed: int, n: int) -> tuple[dict, np.ndarray]:
    cfg, model = load_run(run)
    gen = lambda k: torch.Generator().manual_seed(seed + k)  # noqa: E731
    row: dict = {}
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as fh:  # the final step count
        row["steps"] = json.loads(fh.metadata()["sbdiff"])["step"]
    with torch.no_grad():
        z = model.sample_prior(n, generator=gen(1))
        traj = model.decode(z, nfe=100, ode=True, solver="heun", trajectory=True).numpy()
    row["tortuosity"], row["chord"] = tortuosity(traj)
    row["path_straightness"] = path_straightness(traj, np.linspace(1.0, 0.0, traj.shape[0]))
    samples = model.sample(n, nfe=cfg.sample.nfe, generator=gen(2)).numpy()
    row["dark"] = float(on_dark(samples).mean())
    row["sde_nfe"] = cfg.sample.nfe
    row["w2"] = w2_exact(samples, test)
    for steps in STEPS:
        for kind, kw in (("ode", dict(ode=True, solver="heun")), ("sde", dict(ode=False))):
            s = model.sample(n, nfe=steps, generator=gen(10 + steps), **kw).numpy()
            row[f"{kind}{steps}_dark"] = float(on_dark(s).mean())
            row[f"{kind}{steps}_w2"] = w2_exact(s, test)
    if cfg.method == "vsdm":
        enc = model.encoder
        row["D"] = enc.matrix().detach().numpy().round(4).tolist()
        row["D_eigenvalues"] = sorted(enc.spectrum()[1].numpy().round(4).tolist())
        row["prior_cov_eigenvalues"] = sorted(np.linalg.eigvalsh(enc.prior_cov().numpy()).round(4).tolist())
        row["sa_updates"] = last.get("sa_updates", 0)
    return row, traj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per method (wall clock)")
    p.add_argument("--config", help="a config file given to both runs (e.g. a shorter [vsdm] schedule)")
    p.add_argument("--out", default="runs/vsdm_straightness", help="where the runs go")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where JSON and plot go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=2000, help="paths and samples per measurement (W2: against as many data points)")
    args = p.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data_file = out / "rotated_checkerboard.npy"
    np.save(data_file, make_data(50_000, seed=123))
    test = make_data(args.n, seed=456)

    rows, trajs = {}, {}
    for method in ("sgm", "vsdm"):
        wall = train(method, data_file, args.minutes, out / method, args.config)
        rows[method], trajs[method] = evaluate(out / method, test, args.seed, args.n)
        rows[method]["train_wall_s"] = round(wall, 1)
    sgm, vsdm = rows["sgm"], rows["vsdm"]
    gain = 1.0 - vsdm["tortuosity"] / sgm["tortuosity"]
    summary = {"minutes": args.minutes, "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
               "angle_deg": ANGLE_DEG, "scale": SCALE.tolist(), "straighter_by": gain,
               "targets": {"straighter_by": 0.20, "vsdm_dark": 0.85},
               "passed": bool(gain >= 0.20 and vsdm["dark"] >= 0.85), "sgm": sgm, "vsdm": vsdm, "runs": str(out)}
    (results / "vsdm_straightness.json").write_text(json.dumps(summary, indent=2))
    plot_path_comparison({f"SGM: tortuosity {sgm['tortuosity']:.3f}": trajs["sgm"],
                          f"VSDM: tortuosity {vsdm['tortuosity']:.3f}": trajs["vsdm"]},
                         results / "vsdm_straightness_paths.png", data=test,
                         title=f"PF-ODE paths (Heun, 100 steps), rotated stretched checkerboard, {args.minutes:g} min each")

    print(f"\n{args.minutes:g} min per method; VSDM straighter than SGM by {100 * gain:.1f} % "
          f"(target >= 20 %), VSDM on dark squares {100 * vsdm['dark']:.1f} % (target >= 85 %)\n")
    print("| method | steps | tortuosity | E[chord] | straightness | dark (SDE, nfe " f"{sgm['sde_nfe']}) | W2 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['steps']} | {r['tortuosity']:.4f} | {r['chord']:.3f} | {r['path_straightness']:.3f} | "
              f"{100 * r['dark']:.1f} % | {r['w2']:.3f} |")
    print("\n| method | sampler | " + " | ".join(f"{s} steps" for s in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for name, r in rows.items():
        for kind, label in (("ode", "PF-ODE Heun"), ("sde", "SDE Euler–Maruyama")):
            cells = " | ".join(f"{100 * r[f'{kind}{s}_dark']:.1f} % / {r[f'{kind}{s}_w2']:.3f}" for s in STEPS)
            print(f"| {name} | {label} (dark / W2) | {cells} |")
    if "D_eigenvalues" in vsdm:
        print(f"\nVSDM encoder after {vsdm['sa_updates']:.0f} updates: eigenvalues of D {vsdm['D_eigenvalues']}, "
              f"of the prior covariance Σ_T {vsdm['prior_cov_eigenvalues']}")
    print(f"\nJSON and plot in {results}; runs in {out}")


if __name__ == "__main__":
    main()
