"""``one_thread()``: run a block as one rank of the multi-process tests runs (one CPU thread).

A one-process reference for a test that compares it with gloo ranks of one thread each must run with one
thread too: float32 convolutions and GEMMs may sum in another order with another thread count (oneDNN
splits reductions by thread on some CPUs), and CKA of a layer with a large common component magnifies that
rounding (CI, 2026-12-05: 2.7e-6 on a layer whose mean Gram diagonal is ~280x the spread of its U-centred
Gram, where ranks and reference agree to 1e-12 at equal thread counts).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Set torch's intra-op threads to 1 for the block, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
