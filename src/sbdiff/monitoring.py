"""Watching a run while it trains: TensorBoard events in the run directory (docs/monitoring.md).

With ``[log] tensorboard = true`` (``sbdiff train --tensorboard``) the trainer (:mod:`sbdiff.train`,
writing rank only) keeps a :class:`TensorBoardLog` open in the run directory, so that
``tensorboard --logdir runs/`` shows each run:

* every ``metrics.jsonl`` row of a log step, each numeric key a scalar tagged by the key at the
  row's ``step`` (:func:`scalars`; the end-of-training warning's row of its own, which repeats the
  last ``prior_loss`` at a later step and goes at a resume, is not sent);
* at each checkpoint, samples of the EMA model (tag ``samples``): a figure of samples beside data
  for vector data, an image grid for image data (one row per class for a class-conditional run);
  none for series runs. They are drawn under ``torch.no_grad`` with a generator of their own seeded
  from ``config.seed`` (:data:`SAMPLE_SEED_OFFSET`), the global random state kept and the
  networks' train/eval modes restored, so that they never change training
  (:func:`checkpoint_samples`).

A resume cuts the events back to the checkpoint's step, as ``metrics.jsonl`` is cut back
(:func:`trim_events`: the event files are rewritten without the killed session's later events, for
every reader), and opens its writer with ``purge_step`` just past that step (TensorBoard's own
mark of a restart, which its Python reader also honours).

TensorBoard is an optional dependency (``pip install 'sbdiff[tensorboard]'``);
:func:`require_tensorboard` says so in one line before training starts.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ._utils import SbdiffError

__all__ = ["TensorBoardLog", "require_tensorboard", "scalars", "trim_events", "checkpoint_samples",
           "image_range", "INSTALL_HINT", "SAMPLE_SEED_OFFSET"]

#: How to install the optional dependency.
INSTALL_HINT = "pip install 'sbdiff[tensorboard]'"
#: The checkpoint samples' generator is seeded with ``config.seed + SAMPLE_SEED_OFFSET`` (the same
#: draw at every checkpoint, so that the plots show the model changing, not the noise).
SAMPLE_SEED_OFFSET = 2
#: Points (vector data) and images (image data; per class for labels) of the checkpoint samples, and
#: the most sampling steps they take (``min(sample.nfe, …)``: a checkpoint should stay cheap).
SAMPLE_POINTS = 1000
SAMPLE_IMAGES = 64
SAMPLE_MAX_NFE = 100
#: An image grid smaller than this many pixels a side is enlarged by a whole factor (nearest neighbour).
IMAGE_MIN_SIDE = 256


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or one line saying how to install TensorBoard.

    Raises
    ------
    SbdiffError : the ``tensorboard`` package is not installed.
    """
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard imports it too; checked first, by name)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SbdiffError("log.tensorboard (--tensorboard) needs the tensorboard package, which is not installed; "
                          f"install it with: {INSTALL_HINT}") from None
    return SummaryWriter


