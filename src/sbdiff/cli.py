"""The ``sbdiff`` command (DESIGN §8): demo, train, sample, decode, encode, eval, bench.

Errors in the input (data, config, arguments, run directories) end the command with exit status 2
and one line ``sbdiff: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._utils import SbdiffError
from .config import METHODS, Config, config_from_dict, load_config
from .data import load_data, on_checkerboard

EXIT_USAGE = 2


def _default_out(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _write_json(obj: dict, path: str | Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2) + "\n")
    except OSError as err:
        raise SbdiffError(f"cannot write {path}: {err.strerror}") from None


def _save_npy(arr: np.ndarray, path: str | Path, what: str) -> None:
    path = Path(path)
    if path.suffix != ".npy":
        raise SbdiffError(f"{what} must be a .npy path, got {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
    except OSError as err:
        raise SbdiffError(f"cannot write {path}: {err.strerror}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


# -- train ----------------------------------------------------------------------------------------
def build_train_config(args: argparse.Namespace) -> Config:
    """Defaults, overlaid by ``--config``, overlaid by the command-line flags."""
    raw: dict = {}
    cfg = Config()
    if args.config:
        cfg, raw = load_config(args.config)
    overrides: dict = {"data": {}, "train": {}}
    if args.method:
        overrides["method"] = args.method
    if args.data:
        overrides["data"]["data"] = args.data
    if args.prior:
        overrides["data"]["prior"] = args.prior
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.device:
        overrides["device"] = args.device
    if args.eps is not None:
        overrides["reference"] = {"kind": "brownian", "eps": args.eps}
    if args.max_minutes is not None:
        overrides["train"]["max_minutes"] = args.max_minutes
        steps_given = args.steps is not None or "steps" in raw.get("train", {})
        if not steps_given:
            overrides["train"]["steps"] = 0  # the time budget alone
    if args.steps is not None:
        overrides["train"]["steps"] = args.steps
    return config_from_dict(overrides, cfg).validate()


def cmd_train(args: argparse.Namespace) -> int:
    from .train import fit

    cfg = build_train_config(args)
    out = Path(args.out) if args.out else _default_out(f"{cfg.method}-{Path(cfg.data.data).stem}")
    result = fit(cfg, out, progress=not args.quiet)
    _finish_run(result, cfg, progress=not args.quiet)
    print(f"trained {cfg.method} on {cfg.data.data}: {result.steps} steps in {result.seconds:.0f}s "
          f"(stopped by {result.stopped_by}), loss {result.last.get('loss', float('nan')):.4f} -> {out}")
    return 0


def _finish_run(result, cfg: Config, *, progress: bool, n_plot: int = 2000) -> np.ndarray:
    """Plots of samples and PF-ODE trajectories in the run directory; returns the samples."""
    from .plots import plot_samples, plot_trajectories

    model = result.model
    gen = torch.Generator(device=model.data_mean.device).manual_seed(cfg.seed + 1)
    data = load_data(cfg.data.data, min(cfg.data.n_samples, 5000), cfg.seed + 1)
    samples = model.sample(n_plot, nfe=cfg.sample.nfe, generator=gen, progress=progress).cpu().numpy()
    plot_samples(samples, data[:n_plot], result.run_dir / "samples.png", f"{cfg.method} on {cfg.data.data}")
    traj = model.decode(model.sample_prior(200, generator=gen), nfe=100, ode=True, trajectory=True,
                        solver=cfg.sample.ode_solver).cpu().numpy()
    plot_trajectories(traj, result.run_dir / "trajectories.png", "probability-flow ODE paths")
    return samples


# -- transport ------------------------------------------------------------------------------------
def _load(run: str):
    from .train import load_run

    return load_run(run)


def _transport(args: argparse.Namespace, direction: str) -> int:
    cfg, model = _load(args.run)
    nfe = args.nfe or cfg.sample.nfe
    gen = torch.Generator().manual_seed(args.seed)
    kw = dict(nfe=nfe, ode=args.ode, solver=cfg.sample.ode_solver, generator=gen, progress=not args.quiet)
    if direction == "sample":
        start = model.sample_prior(args.n, generator=gen)
        direction = "decode"
    else:
        source = load_data(args.source)
        if source.shape[1] != model.dim:
            raise SbdiffError(f"{args.source}: points have dimension {source.shape[1]}, the model has {model.dim}")
        start = torch.as_tensor(source, dtype=torch.float32)
    fn = model.decode if direction == "decode" else model.encode
    if args.trajectory:
        traj = fn(start, trajectory=True, **kw).numpy()
        _save_npy(traj, args.trajectory, "--trajectory")
        end = traj[-1] if direction == "decode" else model.to_model(torch.as_tensor(traj[-1])).numpy()
    else:
        end = fn(start, **kw).numpy()
    _save_npy(end.astype(np.float32), args.out, "--out")
    print(f"{direction}: {len(end)} points, {nfe} {'ODE' if args.ode else 'SDE'} steps -> {args.out}")
    return 0


def cmd_sample(args):
    return _transport(args, "sample")


def cmd_decode(args):
    return _transport(args, "decode")


def cmd_encode(args):
    return _transport(args, "encode")


# -- eval / demo / bench --------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    cfg, model = _load(args.run)
    data = load_data(args.data or cfg.data.data, cfg.data.n_samples, cfg.seed + 1)
    if data.shape[1] != model.dim:
        raise SbdiffError(f"{args.data}: data has dimension {data.shape[1]}, the model has {model.dim}")
    nfe = args.nfe or cfg.sample.nfe
    checkerboard = model.dim == 2 and (args.data or cfg.data.data) == "checkerboard"
    n_samples = max(args.samples, 5000) if checkerboard else args.samples
    samples = model.sample(n_samples, nfe=nfe, generator=torch.Generator().manual_seed(args.seed),
                           progress=not args.quiet).numpy()
    res = evaluate(model, data, n_nll=args.n, nfe=nfe, seed=args.seed, samples=samples)
    if checkerboard:
        res["on_checkerboard"] = float(on_checkerboard(samples).mean())
    if args.json:
        _write_json(res, args.json)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    return 0


def demo_config(quick: bool) -> tuple[Config, int, int]:
    """The embedded default: SGM on the checkerboard; returns the config and the numbers of points
    for the likelihoods and the sample metrics."""
    cfg = Config()
    cfg.data.data = "checkerboard"
    if quick:  # under 2 minutes on 2 cores, training included
        cfg.model.hidden, cfg.model.blocks = 128, 3
        cfg.train.steps, cfg.train.max_minutes = 8000, 1.25
        cfg.sample.nfe = 200
        return cfg, 300, 1000
    cfg.train.steps, cfg.train.max_minutes = 20000, 5.0
    return cfg, 1000, 2000


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .train import fit

    start = time.monotonic()
    cfg, n_nll, n_samples = demo_config(args.quick)
    out = Path(args.out) if args.out else _default_out("demo")
    result = fit(cfg, out, progress=not args.quiet)
    samples = _finish_run(result, cfg, progress=not args.quiet, n_plot=n_samples)
    data = load_data(cfg.data.data, 5000, cfg.seed + 1)
    metrics = evaluate(result.model, data, n_nll=n_nll, samples=samples)
    metrics["on_checkerboard"] = float(on_checkerboard(samples).mean())
    metrics["train_steps"] = result.steps
    metrics["train_seconds"] = round(result.seconds, 1)
    metrics["total_seconds"] = round(time.monotonic() - start, 1)
    _write_json(metrics, out / "metrics.json")
    print(f"demo: sgm on checkerboard, {result.steps} steps, NLL {metrics['nll']:.3f} nats, "
          f"W2 {metrics['w2']:.3f}, {100 * metrics['on_checkerboard']:.1f}% on dark squares, "
          f"{metrics['total_seconds']:.0f}s -> {out}/samples.png, trajectories.png, metrics.json")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    raise SbdiffError(f"sbdiff bench {args.problem}: not available yet (arrives with the ground-truth issue)")


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbdiff", description="Schrödinger-bridge diffusion models as path VAEs.")
    p.add_argument("--version", action="version", version=f"sbdiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("--quiet", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="train the embedded default (SGM on checkerboard) and plot it")
    d.add_argument("--out", help="run directory (default runs/demo-TIMESTAMP)")
    d.add_argument("--quick", action="store_true", help="small network, short run (< 2 minutes on 2 cores)")
    common(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a method; writes a run directory")
    t.add_argument("--method", choices=METHODS, help="default sgm")
    t.add_argument("--data", help="built-in name or .npy/.npz/.csv path (default checkerboard)")
    t.add_argument("--prior", help="gaussian (default) or a data file (bridge mode)")
    t.add_argument("--eps", type=float, help="use the reference brownian(eps)")
    t.add_argument("--config", help="TOML config file; flags override it")
    t.add_argument("--out", help="run directory (default runs/METHOD-DATA-TIMESTAMP)")
    t.add_argument("--device", help="cpu (default), cuda or auto")
    t.add_argument("--seed", type=int)
    t.add_argument("--max-minutes", type=_nonneg_float, help="wall-clock budget; alone, it replaces the step budget")
    t.add_argument("--steps", type=int, help="step budget (0: none)")
    common(t)
    t.set_defaults(func=cmd_train)

    for name, helptext, func in (
        ("sample", "draw samples from a trained run", cmd_sample),
        ("decode", "prior side -> data side", cmd_decode),
        ("encode", "data side -> prior side", cmd_encode),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("run", help="run directory")
        if name == "sample":
            s.add_argument("--n", type=_positive_int, required=True, help="number of samples")
        else:
            s.add_argument("--from", dest="source", required=True, help="input points (.npy/.npz/.csv, (N, d))")
        s.add_argument("--out", required=True, help="output .npy, shape (N, d)")
        s.add_argument("--ode", action="store_true", help="probability-flow ODE instead of the SDE")
        s.add_argument("--nfe", type=_positive_int, help="number of steps (default: the run's sample.nfe)")
        s.add_argument("--trajectory", help="also save the path, shape (K+1, N, d), to this .npy")
        s.add_argument("--seed", type=int, default=0)
        common(s)
        s.set_defaults(func=func)

    e = sub.add_parser("eval", help="likelihoods (nll, nelbo) and sample metrics of a run")
    e.add_argument("run", help="run directory")
    e.add_argument("--data", help="data to score (default: the run's data; a fresh draw for built-in sets)")
    e.add_argument("--json", help="write the results to this JSON file")
    e.add_argument("--n", type=_positive_int, default=1000, help="points for nll/nelbo (default 1000)")
    e.add_argument("--samples", type=_positive_int, default=2000, help="samples for W2 etc. (default 2000)")
    e.add_argument("--nfe", type=_positive_int, help="sampling steps (default: the run's sample.nfe)")
    e.add_argument("--seed", type=int, default=0)
    common(e)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="ground-truth benchmarks (not available yet)")
    b.add_argument("problem", choices=("gaussian", "eot"))
    b.add_argument("--method")
    b.add_argument("--dim", type=int)
    b.add_argument("--eps", type=float)
    b.add_argument("--json")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SbdiffError as err:
        print(f"sbdiff: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sbdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
