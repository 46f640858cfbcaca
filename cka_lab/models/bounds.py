"""What an EDT of a given size costs in memory, checked before anything is allocated.

Every size a user gives (a training patch, a ``[model] image_size``, ``cka-lab layers --size``) is
turned into an estimate of the bytes it needs and compared with what the machine has, so that a
size that cannot fit is refused in one line instead of being allocated until the process (or the
machine) runs out of memory. The estimates:

* :func:`mask_bytes`: one shifted-window mask, float32 ``(nW, N, N)`` with ``nW * N = H * W`` tokens:
  ``4 * H * W * N`` bytes (``N`` the window area, 144 for EDT's 6 x 24 windows). An ``image_size`` of
  4800 needs 13.3 GB for one mask.
* :func:`inference_bytes`: one forward pass without autograd, from
  :func:`cka_lab.models.tiling.forward_bytes_per_pixel` (the restore path's model), plus the two masks
  of the input size.
* :func:`training_bytes`: one training step keeps every block's activations for the backward pass:
  the per-pixel forward cost times the number of transformer blocks, halved (the forward estimate
  carries a factor 2 for temporaries). On the 2-core AMD EPYC this gives 5.5 GB for EDT-T SR x2 at
  batch 16 of 48 px, where 9.5 GB was measured: an underestimate, so only sizes that surely cannot
  fit are refused.

:func:`available_memory` is the memory a new allocation can get: ``MemAvailable`` of
``/proc/meminfo`` on CPU, the free memory of a CUDA device.
"""

from __future__ import annotations

import os

import torch

from cka_lab.errors import CkaLabError

__all__ = [
    "available_memory",
    "mask_bytes",
    "stored_mask_bytes",
    "inference_bytes",
    "training_bytes",
    "check_fits",
]


def _meminfo(path: str, key: str) -> int | None:
    """The ``key:`` value of a ``/proc`` file in bytes (its numbers are kB)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (None: no limit)."""
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        used = open("/sys/fs/cgroup/memory.current", encoding="ascii").read().strip()
    except OSError:
        return None
    return max(0, int(limit) - int(used)) if limit.isdigit() and used.isdigit() else None


def _rlimit_room() -> int | None:
    """Bytes of address space left under ``RLIMIT_AS`` (None: unlimited)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - (_meminfo("/proc/self/status", "VmSize") or 0))


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes a new allocation can get: free CUDA memory; on CPU the least of ``MemAvailable``, the room
    under a cgroup memory limit and under ``RLIMIT_AS`` (8 GiB if none is known)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    avail = _meminfo("/proc/meminfo", "MemAvailable")
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30
    return min([avail] + [r for r in (_cgroup_room(), _rlimit_room()) if r is not None])


def mask_bytes(cfg, h: int, w: int | None = None) -> int:
    """Bytes of one float32 shifted-window mask for an ``h x w`` body-resolution token map."""
    w = h if w is None else w
    return 4 * int(h) * int(w) * cfg.window_size[0] * cfg.window_size[1]


def stored_mask_bytes(cfg) -> int:
    """Bytes of the masks ``EDT(cfg)`` keeps for ``cfg.image_size``: two per shifted block, plus the
    two shared ones they are copied from."""
    shifted = sum(d // 2 for d in cfg.depths)
    return (2 * shifted + 2) * mask_bytes(cfg, cfg.image_size)


def _body_side(cfg, task: str, side: int) -> int:
    return max(1, side // cfg.token_stride(task))


def inference_bytes(cfg, task: str, h: int, w: int) -> int:
    """Estimated peak bytes of one inference forward of an ``h x w`` input on ``task``'s head."""
    from cka_lab.models.tiling import forward_bytes_per_pixel

    body = mask_bytes(cfg, _body_side(cfg, task, h), _body_side(cfg, task, w))
    return int(forward_bytes_per_pixel(cfg, task) * h * w) + 2 * body + 4 * 3 * h * w


def training_bytes(cfg, batch_size: int, input_sides: dict[str, int]) -> int:
    """Estimated bytes of one training step: every head's batch of ``input_sides[task]`` px inputs."""
    from cka_lab.models.tiling import forward_bytes_per_pixel

    blocks = sum(cfg.depths)
    total = stored_mask_bytes(cfg)
    for task, side in input_sides.items():
        total += int(batch_size * side * side * forward_bytes_per_pixel(cfg, task) * blocks / 2)
        total += 2 * mask_bytes(cfg, _body_side(cfg, task, side))
    return total


def check_fits(need: int, budget: int, what: str, hint: str) -> None:
    """One line if ``need`` bytes exceed ``budget``: ``what`` would need about X GiB, more than Y: ``hint``."""
    if need > budget:
        from cka_lab.io.inputs import format_bytes

        raise CkaLabError(f"{what} would need about {format_bytes(need)} of memory, more than the {format_bytes(budget)} "
                          f"this machine has for it: {hint}")
