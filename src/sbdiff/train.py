"""The shared training loop and the run directory (DESIGN §7).

A run directory holds ``config.toml`` (the resolved config), ``model.safetensors`` (``model.*``:
the trained weights; ``ema.*``: their exponential moving average, used for sampling),
``metrics.jsonl`` (one JSON object per log step) and plots.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ._utils import SbdiffError
from .config import Config, load_config, save_config
from .data import load_data
from .methods import make_method
from .model import PathVAE
from .nets import make_ema

__all__ = ["fit", "load_run", "resolve_device", "TrainResult"]

CONFIG_FILE = "config.toml"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """What :func:`fit` returns: the EMA model, the run directory and a summary."""

    model: PathVAE
    run_dir: Path | None
    steps: int
    seconds: float
    stopped_by: str
    last: dict


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SbdiffError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def _prepare_run_dir(run_dir: Path) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise SbdiffError(f"{run_dir} already holds a run; choose another --out (runs are never overwritten)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SbdiffError(f"cannot create run directory {run_dir}: {err.strerror}") from None


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_weights(model: PathVAE, ema: torch.nn.Module, path: Path) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    _atomic_save(tensors, path)


def fit(config: Config, run_dir: str | Path | None = None, *, data: np.ndarray | None = None,
        progress: bool = True) -> TrainResult:
    """Train ``config.method`` on ``config.data`` (or on ``data``, shape ``(N, d)``).

    Stops after ``train.steps`` steps or ``train.max_minutes`` minutes, whichever comes first (0
    disables either), then saves weights and plots to ``run_dir`` (if given).
    """
    config.validate()
    method = make_method(config)
    device = resolve_device(config.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    if data is None:
        data = load_data(config.data.data, config.data.n_samples, config.seed)
    if run_dir is not None:
        _prepare_run_dir(run_dir)
        save_config(config, run_dir / CONFIG_FILE)

    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model = method.build(data).to(device)
    x = model.to_model(torch.as_tensor(data, dtype=torch.float32, device=device))
    params = method.trainable(model)
    tc = config.train
    opt = torch.optim.Adam(params, lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(tc.warmup, 1)))
    ema = make_ema(model, tc.ema_decay)

    budget = tc.max_minutes * 60.0 if tc.max_minutes > 0 else math.inf
    max_steps = tc.steps if tc.steps > 0 else None
    metrics_fh = open(run_dir / METRICS_FILE, "a") if run_dir is not None else None
    bar = tqdm(total=max_steps, desc=f"train {config.method}", disable=None if progress else True, dynamic_ncols=True)
    start = time.monotonic()
    step, stopped_by, last = 0, "steps", {}
    sums: dict[str, float] = {}
    count = 0
    try:
        while max_steps is None or step < max_steps:
            if time.monotonic() - start >= budget:
                stopped_by = "time"
                break
            idx = torch.randint(0, x.shape[0], (tc.batch_size,), generator=generator, device=device)
            losses = method.losses(model, x[idx], generator)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise SbdiffError(f"training diverged: loss is {loss.item()} at step {step + 1}; "
                                  "lower train.lr or check the data")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            sched.step()
            ema.update_parameters(model)
            step += 1
            count += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.update(1)
            if step % tc.log_every == 0 or step == max_steps:
                last = {"step": step, **{k: v / count for k, v in sums.items()}}
                if "prior_loss" not in last:
                    last["prior_loss"] = float(method.prior_loss(model, x[idx], generator))
                last["lr"] = sched.get_last_lr()[0]
                last["elapsed_s"] = round(time.monotonic() - start, 3)
                if metrics_fh is not None:
                    metrics_fh.write(json.dumps(last) + "\n")
                    metrics_fh.flush()
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                sums, count = {}, 0
    finally:
        bar.close()
        if metrics_fh is not None:
            metrics_fh.close()
    seconds = time.monotonic() - start
    if step == 0:
        raise SbdiffError("the time budget ended before the first training step")
    ema_model = ema.module.eval()
    if run_dir is not None:
        save_weights(model, ema, run_dir / WEIGHTS_FILE)
    return TrainResult(ema_model, run_dir, step, seconds, stopped_by, last)


def load_run(run_dir: str | Path, *, ema: bool = True, device: str = "cpu") -> tuple[Config, PathVAE]:
    """Rebuild a trained model from a run directory; ``ema`` picks the averaged weights."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise SbdiffError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise SbdiffError(f"{run_dir} has no {WEIGHTS_FILE}: the run did not finish saving")
    config, _ = load_config(run_dir / CONFIG_FILE)
    config.validate()
    tensors = load_file(str(run_dir / WEIGHTS_FILE))
    prefix = "ema." if ema else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if "data_mean" not in state:
        raise SbdiffError(f"{run_dir / WEIGHTS_FILE} does not hold a sbdiff model")
    dim = state["data_mean"].shape[0]
    model = make_method(config).build(np.zeros((2, dim)))
    model.load_state_dict(state)
    return config, model.to(resolve_device(device)).eval()
