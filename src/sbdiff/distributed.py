"""Multi-process data-parallel training with ``torch.distributed`` (DDP), launched by ``torchrun``.

``torchrun --standalone --nproc_per_node W -m sbdiff.cli train ...`` starts ``W`` processes and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environments; :func:`detect` reads them. Each
rank computes the losses of its shard of the global batch; DDP averages the gradients, so every
rank takes the same optimiser step. Only rank 0 writes files (config, checkpoints, metrics, plots).

Random numbers are drawn so that a run does not depend on how the global batch is split: the batch
indices come from a stream shared by all ranks, and the losses of shard ``s`` of ``S`` at step ``k``
from a stream seeded by ``(seed, k, s)`` (:func:`step_generator`). A single process with
``train.shards = S`` computes the same ``S`` shards one after another and accumulates their
gradients, so it takes the same steps as ``S`` ranks with one shard each (up to float rounding in
the gradient sum).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ._utils import SbdiffError

__all__ = ["DistEnv", "detect", "init", "shutdown", "step_generator", "all_mean", "shard_slices"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """The one process that writes files and prints progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SbdiffError(f"environment variable {name}={value!r} is not an integer") from None


def detect() -> DistEnv:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by ``torchrun``); one process when unset."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise SbdiffError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistEnv(rank, world, local)


def init(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU) and return this rank's device.

    A one-process job does nothing and returns ``device`` unchanged. On CUDA each rank takes the
    GPU ``LOCAL_RANK``.
    """
    if not env.active:
        return device
    if device.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise SbdiffError(f"LOCAL_RANK {env.local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def step_generator(seed: int, step: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by ``(seed, step, stream)``: the random numbers of one shard at one step.

    Counter-based seeding makes a step's randomness independent of the ranks' history, so a run
    resumes exactly from its step count and gives the same numbers for any world size.
    """
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def all_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``values`` (any shape) over the ranks; ``values`` itself in a one-process job."""
    if not env.active:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / env.world_size


def shard_slices(batch_size: int, shards: int) -> list[slice]:
    """Split a global batch of ``batch_size`` rows into ``shards`` equal slices."""
    if shards < 1 or batch_size % shards:
        raise SbdiffError(f"train.batch_size={batch_size} must be a multiple of the number of shards ({shards})")
    size = batch_size // shards
    return [slice(i * size, (i + 1) * size) for i in range(shards)]
