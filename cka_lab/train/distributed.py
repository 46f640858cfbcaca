"""Data-parallel training across processes: set up from torchrun's environment, or a single process.

``torchrun --nproc_per_node N -m cka_lab.train CONFIG`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and ``MASTER_ADDR/PORT``; :func:`init_distributed` reads them and
starts a process group with ``gloo`` on CPU or ``nccl`` on CUDA (one GPU per process, by local
rank). Without those variables it returns a single-process :class:`DistEnv` whose collectives are
no-ops, so the training loop is the same code either way. Only rank 0 writes files
(:attr:`DistEnv.is_main`); every rank draws different patches (its rank is part of the data seed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cka_lab.errors import CkaLabError

__all__ = ["DistEnv", "init_distributed", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is available, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CkaLabError(f"run.device is {name!r} but no CUDA GPU is available: use device = \"cpu\" or \"auto\"")
        if name == "cuda":
            name = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    return torch.device(name)


@dataclass
class DistEnv:
    """This process's place in the job: rank, world size, its device and the backend (None: single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, indexed by rank (``[obj]`` in a single process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` in a process group, else the model itself.

        Every head is used every step and EDT has no batch norm, so there is no unused-parameter
        search and no buffer sync per forward (the constant buffers are synced once, at wrapping).
        """
        if not self.distributed:
            return model
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # depthwise-conv grads of shape (C, 1, k, k) come with equivalent but differently written
        # strides; DDP warns about it on every backward although nothing is wrong
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto", threads: int = 0) -> DistEnv:
    """Read torchrun's environment and start the process group (gloo on CPU, nccl on CUDA).

    ``threads`` > 0 sets ``torch.set_num_threads``; with 0 and several processes on a CPU, the
    cores are split evenly between the processes of a node.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = resolve_device(device, local_rank)
    if threads > 0:
        torch.set_num_threads(threads)
    elif world > 1 and dev.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    env = DistEnv(rank, world, local_rank, local_world, dev, None)
    if world == 1:
        return env
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CkaLabError(f"cannot start the {backend} process group (rank {rank} of {world}): {first}") from None
    env.backend = backend
    return env
