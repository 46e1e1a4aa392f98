"""Crash-safe checkpoints of a training run (DESIGN §7): atomic writes, full training state, exact resume.

A checkpoint is one safetensors file, ``RUN/checkpoint.safetensors``. Its tensors are

* ``model.*`` — the model's ``state_dict``; ``ema.*`` — the whole ``AveragedModel`` state
  (``ema.n_averaged`` and ``ema.module.*``);
* ``state.*`` — every tensor inside the optimiser, LR scheduler and method-schedule state and the
  RNG states (torch CPU, the training ``torch.Generator``, CUDA when used);

and its metadata entry ``sbdiff`` is one JSON document holding everything else: the format
version, the step count, elapsed training time, the log accumulators, the skipped-step counters,
the NumPy and Python ``random`` states, the data fingerprint, and the nested structure of the
optimiser / scheduler / method states with each tensor replaced by a reference to its ``state.*``
key (:func:`pack`, :func:`unpack`). Floats go through JSON ``repr`` and round-trip exactly, so a
resumed run continues bit for bit. safetensors (no pickle) is used so that loading a checkpoint
cannot execute code.

Writes are atomic (:func:`atomic_save`): the file is written under a temporary name in the same
directory, flushed and ``fsync``-ed, then renamed over the real name (``os.replace``, atomic on
POSIX and Windows) and the directory entry is synced. Until the rename the previous checkpoint is
untouched; a crash, a kill or a full disk at any moment leaves either the old or the new file under
the real name, never a partial one.

:func:`writes_files` is the one place that decides whether this process writes run files (with
``torch.distributed``, only rank 0 will).
"""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ._utils import SbdiffError

__all__ = ["CHECKPOINT_FILE", "FORMAT_VERSION", "CheckpointWriteError", "atomic_save", "pack", "unpack",
           "capture_rng", "restore_rng", "write_checkpoint", "read_checkpoint", "writes_files"]

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = 1
_META_KEY = "sbdiff"


class CheckpointWriteError(SbdiffError):
    """A checkpoint or weights file could not be written; the previous file under that name is intact."""


def writes_files() -> bool:
    """Whether this process writes run files (checkpoints, weights, metrics, plots).

    Always true in a single process. Under ``torch.distributed`` only rank 0 writes; every write
    in :mod:`sbdiff.train` is guarded by this one function.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


# -- atomic file writes ---------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    """Write a safetensors file to ``path`` and ``fsync`` it (the step :func:`atomic_save` guards)."""
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on ``.NAME.tmp`` beside ``path`` (it must flush to disk), then rename it
    over ``path``. On any ``OSError`` the temporary file is removed, the file previously at ``path``
    is untouched, and :class:`CheckpointWriteError` names the problem."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if not isinstance(err, OSError):
            raise  # e.g. KeyboardInterrupt: the old file is intact, the partial one removed
        reason = err.strerror or str(err)
        if err.errno == errno.ENOSPC:
            reason = "no space left on device"
        previous = "the previous file there is intact" if path.exists() else "nothing was written there"
        raise CheckpointWriteError(f"cannot write {path}: {reason}; {previous}") from None
    _fsync_dir(path.parent)


def atomic_save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (and string ``metadata``) to the safetensors file ``path`` atomically.

    The data go to ``.NAME.tmp`` beside ``path``, are flushed to disk, then renamed over ``path``.
    On any ``OSError`` (full disk, read-only directory, ...) the temporary file is removed, the
    file previously at ``path`` is untouched, and :class:`CheckpointWriteError` names the problem.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_replace(Path(path), lambda tmp: _write_file(tensors, tmp, metadata))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` atomically, as :func:`atomic_save` does (run files such as
    ``config.toml`` and ``metrics.jsonl`` rewritten on resume)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    _atomic_replace(Path(path), write)


# -- nested state <-> (JSON, tensors) ---------------------------------------------------------------
def pack(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-serialisable copy of ``obj`` with each tensor moved into ``tensors`` under ``prefix.N``.

    Handles dicts (also with non-string keys, e.g. optimiser state keyed by parameter index),
    lists, tuples, tensors, numbers, strings, booleans and ``None``; :func:`unpack` inverts it.
    """
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}.{len(tensors)}"
        tensors[name] = obj.detach().contiguous().cpu()
        return {"__tensor__": name, "device": str(obj.device)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: pack(v, prefix, tensors) for k, v in obj.items()}
        return {"__items__": [[pack(k, prefix, tensors), pack(v, prefix, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, prefix, tensors) for v in obj]}
    if isinstance(obj, list):
        return [pack(v, prefix, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise SbdiffError(f"cannot store a {type(obj).__name__} in a checkpoint")


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Invert :func:`pack` (tensors come back on the CPU)."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {_hashable(unpack(k, tensors)): unpack(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unpack(v, tensors) for v in obj["__tuple__"])
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# -- RNG states -----------------------------------------------------------------------------------
def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every global random state: torch CPU, CUDA (if initialised), NumPy's global state and
    Python's ``random``; plus ``generator``'s if given. (The training loop draws its own random
    numbers from per-step generators, :func:`sbdiff.distributed.step_generator`, which need no
    saving; the global states cover anything else a method or network may draw.)"""
    np_state = np.random.get_state()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore the states saved by :func:`capture_rng`."""
    torch.set_rng_state(state["torch_cpu"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoint files -----------------------------------------------------------------------------
def write_checkpoint(path: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module, meta: dict[str, Any],
                     state: dict[str, Any]) -> None:
    """Write one checkpoint atomically.

    Parameters
    ----------
    path : the checkpoint file.
    model, ema : the model and its ``AveragedModel``; stored as ``model.*`` and ``ema.*``.
    meta : JSON-serialisable scalars (step, elapsed time, accumulators, fingerprints, ...).
    state : nested objects that may contain tensors (optimiser, scheduler, method, RNG states);
        packed with :func:`pack` under ``state.*``.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    packed = pack(state, "state", extra := {})
    tensors.update(extra)
    doc = {"format": FORMAT_VERSION, **meta, "state": packed}
    atomic_save(tensors, path, metadata={_META_KEY: json.dumps(doc)})


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any],
                                               dict[str, Any]]:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Returns ``(model_state, ema_state, meta, state)``; raises :class:`SbdiffError` if the file is
    missing, unreadable or not a sbdiff checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise SbdiffError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SbdiffError(f"{path} is not a readable checkpoint ({err})") from None
    if _META_KEY not in metadata:
        raise SbdiffError(f"{path} is not a sbdiff checkpoint (no '{_META_KEY}' metadata)")
    doc = json.loads(metadata[_META_KEY])
    if doc.get("format") != FORMAT_VERSION:
        raise SbdiffError(f"{path} has checkpoint format {doc.get('format')}, this sbdiff reads {FORMAT_VERSION}")
    state = unpack(doc.pop("state"), tensors)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    return model_state, ema_state, doc, state
