"""VSDM against SGM on anisotropic 2-D data: straightness of the PF-ODE paths and sample quality (issue 15).

The data: the built-in checkerboard scaled by ``(1, 0.25)`` and rotated by 35° (a ``.npy`` file, so the
standardisation leaves a correlation of about 0.9 between the coordinates). A point is on a dark square
when its preimage under that map is (``sbdiff.data.on_checkerboard`` of the inverse map).

The runs (``--variants``, default all) train through the command line one after the other, each with
the same wall-clock budget (``--minutes``) and config (defaults, or ``--config FILE``): ``sgm``;
``vsdm`` (full learned ``D``, ζ = 0.75); ``vsdm_isotropic`` (learned ``D = e^s I``, same ζ: the
contraction rate without anisotropy); ``vsdm_identity`` (``D = I`` kept, i.e. ``vsdm.freeze = 1``; ζ
only enters the update, so this is SGM with the prior ``N(0, Σ_T)``); ``vsdm_zeta1`` (full ``D``,
ζ = 1: no relaxation). Then, per run:

* **tortuosity** of ``--n`` (2000) PF-ODE paths (Heun, prior -> data, data coordinates) at 3, 5, 10,
  20, 50 and 100 steps from the same prior points: ``E[length − chord] / E[chord]`` with
  ``length = Σ_k ‖x_{k+1} − x_k‖`` and ``chord = ‖x_K − x_0‖``, 0 for straight paths; at 100 steps also
  DESIGN §6.3's ``path_straightness`` (``E∫‖v − chord/T‖²``);
* **dark**: the share of 2000 samples (the decoder SDE with the run's ``sample.nfe`` steps) on the
  dark squares;
* **NFE vs quality**: 3, 5, 10, 20, 50, 100 steps of the PF-ODE (Heun: 2 network evaluations per step) and
  of the SDE (Euler–Maruyama: 1 per step), share on the dark squares and W2 (``w2_exact``, POT) of
  2000 samples against 2000 fresh data points (the default SDE samples get a W2 too).

Prints markdown tables; writes ``vsdm_straightness.json`` and ``vsdm_straightness_paths.png`` (the
runs' PF-ODE paths side by side) to ``--results`` (default ``benchmarks/results``), the runs to ``--out``.

Usage: ``python benchmarks/scripts/vsdm_straightness.py --minutes 5`` (alone on the machine: the budgets are
wall-clock); ``--score runs/vsdm_straightness/<time>`` scores the runs of an earlier call again.
Targets (issue 15): VSDM's tortuosity at most 0.8× SGM's (100 steps), with at least 85 %
of its samples on the dark squares.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from sbdiff.bench.metrics import path_straightness, w2_exact
from sbdiff.config import config_from_dict, dumps_config
from sbdiff.data import make_builtin, on_checkerboard
from sbdiff.plots import plot_path_comparison
from sbdiff.train import load_run

ANGLE_DEG = 35.0
SCALE = np.array([1.0, 0.25])
STEPS = (3, 5, 10, 20, 50, 100)


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


#: The runs: name -> (method, config overrides). ``vsdm_isotropic`` learns ``D = e^s I`` (one scalar, same
#: ζ): what a learned contraction rate does without anisotropy. ``vsdm_identity`` keeps ``D = I``
#: (``vsdm.freeze = 1``: no update ever; ζ only enters the update, so this is SGM with the prior
#: ``N(0, Σ_T)``, a control for the run-to-run noise). ``vsdm_zeta1``: full ``D`` learned with ζ = 1
#: (DESIGN §2's encoder loss exactly, no relaxation).
VARIANTS = {
    "sgm": ("sgm", {}),
    "vsdm": ("vsdm", {}),
    "vsdm_isotropic": ("vsdm", {"vsdm": {"encoder": "isotropic"}}),
    "vsdm_identity": ("vsdm", {"vsdm": {"freeze": 1}}),
    "vsdm_zeta1": ("vsdm", {"vsdm": {"interact": 1.0}}),
}


def variant_config(name: str, base: str | None, out: Path) -> Path:
    """A config file for run ``name``: ``base`` (a TOML file, optional) overlaid by the variant's keys."""
    raw = tomllib.loads(Path(base).read_text()) if base else {}
    method, over = VARIANTS[name]
    for section, keys in over.items():
        raw.setdefault(section, {}).update(keys)
    raw["method"] = method
    path = out / f"{name}.toml"
    path.write_text(dumps_config(config_from_dict(raw)))
    return path


