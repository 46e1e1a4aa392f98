"""The shared training loop and the run directory (DESIGN §7).

A run directory holds ``config.toml`` (the resolved config), ``model.safetensors`` (``model.*``:
the trained weights; ``ema.*``: their exponential moving average, used for sampling),
``metrics.jsonl`` (one JSON object per log step), ``checkpoint.safetensors`` (the full training
state, :mod:`sbdiff.checkpoint`), ``resumes.jsonl`` (one line per resume), plots and, with
``log.tensorboard``, TensorBoard's ``events.out.tfevents.*`` files.

Fault tolerance
---------------
* Checkpoints every ``train.checkpoint_every`` steps and every ``train.checkpoint_minutes``
  minutes, and always at the end, written atomically: a kill or a crash at any moment leaves the
  last complete checkpoint in place.
* ``fit(config, run_dir, resume=True)`` (or :func:`resume_run`, or ``sbdiff train --resume RUN``)
  continues from the checkpoint. The result is bit-identical to an uninterrupted run on the same
  machine and thread count: model, EMA, optimiser, scheduler, the global RNG states (a step's own random
  numbers, batch order included, are seeded by its step number), method schedule state, log accumulators and elapsed time
  are restored, and ``metrics.jsonl`` (and TensorBoard's events) are cut back to the checkpoint's
  step. Both budgets, ``train.steps`` and ``train.max_minutes``, count the whole run, not one session.
* A resume refuses a config that differs from the run's saved ``config.toml`` (or data whose
  contents changed) unless ``allow_config_change``; :data:`FREE_KEYS` (budgets, checkpoint cadence,
  the non-finite limit, sampling settings, TensorBoard logging) never change the trained parameters
  and may change freely. The resumed config is saved back to ``config.toml``; each resume is logged
  in ``resumes.jsonl`` with the keys it changed.
* SIGINT / SIGTERM (main thread only): the current step finishes, a checkpoint is written, and
  :class:`TrainingInterrupted` says how to resume (a second signal stops at once).
* A step whose loss or gradient norm is NaN/inf is skipped (no optimiser, scheduler or EMA
  update; it still counts toward ``train.steps``); more than ``train.max_nonfinite`` such steps in
  a row (``0``: the first) stop training with an :class:`SbdiffError` naming the step. The last
  good checkpoint is kept, no new one is written.
* A write failure (full disk, read-only directory) leaves the previous checkpoint intact and stops
  with :class:`~sbdiff.checkpoint.CheckpointWriteError`.

Time budget
-----------
``train.max_minutes`` stops training when the run's training time reaches it. A method with a
schedule of its own (:meth:`~sbdiff.methods.Method.plan_window`: the alternating presets) is also
fitted to it, once (:class:`_BudgetProbe`): the loop times the steps of the method's window
(:data:`PROBE_SHARE` of the budget, in whole cycles of its periodic costs such as cache refreshes), then
asks the method to fit its schedule to ``step + PLAN_MARGIN × (time left) / (seconds per step)``
steps (capped by ``train.steps``; :meth:`~sbdiff.methods.Method.plan_budget`), so the run ends by its
schedule, e.g. on a finished decoder phase with its learning rate decayed, just before the budget.
Where the method asks for it (:meth:`~sbdiff.methods.Method.replan_window`: the alternating presets
time their first encoder phase after a plan on the first decoder phase, then every step up to the
last decoder phase, whose length the last plan sets), the loop times that window too and plans again,
the same way, from the step it has reached. The plan in force is in the checkpoint's metadata
(``plan``, each holding the one before as ``previous``; a checkpoint is written right after each)
and a resume takes it again (:meth:`~sbdiff.methods.Method.apply_plan`) instead of timing anew, so it
continues bit for bit (a resume between two plans times the next window in its own session); each
plan is also logged in the next ``metrics.jsonl`` row (``budget_plan``) and in one line on stderr.
The time limit stays a hard stop. Step budgets alone are never planned.

Randomness, shards and DDP
--------------------------
The random numbers of step ``k`` (0-based) come from generators seeded by ``(seed, k, stream)``
(:func:`sbdiff.distributed.step_generator`), so a resumed run draws them again:

* stream 0 (:data:`BATCH_STREAM`): the global batch's row indices;
* stream ``1 + s`` (:data:`LOSS_STREAM` ``+ s``): the losses' randomness (times, noise) of shard
  ``s`` of ``train.shards`` (apart from the next two while ``train.shards < 998``);
* stream 999 (:data:`PRIOR_LOSS_STREAM`): the ``prior_loss`` monitor of a log row (writing rank
  only; it never touches the weights);
* streams ``>= 1000``: the methods' own (``begin_step``: trajectory caches, encoder updates).

A single process computes the shards one after another and accumulates their gradients; under
``torchrun`` (:mod:`sbdiff.distributed`) each of the ``W`` ranks computes ``train.shards / W`` of
them and ``DistributedDataParallel`` averages the gradients. Either way the step is the same, so
a DDP run equals a one-process run with the same ``train.shards`` (up to float rounding).
Stopping (signal, time budget), skipping (non-finite values) and logging are decided on values
all-reduced over the ranks, so every rank takes the same branch; only rank 0 writes files.
``train.precision = "bf16"`` runs the losses' forward pass under ``torch.autocast``;
``train.compile`` compiles the model's networks (:meth:`~sbdiff.model.PathVAE.networks`, whatever
their class) with ``torch.compile``.

The loop
--------
:func:`fit` builds the model, optimiser, scheduler and EMA, restores a :class:`LoopState` (the
loop-carried counters, which are also the checkpoint's metadata) on a resume, then repeats: stop
check, :func:`_train_step` (the method's ``begin_step`` hook, the shards' losses and backward pass,
the optimiser, scheduler and EMA update or a non-finite skip), a log row every ``train.log_every``
steps and after the last step of every phase of a preset with phases (:func:`_log_row`, which names
the phase: no row averages two phases) and a checkpoint when due (:func:`_save_checkpoint`).

Watching a run
--------------
The progress bar shows the last row's loss, the method's fields (the alternating presets' phase,
``decoder 3/7``) and, under a time budget, the time left (:func:`_time_left`). With
``log.tensorboard`` the writing rank also sends every ``metrics.jsonl`` row, and at each checkpoint
a plot of the EMA model's samples, to TensorBoard events in the run directory
(:mod:`sbdiff.monitoring`); neither touches what training computes. The training curves
(``curves.png``) are drawn by the command line after training (:func:`sbdiff.plots.plot_curves`),
never by :func:`fit`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
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
from .conditioning import load_training_set, resolve_context
from .data import load_data
from .methods import Method, make_method
from .model import PathVAE
from .nets import debiased_decay, make_ema, update_ema

__all__ = ["fit", "resume_run", "load_run", "resolve_device", "TrainResult", "TrainingInterrupted", "LoopState",
           "config_changes", "FREE_KEYS", "BATCH_STREAM", "LOSS_STREAM", "PRIOR_LOSS_STREAM"]

CONFIG_FILE = "config.toml"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
RESUMES_FILE = "resumes.jsonl"

#: Random streams of a step (:func:`sbdiff.distributed.step_generator`; table in the module docstring):
#: the global batch's row indices, the losses of shard ``s`` (``LOSS_STREAM + s``), the prior-loss monitor.
BATCH_STREAM = 0
LOSS_STREAM = 1
PRIOR_LOSS_STREAM = 999
#: A conditional run: the rows of shard ``s`` whose context is dropped (``CONTEXT_DROP_STREAM + s``,
#: classifier-free guidance's ``cond.p_uncond``), a stream of its own so that the losses draw the
#: same numbers as without a context.
CONTEXT_DROP_STREAM = 500

#: A time budget's plan (:class:`_BudgetProbe`): the share of ``train.max_minutes`` timed before the
#: plan (then up to the end of a cycle of the method's periodic costs), the share after which it is
#: made at once (and before which a plan on steps outside the method's window is not made: a plan that
#: ends too early cannot be undone, so it waits for a long measurement), and the share of the time left
#: that the plan fills. The timed steps hold whole cycles (cache draws, log rows), so what is left to
#: the margin is the difference in cost between phases (DSB's encoder and decoder phases cost the
#: same; SB-FBSDE's warm start, much cheaper, is not timed), the checkpoints at phase ends and the
#: machine's noise; a run that overshoots a little is stopped by the time limit in its last decoder
#: phase, where the rate is near ``lr_final`` already. Measured (issue 24, dsbm, D = 16, 5 minutes on
#: 2 cores): a 12 s probe timed 14.0 ms/step and the run then averaged 16.4 (15-18 ms per 2000-step
#: stretch), so with a margin of 0.95 it was stopped 9 % short of its plan, mid-phase at half the
#: rate; hence a longer probe and a margin that covers that spread.
PROBE_SHARE = 0.08
PROBE_MAX_SHARE = 0.3
PLAN_MARGIN = 0.85

#: Config keys a resume may change without ``allow_config_change``: they set when training stops,
#: when checkpoints are written, how samples are drawn and what is shown while training (``log.*``:
#: TensorBoard events), never what a step computes.
FREE_KEYS = ("train.steps", "train.max_minutes", "train.checkpoint_every", "train.checkpoint_minutes",
             "train.max_nonfinite", "train.world_size", "train.compile", "sample.*", "log.tensorboard")


@dataclass
class TrainResult:
    """What :func:`fit` returns: the EMA model, the run directory and a summary.

    ``steps`` and ``seconds`` count the whole run (across resumes); ``skipped`` is the number of
    steps skipped for a non-finite loss or gradient; ``resumed_from`` the checkpoint step a resume
    started from (``None`` for a fresh run); ``warnings`` the method's lines at the end of training
    (:meth:`~sbdiff.methods.Method.run_warning`, e.g. a stuck prior loss).
    """

    model: PathVAE
    run_dir: Path | None
    steps: int
    seconds: float
    stopped_by: str
    last: dict
    skipped: int = 0
    resumed_from: int | None = None
    warnings: tuple = ()


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


def _data_fingerprint(data: np.ndarray, *more: np.ndarray) -> str:
    """SHA-256 of ``data`` (its shape, then its float64 bytes), followed by each array of ``more``
    the same way (a conditional run's contexts)."""
    h = hashlib.sha256()
    for i, a in enumerate((data, *more)):
        arr = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(arr.shape).encode() if i == 0 else f"|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the log lines past ``step`` (and a partial last line) so each step is logged once, and the
    end-of-training warnings of earlier sessions (the resumed run is judged again at its own end: a
    row of its own is dropped, the key ``warning`` of a training row removed)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if not isinstance(row, dict) or row.get("step", math.inf) > step:
            continue
        if "warning" in row:
            if "loss" not in row:
                continue
            del row["warning"]
            line = json.dumps(row)
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

    def forward(self, batch: torch.Tensor, generator: torch.Generator,
                context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if context is None:
            return self.method.losses(self.model, batch, generator)
        return self.method.losses(self.model, batch, generator, context=context)


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


def _agree_max(values: list[float], env: distributed.DistEnv, device: torch.device) -> list[float]:
    """The largest of each value over the ranks (timings a decision is based on)."""
    if not env.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.tolist()


def _compile_networks(model: PathVAE) -> None:
    """``torch.compile`` each network of the model in place (:meth:`~sbdiff.model.PathVAE.networks`,
    whatever its class; ``nn.Module.compile``: state-dict keys unchanged)."""
    for net in model.networks():
        net.compile()


# -- the loop state -------------------------------------------------------------------------------
@dataclass
class LoopState:
    """What :func:`fit`'s loop carries from step to step; also a checkpoint's metadata.

    :meth:`to_meta` and :meth:`from_meta` are the one mapping between the two (the keys ``step``,
    ``elapsed_s``, ``last``, ``log_sums``, ``log_count``, ``skipped``, ``streak`` of the checkpoint's
    JSON document), so a resume restores exactly what a checkpoint saved.

    Attributes
    ----------
    step : int
        Steps taken (skipped ones included): the 0-based index of the next step.
    elapsed_s : float
        Seconds of training before this session (the earlier sessions of a resumed run).
    last : dict
        The last row written to ``metrics.jsonl``.
    log_sums : dict
        ``{key: (sum, n)}``: the good steps' loss values since the last log row (per key: a
        method's keys may change between steps).
    log_count : int
        Good steps since the last log row.
    skipped : int
        Steps skipped for a non-finite loss or gradient, over the whole run.
    streak : int
        Non-finite steps in a row up to the last step.
    phase_updates : int
        EMA updates since the frozen set last changed (``train.phase_average``: the restarted average's
        count).
    plan : dict or None
        The time budget's plan in force (:class:`_BudgetProbe`): ``method`` (what
        ``Method.plan_budget`` returned), ``total_steps``, ``at_step``, ``seconds_per_step``,
        ``budget_s`` and, for a later plan, ``previous`` (the record of the plan before); in the
        metadata only once made.
    started : float
        ``time.monotonic()`` when this session's training began (not saved).
    warnings : list of str
        The method's warnings at the end of this session (:func:`_warn_at_end`; not saved).
    """

    step: int = 0
    elapsed_s: float = 0.0
    last: dict = field(default_factory=dict)
    log_sums: dict = field(default_factory=dict)
    log_count: int = 0
    skipped: int = 0
    streak: int = 0
    phase_updates: int = 0
    plan: dict | None = None
    started: float = field(default_factory=time.monotonic)
    warnings: list = field(default_factory=list)

    def elapsed(self) -> float:
        """Seconds of training over the whole run up to now."""
        return self.elapsed_s + (time.monotonic() - self.started)

    def to_meta(self) -> dict:
        """The checkpoint metadata of this state (``elapsed_s``: the whole run's seconds up to now)."""
        meta = {"step": self.step, "elapsed_s": self.elapsed(), "last": self.last, "log_sums": self.log_sums,
                "log_count": self.log_count, "skipped": self.skipped, "streak": self.streak,
                "phase_updates": self.phase_updates}
        return meta if self.plan is None else {**meta, "plan": self.plan}

    @classmethod
    def from_meta(cls, meta: dict) -> LoopState:
        """The state a checkpoint's metadata saved (:meth:`to_meta`), its session starting now.

        ``log_sums`` values are ``[sum, n]`` pairs; a bare sum (older checkpoints) counts
        ``log_count`` steps.
        """
        count = meta["log_count"]
        sums = {k: tuple(v) if isinstance(v, list) else (v, count) for k, v in meta["log_sums"].items()}
        return cls(step=meta["step"], elapsed_s=meta["elapsed_s"], last=meta["last"], log_sums=sums,
                   log_count=count, skipped=meta["skipped"], streak=meta["streak"],
                   phase_updates=meta.get("phase_updates", 0), plan=meta.get("plan"))


@dataclass
class _Session:
    """What one call of :func:`fit` trains with. Fixed for the session, except the checkpoint
    bookkeeping (``saved_step``: the step of the last checkpoint on disk, ``saved_at``: its
    ``time.monotonic()``) and the outputs that :func:`_open_outputs` opens."""

    config: Config
    env: distributed.DistEnv
    device: torch.device
    method: Method
    model: PathVAE
    ema: torch.optim.swa_utils.AveragedModel
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loss_module: torch.nn.Module
    x: torch.Tensor  # the training data, model coordinates
    c: torch.Tensor | None  # the training contexts, model form (conditional runs), or None
    shards: list  # slices of the global batch, one per shard
    my_shards: range  # the shards this rank computes
    autocast: object  # () -> context manager of the losses' forward pass
    run_dir: Path | None
    writer: bool
    fingerprint: str
    saved_step: int | None = None
    saved_at: float = 0.0
    metrics_fh: object = None
    last_row_at: int | None = None  # offset of the last row in metrics.jsonl (this session's)
    bar: object = None
    tb: object = None  # the TensorBoard events (sbdiff.monitoring.TensorBoardLog; log.tensorboard, writing rank)
    untrained: list = field(default_factory=list)  # (EMA, live) parameter pairs the optimiser does not update
    frozen: tuple | None = None  # the prefixes method.frozen gave for the last step
    frozen_model: PathVAE | None = None  # the averaged copy handed to method.set_frozen

    @property
    def per_rank(self) -> int:
        return len(self.my_shards)

    @property
    def ckpt_path(self) -> Path | None:
        return self.run_dir / CHECKPOINT_FILE if self.writer else None


def _open_run(config: Config, run_dir: Path | None, env: distributed.DistEnv, writer: bool, fingerprint: str,
              resume: bool, allow_config_change: bool) -> tuple:
    """Open a resume (:func:`_open_resume`) or prepare a fresh run directory.

    Returns
    -------
    ckpt : the checkpoint to resume from (``read_checkpoint``'s tuple), or ``None``.
    changes : ``{key: (old, new)}`` config keys a resume changes, or ``None``.
    """
    if resume:
        return _open_resume(config, run_dir, fingerprint, allow_config_change)
    if run_dir is not None:
        def prepare():
            _prepare_run_dir(run_dir)
            save_config(config, run_dir / CONFIG_FILE)
        _on_writer(env, writer, prepare)
    return None, None


def _build(config: Config, env: distributed.DistEnv, device: torch.device, method: Method, data: np.ndarray,
           prior: np.ndarray | None, run_dir: Path | None, writer: bool, fingerprint: str,
           context: np.ndarray | None = None) -> _Session:
    """Seed the global RNG with ``config.seed``, build the model, optimiser, scheduler (warm-up
    times ``method.lr_factor``), EMA and the losses' module (DDP-wrapped under ``torchrun``).

    Returns
    -------
    _Session : everything but the outputs (:func:`_open_outputs`) and the checkpoint bookkeeping.
    """
    tc = config.train
    torch.manual_seed(config.seed)
    model = method.build(data, prior).to(device)
    x = model.to_model(torch.as_tensor(data, dtype=torch.float32, device=device))
    c = None
    if context is not None:
        model.fit_context_scaling(torch.as_tensor(context))
        c = method.context_pool = model.context_to_model(context)
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
    per_rank = tc.shards // env.world_size
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if tc.precision == "bf16" \
        else contextlib.nullcontext
    optimised = {id(p) for p in params}
    untrained = [(q, p) for q, p in zip(ema.module.parameters(), model.parameters()) if id(p) not in optimised]
    return _Session(config, env, device, method, model, ema, params, opt, sched, loss_module, x, c,
                    shards=distributed.shard_slices(tc.batch_size, tc.shards),
                    my_shards=range(env.rank * per_rank, (env.rank + 1) * per_rank), autocast=autocast,
                    run_dir=run_dir, writer=writer, fingerprint=fingerprint, untrained=untrained)


def _open_outputs(s: _Session, state: LoopState, max_steps: int | None, progress: bool,
                  resumed: bool = False) -> None:
    """Open ``metrics.jsonl`` (writing rank), the TensorBoard events (writing rank, ``log.tensorboard``:
    :class:`sbdiff.monitoring.TensorBoardLog`; a resume cuts the events of earlier sessions back to its
    step, with TensorBoard on or off) and the progress bar, and start the clocks: the session's
    training time and the checkpoint interval count from now."""
    if s.writer and s.config.log.tensorboard:
        from .monitoring import TensorBoardLog

        s.tb = TensorBoardLog(s.run_dir, state.step if resumed else None)
    elif s.writer and resumed:  # events of an earlier session with TensorBoard: cut back all the same
        from .monitoring import trim_events

        try:
            trim_events(s.run_dir, state.step)
        except SbdiffError as err:
            print(f"sbdiff: warning: TensorBoard events past step {state.step} kept: {err}", file=sys.stderr)
    s.metrics_fh = open(s.run_dir / METRICS_FILE, "a") if s.writer else None
    s.bar = tqdm(total=max_steps, initial=state.step, desc=f"train {s.config.method}",
                 disable=None if progress else True, dynamic_ncols=True)
    state.started = s.saved_at = time.monotonic()


def _max_steps(config: Config, method: Method) -> int | None:
    """The step count training stops at: the smaller of ``train.steps`` and the method's schedule."""
    return min([n for n in (config.train.steps, method.max_steps()) if n], default=None)


class _BudgetProbe:
    """Fits the method's schedule to ``train.max_minutes`` (module docstring, "Time budget"): once,
    and again in each window the method's :meth:`~sbdiff.methods.Method.replan_window` gives.

    It times the steps of the method's :class:`~sbdiff.methods.PlanWindow` (whole loop iterations:
    cache draws, log rows and checkpoints included), from the end of the window's first step and of
    the session's (start-up costs, the phase's first cache: the timed cycles of ``every`` steps then
    hold one cache draw each), and plans after :data:`PROBE_SHARE` of the budget at the end of a
    cycle, at once after :data:`PROBE_MAX_SHARE`, at the latest at the window's ``last`` step. Before
    the window (the steps of a warm start) it plans only when, after :data:`PROBE_MAX_SHARE`, the
    budget ends before the window at their rate. The timings are agreed over DDP ranks (their
    maximum), so every rank takes the same plan. A later plan times its own window the same way
    (from its second step; a window that is not ``early`` plans at its ``last`` step only), never
    plans before it, and keeps the plan before in its record. Inactive without a time budget, for a
    method without a window, and on a resume that restored the last plan it can make.
    """

    def __init__(self, s: _Session, state: LoopState, budget: float, progress: bool):
        self.budget, self.progress = budget, progress
        self.session = (time.monotonic(), state.step)
        self.timed: tuple[float, int] | None = None  # (clock, step) where the timed steps begin
        self.again = state.plan is not None  # the next plan is a later one
        self.window = None
        if math.isfinite(budget):
            self.window = (s.method.replan_window(state.step, state.plan["at_step"]) if self.again
                           else s.method.plan_window(state.step))

    def after_step(self, s: _Session, state: LoopState) -> bool:
        """Called after every step; True when the schedule was planned now."""
        w, k = self.window, state.step
        if w is None:
            return False
        if self.timed is None or k == w.start + 1:
            self.timed = (time.monotonic(), k)
            if k < w.last:
                return False
        if not w.early and k < w.last:  # plans at its last step only (no DDP agreement on every step)
            return False
        t0, k0 = self.timed if k > self.timed[1] else self.session  # (a window of one step: the session's)
        took, elapsed = _agree_max([time.monotonic() - t0, state.elapsed()], s.env, s.device)
        rate = max(took, 1e-9) / (k - k0)
        total = k + int(PLAN_MARGIN * max(self.budget - elapsed, 0.0) / rate)
        if s.config.train.steps:
            total = max(min(total, s.config.train.steps), k)
        if k <= w.start:  # not the window's steps: plan on them only when the budget ends before the window
            due = not self.again and took >= PROBE_MAX_SHARE * self.budget and total < w.start
        else:
            due = k >= w.last or w.early and (took >= PROBE_MAX_SHARE * self.budget or (
                took >= PROBE_SHARE * self.budget and (k - k0) % w.every == 0))
        return due and self._plan(s, state, total, rate)

    def _plan(self, s: _Session, state: LoopState, total: int, rate: float) -> bool:
        self.window = None
        plan = s.method.plan_budget(total, state.step)
        if plan is None:
            return False
        record = {"method": plan, "total_steps": total, "at_step": state.step, "seconds_per_step": rate,
                  "budget_s": self.budget}
        state.plan = {**record, "previous": state.plan} if self.again else record
        _reset_lr(s.sched)  # the next step's rate under the fitted schedule
        if s.writer and self.progress:
            tqdm.write(f"sbdiff: budget {'re-plan' if self.again else 'plan'} after {state.step} steps at "
                       f"{1e3 * rate:.1f} ms/step: {plan.get('summary', total)}", file=sys.stderr)
        self.again, self.timed = True, None  # time the method's next window, if it has one
        self.window = s.method.replan_window(state.step, state.step)
        return True


def _reset_lr(sched: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set the next step's learning rate from the scheduler's base rates and factors (after either changed)."""
    for g, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        g["lr"] = base * fn(sched.last_epoch)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


# -- the loop -------------------------------------------------------------------------------------
def fit(config: Config, run_dir: str | Path | None = None, *, data: np.ndarray | None = None,
        progress: bool = True, resume: bool = False, allow_config_change: bool = False,
        context: np.ndarray | None = None) -> TrainResult:
    """Train ``config.method`` on ``config.data`` (or on ``data``, shape ``(N, d)``).

    Stops after ``train.steps`` steps or ``train.max_minutes`` minutes of training, whichever comes
    first (0 disables either), then saves weights and a final checkpoint to ``run_dir`` (if given).
    With ``train.max_minutes`` a method with a schedule of its own fits it to the budget after timing
    its first steps (module docstring, "Time budget").

    Parameters
    ----------
    config : the run's config (validated here).
    run_dir : the run directory; ``None`` trains in memory (no checkpoints, default signal handling).
    data : training points ``(N, d)``; default ``load_data(config.data.data, ...)``, or the
        conditional training set of ``[cond]`` (:func:`sbdiff.conditioning.load_training_set`). A resume
        needs the same data (checked by a SHA-256 fingerprint).
    context : the contexts of ``data`` for a conditional model (DESIGN §4.6): integer labels ``(N,)``
        or observed values ``(N, k)``; recorded in ``cond.kind``/``cond.size``.
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
        if context is not None:
            raise SbdiffError("a context needs its data: pass data= with context=")
        data, context = load_training_set(config)
    resolve_context(config, data, context)
    prior = load_prior(config, data.shape[1])
    fingerprint = _data_fingerprint(data if prior is None else np.concatenate([data, prior]),
                                    *(() if context is None else (context,)))
    if config.log.tensorboard and run_dir is not None:  # before the run directory is made
        from .monitoring import require_tensorboard

        _on_writer(env, writer, require_tensorboard)
    ckpt, changes = _open_run(config, run_dir, env, writer, fingerprint, resume, allow_config_change)
    s = _build(config, env, device, method, data, prior, run_dir, writer, fingerprint, context)

    state, resumed_from = LoopState(), None
    if ckpt is not None:
        state = LoopState.from_meta(_restore(ckpt, s.model, s.ema, s.opt, s.sched, method, config, run_dir))
        s.saved_step = resumed_from = state.step
    if resume and writer:  # the checkpoint fits: record the resume, cut the log back to its step
        _record_resume(config, run_dir, state.step, changes)
        _truncate_metrics(run_dir / METRICS_FILE, state.step)

    tc = config.train
    budget = tc.max_minutes * 60.0 if tc.max_minutes > 0 else math.inf
    max_steps = _max_steps(config, method)
    _open_outputs(s, state, max_steps, progress, resumed=resume and writer)
    probe = _BudgetProbe(s, state, budget, progress)
    stopped_by = "steps"
    try:
        with _StopSignals(run_dir is not None) as signals:
            while max_steps is None or state.step < max_steps:
                reason = "signal" if signals.received is not None else ("time" if state.elapsed() >= budget else None)
                reason = _agree_stop(reason, env, device)
                if reason is not None:
                    stopped_by = reason
                    break
                idx = _train_step(s, state)
                s.bar.update(1)
                planned = probe.after_step(s, state)
                if planned:
                    max_steps = s.bar.total = _max_steps(config, method)
                if state.step % tc.log_every == 0 or state.step == max_steps:
                    _log_row(s, state, idx)
                elif _phase_ends(s, state.step):  # a row of its own: the global random state is kept
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        _log_row(s, state, idx)
                if (planned and s.writer) or _checkpoint_due(s, state):  # the plan is on disk at once
                    _save_checkpoint(s, state)
            if stopped_by != "signal" and state.step > 0:
                _warn_at_end(s, state)
            _end_loop(s, state, stopped_by, signals)
    finally:
        s.bar.close()
        if s.metrics_fh is not None:
            s.metrics_fh.close()
        if s.tb is not None:
            s.tb.close()
    seconds = state.elapsed()
    ema_model = s.ema.module.eval()
    if writer:
        try:
            save_weights(s.model, s.ema, run_dir / WEIGHTS_FILE)
        except CheckpointWriteError as err:
            raise CheckpointWriteError(f"{err}; the training state is in {s.ckpt_path}, write the weights with: "
                                       f"sbdiff train --resume {run_dir}") from None
    return TrainResult(ema_model, run_dir, state.step, seconds, stopped_by, state.last, state.skipped, resumed_from,
                       tuple(state.warnings))


@torch.no_grad()
def _freeze_policy(s: _Session, state: LoopState, step: int) -> None:
    """The one freeze policy, before the method's ``begin_step``. When ``method.frozen(step)``
    differs from the step before's (a new phase), the phase average restarts and, with
    ``train.phase_average``, the network frozen now takes it. When it differs from the last step
    this session took (and at a session's first step), the method gets a copy of the averaged model,
    whose frozen prefixes hold the snapshot the other network trains against
    (``Method.set_frozen``). The EMA itself is written by the trainer only: ``update_ema`` leaves the
    frozen prefixes as they are."""
    frozen = s.method.frozen(step)
    before = s.method.frozen(step - 1) if step > 0 else frozen
    if frozen != before:
        state.phase_updates = 0
        if s.config.train.phase_average:
            _hand_on_average(s, frozen, before)
    if frozen and frozen != s.frozen:
        if s.frozen_model is None:
            s.frozen_model = copy.deepcopy(s.ema.module).requires_grad_(False)
        else:
            s.frozen_model.load_state_dict(s.ema.module.state_dict())
        s.method.set_frozen(s.frozen_model)
    s.frozen = frozen


def _update_ema(s: _Session, state: LoopState) -> None:
    """The EMA update after a good step: every parameter but the step's frozen prefixes (with
    ``train.phase_average``, as a bias-corrected average restarted at each phase), then the
    parameters the optimiser does not update mirrored."""
    state.phase_updates += 1
    restart = s.config.train.phase_average and s.frozen  # a preset without phases keeps the plain EMA
    decay = debiased_decay(s.config.train.ema_decay, state.phase_updates) if restart else None
    update_ema(s.ema, s.model, s.frozen, decay=decay)
    _mirror_untrained(s)


@torch.no_grad()
def _hand_on_average(s: _Session, frozen: tuple, before: tuple) -> None:
    """``train.phase_average``: a network frozen from this step on takes its averaged weights (the
    bias-corrected average over the phase it finished), so its next phase starts from them and the
    other side trains against the same weights in the model and in the EMA."""
    now_frozen = tuple(p for p in frozen if p not in before)
    averaged = s.ema.module.state_dict()
    for name, value in s.model.state_dict().items():
        if name.startswith(now_frozen):
            value.copy_(averaged[name])


@torch.no_grad()
def _mirror_untrained(s: _Session) -> None:
    """Copy the parameters the optimiser does not update (a method's own updates in ``begin_step``,
    e.g. VSDM's encoder) into the EMA model: the averaged networks are paired with their current value."""
    for averaged, live in s.untrained:
        averaged.copy_(live)


def _train_step(s: _Session, state: LoopState) -> torch.Tensor:
    """Take step ``state.step`` (one optimiser step) and count it.

    In order: the method's ``begin_step`` hook (under ``no_grad``, before the batch); the global
    batch's row indices (stream :data:`BATCH_STREAM`); for each of this rank's shards the losses
    (stream ``LOSS_STREAM + shard``) and their backward pass (gradients accumulate; DDP averages
    them over the ranks at the last shard); the loss values' mean over the ranks; gradient clipping.
    Then either the optimiser, scheduler and EMA update (its loss values go into the log sums) or,
    for a non-finite loss or gradient norm, a skip, which raises once more than
    ``train.max_nonfinite`` come in a row.

    Parameters
    ----------
    s : the session.
    state : the loop state; ``step``, ``streak``, ``skipped`` and the log sums are updated.

    Returns
    -------
    Tensor : the global batch's row indices into ``s.x``, shape ``(train.batch_size,)``.

    Raises
    ------
    SbdiffError : too many non-finite steps in a row (:func:`_nonfinite_error`).
    """
    tc, env, step = s.config.train, s.env, state.step
    _freeze_policy(s, state, step)
    with torch.no_grad():
        s.method.begin_step(s.model, step)
    idx_gen = distributed.step_generator(s.config.seed, step, BATCH_STREAM, s.device)
    idx = torch.randint(0, s.x.shape[0], (tc.batch_size,), generator=idx_gen, device=s.device)
    s.opt.zero_grad(set_to_none=True)
    names, values = None, 0.0
    for j, shard in enumerate(s.my_shards):
        gen = distributed.step_generator(s.config.seed, step, LOSS_STREAM + shard, s.device)
        sync = contextlib.nullcontext() if not env.active or j == s.per_rank - 1 else s.loss_module.no_sync()
        rows = idx[s.shards[shard]]
        context = None if s.c is None else _dropped(s, s.c[rows], step, shard)
        with sync:
            with s.autocast():
                losses = s.loss_module(s.x[rows], gen, context)
            (losses["loss"].float() / s.per_rank).backward()  # always: DDP ranks must meet
        names = sorted(losses)
        values = values + torch.stack([losses[k].detach().float() for k in names]) / s.per_rank
    values = distributed.all_mean(values, env)
    grad_norm = torch.nn.utils.clip_grad_norm_(s.params, tc.grad_clip)
    bad = "loss" if not torch.isfinite(values).all() else ("gradients" if not torch.isfinite(grad_norm) else None)
    step = state.step = step + 1
    if bad is None:
        s.opt.step()
        s.sched.step()
        _update_ema(s, state)
        state.streak = 0
        state.log_count += 1
        for k, v in zip(names, values.tolist()):  # per key: a method's keys may change
            total, n = state.log_sums.get(k, (0.0, 0))
            state.log_sums[k] = (total + v, n + 1)
    else:  # skip: no optimiser, scheduler or EMA update (the method's own updates are mirrored)
        s.opt.zero_grad(set_to_none=True)
        _mirror_untrained(s)
        state.skipped += 1
        state.streak += 1
        if state.streak > tc.max_nonfinite:
            raise _nonfinite_error(s, state, bad)
    return idx


def _dropped(s: _Session, c: torch.Tensor, step: int, shard: int) -> torch.Tensor:
    """The batch's contexts ``c`` with each row replaced by the null context with probability
    ``cond.p_uncond`` (classifier-free guidance, Ho & Salimans 2022; stream
    :data:`CONTEXT_DROP_STREAM` of the step and shard)."""
    p = s.config.cond.p_uncond
    if p == 0:
        return c
    gen = distributed.step_generator(s.config.seed, step, CONTEXT_DROP_STREAM + shard, s.device)
    mask = torch.rand(len(c), generator=gen, device=c.device) < p
    return s.model.drop_context(c, mask)


def _log_row(s: _Session, state: LoopState, idx: torch.Tensor) -> None:
    """Write the log row after step ``state.step`` and start new log sums.

    The row holds the name of the step's phase (``phase_name``,
    :meth:`~sbdiff.methods.Method.phase_name`; presets with phases only), the means of the losses
    since the last row, the method's ``prior_loss`` monitor on the step's batch ``s.x[idx]`` when the
    losses do not carry it (writing rank only; stream :data:`PRIOR_LOSS_STREAM` of the step), the
    learning rate, the elapsed seconds, the count of skipped steps (if any) and, in the first row
    after it, the time budget's plan (``budget_plan``).
    It becomes ``state.last`` and goes to TensorBoard too (``log.tensorboard``); the progress bar
    shows its loss, the method's fields (the phase) and, under a time budget, the time left
    (:func:`_time_left`).

    Parameters
    ----------
    s : the session.
    state : the loop state (just after a step).
    idx : the step's batch indices (:func:`_train_step`).

    Raises
    ------
    SbdiffError : ``metrics.jsonl`` cannot be written.
    """
    step = state.step
    last = {"step": step}
    phase = s.method.phase_name(step - 1)
    if phase is not None:
        last["phase_name"] = phase
    last.update({k: total / n for k, (total, n) in state.log_sums.items()})
    if "prior_loss" not in last and s.writer:
        gen = distributed.step_generator(s.config.seed, step - 1, PRIOR_LOSS_STREAM, s.device)
        last["prior_loss"] = float(s.method.prior_loss(s.model, s.x[idx], gen))
    last["lr"] = s.sched.get_last_lr()[0]
    last["elapsed_s"] = round(state.elapsed(), 3)
    if state.skipped:
        last["skipped_nonfinite"] = state.skipped
    if state.plan is not None and state.last.get("step", -1) < state.plan["at_step"]:
        last["budget_plan"] = state.plan
    if s.metrics_fh is not None:
        try:
            s.last_row_at = s.metrics_fh.tell()
            s.metrics_fh.write(json.dumps(last) + "\n")
            s.metrics_fh.flush()
        except OSError as err:
            raise SbdiffError(f"cannot write {s.run_dir / METRICS_FILE}: {err.strerror or err}; "
                              f"continue with: sbdiff train --resume {s.run_dir}") from None
    if s.tb is not None:
        s.tb.add_row(last)
    if "loss" in last:
        left = _time_left(s, state)
        s.bar.set_postfix({"loss": f"{last['loss']:.4f}", **s.method.progress_info(step - 1),
                           **({} if left is None else {"left": _format_seconds(left)})})  # in this order
    state.last, state.log_sums, state.log_count = last, {}, 0


def _phase_ends(s: _Session, step: int) -> bool:
    """Whether step ``step - 1`` (the last one taken) is the last of its phase: the method names a
    phase for it (:meth:`~sbdiff.methods.Method.phase_name`) and the next step's differs. The trainer
    then writes a log row, so that no row averages two phases."""
    name = s.method.phase_name(step - 1) if step > 0 else None
    return name is not None and s.method.phase_name(step) != name


def _time_left(s: _Session, state: LoopState) -> float | None:
    """Seconds of training left by the time budget (``train.max_minutes``; ``None`` without one): the
    budget less the run's elapsed time and, once the schedule is planned, no more than the plan's
    seconds per step times the steps left to the schedule's end. Shown by the progress bar only."""
    if not s.config.train.max_minutes > 0:
        return None
    left = max(60.0 * s.config.train.max_minutes - state.elapsed(), 0.0)
    total = s.bar.total if s.bar is not None else None
    if state.plan is not None and total:
        left = min(left, state.plan["seconds_per_step"] * max(total - state.step, 0))
    return left


def _format_seconds(seconds: float) -> str:
    """``2m31s``, ``45s``, ``1h02m``: a duration for the progress bar."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _checkpoint_due(s: _Session, state: LoopState) -> bool:
    """Whether a checkpoint is due after step ``state.step`` (writing rank only): every
    ``train.checkpoint_every`` steps, when the method says so, every ``train.checkpoint_minutes``."""
    tc, step = s.config.train, state.step
    return bool(s.writer and ((tc.checkpoint_every and step % tc.checkpoint_every == 0)
                              or s.method.checkpoint_due(step)
                              or (tc.checkpoint_minutes and time.monotonic() - s.saved_at >= 60 * tc.checkpoint_minutes)))


def _save_checkpoint(s: _Session, state: LoopState) -> None:
    """Write the checkpoint of the state after step ``state.step`` (writing rank only).

    The log up to this step is flushed to disk first. The metadata is :meth:`LoopState.to_meta`
    and the run's identity (method, data fingerprint, config, torch version); the state holds the
    optimiser, scheduler, method schedule and the global RNG states. With ``log.tensorboard`` a plot of
    the EMA model's samples follows (:func:`sbdiff.monitoring.checkpoint_samples`: no effect on
    training) and the events are flushed.

    Raises
    ------
    CheckpointWriteError : the write failed; the last good checkpoint is intact.
    """
    if s.metrics_fh is not None:  # the log up to this step is on disk before the checkpoint is
        s.metrics_fh.flush()
        os.fsync(s.metrics_fh.fileno())
    meta = {**state.to_meta(), "method": s.config.method, "data_sha256": s.fingerprint,
            "config": dumps_config(s.config), "torch": torch.__version__}
    saved = {"optimizer": s.opt.state_dict(), "scheduler": s.sched.state_dict(), "method": s.method.state_dict(),
             "rng": capture_rng()}
    try:
        write_checkpoint(s.ckpt_path, model=s.model, ema=s.ema, meta=meta, state=saved)
    except CheckpointWriteError as err:
        kept = (f"the last good checkpoint (step {s.saved_step}) is intact" if s.saved_step is not None
                else "no checkpoint was written before")
        raise CheckpointWriteError(f"training stopped at step {state.step}: {err}; {kept}. Free space or fix the "
                                   f"directory, then continue with: sbdiff train --resume {s.run_dir}") from None
    s.saved_step, s.saved_at = state.step, time.monotonic()
    if s.tb is not None:  # the EMA model's samples (never touching training), then the events on disk
        s.tb.add_samples(s.ema.module, s.config, s.x, state.step)
        s.tb.flush()


def _nonfinite_error(s: _Session, state: LoopState, what: str) -> SbdiffError:
    """The error that stops training after too many non-finite steps (``what``: ``loss`` or
    ``gradients``), naming the step and the last good checkpoint."""
    tc = s.config.train
    limit = (f"train.max_nonfinite = 0 stops at the first" if tc.max_nonfinite == 0 else
             f"{state.streak} steps in a row, more than train.max_nonfinite = {tc.max_nonfinite}")
    where = (f"the last good checkpoint (step {s.saved_step}) is kept in {s.ckpt_path}; after changing the config "
             f"continue it with: sbdiff train --resume {s.run_dir} --allow-config-change"
             if s.saved_step is not None else "no checkpoint was written")
    return SbdiffError(f"training diverged: non-finite {what} at step {state.step} ({limit}); {where}. "
                       "Lower train.lr or check the data")


def _warn_at_end(s: _Session, state: LoopState) -> None:
    """The method's :meth:`~sbdiff.methods.Method.run_warning` at the end of training: one line on
    stderr, kept in ``state.warnings``, and in ``metrics.jsonl`` (writing rank) as the key ``warning``
    of the last row when that row is this step's (rewritten in place), else of a row of its own
    ``{"step", "warning", "prior_loss"}``."""
    message = s.method.run_warning(s.model, state.last, state.step)
    if message is None:
        return
    state.warnings.append(message)
    if not s.writer and s.run_dir is not None:
        return
    print(f"sbdiff: warning: {message}", file=sys.stderr, flush=True)
    if s.metrics_fh is None:
        return
    if state.last.get("step") == state.step and s.last_row_at is not None:
        row = {**state.last, "warning": message}
        s.metrics_fh.flush()
        s.metrics_fh.seek(s.last_row_at)
        s.metrics_fh.truncate()
    else:
        row = {"step": state.step, "warning": message, "prior_loss": state.last.get("prior_loss")}
    s.metrics_fh.write(json.dumps(row) + "\n")
    s.metrics_fh.flush()


def _end_loop(s: _Session, state: LoopState, stopped_by: str, signals: _StopSignals) -> None:
    """After the loop: on a signal write a checkpoint and raise :class:`TrainingInterrupted`;
    refuse a run that took no step; else write the final checkpoint (a later resume with a larger
    budget continues it)."""
    if stopped_by == "signal":
        if s.writer and s.saved_step != state.step:
            _save_checkpoint(s, state)
        name = signal.Signals(signals.received).name
        raise TrainingInterrupted(
            f"training stopped by {name} after step {state.step}; checkpoint saved in {s.ckpt_path}. "
            f"Continue with: sbdiff train --resume {s.run_dir}", signals.received, state.step, s.run_dir)
    if state.step == 0:
        raise SbdiffError("the time budget ended before the first training step")
    if s.writer and s.saved_step != state.step:
        _save_checkpoint(s, state)


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
    if meta.get("plan"):  # the time budget's plan (before the rate below is computed from the schedule)
        method.apply_plan(meta["plan"]["method"])
    lr = config.train.lr
    if any(g["initial_lr"] != lr for g in opt.param_groups):  # train.lr changed (allowed): new base rate
        sched.base_lrs = [lr] * len(opt.param_groups)
        for g in opt.param_groups:
            g["initial_lr"] = lr
        _reset_lr(sched)
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


def load_run(run_dir: str | Path, *, ema: bool = True, device: str = "cpu",
             checkpoint: bool = False) -> tuple[Config, PathVAE]:
    """Rebuild a trained model from a run directory.

    Parameters
    ----------
    run_dir : the run directory.
    ema : the averaged weights (else the trained ones).
    device : where the model goes.
    checkpoint : take the weights of ``checkpoint.safetensors`` (the training state of a run killed
        or still training) instead of ``model.safetensors`` (written at the end of training).

    Raises
    ------
    SbdiffError : not a run directory, or the weights file is missing or does not hold a sbdiff model.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise SbdiffError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    source = run_dir / (CHECKPOINT_FILE if checkpoint else WEIGHTS_FILE)
    if not source.is_file():
        raise SbdiffError(f"{run_dir} has no {CHECKPOINT_FILE}: no checkpoint was written" if checkpoint else
                          f"{run_dir} has no {WEIGHTS_FILE}: the run did not finish saving")
    config, _ = load_config(run_dir / CONFIG_FILE)
    config.validate()
    if checkpoint:
        model_state, ema_state, _, _ = read_checkpoint(source)
        # the EMA's state is the AveragedModel's: the model's under "module." (and its update count)
        state = model_state if not ema else {k[len("module."):]: v for k, v in ema_state.items()
                                             if k.startswith("module.")}
    else:
        tensors = load_file(str(source))
        prefix = "ema." if ema else "model."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if "data_mean" not in state:
        raise SbdiffError(f"{source} does not hold a sbdiff model")
    dim = state["data_mean"].shape[0]
    prior = load_prior(config, dim, required=False)
    model = make_method(config).build(np.zeros((2, dim)), prior)
    if config.data.prior != "gaussian" and prior is None:  # bridge run whose prior file is gone
        model.prior_data = torch.empty(0, dim)
    model.load_state_dict(state)
    return config, model.to(resolve_device(device)).eval()
