"""The ``sbdiff`` command (DESIGN §8): demo, train, plot, sample, decode, encode, eval, bench.

Errors in the input (data, config, arguments, run directories) end the command with exit status 2
and one line ``sbdiff: error: ...`` on stderr. ``train`` and ``demo`` draw the training curves
(``curves.png``, :func:`sbdiff.plots.plot_curves`) when training ends, a signal's stop included;
``plot RUN`` redraws a run's plots from its files (docs/monitoring.md).
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
from .config import Config, config_from_dict, load_config
from .data import load_data, on_checkerboard
from .monitoring import image_range
from .registry import method_names

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
def build_train_config(args: argparse.Namespace, resume: Path | None = None) -> Config:
    """Defaults (or, with ``resume``, that run's saved config), overlaid by ``--config``, overlaid by
    the command-line flags."""
    raw: dict = {}
    cfg = Config()
    if resume is not None:
        if not (resume / "config.toml").is_file():
            raise SbdiffError(f"{resume} is not a run directory (no config.toml); nothing to resume")
        cfg, _ = load_config(resume / "config.toml")
    if args.config:
        file_cfg, raw = load_config(args.config)
        cfg = file_cfg if resume is None else config_from_dict(raw, cfg)
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
        series = (args.window or 0) > 0 or cfg.cond.window > 0  # its step default stays a cap (SERIES_DEFAULTS)
        if not steps_given and resume is None and not series:
            overrides["train"]["steps"] = 0  # the time budget alone
    if args.steps is not None:
        overrides["train"]["steps"] = args.steps
    cond = {k: v for k, v in (("labels", args.cond), ("window", args.window), ("horizon", args.horizon),
                              ("p_uncond", args.p_uncond)) if v is not None}
    if cond:
        overrides["cond"] = cond
    if args.tensorboard:
        overrides["log"] = {"tensorboard": True}
    return config_from_dict(overrides, cfg).validate()


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainingInterrupted, fit

    if args.resume:
        if args.out:
            raise SbdiffError("--resume continues RUN in place; drop --out")
        out = Path(args.resume)
        cfg = build_train_config(args, resume=out)
    else:
        if args.allow_config_change:
            raise SbdiffError("--allow-config-change only applies with --resume RUN")
        cfg = build_train_config(args)
        out = Path(args.out) if args.out else _default_out(f"{cfg.method}-{Path(cfg.data.data).stem}")
    from .checkpoint import writes_files
    from .distributed import shutdown

    try:  # under torchrun every rank trains; rank 0 alone writes, plots and reports
        result = fit(cfg, out, progress=not args.quiet, resume=bool(args.resume),
                     allow_config_change=args.allow_config_change)
        writer = writes_files()
    except TrainingInterrupted as err:  # checkpoint written: 128 + signal number, as the shell reports a kill
        if writes_files():
            _plot_curves(err.run_dir)
            print(f"sbdiff: {err}", file=sys.stderr)
        return 128 + err.signum
    finally:
        shutdown()
    if not writer:
        return 0
    _plot_curves(out)
    _finish_run(result, cfg, progress=not args.quiet)
    print(f"trained {cfg.method} on {cfg.data.data}: {result.steps} steps in {result.seconds:.0f}s "
          f"(stopped by {result.stopped_by}), loss {result.last.get('loss', float('nan')):.4f} -> {out}")
    return 0


def _plot_curves(run_dir: Path, *, strict: bool = False) -> Path | None:
    """``run_dir/curves.png`` from its ``metrics.jsonl`` (:func:`sbdiff.plots.plot_curves`). After
    training (``strict`` false) a failure is one warning line, never the command's end."""
    from .plots import plot_curves

    try:
        return plot_curves(run_dir)
    except SbdiffError as err:
        if strict:
            raise
        print(f"sbdiff: warning: no training curves: {err}", file=sys.stderr)
        return None


def _finish_image_run(result, cfg: Config, *, progress: bool, n_grid: int = 100) -> np.ndarray:
    """Image runs: ``samples.png`` (a grid of ``n_grid`` SDE samples beside data images) and
    ``trajectories.png`` (8 probability-flow paths from noise to image, ``min(100, sample.nfe)``
    steps); returns the samples (flat)."""
    from .plots import plot_image_paths, save_image_grid

    model = result.model
    gen = torch.Generator(device=model.data_mean.device).manual_seed(cfg.seed + 1)
    data = load_data(cfg.data.data, n_grid, cfg.seed + 1)[:n_grid]
    samples = model.sample(n_grid, nfe=cfg.sample.nfe, generator=gen, progress=progress).cpu()
    lo, hi = image_range(model)
    save_image_grid(model.as_images(samples).numpy(), result.run_dir / "samples.png", vmin=lo, vmax=hi,
                    data=model.as_images(torch.as_tensor(data)).numpy(),
                    title=f"{cfg.method} on {cfg.data.data}: data | samples ({cfg.sample.nfe} SDE steps)")
    traj = model.decode(model.sample_prior(8, generator=gen), nfe=min(100, cfg.sample.nfe), ode=True,
                        trajectory=True, solver=cfg.sample.ode_solver).cpu()
    plot_image_paths(model.as_images(traj).numpy(), result.run_dir / "trajectories.png", vmin=lo, vmax=hi,
                     title="probability-flow ODE paths, noise -> image")
    return samples.numpy()


def _finish_conditional_run(result, cfg: Config, *, progress: bool) -> None:
    """Conditional runs: ``samples.png``, a grid of samples per class (labels; images, or a scatter of
    the first two coordinates per class), or fan charts of forecasts on four validation windows
    against the truth (series)."""
    model = result.model
    gen = torch.Generator(device=model.data_mean.device).manual_seed(cfg.seed + 1)
    if cfg.cond.kind == "label":
        from .plots import plot_class_grid, plot_samples

        k = cfg.cond.size
        per = 10 if model.image_shape is not None else 200
        x = model.sample(k * per, cond=np.repeat(np.arange(k), per), nfe=cfg.sample.nfe, generator=gen,
                         progress=progress).cpu().numpy()
        if model.image_shape is not None:
            lo, hi = image_range(model)
            plot_class_grid(x.reshape(k, per, *model.image_shape[1:]), result.run_dir / "samples.png", vmin=lo,
                            vmax=hi, title=f"{cfg.method}, class-conditional samples (rows: classes)")
        else:
            from .conditioning import load_training_set

            data = load_training_set(cfg)[0]
            plot_samples(x, data[:len(x)], result.run_dir / "samples.png",
                         f"{cfg.method}: {per} samples of each of {k} classes")
        return
    from .conditioning import series_of
    from .evaluation import forecast_samples
    from .gluonts_data import is_gluonts
    from .plots import plot_forecast_fans
    from .series import evaluation_windows, sliding_windows

    L, H = cfg.cond.window, cfg.cond.horizon
    if is_gluonts(cfg.data.data):  # every training row trained: plot the last windows of the training part
        windows = sliding_windows(series_of(cfg), L)[::-H][:4][::-1]
        history, future, where = windows[:, :L - H], windows[:, L - H:], "the last training windows"
    else:
        history, future = evaluation_windows(series_of(cfg), L, H, part="validation")
        where = "validation windows"
    pick = np.unique(np.linspace(0, len(history) - 1, min(4, len(history))).round().astype(int))
    samples = forecast_samples(model, history[pick], 200, nfe=cfg.sample.nfe, seed=cfg.seed + 1,
                               scaling=cfg.cond.scaling, anchor=cfg.cond.anchor)
    plot_forecast_fans(history[pick], samples, future[pick], result.run_dir / "samples.png",
                       title=f"{cfg.method} forecasts on {where} (median, 50 % and 90 % bands)")


def _finish_run(result, cfg: Config, *, progress: bool, n_plot: int = 2000) -> np.ndarray | None:
    """Plots of samples and PF-ODE trajectories in the run directory; returns the samples (``None``
    for a conditional run, :func:`_finish_conditional_run`)."""
    from .plots import plot_samples, plot_trajectories

    model = result.model  # (result: anything with .model and .run_dir, e.g. a model loaded by `sbdiff plot`)
    if model.conditional:
        return _finish_conditional_run(result, cfg, progress=progress)
    if model.image_shape is not None:
        return _finish_image_run(result, cfg, progress=progress)
    gen = torch.Generator(device=model.data_mean.device).manual_seed(cfg.seed + 1)
    data = load_data(cfg.data.data, min(cfg.data.n_samples, 5000), cfg.seed + 1)
    samples = model.sample(n_plot, nfe=cfg.sample.nfe, generator=gen, progress=progress).cpu().numpy()
    plot_samples(samples, data[:n_plot], result.run_dir / "samples.png", f"{cfg.method} on {cfg.data.data}")
    chain = model.sde_grid is not None  # DSB: the learned discrete chain itself
    closed = getattr(model.decoder, "sample_plan", None) is not None  # lightsb: the SDE of its closed-form drift
    traj = model.decode(model.sample_prior(200, generator=gen), nfe=100, ode=not (chain or closed), trajectory=True,
                        solver=cfg.sample.ode_solver, generator=gen).cpu().numpy()
    title = (f"decoder chain paths ({len(traj) - 1} steps)" if chain else
             "decoder SDE paths (closed-form drift)" if closed else "probability-flow ODE paths")
    if model.bridge:
        title += f", {cfg.data.prior} -> {cfg.data.data}"
    plot_trajectories(traj, result.run_dir / "trajectories.png", title)
    return samples


# -- transport ------------------------------------------------------------------------------------
def _load(run: str):
    from .train import load_run

    return load_run(run)


def _transport(args: argparse.Namespace, direction: str) -> int:
    cfg, model = _load(args.run)
    if getattr(args, "png", None) and model.image_shape is None:
        raise SbdiffError("--png needs an image run (this run's data are vectors)")
    nfe = args.nfe or cfg.sample.nfe
    gen = torch.Generator().manual_seed(args.seed)
    if args.ode and args.sde:
        raise SbdiffError("--ode and --sde exclude each other: choose the probability-flow ODE or the SDE")
    kw = dict(nfe=nfe, ode=args.ode, sde=args.sde, solver=cfg.sample.ode_solver, generator=gen,
              progress=not args.quiet)
    if direction == "sample":
        kw.update(_sample_context(args, cfg, model))
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
        _save_npy(traj if model.image_shape is None else traj.reshape(*traj.shape[:2], *model.image_shape),
                  args.trajectory, "--trajectory")
        end = traj[-1] if direction == "decode" or model.bridge else model.to_model(torch.as_tensor(traj[-1])).numpy()
    else:
        end = fn(start, **kw).numpy()
    if model.image_shape is not None and direction == "decode":  # data side of an image run: (N, C, H, W)
        end = end.reshape(len(end), *model.image_shape)
    _save_npy(end.astype(np.float32), args.out, "--out")
    if getattr(args, "png", None):
        from .plots import save_image_grid

        lo, hi = image_range(model)
        save_image_grid(end.reshape(len(end), *model.image_shape), args.png, vmin=lo, vmax=hi)
    part = model.decoder if direction == "decode" else model.encoder
    exact = model.plan_sampler(part, args.ode, args.sde, bool(args.trajectory)) is not None
    how = "exact draws of the closed-form plan" if exact else f"{nfe} {'ODE' if args.ode else 'SDE'} steps"
    print(f"{direction}: {len(end)} points, {how} -> {args.out}")
    return 0


def _sample_context(args: argparse.Namespace, cfg: Config, model) -> dict:
    """``sample``'s ``--cond`` / ``--guidance`` as keywords of :meth:`PathVAE.decode`."""
    if args.guidance is not None and not (args.guidance >= 0 and np.isfinite(args.guidance)):
        raise SbdiffError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if not model.conditional:
        if args.cond is not None or args.guidance is not None:
            raise SbdiffError(f"{args.run} is an unconditional run: drop --cond/--guidance")
        return {}
    if args.cond is None:
        hint = "--cond K (a class label)" if cfg.cond.kind == "label" else "forecast RUN --history FILE"
        raise SbdiffError(f"{args.run} is a conditional run: give {hint}")
    if cfg.cond.kind != "label":
        raise SbdiffError(f"{args.run} is a series run: draw forecasts with sbdiff forecast RUN --history FILE")
    try:
        label = int(args.cond)
    except ValueError:
        raise SbdiffError(f"--cond: expected an integer class label, got '{args.cond}'") from None
    if args.guidance and cfg.cond.p_uncond == 0:
        raise SbdiffError("--guidance needs a run trained with cond.p_uncond > 0 (its unconditional model); "
                          "this one was trained with p_uncond = 0")
    return {"cond": label, "guidance": float(args.guidance or 0.0)}


def cmd_sample(args):
    return _transport(args, "sample")


def cmd_forecast(args: argparse.Namespace) -> int:
    """``sbdiff forecast RUN --history FILE --n N --out FILE.npy``: ``N`` sample paths of the next ``H``
    steps after the last ``L − H`` rows of FILE, shape ``(N, H, d)``."""
    from .evaluation import forecast_samples
    from .series import load_series

    cfg, model = _load(args.run)
    if cfg.cond.kind != "vector" or cfg.cond.window < 1:
        raise SbdiffError(f"{args.run} is not a series run (train with --window L --horizon H)")
    L, H = cfg.cond.window, cfg.cond.horizon
    d = model.dim // H
    history = load_series(args.history)
    if history.shape[1] != d:
        raise SbdiffError(f"{args.history}: the history has {history.shape[1]} variables, the run's series has {d}")
    if len(history) < L - H:
        raise SbdiffError(f"{args.history}: the history has {len(history)} rows, the run needs the last L - H = "
                          f"{L - H}")
    paths = forecast_samples(model, history[None, len(history) - (L - H):], args.n, nfe=args.nfe or cfg.sample.nfe,
                             seed=args.seed, ode=args.ode, progress=not args.quiet, scaling=cfg.cond.scaling,
                             anchor=cfg.cond.anchor)[0]
    _save_npy(paths.astype(np.float32), args.out, "--out")
    print(f"forecast: {args.n} paths of {H} steps x {d} variables after {L - H} rows of {args.history} -> {args.out}")
    return 0


def cmd_decode(args):
    return _transport(args, "decode")


def cmd_encode(args):
    return _transport(args, "encode")


# -- eval / demo / bench --------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import consistency_warning, evaluate

    cfg, model = _load(args.run)
    if model.conditional:
        return _eval_conditional(args, cfg, model)
    data = load_data(args.data or cfg.data.data, cfg.data.n_samples, cfg.seed + 1)
    if data.shape[1] != model.dim:
        raise SbdiffError(f"{args.data}: data has dimension {data.shape[1]}, the model has {model.dim}")
    nfe = args.nfe or cfg.sample.nfe
    checkerboard = model.dim == 2 and (args.data or cfg.data.data) == "checkerboard"
    n_samples = args.samples or (500 if model.image_shape is not None else 2000)  # a U-Net sampler is costly
    n_samples = max(n_samples, 5000) if checkerboard else n_samples
    samples = model.sample(n_samples, nfe=nfe, generator=torch.Generator().manual_seed(args.seed),
                           progress=not args.quiet).numpy()
    n_nll = args.n or (300 if model.image_shape is not None else 1000)  # U-Net likelihoods are costly
    res = evaluate(model, data, n_nll=n_nll, nfe=nfe, seed=args.seed, samples=samples)
    if checkerboard:
        res["on_checkerboard"] = float(on_checkerboard(samples).mean())
    if model.bridge:
        print(f"eval: no nll / nelbo: {cfg.data.prior} -> {cfg.data.data} is a bridge between two data sets, and "
              "its prior is a sample set without a density; reporting sample metrics only", file=sys.stderr)
    if args.json:
        _write_json(res, args.json)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    line = consistency_warning(res)
    if line is not None:
        print(f"eval: warning: {line}", file=sys.stderr)
    return 0


def _eval_conditional(args: argparse.Namespace, cfg: Config, model) -> int:
    """``eval`` of a conditional run (DESIGN §4.6). Labels: classifier accuracy of class-conditional
    samples and per-class FD (:func:`~sbdiff.evaluation.label_scores`), ``nll`` = ``−log p(x | c)`` beside
    ``nll_null`` (the null context) on held-out labelled points. Series: CRPS, CRPS-sum and interval
    coverage on the test windows (:func:`~sbdiff.evaluation.forecast_eval`) and the conditional
    ``nll`` of their futures."""
    from .conditioning import load_training_set, series_test_windows
    from .evaluation import conditional_nll, forecast_eval, forecast_nll, label_scores, label_split

    nfe = args.nfe or cfg.sample.nfe
    if args.data and cfg.cond.kind == "label":
        raise SbdiffError("eval of a labelled run scores on the run's own data and labels: drop --data")
    if cfg.cond.kind == "label":
        data, labels = load_training_set(cfg)
        per_class = max(1, (args.samples or 500) // cfg.cond.size)
        res = label_scores(model, data, labels, per_class=per_class, guidance=(0.0,), nfe=nfe, seed=args.seed,
                           progress=not args.quiet)
        _, test = label_split(labels, seed=args.seed)
        pick = test[: args.n or (300 if model.image_shape is not None else 1000)]
        res.update(conditional_nll(model, data[pick], labels[pick], seed=args.seed))
    else:
        from .plots import plot_forecast_fans

        history, future = series_test_windows(cfg, args.data)
        if history.shape[2] * cfg.cond.horizon != model.dim:
            raise SbdiffError(f"{args.data or cfg.data.data}: the series has {history.shape[2]} variables, the run's has "
                              f"{model.dim // cfg.cond.horizon}")
        res, samples = forecast_eval(model, history, future, n=args.samples or 100, nfe=nfe, seed=args.seed,
                                     progress=not args.quiet, scaling=cfg.cond.scaling, anchor=cfg.cond.anchor)
        res.update(forecast_nll(model, history, future, seed=args.seed, scaling=cfg.cond.scaling,
                                anchor=cfg.cond.anchor))
        fans = Path(args.run) / "forecast_fans.png"
        plot_forecast_fans(history, samples, future, fans, max_windows=8, max_variables=8,
                           title=f"{cfg.method}: forecasts on the {len(history)} test windows (median, 50 % and "
                                 f"90 % bands)")
        print(f"eval: fan charts of the test windows -> {fans}", file=sys.stderr)
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
    from .train import TrainingInterrupted, fit

    start = time.monotonic()
    cfg, n_nll, n_samples = demo_config(args.quick)
    cfg.log.tensorboard = args.tensorboard
    out = Path(args.out) if args.out else _default_out("demo")
    try:
        result = fit(cfg, out, progress=not args.quiet)
    except TrainingInterrupted as err:
        _plot_curves(err.run_dir)
        print(f"sbdiff: {err}", file=sys.stderr)
        return 128 + err.signum
    _plot_curves(out)
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
          f"{metrics['total_seconds']:.0f}s -> {out}/samples.png, trajectories.png, curves.png, metrics.json")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``sbdiff plot RUN``: redraw a run's plots from its files: ``curves.png`` from ``metrics.jsonl``
    always (a killed run too), and the sample plots of ``train`` (``samples.png``, and
    ``trajectories.png`` for an unconditional run) from the EMA weights of ``model.safetensors`` or,
    when that is missing or older, ``checkpoint.safetensors``."""
    from .checkpoint import CHECKPOINT_FILE
    from .train import CONFIG_FILE, WEIGHTS_FILE, load_run

    run = Path(args.run)
    if not run.is_dir():
        raise SbdiffError(f"{run} is not a directory")
    written = [_plot_curves(run, strict=True).name]  # no metrics.jsonl: one line (plot_curves)
    weights, ckpt = run / WEIGHTS_FILE, run / CHECKPOINT_FILE
    if args.curves_only:
        pass
    elif not (run / CONFIG_FILE).is_file() or not (weights.is_file() or ckpt.is_file()):
        print(f"plot: {run} has no weights and no checkpoint: curves only", file=sys.stderr)
    else:
        from types import SimpleNamespace

        from_ckpt = ckpt.is_file() and (not weights.is_file() or ckpt.stat().st_mtime > weights.stat().st_mtime)
        cfg, model = load_run(run, checkpoint=from_ckpt)
        _finish_run(SimpleNamespace(model=model, run_dir=run), cfg, progress=not args.quiet)
        written += ["samples.png"] + ([] if model.conditional else ["trajectories.png"])
        written[-1] += f" (EMA weights of {ckpt.name if from_ckpt else weights.name})"
    print(f"plot: {', '.join(written)} -> {run}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``sbdiff bench gaussian|eot``: train a method on a ground-truth pair, score it, print table rows
    (harness and conventions: :mod:`sbdiff.bench.runner`)."""
    from .bench.runner import format_table, run_bench, run_sweep

    if args.all and (args.dim is not None or args.eps is not None):
        raise SbdiffError("--all sweeps every cell: drop --dim/--eps")
    if args.dim is not None and args.dim < 1:
        raise SbdiffError(f"--dim must be at least 1, got {args.dim}")
    if args.eps is not None and not (args.eps > 0 and np.isfinite(args.eps)):
        raise SbdiffError(f"--eps must be a finite number > 0, got {args.eps}")
    family = _bench_family(args)
    overrides = None
    if args.config:
        from .config import load_config

        _, overrides = load_config(args.config)  # validated once the bench has set data and reference
    kw = dict(seed=args.seed, minutes=args.minutes, steps=args.steps, n_test=args.n_test,
              n_samples=args.n_samples, n_marginal=args.n_marginal, nfe=args.nfe, overrides=overrides,
              official_dir=args.official_dir, family=family, progress=not args.quiet)
    if args.minutes == 0:
        raise SbdiffError("--minutes must be > 0")
    for line in format_table([]):
        print(line, flush=True)

    def show(row):
        print(format_table([row], header=False)[0], flush=True)

    if args.all:
        rows = run_sweep(args.problem, args.method, callback=show, **kw)
    else:
        rows = [run_bench(args.problem, args.method, args.dim or 2, args.eps if args.eps is not None else 1.0, **kw)]
        show(rows[0])
    notes = {r["cbw2_note"] for r in rows if r["cbw2_note"]}
    for note in notes:
        print(f"cBW2-UVP {note}")
    if args.json:
        _write_json({"rows": rows} if args.all else rows[0], args.json)
    return 0


def _bench_family(args: argparse.Namespace) -> str:
    """``--family`` (default draft-recipe), refused where it chooses nothing."""
    from .bench.eot import DEFAULT_FAMILY

    if args.family is not None and args.problem != "eot":
        raise SbdiffError("--family chooses the eot pairs: drop it for the gaussian problem")
    if args.family is not None and args.official_dir is not None:
        raise SbdiffError("--family chooses sbdiff's own pairs, --official-dir reads the official ones: give one")
    return args.family or DEFAULT_FAMILY


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
    d.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events into the run directory "
                   "(pip install 'sbdiff[tensorboard]')")
    common(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a method; writes a run directory")
    t.add_argument("--method", choices=method_names(), help="default sgm")
    t.add_argument("--data", help="built-in name or .npy/.npz/.csv path (default checkerboard)")
    t.add_argument("--prior", help="gaussian (default) or a data file (bridge mode)")
    t.add_argument("--eps", type=float, help="use the reference brownian(eps)")
    t.add_argument("--config", help="TOML config file; flags override it")
    t.add_argument("--out", help="run directory (default runs/METHOD-DATA-TIMESTAMP)")
    t.add_argument("--device", help="cpu (default), cuda or auto")
    t.add_argument("--seed", type=int)
    t.add_argument("--max-minutes", type=_nonneg_float, help="wall-clock budget; alone, it replaces the step budget; "
                   "the alternating presets (dsb, sbfbsde, dsbm) fit their phases to it")
    t.add_argument("--steps", type=int, help="step budget (0: none)")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint with its saved config "
                   "(budgets are totals over the run: --steps N trains up to step N)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: accept a config that differs from the run's beyond budgets, "
                   "checkpoint cadence and sampling settings")
    t.add_argument("--cond", nargs="?", const="auto", metavar="LABELS.npy",
                   help="class-conditional: integer labels, one per row of the data (alone: the built-in set's "
                   "own, e.g. digits); sgm, vsdm and dsbm")
    t.add_argument("--window", type=_positive_int, metavar="L",
                   help="series: train on sliding windows of L rows of --data (rows = time steps)")
    t.add_argument("--horizon", type=_positive_int, metavar="H",
                   help="series: generate the last H rows of a window given the first L - H")
    t.add_argument("--p-uncond", type=_nonneg_float, help="probability of dropping the context in training "
                   "(classifier-free guidance; default 0.1)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write every metrics.jsonl row and, at checkpoints, a sample plot as TensorBoard events "
                   "in the run directory (tensorboard --logdir runs/; config [log] tensorboard = true; "
                   "pip install 'sbdiff[tensorboard]')")
    common(t)
    t.set_defaults(func=cmd_train)

    pl = sub.add_parser("plot", help="redraw a run's plots from its files (curves.png; samples with weights)")
    pl.add_argument("run", help="run directory (a killed run too: curves from metrics.jsonl, samples from the "
                    "checkpoint)")
    pl.add_argument("--curves-only", action="store_true", help="curves.png only (no sampling)")
    common(pl)
    pl.set_defaults(func=cmd_plot)

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
        s.add_argument("--out", required=True, help="output .npy, shape (N, d); (N, C, H, W) in data units "
                       "for samples/decodes of image runs")
        if name == "sample":
            s.add_argument("--png", help="image runs: also write a grid of the samples to this PNG")
            s.add_argument("--cond", metavar="K", help="class-conditional runs: the class label to sample")
            s.add_argument("--guidance", type=float, metavar="W",
                           help="classifier-free guidance weight (default 0: the plain conditional model)")
        s.add_argument("--ode", action="store_true", help="probability-flow ODE instead of the SDE")
        s.add_argument("--sde", action="store_true", help="integrate the SDE even where the run draws its plan "
                       "in closed form (lightsb; its default: exact draws, no steps)")
        s.add_argument("--nfe", type=_positive_int, help="number of steps (default: the run's sample.nfe)")
        s.add_argument("--trajectory", help="also save the path, shape (K+1, N, d), to this .npy (integrates "
                       "the SDE or, with --ode, the ODE)")
        s.add_argument("--seed", type=int, default=0)
        common(s)
        s.set_defaults(func=func)

    f = sub.add_parser("forecast", help="series runs: sample paths of the next H steps after a history")
    f.add_argument("run", help="run directory (trained with --window L --horizon H)")
    f.add_argument("--history", required=True, help=".npy/.csv series (rows = time steps); its last L - H rows "
                   "are the context")
    f.add_argument("--n", type=_positive_int, required=True, help="number of sample paths")
    f.add_argument("--out", required=True, help="output .npy, shape (N, H, d), data units")
    f.add_argument("--ode", action="store_true", help="probability-flow ODE instead of the SDE")
    f.add_argument("--nfe", type=_positive_int, help="number of steps (default: the run's sample.nfe)")
    f.add_argument("--seed", type=int, default=0)
    common(f)
    f.set_defaults(func=cmd_forecast)

    e = sub.add_parser("eval", help="likelihoods (nll, nelbo) and sample metrics of a run")
    e.add_argument("run", help="run directory")
    e.add_argument("--data", help="data to score (default: the run's data; a fresh draw for built-in sets; series "
                   "runs: a GluonTS data set's own test windows, or a series' test segment)")
    e.add_argument("--json", help="write the results to this JSON file")
    e.add_argument("--n", type=_positive_int, help="points for nll/nelbo (default 1000; image runs 300)")
    e.add_argument("--samples", type=_positive_int, help="samples for W2 etc. (default 2000; image runs 500; "
                   "series runs: paths per window, 100)")
    e.add_argument("--nfe", type=_positive_int, help="sampling steps (default: the run's sample.nfe)")
    e.add_argument("--seed", type=int, default=0)
    common(e)
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="train and score a method on a ground-truth pair (Gaussian SB, entropic-OT mixtures)")
    b.add_argument("problem", choices=("gaussian", "eot"))
    b.add_argument("--method", default="exact",
                   help="exact (the pair's own sampler: the noise floor; default), a method name, or the peer "
                        "sf2m (torchcfm's SF2M-Sink; pip install -c constraints.txt -e '.[bench]')")
    b.add_argument("--dim", type=int, help="dimension D (default 2)")
    b.add_argument("--eps", type=float, help="entropy weight / reference variance eps (default 1)")
    b.add_argument("--all", action="store_true", help="sweep the 12 cells D in {2,16,64,128} x eps in {0.1,1,10}")
    b.add_argument("--minutes", type=_nonneg_float, help="training budget per cell (wall clock)")
    b.add_argument("--steps", type=_positive_int, help="training step budget per cell")
    b.add_argument("--seed", type=int, default=0, help="seed of the pair, the test points and the training")
    b.add_argument("--n-test", type=_positive_int, default=1000, help="cBW2-UVP test points x (default 1000)")
    b.add_argument("--n-samples", type=_positive_int, default=1000, help="samples per test point (default 1000)")
    b.add_argument("--n-marginal", type=_positive_int, default=10000, help="samples for BW2-UVP (default 10000)")
    b.add_argument("--nfe", type=_positive_int, help="sampling steps of a trained model (default: its config)")
    b.add_argument("--json", help="write the row (with --all: {'rows': [...]}) to this JSON file")
    b.add_argument("--family", choices=("draft-recipe", "rotated"),
                   help="eot: the family of sbdiff's own pairs (sbdiff.bench.eot): draft-recipe (default; the "
                        "benchmark authors' recipe) or rotated (sbdiff's first draw, of the older results)")
    b.add_argument("--official-dir", help="eot: the official pairs of Gushchin et al. 2023, read from their "
                   "downloaded files in this directory (sbdiff.bench.official), instead of sbdiff's own draw")
    b.add_argument("--config", help="TOML settings of the method's training (e.g. [sbfbsde] freeze_encoder = 6); "
                   "the bench sets method, seed, data, prior, reference and budget itself")
    common(b)
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
