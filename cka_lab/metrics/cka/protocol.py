"""The accumulator protocol shared by ``MinibatchCKA`` and ``FullBatchCKA``, on ``torchmetrics.Metric``.

Every accumulator has ``update(feats_a, feats_b)``, ``compute() -> (La, Lb) Tensor``, ``result() ->
CKAResult``, ``reset()``, ``merge(other)`` and ``all_reduce(group)``. States are torchmetrics states
(``add_state`` with ``dist_reduce_fx`` "sum" for sums, "cat" for per-unit values and kept features),
so merging is ``Metric.merge_state`` and distributed reduction is ``Metric.sync``; this module adds
only what the protocol needs on top:

* ``merge(other)`` keeps this accumulator's list entries before ``other``'s (``merge_state`` alone puts
  the incoming ones first) and moves ``other``'s states to this one's device;
* ``all_reduce(group)`` syncs once and keeps the totals (``compute`` does not sync by itself:
  ``sync_on_compute=False``, so a rank that computes alone never blocks), after which ``update`` is
  refused until ``reset``; list states are gathered in rank order;
* ``compute()`` keeps its (La, Lb) shape (torchmetrics squeezes one-element results to a scalar).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from cka_lab.errors import CkaLabError

__all__ = ["CKAAccumulator"]


class CKAAccumulator(Metric):
    """Base of the CKA accumulators: ordered ``merge``, permanent ``all_reduce``, matrix-shaped ``compute``.

    Subclasses set ``layers_a`` / ``layers_b`` before calling ``_shape_compute`` and may override
    ``_flush`` (complete pending work before a merge, a reduction or a result).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self) -> None:
        super().__init__(sync_on_compute=False, compute_with_cache=False)
        self._reduced = False

    # ---- torchmetrics plumbing ----------------------------------------------------------------

    def _shape_compute(self) -> None:
        """Wrap the torchmetrics-wrapped ``compute`` so that a 1x1 result stays (1, 1)."""
        wrapped = self.compute
        shape = (len(self.layers_a), len(self.layers_b))

        @functools.wraps(wrapped)
        def compute() -> Tensor:
            return wrapped().reshape(shape)

        self.compute = compute  # type: ignore[method-assign]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._shape_compute()

    def _flush(self) -> None:
        """Finish pending work (nothing by default)."""

    def _follow(self, device: torch.device) -> None:
        """Move the states to ``device`` (the features') if they are elsewhere."""
        if self.device != device:
            self.to(device)

    def reset(self) -> None:
        """Forget every batch."""
        super().reset()
        self._reduced = False

    def _check_open(self) -> None:
        if self._reduced:
            raise CkaLabError(f"this {type(self).__name__} was all-reduced; call reset() before adding batches")

    # ---- combining ----------------------------------------------------------------------------

    def merge(self, other: CKAAccumulator) -> CKAAccumulator:
        """Add the batches of ``other`` (same class and layers) to this one, in place; returns self."""
        if type(other) is not type(self) or (other.layers_a, other.layers_b) != (self.layers_a, self.layers_b):
            raise CkaLabError(
                f"merge needs two {type(self).__name__} over the same layers_a and layers_b, in the same order"
            )
        self._check_merge(other)
        self._flush()
        other._flush()
        if not other.update_count and not any(isinstance(v, list) and v for v in other.metric_state.values()):
            return self
        device = self.device if self.update_count else other.device
        self._follow(device)
        incoming: dict[str, Any] = {}
        for name, value in other.metric_state.items():
            if isinstance(value, list):
                # merge_state puts the incoming entries first: swap so that this one's come first
                incoming[name] = getattr(self, name)
                setattr(self, name, [t.to(device) for t in value])
            else:
                incoming[name] = value.to(device)
        self.merge_state(incoming)
        self._update_count += other.update_count  # merged batches count as updates (compute() does not warn)
        self._merged(other)
        return self

    def _check_merge(self, other: CKAAccumulator) -> None:
        """Raise if ``other``'s settings differ from this one's (subclasses)."""

    def _merged(self, other: CKAAccumulator) -> None:
        """Combine what is not a torchmetrics state (subclasses)."""

    def all_reduce(self, group: object | None = None) -> None:
        """Combine the accumulators of every rank of a ``torch.distributed`` group, in place.

        Call it once on every rank after the last ``update``; afterwards every rank holds the totals
        (list states gathered in rank order) and ``compute()`` gives the same matrix everywhere.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise CkaLabError("torch.distributed is not initialised: call init_process_group first (or use merge)")
        if self._reduced:
            raise CkaLabError(f"this {type(self).__name__} was already all-reduced; reset() before accumulating again")
        self._flush()
        if dist.get_backend(group) == "nccl" and self.device.type != "cuda":
            self.to(torch.device("cuda", torch.cuda.current_device()))
        self.sync(process_group=group, distributed_available=lambda: True)
        synced = dict(self.metric_state)
        self.unsync()
        for name, value in synced.items():
            if isinstance(getattr(self, name), list):  # a "cat" state comes back as one tensor
                value = [value] if isinstance(value, Tensor) and value.numel() else []
            setattr(self, name, value)
        self._reduced = True
