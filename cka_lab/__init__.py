"""cka_lab: what happens inside image-restoration transformers.

EDT (Li et al., arXiv 2112.10175) re-implemented exactly, trained with the toolkit's own loop, and
analysed with streaming minibatch CKA and attention-distance statistics.

Data flows one way: data -> models -> features -> metrics -> plots -> reports / CLI.
"""

import os

# OpenMP threads that spin while waiting make torch 10-30x slower on a busy machine (measured on
# 2 shared cores); a passive wait costs little when the machine is idle. The user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _keep_freed_memory() -> None:
    """glibc serves every allocation above 32 MB with a fresh mmap and unmaps it when freed, so each
    EDT attention map (up to 1 GB per block on CPU) is page-faulted in from zero pages again: measured
    sys time 317 s of 553 s for 64 crops, 146 s per pass. Serving them from the heap and keeping freed
    memory for reuse made the same pass 58 s (2.5x). Linux/glibc only; CKA_LAB_KEEP_MALLOC=1 opts out."""
    import ctypes
    import sys

    import torch  # noqa: F401  (loading torch resets these options: set them after it)

    if not sys.platform.startswith("linux") or os.environ.get("CKA_LAB_KEEP_MALLOC") == "1":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap-backed allocations at all
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep up to 2 GiB of freed heap for reuse
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        pass


_keep_freed_memory()

from cka_lab.errors import CkaLabError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CkaLabError", "__version__"]
