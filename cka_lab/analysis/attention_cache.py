"""Attention statistics measured once per model and probe, however many contrasts the model is in.

Attention statistics need the explicit attention map (the slow path of ``WindowAttention``); a model's
statistics depend only on its weights, the head it is probed on, the input size and the probe crops,
not on the model it is contrasted with. :class:`AttentionCache` keeps them for the length of one
command (``cka-lab report A B C D A C`` measures A's and C's attention once); a model whose statistics
are known runs its CKA pass on the fused attention path.

By default a model's statistics are gathered in its first contrast's CKA pass (one explicit pass gives
both), so that model's CKA in that contrast comes from the explicit path and later ones from the fused
path (equal within 1e-5). ``separate=True`` gathers them in a pass of their own and runs every CKA pass
fused: one more forward per model, but every number independent of the order of contrasts -- what a
resumable study needs (a study resumed midway has an empty cache and must give the same tables).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

import pandas as pd
import torch
from torch import nn

from .spec import AnalysisSpec

__all__ = ["AttentionCache", "model_digest"]


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's class and state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
                     if t.numel() else b"")
    return h.hexdigest()


class AttentionCache:
    """``(head table, stage table)`` of a model's attention statistics, keyed by model and probe.

    The key holds the model's :func:`model_digest`, the probed head and input size, the size the crops
    are cut at and the probe (:class:`~cka_lab.analysis.spec.ProbeSpec`), the interval level and the
    number of processes.
    """

    def __init__(self, *, separate: bool = False) -> None:
        self.separate = separate
        self._tables: dict[Hashable, tuple[pd.DataFrame, pd.DataFrame]] = {}
        self._digests: dict[int, tuple[nn.Module, str]] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._tables)

    def key(self, model: nn.Module, task: str | None, patch: int | None, spec: AnalysisSpec, world: int = 1,
            crop: int | None = None) -> Hashable:
        """``patch``: the input size the model is fed (None: the whole crop); ``crop``: the size the probe
        crops are cut at (the largest probe size of the pair), which decides where the crops lie."""
        known = self._digests.get(id(model))
        if known is None or known[0] is not model:
            known = (model, model_digest(model))
            self._digests[id(model)] = known
        return (known[1], task, patch, crop, spec.probe, spec.confidence, world)

    def get(self, key: Hashable) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        tables = self._tables.get(key)
        if tables is None:
            return None
        self.hits += 1
        return tables[0].copy(), tables[1].copy()

    def put(self, key: Hashable, heads: pd.DataFrame | None, stages: pd.DataFrame | None) -> None:
        if heads is not None and stages is not None:
            self._tables[key] = (heads.copy(), stages.copy())
