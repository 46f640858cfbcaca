"""cka_lab's compiled CPU kernels: how they are built, loaded and run on torch's threads.

The two halves of an EDT block's training step on the CPU have kernels in ``kernels/*.cpp`` (plain C++
with vector extensions, shared helpers in ``kernels/vector_math.h``; no torch headers): window attention
with small heads and LePE, read and written token-major (:mod:`cka_lab.models.cpu_attention`), and the
MLP's middle, GELU - depthwise convolution - GELU (:mod:`cka_lab.models.cpu_mlp`). They are compiled
into one library on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``;
``-O3 -march=native``, so the library is specific to the machine, about 5 s) in a cache folder
(``$CKA_LAB_CACHE/kernels``, else ``$XDG_CACHE_HOME/cka_lab/kernels`` or ``~/.cache/cka_lab/kernels``)
under a name that hashes the sources and headers, the compiler's version, the flags and the CPU's feature flags, and
loaded with :mod:`ctypes`. The build writes beside its final name and renames, so concurrent processes
(DDP ranks) never load half a file.

Where there is no compiler or the build fails, :func:`kernel_available` is false, one warning says why,
and the model keeps torch's own operators. ``CKA_LAB_CPU_KERNEL=0`` turns the kernels off.
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

from cka_lab.runtime import env_switch

__all__ = [
    "KERNEL_SOURCES",
    "build_kernel",
    "kernel_available",
    "kernel_enabled",
    "kernel_library",
    "pointer",
    "reset_kernel",
    "run_split",
    "split_count",
]

KERNEL_SOURCES = tuple(sorted((Path(__file__).with_name("kernels")).glob("*.cpp")))
KERNEL_HEADERS = tuple(sorted((Path(__file__).with_name("kernels")).glob("*.h")))
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC"]
_X86_FLAGS = ["-mprefer-vector-width=512"]  # gcc/clang otherwise keep 256-bit vectors on some AVX-512 CPUs


def kernel_enabled() -> bool:
    """False when ``CKA_LAB_CPU_KERNEL`` is ``0``/``false``/``no``/``off`` (then torch's operators are used)."""
    return env_switch("CKA_LAB_CPU_KERNEL")


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
    """Compile the kernels (unless cached) and return the library's path; ``RuntimeError`` says why not."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    flags = _FLAGS + (_X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else [])
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{cxx} --version failed: {e}") from e
    parts = [p.read_bytes() for p in KERNEL_SOURCES + KERNEL_HEADERS] + [version.encode(), " ".join(flags).encode(), _cpu_flags().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    out_dir = out_dir or _cache_dir()
    lib = out_dir / f"cka_lab_kernels-{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    try:
        cmd = [cxx, *flags, *map(str, KERNEL_SOURCES), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            last = (res.stderr or res.stdout or f"exit status {res.returncode}").strip().splitlines()[-1:]
            raise RuntimeError(f"{cxx} failed: {' '.join(last)}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@lru_cache(maxsize=1)
def kernel_library() -> ctypes.CDLL | None:
    """The loaded library (built on the first call), or None where disabled or not buildable (one warning)."""
    if not kernel_enabled():
        return None
    try:
        lib = ctypes.CDLL(str(build_kernel()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"cka_lab: the compiled CPU kernels are not available ({e}); using torch's operators", stacklevel=3)
        return None
    lib.cka_wa_forward.argtypes = [_P] * 11 + [_I64, _I64]  # shape, 10 arrays, the tasks' range
    lib.cka_wa_backward.argtypes = [_P] * 12 + [_I64, _I64]
    lib.cka_wa_work.argtypes = [_P]
    lib.cka_gcg_forward.argtypes = [_P] * 6 + [_I64, _I64, _I32, _I32, _I32, _I32]
    lib.cka_gcg_backward.argtypes = [_P] * 10 + [_I64, _I64, _I32, _I32, _I32, _I32]
    lib.cka_gcg_work.argtypes = [_I32, _I32, _I32]
    lib.cka_gcg_forward.restype = lib.cka_gcg_backward.restype = _I32
    lib.cka_gcg_work.restype = _I64
    for fn in ("cka_wa_forward", "cka_wa_backward", "cka_wa_max_tokens", "cka_wa_max_head_dim"):
        getattr(lib, fn).restype = _I32
    lib.cka_wa_work.restype = _I64
    return lib


def reset_kernel() -> None:
    """Forget the loaded library: the next use reads ``CKA_LAB_CPU_KERNEL`` (and builds) again."""
    kernel_library.cache_clear()


def kernel_available() -> bool:
    """True when the kernels are enabled and built (building them on the first call)."""
    return kernel_library() is not None


def pointer(t: Tensor | None) -> ctypes.c_void_p | None:
    """The data pointer of a contiguous tensor for a kernel call (None for None)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0  # a forked child (a data-loader worker) must not use its parent's pool: its threads are gone
_POOL_LOCK = threading.Lock()


def split_count(items: int) -> int:
    """Into how many pieces :func:`run_split` cuts ``items`` by default: torch's thread count, at most ``items``."""
    return max(1, min(torch.get_num_threads(), items))


def run_split(fn, items: int, before, after: tuple, pieces: int | None = None) -> int:
    """Call ``fn(*before, i0, i1, *after)`` over ``[0, items)`` cut into ``pieces`` (default: torch's thread
    count) contiguous ranges run in parallel (ctypes releases the GIL during the call); returns the number
    of pieces. ``before`` is a tuple, or a function of the piece's index giving one (for per-piece
    outputs). ``fn`` returns 0 on success; anything else raises ``RuntimeError``."""
    global _POOL, _POOL_SIZE, _POOL_PID
    n = max(1, min(pieces, items)) if pieces else split_count(items)
    cuts = [items * k // n for k in range(n + 1)]
    bounds = list(zip(cuts[:-1], cuts[1:]))
    head = before if callable(before) else (lambda _piece: before)
    if n == 1:
        codes = [fn(*head(0), 0, items, *after)]
    else:
        with _POOL_LOCK:
            if _POOL is None or _POOL_SIZE < n or _POOL_PID != os.getpid():
                _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cka_lab_kernel")
                _POOL_SIZE, _POOL_PID = n, os.getpid()
            pool = _POOL
        futures = [pool.submit(fn, *head(p), a, b, *after) for p, (a, b) in enumerate(bounds)]
        codes = [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"cka_lab CPU kernel {getattr(fn, '__name__', fn)} returned {codes}")
    return n
