"""The shared training loop and the run directory (DESIGN §7).

A run directory holds ``config.toml`` (the resolved config), ``model.safetensors`` (``model.*``:
the trained weights; ``ema.*``: their exponential moving average, used for sampling),
``metrics.jsonl`` (one JSON object per log step), ``checkpoint.safetensors`` (the full training
state, :mod:`sbdiff.checkpoint`), ``resumes.jsonl`` (one line per resume) and plots.

Fault tolerance
---------------
* Checkpoints every ``train.checkpoint_every`` steps and every ``train.checkpoint_minutes``
  minutes, and always at the end, written atomically: a kill or a crash at any moment leaves the
  last complete checkpoint in place.
* ``fit(config, run_dir, resume=True)`` (or :func:`resume_run`, or ``sbdiff train --resume RUN``)
  continues from the checkpoint. The result is bit-identical to an uninterrupted run on the same
  machine and thread count: model, EMA, optimiser, scheduler, the global RNG states (a step's own random
  numbers, batch order included, are seeded by its step number), method schedule state, log accumulators and elapsed time
  are restored, and ``metrics.jsonl`` is cut back to the checkpoint's step. Both budgets,
  ``train.steps`` and ``train.max_minutes``, count the whole run, not one session.
* A resume refuses a config that differs from the run's saved ``config.toml`` (or data whose
  contents changed) unless ``allow_config_change``; :data:`FREE_KEYS` (budgets, checkpoint cadence,
  the non-finite limit, sampling settings) never change the trained parameters and may change
  freely. The resumed config is saved back to ``config.toml``; each resume is logged in
  ``resumes.jsonl`` with the keys it changed.
* SIGINT / SIGTERM (main thread only): the current step finishes, a checkpoint is written, and
  :class:`TrainingInterrupted` says how to resume (a second signal stops at once).
* A step whose loss or gradient norm is NaN/inf is skipped (no optimiser, scheduler or EMA
  update; it still counts toward ``train.steps``); more than ``train.max_nonfinite`` such steps in
  a row (``0``: the first) stop training with an :class:`SbdiffError` naming the step. The last
  good checkpoint is kept, no new one is written.
* A write failure (full disk, read-only directory) leaves the previous checkpoint intact and stops
  with :class:`~sbdiff.checkpoint.CheckpointWriteError`.

Randomness, shards and DDP
--------------------------
The random numbers of step ``k`` come from generators seeded by ``(seed, k, stream)``
(:func:`sbdiff.distributed.step_generator`): stream 0 draws the global batch's row indices,
stream ``1 + s`` the losses' randomness (times, noise) of shard ``s`` of ``train.shards``. A
single process computes the shards one after another and accumulates their gradients; under
``torchrun`` (:mod:`sbdiff.distributed`) each of the ``W`` ranks computes ``train.shards / W`` of
them and ``DistributedDataParallel`` averages the gradients. Either way the step is the same, so
a DDP run equals a one-process run with the same ``train.shards`` (up to float rounding).
Stopping (signal, time budget), skipping (non-finite values) and logging are decided on values
all-reduced over the ranks, so every rank takes the same branch; only rank 0 writes files.
``train.precision = "bf16"`` runs the losses' forward pass under ``torch.autocast``;
``train.compile`` compiles the networks with ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from . import distributed
from ._utils import SbdiffError
from .checkpoint import (CHECKPOINT_FILE, CheckpointWriteError, atomic_save, atomic_write_text, capture_rng,
                         read_checkpoint, restore_rng, write_checkpoint, writes_files)
from .config import Config, dumps_config, load_config, save_config
from .data import load_data
from .methods import make_method
from .model import PathVAE
from .nets import UNet, TimeMLP, make_ema, update_ema

__all__ = ["fit", "resume_run", "load_run", "resolve_device", "TrainResult", "TrainingInterrupted",
           "config_changes", "FREE_KEYS"]

CONFIG_FILE = "config.toml"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"

#: Config keys a resume may change without ``allow_config_change``: they set when training stops,
#: when checkpoints are written and how samples are drawn, never what a step computes.
FREE_KEYS = ("train.steps", "train.max_minutes", "train.checkpoint_every", "train.checkpoint_minutes",
             "train.max_nonfinite", "train.world_size", "train.compile", "sample.*")


@dataclass
class TrainResult:
    """What :func:`fit` returns: the EMA model, the run directory and a summary.

    ``steps`` and ``seconds`` count the whole run (across resumes); ``skipped`` is the number of
    steps skipped for a non-finite loss or gradient; ``resumed_from`` the checkpoint step a resume
    started from (``None`` for a fresh run).
    """

    model: PathVAE
    run_dir: Path | None
    steps: int
    seconds: float
    stopped_by: str
    last: dict
    skipped: int = 0
    resumed_from: int | None = None


class TrainingInterrupted(SbdiffError):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint; ``signum``, ``step``, ``run_dir``."""

    def __init__(self, message: str, signum: int, step: int, run_dir: Path):
        super().__init__(message)
        self.signum, self.step, self.run_dir = signum, step, run_dir


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SbdiffError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def _prepare_run_dir(run_dir: Path) -> None:
    if (run_dir / CONFIG_FILE).exists():
        raise SbdiffError(f"{run_dir} already holds a run; choose another --out (runs are never overwritten), "
                          f"or continue it with --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SbdiffError(f"cannot create run directory {run_dir}: {err.strerror}") from None


def save_weights(model: PathVAE, ema: torch.nn.Module, path: Path) -> None:
    """The final weights file: ``model.*`` (trained) and ``ema.*`` (averaged) state dicts."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    atomic_save(tensors, path)


# -- resume checks --------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _is_free(key: str) -> bool:
    return any(key == f or (f.endswith(".*") and key.startswith(f[:-1])) for f in FREE_KEYS)


def config_changes(old: Config, new: Config) -> dict[str, tuple]:
    """Keys (dotted, e.g. ``train.lr``) whose values differ between two configs: ``{key: (old, new)}``."""
    a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _data_fingerprint(data: np.ndarray) -> str:
    arr = np.ascontiguousarray(data, dtype=np.float64)
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the log lines past ``step`` (and a partial last line) so each step is logged once."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(row, dict) and row.get("step", math.inf) <= step:
            keep.append(line)
    atomic_write_text("".join(f"{line}\n" for line in keep), path)


def _describe(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changes.items())


# -- signals --------------------------------------------------------------------------------------
class _StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop after the current step (main thread only).

    The previous handlers come back on exit; a second signal while stopping raises
    ``KeyboardInterrupt`` (stop at once; the last complete checkpoint stays).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\nsbdiff: {signal.Signals(signum).name} received: finishing the step and writing a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        return False


# -- processes ------------------------------------------------------------------------------------
class _Losses(torch.nn.Module):
    """``method.losses(model, batch, generator)`` as a module, so that DDP sees the forward pass."""

    def __init__(self, method, model: PathVAE):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.method.losses(self.model, batch, generator)


def _setup_processes(config: Config, env: distributed.DistEnv) -> None:
    """Record the world size; under DDP make ``train.shards`` a multiple of it (1 -> world size)."""
    tc = config.train
    tc.world_size = env.world_size
    if env.active:
        if tc.shards == 1:
            tc.shards = env.world_size
        if tc.shards % env.world_size:
            raise SbdiffError(f"train.shards = {tc.shards} is not a multiple of the {env.world_size} processes")
        config.validate()


def _on_writer(env: distributed.DistEnv, writer: bool, fn) -> None:
    """Run ``fn`` on the writing rank; an error there is raised on every rank (no rank hangs)."""
    message = None
    if writer:
        try:
            fn()
        except SbdiffError as err:
            message = str(err)
    if env.active:
        box = [message]
        torch.distributed.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise SbdiffError(message)


def _agree_stop(reason: str | None, env: distributed.DistEnv, device: torch.device) -> str | None:
    """Stop when any rank asks to (signal before time budget); every rank gets the same answer."""
    if not env.active:
        return reason
    flags = torch.tensor([reason == "signal", reason == "time"], dtype=torch.float32, device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return "signal" if flags[0] > 0 else ("time" if flags[1] > 0 else None)


def _compile_networks(model: PathVAE) -> None:
    """``torch.compile`` each network in place (``nn.Module.compile``: state-dict keys unchanged)."""
    for module in model.modules():
        if isinstance(module, (TimeMLP, UNet)):
            module.compile()


# -- the loop -------------------------------------------------------------------------------------
def fit(config: Config, run_dir: str | Path | None = None, *, data: np.ndarray | None = None,
        progress: bool = True, resume: bool = False, allow_config_change: bool = False) -> TrainResult:
    """Train ``config.method`` on ``config.data`` (or on ``data``, shape ``(N, d)``).

    Stops after ``train.steps`` steps or ``train.max_minutes`` minutes of training, whichever comes
    first (0 disables either), then saves weights and a final checkpoint to ``run_dir`` (if given).

    Parameters
    ----------
    config : the run's config (validated here).
    run_dir : the run directory; ``None`` trains in memory (no checkpoints, default signal handling).
    data : training points ``(N, d)``; default ``load_data(config.data.data, ...)``. A resume needs
        the same data (checked by a SHA-256 fingerprint).
    progress : show a progress bar.
    resume : continue the run in ``run_dir`` from its checkpoint with ``config`` (see the module
        docstring); a run killed before its first checkpoint starts again from step 0.
    allow_config_change : let a resume use a config that differs from the saved one outside
        :data:`FREE_KEYS` (or changed data).

    Raises
    ------
    TrainingInterrupted : on SIGINT/SIGTERM, after the checkpoint is written.
    SbdiffError : bad config or run directory, too many non-finite steps, a failed write.
    """
    config.validate()
    env = distributed.detect()
    method = make_method(config)
    device = distributed.init(env, resolve_device(config.device))
    _setup_processes(config, env)
    run_dir = Path(run_dir) if run_dir is not None else None
    writer = run_dir is not None and writes_files()
    if data is None:
        data = load_data(config.data.data, config.data.n_samples, config.seed)
    prior = load_prior(config, data.shape[1])
    fingerprint = _data_fingerprint(data if prior is None else np.concatenate([data, prior]))
    tc = config.train

    ckpt = changes = None
    if resume:
        ckpt, changes = _open_resume(config, run_dir, fingerprint, allow_config_change)
    elif run_dir is not None:
        def prepare():
            _prepare_run_dir(run_dir)
            save_config(config, run_dir / CONFIG_FILE)
        _on_writer(env, writer, prepare)

    torch.manual_seed(config.seed)
    model = method.build(data, prior).to(device)
    x = model.to_model(torch.as_tensor(data, dtype=torch.float32, device=device))
    params = method.trainable(model)
    opt = torch.optim.Adam(params, lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(tc.warmup, 1)) * method.lr_factor(s))
    ema = make_ema(model, tc.ema_decay)
    if tc.compile:
        _compile_networks(model)
    loss_module = _Losses(method, model)
    if env.active:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.ddp_find_unused_parameters)
    shards = distributed.shard_slices(tc.batch_size, tc.shards)
    per_rank = tc.shards // env.world_size
    my_shards = range(env.rank * per_rank, (env.rank + 1) * per_rank)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if tc.precision == "bf16" \
        else contextlib.nullcontext

    step, elapsed0, last, sums, count, skipped, streak = 0, 0.0, {}, {}, 0, 0, 0
    resumed_from = None
    if ckpt is not None:
        meta = _restore(ckpt, model, ema, opt, sched, method, config, run_dir)
        step, elapsed0, last = meta["step"], meta["elapsed_s"], meta["last"]
        sums = {k: tuple(v) if isinstance(v, list) else (v, meta["log_count"]) for k, v in meta["log_sums"].items()}
        count = meta["log_count"]
        skipped, streak = meta["skipped"], meta["streak"]
        resumed_from = step
    if resume and writer:  # the checkpoint fits: record the resume, cut the log back to its step
        _record_resume(config, run_dir, step, changes)
        _truncate_metrics(run_dir / METRICS_FILE, step)

    budget = tc.max_minutes * 60.0 if tc.max_minutes > 0 else math.inf
    max_steps = min([n for n in (tc.steps, method.max_steps()) if n], default=None)
    ckpt_path = run_dir / CHECKPOINT_FILE if writer else None
    metrics_fh = open(run_dir / METRICS_FILE, "a") if writer else None
    bar = tqdm(total=max_steps, initial=step, desc=f"train {config.method}", disable=None if progress else True,
               dynamic_ncols=True)
    start = time.monotonic()
    elapsed = lambda: elapsed0 + (time.monotonic() - start)  # noqa: E731
    saved_step, saved_at = (step if ckpt is not None else None), time.monotonic()

    def save_checkpoint() -> None:
        nonlocal saved_step, saved_at
        if metrics_fh is not None:  # the log up to this step is on disk before the checkpoint is
            metrics_fh.flush()
            os.fsync(metrics_fh.fileno())
        meta = {"step": step, "elapsed_s": elapsed(), "last": last, "log_sums": sums, "log_count": count,
                "skipped": skipped, "streak": streak, "method": config.method, "data_sha256": fingerprint,
                "config": dumps_config(config), "torch": torch.__version__}
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "method": method.state_dict(),
                 "rng": capture_rng()}
        try:
            write_checkpoint(ckpt_path, model=model, ema=ema, meta=meta, state=state)
        except CheckpointWriteError as err:
            kept = (f"the last good checkpoint (step {saved_step}) is intact" if saved_step is not None
                    else "no checkpoint was written before")
            raise CheckpointWriteError(f"training stopped at step {step}: {err}; {kept}. Free space or fix the "
                                       f"directory, then continue with: sbdiff train --resume {run_dir}") from None
        saved_step, saved_at = step, time.monotonic()

    def nonfinite_error(what: str) -> SbdiffError:
        limit = (f"train.max_nonfinite = 0 stops at the first" if tc.max_nonfinite == 0 else
                 f"{streak} steps in a row, more than train.max_nonfinite = {tc.max_nonfinite}")
        where = (f"the last good checkpoint (step {saved_step}) is kept in {ckpt_path}; after changing the config "
                 f"continue it with: sbdiff train --resume {run_dir} --allow-config-change"
                 if saved_step is not None else "no checkpoint was written")
        return SbdiffError(f"training diverged: non-finite {what} at step {step} ({limit}); {where}. "
                           "Lower train.lr or check the data")

    stopped_by = "steps"
    try:
        with _StopSignals(run_dir is not None) as signals:
            while max_steps is None or step < max_steps:
                reason = "signal" if signals.received is not None else ("time" if elapsed() >= budget else None)
                reason = _agree_stop(reason, env, device)
                if reason is not None:
                    stopped_by = reason
                    break
                with torch.no_grad():
                    method.begin_step(model, ema.module, step)
                idx_gen = distributed.step_generator(config.seed, step, 0, device)
                idx = torch.randint(0, x.shape[0], (tc.batch_size,), generator=idx_gen, device=device)
                opt.zero_grad(set_to_none=True)
                names, values = None, 0.0
                for j, s in enumerate(my_shards):
                    gen = distributed.step_generator(config.seed, step, 1 + s, device)
                    sync = contextlib.nullcontext() if not env.active or j == per_rank - 1 else loss_module.no_sync()
                    with sync:
                        with autocast():
                            losses = loss_module(x[idx[shards[s]]], gen)
                        (losses["loss"].float() / per_rank).backward()  # always: DDP ranks must meet
                    names = sorted(losses)
                    values = values + torch.stack([losses[k].detach().float() for k in names]) / per_rank
                values = distributed.all_mean(values, env)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                bad = "loss" if not torch.isfinite(values).all() else (
                    "gradients" if not torch.isfinite(grad_norm) else None)
                step += 1
                if bad is None:
                    opt.step()
                    sched.step()
                    update_ema(ema, model, method.frozen(step - 1))
                    streak = 0
                    count += 1
                    for k, v in zip(names, values.tolist()):  # per key: a method's keys may change
                        total, n = sums.get(k, (0.0, 0))
                        sums[k] = (total + v, n + 1)
                else:  # skip: no optimiser, scheduler or EMA update
                    opt.zero_grad(set_to_none=True)
                    skipped += 1
                    streak += 1
                    if streak > tc.max_nonfinite:
                        raise nonfinite_error(bad)
                bar.update(1)
                if step % tc.log_every == 0 or step == max_steps:
                    last = {"step": step, **{k: total / n for k, (total, n) in sums.items()}}
                    if "prior_loss" not in last and writer:
                        last["prior_loss"] = float(method.prior_loss(model, x[idx], gen))
                    last["lr"] = sched.get_last_lr()[0]
                    last["elapsed_s"] = round(elapsed(), 3)
                    if skipped:
                        last["skipped_nonfinite"] = skipped
                    if metrics_fh is not None:
                        try:
                            metrics_fh.write(json.dumps(last) + "\n")
                            metrics_fh.flush()
                        except OSError as err:
                            raise SbdiffError(f"cannot write {run_dir / METRICS_FILE}: {err.strerror or err}; "
                                              f"continue with: sbdiff train --resume {run_dir}") from None
                    if "loss" in last:
                        bar.set_postfix(loss=f"{last['loss']:.4f}", **method.progress_info(step - 1))
                    sums, count = {}, 0
                if writer and ((tc.checkpoint_every and step % tc.checkpoint_every == 0) or method.checkpoint_due(step) or
                               (tc.checkpoint_minutes and time.monotonic() - saved_at >= 60 * tc.checkpoint_minutes)):
                    save_checkpoint()
            if stopped_by == "signal":
                if writer and saved_step != step:
                    save_checkpoint()
                name = signal.Signals(signals.received).name
                raise TrainingInterrupted(
                    f"training stopped by {name} after step {step}; checkpoint saved in {ckpt_path}. "
                    f"Continue with: sbdiff train --resume {run_dir}", signals.received, step, run_dir)
            if step == 0:
                raise SbdiffError("the time budget ended before the first training step")
            if writer and saved_step != step:
                save_checkpoint()  # the final state: a later resume with a larger budget continues it
    finally:
        bar.close()
        if metrics_fh is not None:
            metrics_fh.close()
    seconds = elapsed()
    ema_model = ema.module.eval()
    if writer:
        try:
            save_weights(model, ema, run_dir / WEIGHTS_FILE)
        except CheckpointWriteError as err:
            raise CheckpointWriteError(f"{err}; the training state is in {ckpt_path}, write the weights with: "
                                       f"sbdiff train --resume {run_dir}") from None
    return TrainResult(ema_model, run_dir, step, seconds, stopped_by, last, skipped, resumed_from)


def load_prior(config: Config, dim: int, *, required: bool = True) -> np.ndarray | None:
    """Bridge mode: the prior-side data set named by ``data.prior`` (a built-in name or a file),
    shape ``(M, dim)``; ``None`` for the Gaussian prior. With ``required=False`` a missing file gives
    ``None`` (a saved run whose prior file is gone can still decode given points)."""
    spec = config.data.prior
    if spec == "gaussian":
        return None
    from .data import BUILTIN

    if not required and spec not in BUILTIN and not Path(spec).is_file():
        return None
    prior = load_data(spec, config.data.n_samples, config.seed + 7)
    if prior.shape[1] != dim:
        raise SbdiffError(f"prior data {spec} has dimension {prior.shape[1]}, the data {config.data.data} has {dim}")
    return prior


def _open_resume(config: Config, run_dir: Path | None, fingerprint: str, allow: bool):
    """Check that ``run_dir`` can be resumed with ``config``; returns the checkpoint (or ``None``)
    and the changed keys ``{key: (old, new)}``."""
    if run_dir is None:
        raise SbdiffError("resume needs the run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise SbdiffError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); nothing to resume")
    saved, _ = load_config(run_dir / CONFIG_FILE)
    saved.validate()
    ckpt = None
    if (run_dir / CHECKPOINT_FILE).is_file():
        ckpt = read_checkpoint(run_dir / CHECKPOINT_FILE)
    elif (run_dir / WEIGHTS_FILE).is_file():
        raise SbdiffError(f"{run_dir} has weights but no {CHECKPOINT_FILE} (written without checkpoints); "
                          "it cannot be resumed")
    changes = config_changes(saved, config)
    locked = {k: v for k, v in changes.items() if not _is_free(k)}
    if ckpt is not None and ckpt[2].get("data_sha256") != fingerprint:
        locked["data (contents)"] = ("as trained", "changed")
    if locked and not allow:
        raise SbdiffError(f"{run_dir} was trained with a different config; changed: {_describe(locked)}. "
                          f"Pass --allow-config-change (allow_config_change=True) to continue with it anyway; "
                          f"keys that may change freely: {', '.join(FREE_KEYS)}")
    return ckpt, {**changes, **locked}


def _record_resume(config: Config, run_dir: Path, step: int, changes: dict[str, tuple]) -> None:
    """Save the resumed config, log the resume in ``resumes.jsonl``, drop temp files of a killed write."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    if changes:
        atomic_write_text(dumps_config(config), run_dir / CONFIG_FILE)
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_step": step,
             "changed": {k: [a, b] for k, (a, b) in changes.items()}}
    try:
        with open(run_dir / RESUMES_FILE, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
    except OSError as err:
        raise SbdiffError(f"cannot write {run_dir / RESUMES_FILE}: {err.strerror or err}") from None


def _restore(ckpt, model, ema, opt, sched, method, config: Config, run_dir: Path) -> dict:
    model_state, ema_state, meta, state = ckpt
    try:
        model.load_state_dict(model_state)
        ema.load_state_dict(ema_state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise SbdiffError(f"the checkpoint in {run_dir} does not fit the model of this config ({first})") from None
    lr = config.train.lr
    if any(g["initial_lr"] != lr for g in opt.param_groups):  # train.lr changed (allowed): new base rate
        sched.base_lrs = [lr] * len(opt.param_groups)
        for g, fn in zip(opt.param_groups, sched.lr_lambdas):
            g["initial_lr"], g["lr"] = lr, lr * fn(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in opt.param_groups]
    method.load_state_dict(state["method"])
    restore_rng(state["rng"])
    return meta


def resume_run(run_dir: str | Path, *, steps: int | None = None, max_minutes: float | None = None,
               data: np.ndarray | None = None, progress: bool = True, allow_config_change: bool = False,
               config: Config | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its checkpoint with its saved config.

    ``steps`` / ``max_minutes`` replace the run's budgets (totals over the whole run); ``config``
    replaces the saved config altogether (checked as in :func:`fit` with ``resume=True``).
    """
    run_dir = Path(run_dir)
    if config is None:
        if not (run_dir / CONFIG_FILE).is_file():
            raise SbdiffError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); nothing to resume")
        config, _ = load_config(run_dir / CONFIG_FILE)
    if steps is not None:
        config.train.steps = steps
    if max_minutes is not None:
        config.train.max_minutes = max_minutes
    return fit(config, run_dir, data=data, progress=progress, resume=True, allow_config_change=allow_config_change)


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
    prior = load_prior(config, dim, required=False)
    model = make_method(config).build(np.zeros((2, dim)), prior)
    if config.data.prior != "gaussian" and prior is None:  # bridge run whose prior file is gone
        model.prior_data = torch.empty(0, dim)
    model.load_state_dict(state)
    return config, model.to(resolve_device(device)).eval()