def train(method: str, data: Path, minutes: float, out: Path, config: Path) -> float:
    cmd = [sys.executable, "-m", "sbdiff.cli", "train", "--method", method, "--data", str(data),
           "--max-minutes", str(minutes), "--out", str(out), "--quiet", "--config", str(config)]
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
        for steps in STEPS:  # the same prior points for every step count
            traj = model.decode(z, nfe=steps, ode=True, solver="heun", trajectory=True).numpy()
            row[f"ode{steps}_tortuosity"], _ = tortuosity(traj)
            row[f"ode{steps}_dark"] = float(on_dark(traj[-1]).mean())
            row[f"ode{steps}_w2"] = w2_exact(traj[-1], test)
            s = model.sample(n, nfe=steps, ode=False, generator=gen(10 + steps)).numpy()
            row[f"sde{steps}_dark"] = float(on_dark(s).mean())
            row[f"sde{steps}_w2"] = w2_exact(s, test)
    row["tortuosity"], row["chord"] = tortuosity(traj)  # 100 steps
    row["path_straightness"] = path_straightness(traj, np.linspace(1.0, 0.0, traj.shape[0]))
    samples = model.sample(n, nfe=cfg.sample.nfe, generator=gen(2)).numpy()
    row["dark"] = float(on_dark(samples).mean())
    row["sde_nfe"] = cfg.sample.nfe
    row["w2"] = w2_exact(samples, test)
    if cfg.method == "vsdm":
        enc = model.encoder
        row["encoder"] = enc.family
        rounded = lambda a: [round(float(v), 4) for v in np.ravel(a)]  # noqa: E731
        row["D"] = rounded(enc.matrix().detach().numpy())
        row["D_eigenvalues"] = sorted(rounded(enc.spectrum()[1].detach().numpy()))
        row["prior_cov_eigenvalues"] = sorted(rounded(np.linalg.eigvalsh(enc.prior_cov().detach().numpy())))
        row["sa_updates"] = last.get("sa_updates", 0)
    return row, traj


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per run (wall clock)")
    p.add_argument("--config", help="a config file under every run (e.g. a shorter [vsdm] schedule)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"runs, comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--out", default="runs/vsdm_straightness", help="where the runs go")
    p.add_argument("--results", default=str(Path(__file__).resolve().parent.parent / "results"), help="where JSON and plot go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=2000, help="paths and samples per measurement (W2: against as many data points)")
    p.add_argument("--score", metavar="RUNS", help="score the runs of an earlier call (its runs/.../<time> folder) "
                                                   "instead of training")
    args = p.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or "sgm" not in names:
        p.error(f"--variants: unknown {unknown}" if unknown else "--variants must include sgm (the baseline)")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    earlier = {}
    if args.score:
        out = Path(args.score)
        if not (out / "sgm").is_dir():
            p.error(f"--score: no sgm run in {out}")
        names = [v for v in names if (out / v).is_dir()]
        old = results / "vsdm_straightness.json"
        if old.is_file() and json.loads(old.read_text()).get("runs") == str(out):
            earlier = json.loads(old.read_text())
    else:
        out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
        out.mkdir(parents=True)
        np.save(out / "rotated_checkerboard.npy", make_data(50_000, seed=123))
    test = make_data(args.n, seed=456)

    rows, trajs = {}, {}
    for name in names:
        if args.score:  # the earlier call's wall time, else the training time the run logged
            wall = earlier.get(name, {}).get("train_wall_s")
            if wall is None:
                wall = json.loads((out / name / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]
        else:
            wall = round(train(VARIANTS[name][0], out / "rotated_checkerboard.npy", args.minutes, out / name,
                               variant_config(name, args.config, out)), 1)
        rows[name], trajs[name] = evaluate(out / name, test, args.seed, args.n)
        rows[name]["train_wall_s"] = wall
        print(f"{name}: {rows[name]['steps']} steps, tortuosity {rows[name]['tortuosity']:.4f}, "
              f"dark {100 * rows[name]['dark']:.1f} %", flush=True)
    sgm = rows["sgm"]
    for r in rows.values():
        r["tortuosity_ratio"] = r["tortuosity"] / sgm["tortuosity"]
    vsdm = rows.get("vsdm")
    summary = {"minutes": args.minutes, "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
               "angle_deg": ANGLE_DEG, "scale": SCALE.tolist(),
               "targets": {"tortuosity_ratio": 0.8, "vsdm_dark": 0.85},
               "passed": None if vsdm is None else bool(vsdm["tortuosity_ratio"] <= 0.8 and vsdm["dark"] >= 0.85),
               **rows, "runs": str(out)}
    (results / "vsdm_straightness.json").write_text(json.dumps(summary, indent=2))
    plot_path_comparison({f"{name}: tortuosity {r['tortuosity']:.3f}": trajs[name] for name, r in rows.items()},
                         results / "vsdm_straightness_paths.png", data=test,
                         title=f"PF-ODE paths (Heun, 100 steps), rotated stretched checkerboard, {args.minutes:g} min each")

    if vsdm is not None:
        print(f"\n{args.minutes:g} min per run; VSDM tortuosity {vsdm['tortuosity_ratio']:.3f} x SGM's (target <= 0.8), "
              f"VSDM on dark squares {100 * vsdm['dark']:.1f} % (target >= 85 %)\n")
    print("| run | steps | tortuosity (100 PF steps) | x SGM | E[chord] | straightness | dark (SDE, nfe "
          f"{sgm['sde_nfe']}) | W2 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['steps']} | {r['tortuosity']:.4f} | {r['tortuosity_ratio']:.3f} | {r['chord']:.3f} | "
              f"{r['path_straightness']:.3f} | {100 * r['dark']:.1f} % | {r['w2']:.3f} |")
    print("\n| run | sampler | " + " | ".join(f"{s} steps" for s in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for name, r in rows.items():
        cells = " | ".join(f"{r[f'ode{s}_tortuosity']:.4f}" for s in STEPS)
        print(f"| {name} | PF-ODE Heun: tortuosity | {cells} |")
        for kind, label in (("ode", "PF-ODE Heun"), ("sde", "SDE Euler–Maruyama")):
            cells = " | ".join(f"{100 * r[f'{kind}{s}_dark']:.1f} % / {r[f'{kind}{s}_w2']:.3f}" for s in STEPS)
            print(f"| {name} | {label}: dark / W2 | {cells} |")
    for name, r in rows.items():
        if "D_eigenvalues" in r:
            print(f"\n{name} ({r['encoder']} D) after {r['sa_updates']:.0f} updates: eigenvalues of D {r['D_eigenvalues']}, "
                  f"of the prior covariance Σ_T {r['prior_cov_eigenvalues']}")
    print(f"\nJSON and plot in {results}; runs in {out}")


if __name__ == "__main__":
    main()
