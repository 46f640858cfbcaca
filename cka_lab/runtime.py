"""The ground floor: which device to run on and this process's place in a ``torchrun`` job, one rule each.

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and
``MASTER_ADDR/PORT``: :func:`rank_world` reads them (a single process without them), and
:func:`init_distributed` starts a process group with ``gloo`` on CPU or ``nccl`` on CUDA (one GPU per
process, by local rank). Without those variables it returns a single-process :class:`DistEnv` whose
collectives are no-ops, so the code is the same either way. Only rank 0 writes files
(:attr:`DistEnv.is_main`).

Nothing here imports another part of cka_lab but its errors: every layer may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cka_lab.errors import CkaLabError

__all__ = ["TORCHRUN_VARIABLES", "DistEnv", "RankWorld", "env_switch", "init_distributed", "module_main", "rank_world",
           "resolve_device", "under_launcher"]

#: What a launcher (torchrun) sets in the environment of each process; a child that must be a job of its
#: own is started without them.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def env_switch(name: str) -> bool:
    """A feature switch that is on unless the environment variable ``name`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def resolve_device(name: str, local_rank: int | None = None, *, setting: str = "--device") -> torch.device:
    """The device a setting names.

    ``auto`` is ``cuda`` when a GPU is available, else ``cpu``. With ``local_rank`` (a process of a
    launched job) an index-less ``cuda`` becomes ``cuda:<local_rank mod the GPU count>``; without it,
    ``cuda`` stays torch's current GPU. ``setting`` (``--device``, ``run.device``, ...) names the
    source in the one-line errors: an unknown name, or CUDA asked for where there is none.
    """
    requested = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CkaLabError(f"unknown device {requested!r} ({setting}): use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CkaLabError(f"{setting} is {requested!r} but no CUDA GPU is available: use cpu or auto")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return device


@dataclass(frozen=True)
class RankWorld:
    """This process's place in a launched job, as the launcher's environment says (0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


def rank_world() -> RankWorld:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (default: ``WORLD_SIZE``) of the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return RankWorld(rank=int(os.environ.get("RANK", "0")), world=world,
                     local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                     local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


def under_launcher() -> bool:
    """True inside torchrun (or any launcher that sets ``WORLD_SIZE``), even a job of one process."""
    return "WORLD_SIZE" in os.environ


@dataclass
class DistEnv:
    """This process's place in the job: rank, world size, its device and the backend (None: single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
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


def init_distributed(device: str = "auto", threads: int = 0, *, setting: str = "run.device") -> DistEnv:
    """Read torchrun's environment and start the process group (gloo on CPU, nccl on CUDA).

    ``threads`` > 0 sets ``torch.set_num_threads``; with 0 and several processes on a CPU, the
    cores are split evenly between the processes of a node. ``setting`` names ``device`` in errors.
    """
    place = rank_world()
    dev = resolve_device(device, place.local_rank, setting=setting)
    if threads > 0:
        torch.set_num_threads(threads)
    elif place.world > 1 and dev.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, place.local_world)))
    env = DistEnv(place.rank, place.world, place.local_rank, place.local_world, dev, None)
    if place.world == 1:
        return env
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend, rank=place.rank, world_size=place.world)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CkaLabError(f"cannot start the {backend} process group (rank {place.rank} of {place.world}): {first}") from None
    env.backend = backend
    return env


def module_main(argv: list[str] | None, *, prog: str, description: str, add_arguments, run) -> int:
    """The ``python -m`` / ``torchrun -m`` entry point of a job (``cka_lab.train``, ``cka_lab.study``): parse
    ``argv`` with ``add_arguments(parser)``, then ``run(args)``; a CkaLabError is one line and exit 2."""
    import argparse

    from cka_lab.errors import run_reporting_errors

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run_reporting_errors(run, parser.parse_args(argv))
