"""Data-parallel training across processes: the job's environment lives in :mod:`cka_lab.runtime`.

``torchrun --nproc_per_node N -m cka_lab.train CONFIG`` starts N ranks; :func:`init_distributed` reads
their place and starts the process group (see :mod:`cka_lab.runtime`). Every rank draws different
patches (its rank is part of the data seed); only rank 0 writes files. Kept as an import path.
"""

from __future__ import annotations

import torch

from cka_lab.runtime import DistEnv, init_distributed
from cka_lab.runtime import resolve_device as _resolve_device

__all__ = ["DistEnv", "init_distributed", "resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``run.device`` of a training rank: ``auto``/``cuda`` -> ``cuda:<local_rank>`` with a GPU (see
    :func:`cka_lab.runtime.resolve_device`)."""
    return _resolve_device(name, local_rank, setting="run.device")