def scalars(row: dict) -> dict[str, float]:
    """The numeric keys of a ``metrics.jsonl`` row but ``step`` (booleans, strings, ``None`` and
    nested objects such as ``budget_plan`` left out), in the row's order."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("events.out.tfevents.*") if p.is_file())


def trim_events(run_dir: str | Path, step: int) -> None:
    """Drop the TensorBoard events past ``step`` from the event files in ``run_dir`` (a resume from
    the checkpoint of ``step``: the killed session's later events go, as its ``metrics.jsonl`` rows
    do). Each file that changes is rewritten atomically (a file left with no event but its version
    record is removed); records are copied byte for byte.

    Raises
    ------
    SbdiffError : an event file cannot be read or written, or there are event files and TensorBoard
        is not installed.
    """
    if not _event_files(Path(run_dir)):
        return
    require_tensorboard()
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in _event_files(Path(run_dir)):
        try:
            records = list(RawEventFileLoader(str(path)).Load())
        except Exception as err:  # noqa: BLE001  (a corrupt file: say which)
            raise SbdiffError(f"cannot read the TensorBoard events in {path}: {err}") from None
        keep, dropped, content = [], 0, 0
        for record in records:
            event = event_pb2.Event.FromString(record)
            if event.HasField("file_version") or event.step <= step:
                keep.append(record)
                content += not event.HasField("file_version")
            else:
                dropped += 1
        if not dropped:
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            if not content:
                path.unlink()
                continue
            with open(tmp, "wb") as fh:
                writer = RecordWriter(fh)
                for record in keep:
                    writer.write(record)
                writer.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise SbdiffError(f"cannot rewrite {path}: {err.strerror or err}") from None


def image_range(model) -> tuple[float, float]:
    """Data-unit range that model coordinates ``[-1, 1]`` map to (image runs)."""
    device = model.data_mean.device
    lo = float(model.to_data(torch.full((1, model.dim), -1.0, device=device))[0, 0])
    hi = float(model.to_data(torch.full((1, model.dim), 1.0, device=device))[0, 0])
    return lo, hi


@contextlib.contextmanager
def _untouched(model: torch.nn.Module):
    """Run a block under ``no_grad`` with ``model`` in eval mode and the global random state of the
    CPU (and of the model's CUDA device) saved; every module's train/eval mode and the random state
    come back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training


def checkpoint_samples(model, config, data: torch.Tensor, step: int):
    """Samples of ``model`` (the EMA model) for TensorBoard at a checkpoint, without touching training.

    Parameters
    ----------
    model : PathVAE
        The model to sample (the trainer's EMA model); its modes and the global random state are
        left as they were (:func:`_untouched`).
    config : Config
        The run's config: ``seed`` (the generator: ``seed + SAMPLE_SEED_OFFSET``), ``sample.nfe``
        (at most :data:`SAMPLE_MAX_NFE` steps), ``cond`` (class labels), ``method`` and data name.
    data : Tensor, shape (N, d)
        Training points in model coordinates (the first are drawn beside the samples).
    step : int
        The checkpoint's step (the title).

    Returns
    -------
    tuple or None
        ``("figure", Figure)`` (vector data), ``("image", array (H, W, C) in [0, 1])`` (image data),
        or ``None`` (series runs).
    """
    cond = config.cond
    if cond.kind == "vector":  # series windows: no picture of one sample says much
        return None
    with _untouched(model):
        gen = torch.Generator(device=model.data_mean.device).manual_seed(config.seed + SAMPLE_SEED_OFFSET)
        nfe = min(config.sample.nfe, SAMPLE_MAX_NFE)
        images = model.image_shape is not None
        n = SAMPLE_IMAGES if images else SAMPLE_POINTS
        labels, per = None, n
        if cond.kind == "label":
            per = max(n // cond.size, 1) if not images else 8
            labels = np.repeat(np.arange(cond.size), per)
            n = len(labels)
        kw = {} if labels is None else {"cond": labels}
        samples = model.sample(n, nfe=nfe, generator=gen, progress=False, **kw).float().cpu()
        real = model.to_data(data[:n]).float().cpu()
        if images:
            from .plots import image_grid

            lo, hi = image_range(model)
            grid = image_grid(model.as_images(samples).numpy(), per if labels is not None else None, vmin=lo, vmax=hi)
            grid = 1.0 - grid if grid.shape[2] == 1 else grid  # ink dark, as in samples.png
            k = max(1, IMAGE_MIN_SIDE // max(grid.shape[:2]))  # small images: enlarged (nearest), to be seen
            return "image", grid.repeat(k, axis=0).repeat(k, axis=1).astype(np.float32)
    from .plots import samples_figure

    title = f"{config.method} on {Path(config.data.data).name}: the EMA model after {step} steps (nfe {nfe})"
    return "figure", samples_figure(samples.numpy(), real.numpy(), title)


class TensorBoardLog:
    """The TensorBoard events of one training session, in the run directory (writing rank only).

    Parameters
    ----------
    run_dir : Path
        The run directory: the events' log directory.
    resume_step : int or None
        A resume's checkpoint step: the events past it are dropped first (:func:`trim_events`) and
        the writer marks the restart (``purge_step = resume_step + 1``: the row at the checkpoint's
        step stays, as in ``metrics.jsonl``). ``None``: a fresh run.

    Raises
    ------
    SbdiffError : TensorBoard is not installed, or the old events cannot be rewritten.
    """

    #: Seconds between flushes of pending events (a checkpoint and the end of training flush too).
    FLUSH_SECS = 10

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        SummaryWriter = require_tensorboard()
        if resume_step is not None:
            trim_events(run_dir, resume_step)
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge, flush_secs=self.FLUSH_SECS)
        self._warned = False

    def add_row(self, row: dict) -> None:
        """Every numeric key of a ``metrics.jsonl`` row (:func:`scalars`) at the row's ``step``."""
        step = row["step"]
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=step)

    def add_samples(self, model, config, data: torch.Tensor, step: int) -> None:
        """The samples of :func:`checkpoint_samples` at ``step`` (tag ``samples``). A failure (e.g. a
        diverged model's non-finite samples) is reported once on stderr and does not stop training."""
        try:
            drawn = checkpoint_samples(model, config, data, step)
            if drawn is None:
                return
            kind, value = drawn
            if kind == "figure":
                self.writer.add_figure("samples", value, global_step=step, close=True)
            else:
                self.writer.add_image("samples", value, global_step=step, dataformats="HWC")
        except Exception as err:  # noqa: BLE001  (a plot must never stop a run)
            if not self._warned:
                print(f"sbdiff: warning: no TensorBoard sample plot at step {step} ({type(err).__name__}: {err}); "
                      "training goes on", file=sys.stderr, flush=True)
                self._warned = True

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
