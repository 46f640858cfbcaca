"""How ``cka-lab train`` uses a CPU: one run as DDP ranks of one thread each, started by itself.

On a CPU, EDT-T trains faster as several single-threaded processes that split each step's batch and
average their gradients (DDP over gloo) than as one process with as many threads: most of a step is
small kernels (window attention with 5-channel heads, depthwise convolutions, layer norms) that two
threads share poorly (``benchmarks/train_speed.py``: the ``ddp2x1`` and ``1x2`` layouts). So
``cka-lab train`` and ``python -m cka_lab.train``, when not already under torchrun and on a CPU, start
``[run] processes`` ranks itself (0, the default: one per core when ``[run] threads`` is 0 and
``schedule.batch_size`` divides evenly, else 1: a config that pins its threads manages its cores
itself, e.g. two runs side by side), each with one thread (or ``[run] threads``) and ``batch_size / processes`` patches
per head per step, so that the run's batch is the config's. Under torchrun, ``batch_size`` stays per
process (the DDP convention). The library call :func:`cka_lab.train.train` never starts processes.

A run of several ranks draws other batches than a one-process run of the same seed (each rank draws
its own; see :class:`cka_lab.train.batches.StepBatches`), so its numbers are not bit-identical to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from cka_lab.train.config import TrainConfig
from cka_lab.runtime import resolve_device, under_launcher

__all__ = ["cpu_processes", "under_launcher", "spawn_ranks"]


def cpu_processes(cfg: TrainConfig, cores: int | None = None) -> int:
    """The number of ranks ``cka-lab train`` starts for ``cfg`` (1: train in this process)."""
    if under_launcher() or resolve_device(cfg.run.device, setting="run.device").type != "cpu":
        return 1
    if cfg.run.processes > 0:
        return cfg.run.processes
    cores = cores if cores is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, cores)
    return n if cfg.run.threads == 0 and cfg.schedule.batch_size % n == 0 else 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(argv: Sequence[str], n: int, threads: int = 0) -> int:
    """Run ``python -m cka_lab.train ARGV --split-batch`` as ``n`` local DDP ranks; the worst exit status.

    Ranks other than 0 print nothing but their errors. Ctrl-C (or SIGTERM) stops every rank; a rank
    that fails makes the others stop too (they are terminated once its exit is seen).
    """
    port = _free_port()
    procs: list[subprocess.Popen] = []
    base = dict(os.environ, WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                OMP_NUM_THREADS=str(threads or 1))
    cmd = [sys.executable, "-m", "cka_lab.train", *argv, "--split-batch"]
    try:
        for k in range(n):
            env = dict(base, RANK=str(k), LOCAL_RANK=str(k))
            out = None if k == 0 else subprocess.DEVNULL
            procs.append(subprocess.Popen(cmd, env=env, stdout=out))
        status = 0
        pending = list(procs)
        while pending:
            pid, code = os.wait()
            for p in pending:
                if p.pid == pid:
                    p.returncode = os.waitstatus_to_exitcode(code)
                    pending.remove(p)
                    if p.returncode != 0:
                        status = status or (p.returncode if p.returncode > 0 else 1)
                        for q in pending:
                            q.terminate()
                    break
        return status
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        return 130
