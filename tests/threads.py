"""``one_thread()``: run a block as one rank of the multi-process tests runs (one CPU thread).

A one-process reference for a test that compares it with gloo ranks of one thread each runs with one
thread too: float32 convolutions and GEMMs may round differently with another thread count on some CPUs.
CI on 2026-12-05 (commit 9e1ceeb): the two 1-thread ranks of ``test_measure``'s gloo test gave, bitwise,
the CKA this development machine gives with 1 or 2 threads (0.5589975380669093), while the reference
computed in the pytest process at CI's default thread count gave 0.5589954246427388; every differing
cell involved the layer with the largest common component (mean Gram diagonal 228-315x the RMS of its
U-centred Gram), where CKA magnifies feature rounding most.
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
