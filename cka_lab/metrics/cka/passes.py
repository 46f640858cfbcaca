"""CKA over probe crops in one or more passes: ``cka_by_passes`` for both estimators.

The analysis layer gives a callable ``run(group_a, group_b)`` that performs one full pass over the
probe crops with hooks on only those layers and yields ``(feats_a, feats_b)`` per batch
(``Mapping[str, Tensor]``, tensors (B, ...)); when one group is empty that model need not run.

* ``unbiased-minibatch``: one pass with every layer into a ``MinibatchCKA`` with units of
  ``unit_size`` crops (per-unit values kept for the jackknife).
* ``biased-full``: per layer, a float64 N x N centred Gram is all that is kept (8 MiB at N = 1024);
  features are needed only to fill it. ``plan_passes`` splits the layers of A, then of B, into groups
  whose features (``N · numel · feature_bytes``) fit the budget left by the Grams, and each group is
  one pass through a ``FullBatchCKA``; the Grams of all passes then give the CKA and the
  delete-a-group jackknife (``cka_full.biased_cka_result``).

Budget (biased-full): ``max_bytes >= (La + Lb)·N²·8`` (all Grams) ``+ 3·N²·8 + 64 MiB`` (scratch of one
Gram) ``+`` the largest layer's ``N · numel · feature_bytes``; otherwise a one-line CkaLabError names
the numbers and what to change. With ``distributed=True`` each pass is all-reduced over the process
group (MinibatchCKA: sums; FullBatchCKA: the crops' features are gathered on every rank).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka.full import (
    DEFAULT_MAX_BYTES,
    N_GROUPS,
    FullBatchCKA,
    LayerGrams,
    biased_cka_result,
    gib,
)
from cka_lab.metrics.cka.functional import BLOCK_BYTES, CONSTANT_TOL
from cka_lab.metrics.cka.inputs import layer_list
from cka_lab.metrics.cka.minibatch import MinibatchCKA
from cka_lab.metrics.cka.result import CKAResult, check_estimator

__all__ = ["DEFAULT_UNIT_SIZE", "RunPass", "cka_by_passes", "feature_room", "plan_passes"]

DEFAULT_UNIT_SIZE = 8
"""Crops per HSIC unit of unbiased-minibatch in ``cka_by_passes`` (128 crops -> 16 units)."""

RunPass = Callable[[list[str], list[str]], Iterable[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]]]
"""``run(group_a, group_b)``: one pass over the probe crops, yielding (feats_a, feats_b) per batch."""

Numel = int | Mapping[str, int]


def _numel(spec: Numel, name: str, side: str) -> int:
    if isinstance(spec, int):
        return spec
    if name not in spec:
        raise CkaLabError(f"feature_numel has no entry for layer {name!r} of model {side}; give numel per crop for every layer")
    return int(spec[name])


def feature_room(n_layers: int, n_samples: int, max_bytes: int) -> int:
    """Bytes left for one pass's features once all N x N Grams and one Gram's scratch are counted."""
    n = n_samples
    return max_bytes - n_layers * n * n * 8 - 3 * n * n * 8 - BLOCK_BYTES


def plan_passes(
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    *,
    n_samples: int,
    feature_numel: Numel | tuple[Numel, Numel],
    max_bytes: int = DEFAULT_MAX_BYTES,
    feature_bytes: int = 4,
) -> list[tuple[list[str], list[str]]]:
    """Split the layers into passes whose kept features fit ``max_bytes`` next to all N x N Grams.

    Args:
        layers_a, layers_b: layer names of models A and B.
        n_samples: N, the number of probe crops.
        feature_numel: elements per crop of each layer: one int for all, a mapping name -> int for
            both models, or a pair of those (A, B).
        max_bytes: the memory budget.
        feature_bytes: bytes per kept feature element (4 for float32 features).

    Returns:
        The passes in order, each (group_a, group_b) with one of the two empty: layers of A first.

    Raises:
        CkaLabError: if the Grams alone, or one layer's features next to them, exceed the budget.
    """
    la, lb = list(layers_a), list(layers_b)
    numel_a, numel_b = feature_numel if isinstance(feature_numel, tuple) else (feature_numel, feature_numel)
    n = n_samples
    grams = (len(la) + len(lb)) * n * n * 8
    scratch = 3 * n * n * 8 + BLOCK_BYTES
    room = feature_room(len(la) + len(lb), n, max_bytes)
    if room <= 0:
        biggest_n = int(((max_bytes - BLOCK_BYTES) / ((len(la) + len(lb) + 3) * 8)) ** 0.5)
        raise CkaLabError(
            f"biased-full keeps one {n}x{n} float64 Gram per layer: {len(la) + len(lb)} layers need {gib(grams)} "
            f"(+{gib(scratch)} scratch), over max_bytes={gib(max_bytes)}; use at most {biggest_n} crops, fewer "
            "layers, a larger max_bytes, or the unbiased-minibatch estimator"
        )
    plan: list[tuple[list[str], list[str]]] = []
    for side, names, spec in (("A", la, numel_a), ("B", lb, numel_b)):
        group: list[str] = []
        used = 0
        for name in names:
            size = n * _numel(spec, name, side) * feature_bytes
            if size > room:
                raise CkaLabError(
                    f"biased-full needs all {n} crops of layer {name!r} (model {side}) at once: {gib(size)} of "
                    f"features, over the {gib(room)} that max_bytes={gib(max_bytes)} leaves after the Grams; "
                    f"raise max_bytes to at least {gib(max_bytes - room + size)}, use fewer crops or smaller crops, "
                    "or the unbiased-minibatch estimator"
                )
            if group and used + size > room:
                plan.append((group, []) if side == "A" else ([], group))
                group, used = [], 0
            group.append(name)
            used += size
        if group:
            plan.append((group, []) if side == "A" else ([], group))
    return plan


def cka_by_passes(
    estimator: str,
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    run: RunPass,
    *,
    n_samples: int,
    feature_numel: Numel | tuple[Numel, Numel] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    feature_bytes: int = 4,
    unit_size: int = DEFAULT_UNIT_SIZE,
    n_groups: int = N_GROUPS,
    level: float = 0.95,
    gram_dtype: torch.dtype | None = None,
    tol: float = CONSTANT_TOL,
    distributed: bool = False,
    process_group: object | None = None,
) -> CKAResult:
    """CKA between every layer of A and every layer of B, by as many passes over the probes as needed.

    Args:
        estimator: ``"unbiased-minibatch"`` or ``"biased-full"`` (``ESTIMATORS``).
        layers_a, layers_b: layer names.
        run: ``run(group_a, group_b)`` -> iterable of (feats_a, feats_b) per batch, one full pass over
            the same crops in the same order every time.
        n_samples: N, the number of crops a pass yields (checked).
        feature_numel: elements per crop of each layer (see ``plan_passes``); needed by biased-full.
        max_bytes: memory budget of biased-full.
        feature_bytes: bytes per kept feature element (biased-full's plan).
        unit_size: crops per HSIC unit (unbiased-minibatch).
        n_groups: jackknife groups of crops (biased-full).
        level: interval coverage.
        gram_dtype: Gram dtype; default float32/float64 by features (unbiased), float64 (biased).
        tol: constant-layer tolerance.
        distributed: all-reduce over ``process_group`` after each pass (every rank runs its shard;
            shard the crops contiguously, in whole units, in rank order).

    Returns:
        A ``CKAResult`` (``passes`` = the number of passes made).
    """
    estimator = check_estimator(estimator)
    la = layer_list(layers_a, "layers_a")
    lb = layer_list(layers_b, "layers_b")
    if estimator == "unbiased-minibatch":
        metric = MinibatchCKA(la, lb, keep_batches=True, gram_dtype=gram_dtype, unit_size=unit_size, tol=tol)
        seen = 0
        for feats_a, feats_b in run(la, lb):
            metric.update(feats_a, feats_b)
            seen += _batch_size(feats_a, la)
        if distributed:
            metric.all_reduce(process_group)
        else:
            _check_count(seen, n_samples)
        return metric.result(level)

    if feature_numel is None:
        raise CkaLabError("biased-full plans its passes from the feature size: give feature_numel (elements per crop of each layer)")
    plan = plan_passes(la, lb, n_samples=n_samples, feature_numel=feature_numel, max_bytes=max_bytes,
                       feature_bytes=feature_bytes)
    n = n_samples
    stores = {
        side: LayerGrams(
            torch.empty(len(names), n, n, dtype=torch.float64),
            torch.empty(len(names), dtype=torch.float64),
            torch.empty(len(names), dtype=torch.float64),
        )
        for side, names in (("a", la), ("b", lb))
    }
    index = {"a": {name: i for i, name in enumerate(la)}, "b": {name: j for j, name in enumerate(lb)}}
    for group_a, group_b in plan:
        # the features of one pass may use what the Grams leave (checked as they arrive, in their real dtype)
        room = feature_room(len(la) + len(lb), n, max_bytes)
        acc = FullBatchCKA(group_a, group_b, max_bytes=room, gram_dtype=gram_dtype or torch.float64, tol=tol)
        for feats_a, feats_b in run(group_a, group_b):
            acc.update(feats_a, feats_b)
        if distributed:
            acc.all_reduce(process_group)
        _check_count(acc.n_samples, n)
        grams = dict(zip("ab", acc.centred_grams()))
        del acc  # the features of this pass
        for side, group in (("a", group_a), ("b", group_b)):
            for k, name in enumerate(group):
                i = index[side][name]
                stores[side].grams[i] = grams[side].grams[k]
                stores[side].square[i] = grams[side].square[k]
                stores[side].centred[i] = grams[side].centred[k]
        del grams
    return biased_cka_result(stores["a"], stores["b"], la, lb, n_groups=n_groups, level=level, tol=tol, passes=len(plan))


def _batch_size(feats: Mapping[str, Tensor], layers: list[str]) -> int:
    return int(feats[layers[0]].shape[0]) if layers[0] in feats else 0


def _check_count(got: int | None, want: int) -> None:
    if got is not None and got != want:
        raise CkaLabError(f"a pass over the probes yielded {got} crops but n_samples={want}; give the number of crops run() yields")
