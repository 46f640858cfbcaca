"""Window attention on the CPU by a small compiled kernel: float32, heads of up to 16 channels.

torch's CPU flash-attention kernel runs EDT's heads (5 channels in EDT-T, 144-token windows) as tiny GEMMs
and spends most of its time outside arithmetic; in a training step of EDT-T it was about 45 % of the
time. The kernel in ``kernels/window_attention.cpp`` computes the same ``softmax(q k^T * scale + mask) v``
and its gradient directly on the window-major ``qkv`` projection (no q/k/v copies, no stored ``(N, N)``
maps: the backward recomputes them from the saved log-sum-exp, as flash attention does), vectorised over
16 queries (forward) or 16 keys (backward). ``benchmarks/train_speed.py --paths`` compares it with SDPA.

It is built on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``; ``-O3
-march=native``, so the library is specific to the machine) into a cache folder (``$CKA_LAB_CACHE``, else
``$XDG_CACHE_HOME/cka_lab`` or ``~/.cache/cka_lab``) under a name that hashes the source, the compiler's
version, the flags and the CPU's feature flags, and loaded with :mod:`ctypes` (no torch headers: about 3 s
to build). Where there is no compiler or the build fails, :func:`kernel_available` is false, one warning
says why, and callers keep SDPA. ``CKA_LAB_CPU_KERNEL=0`` turns it off.

Results equal SDPA's to float32 rounding (its exp has a relative error of about 1e-7; masked weights are
exact zeros) and do not depend on the number of threads: the work is split by (window, head) pairs, each
computed whole by one thread.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "KERNEL_SOURCE",
    "build_kernel",
    "kernel_available",
    "kernel_enabled",
    "kernel_supports",
    "reset_kernel",
    "window_attention",
]

KERNEL_SOURCE = Path(__file__).with_name("kernels") / "window_attention.cpp"
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC"]
_X86_FLAGS = ["-mprefer-vector-width=512"]  # gcc/clang otherwise cap vectors at 256 bits on some AVX-512 CPUs


def kernel_enabled() -> bool:
    """False when ``CKA_LAB_CPU_KERNEL`` is ``0``/``false``/``no``/``off`` (then SDPA is used)."""
    return os.environ.get("CKA_LAB_CPU_KERNEL", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    if os.environ.get("CKA_LAB_CACHE"):
        return Path(os.environ["CKA_LAB_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cka_lab" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_kernel(out_dir: Path | None = None) -> Path:
    """Compile the kernel (if not cached) and return the library's path; raises ``RuntimeError`` with the reason."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    flags = _FLAGS + (_X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else [])
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{cxx} --version failed: {e}") from e
    source = KERNEL_SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(), _cpu_flags().encode()]))
    out_dir = out_dir or _cache_dir()
    lib = out_dir / f"window_attention-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)  # built beside, renamed into place: never half a file
    os.close(fd)
    try:
        res = subprocess.run([cxx, *flags, str(KERNEL_SOURCE), "-o", tmp], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if not kernel_enabled():
        return None
    try:
        lib = ctypes.CDLL(str(build_kernel()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"cka_lab: the CPU window-attention kernel is not available ({e}); using torch's SDPA", stacklevel=3)
        return None
    lib.cka_wa_forward.argtypes = [_P, _P, _P, _P, _I64, _I64, _I32, _I32, _I32, _I32, _F32]
    lib.cka_wa_backward.argtypes = [_P, _P, _P, _P, _P, _P, _I64, _I64, _I32, _I32, _I32, _I32, _F32]
    lib.cka_wa_forward.restype = lib.cka_wa_backward.restype = _I32
    lib.cka_wa_max_tokens.restype = lib.cka_wa_max_head_dim.restype = _I32
    return lib


def reset_kernel() -> None:
    """Forget the loaded kernel: the next use reads ``CKA_LAB_CPU_KERNEL`` (and builds) again."""
    _library.cache_clear()


def kernel_available() -> bool:
    """True when the kernel is enabled and built (building it on the first call)."""
    return _library() is not None


def kernel_supports(N: int, d: int) -> bool:
    """True when the kernel is available for windows of ``N`` tokens and heads of ``d`` channels."""
    lib = _library()
    return lib is not None and 1 <= N <= lib.cka_wa_max_tokens() and 1 <= d <= lib.cka_wa_max_head_dim()


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0  # a forked child (e.g. a data-loader worker) must not use its parent's pool: its threads are gone
_POOL_LOCK = threading.Lock()


def _run_split(fn, tasks: int, args_before: tuple, args_after: tuple) -> None:
    """Call ``fn(*args_before, t0, t1, *args_after)`` over ``[0, tasks)`` split across torch's thread count.

    ctypes releases the GIL during the call, so the pieces run in parallel.
    """
    global _POOL, _POOL_SIZE, _POOL_PID
    n = max(1, min(torch.get_num_threads(), tasks))
    if n == 1:
        bounds = [(0, tasks)]
    else:
        cuts = [tasks * k // n for k in range(n + 1)]
        bounds = list(zip(cuts[:-1], cuts[1:]))
    if len(bounds) == 1:
        codes = [fn(*args_before, 0, tasks, *args_after)]
    else:
        with _POOL_LOCK:
            if _POOL is None or _POOL_SIZE < len(bounds) or _POOL_PID != os.getpid():
                _POOL = ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="cka_lab_attn")
                _POOL_SIZE, _POOL_PID = len(bounds), os.getpid()
            pool = _POOL
        futures = [pool.submit(fn, *args_before, a, b, *args_after) for a, b in bounds]
        codes = [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"cka_lab CPU attention kernel returned {codes} (unsupported shape)")


def _ptr(t: Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        W, N, _, h, d = qkv.shape
        lib = _library()
        out = qkv.new_empty(W, N, h, d)
        lse = qkv.new_empty(W, h, N)
        nwm = mask.shape[0] if mask is not None else 1
        _run_split(lib.cka_wa_forward, W * h, (_ptr(qkv), _ptr(mask), _ptr(out), _ptr(lse)), (N, h, d, nwm, scale))
        ctx.save_for_backward(qkv, out, lse, mask)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        qkv, out, lse, mask = ctx.saved_tensors
        W, N, _, h, d = qkv.shape
        grad = grad.contiguous()
        dqkv = torch.empty_like(qkv)
        nwm = mask.shape[0] if mask is not None else 1
        _run_split(
            _library().cka_wa_backward,
            W * h,
            (_ptr(qkv), _ptr(mask), _ptr(out), _ptr(lse), _ptr(grad), _ptr(dqkv)),
            (N, h, d, nwm, ctx.scale),
        )
        return dqkv, None, None


def window_attention(qkv: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` per window and head by the compiled kernel, differentiable in ``qkv``.

    ``qkv``: ``(W, N, 3, h, d)`` float32 on the CPU (window-major tokens; made contiguous if it is not);
    ``mask``: ``(nWm, N, N)`` additive float32 (0 or ``-inf``; every row keeps at least one key), window ``w``
    using ``mask[w % nWm]``, or None. Returns ``(W, N, h, d)``. Check :func:`kernel_supports` first.
    """
    if qkv.device.type != "cpu" or qkv.dtype != torch.float32 or qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"window_attention wants (W, N, 3, h, d) float32 on the CPU, got {tuple(qkv.shape)} {qkv.dtype} on {qkv.device}")
    W, N, _, h, d = qkv.shape
    if not kernel_supports(N, d):
        raise RuntimeError(f"the CPU attention kernel is not available for N={N}, d={d}")
    if mask is not None:
        if mask.dim() != 3 or mask.shape[1:] != (N, N) or W % mask.shape[0]:
            raise ValueError(f"mask must be (nWm, {N}, {N}) with nWm dividing {W}, got {tuple(mask.shape)}")
        if mask.requires_grad:
            raise ValueError("the CPU attention kernel takes no gradient for the mask")
        mask = mask.detach().to(torch.float32).contiguous()
    return _WindowAttention.apply(qkv.contiguous(), mask, float(scale))
