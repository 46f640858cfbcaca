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
  delete-a-group jackknife (``cka_full.grams_result``).

Budget (biased-full): ``max_bytes >= (La + Lb)·N²·8`` (all Grams) ``+ 3·N²·8 + 64 MiB`` (scratch of one
Gram) ``+`` the largest layer's ``N · numel · feature_bytes``; otherwise a one-line CkaLabError names
the numbers and what to change. With ``distributed=True`` each pass is all-reduced over the process
group (MinibatchCKA: sums; FullBatchCKA: the crops' features are gathered on every rank).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka.full import FullBatchCKA, LayerGrams, gib, grams_result
from cka_lab.metrics.cka.functional import BLOCK_BYTES
from cka_lab.metrics.cka.inputs import layer_list
from cka_lab.metrics.cka.minibatch import MinibatchCKA
from cka_lab.metrics.cka.result import CKAResult
from cka_lab.metrics.cka.spec import DEFAULT_MAX_BYTES, DEFAULT_UNIT_SIZE, CKASpec

__all__ = ["DEFAULT_UNIT_SIZE", "CKASpec", "RunPass", "cka_by_passes", "feature_room", "plan_passes"]

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
    layers_a: Sequence[str],
    layers_b: Sequence[str] | None,
    run: RunPass,
    spec: CKASpec | None = None,
    *,
    n_samples: int,
    feature_numel: Numel | tuple[Numel, Numel] | None = None,
    distributed: bool = False,
    process_group: object | None = None,
) -> CKAResult:
    """CKA between every layer of A and every layer of B, by as many passes over the probes as needed.

    The one driver of a CKA over probe crops (the analysis measures through it): ``unbiased-minibatch``
    streams into ``MinibatchCKA`` and returns its ``result()``; ``biased-full`` fills one N x N Gram per
    layer through ``FullBatchCKA`` pass by pass and returns ``grams_result`` of them. Either way a
    ``CKAResult`` with its jackknife replicates (and, with ``spec.halves``, the two half-draw maps).

    Args:
        layers_a, layers_b: layer names; ``layers_b=None``: every pair of ``layers_a`` (one map over one
            list, e.g. both models' layers at once, each Gram computed once); ``run`` then gets
            ``(group, [])`` and yields ``(feats, {})``.
        run: ``run(group_a, group_b)`` -> iterable of ``(feats_a, feats_b)`` per batch, one full pass
            over the same crops in the same order every time; an item may be ``(first, feats_a,
            feats_b)`` with ``first`` the global index of the batch's first crop (needed for the half
            draws under ``distributed``; otherwise crops are counted from 0).
        spec: estimator, unit size, jackknife groups, level, memory budget, ... (``CKASpec``; None: its
            defaults).
        n_samples: N, the number of crops a pass yields (checked in one process).
        feature_numel: elements per crop of each layer (see ``plan_passes``); needed by biased-full.
        distributed: all-reduce over ``process_group`` after each pass (every rank runs its shard;
            shard the crops contiguously, in whole units, in rank order).

    Returns:
        A ``CKAResult`` (``passes`` = the number of passes made).
    """
    spec = CKASpec() if spec is None else spec
    la = layer_list(layers_a, "layers_a")
    lb = None if layers_b is None else layer_list(layers_b, "layers_b")
    if spec.estimator == "unbiased-minibatch":
        return _by_units(la, lb, run, spec, n_samples, distributed, process_group)
    if feature_numel is None:
        raise CkaLabError("biased-full plans its passes from the feature size: give feature_numel (elements per crop of each layer)")
    return _by_grams(la, lb, run, spec, n_samples, feature_numel, distributed, process_group)


def _item(item: tuple) -> tuple[int | None, Mapping[str, Tensor], Mapping[str, Tensor]]:
    return tuple(item) if len(item) == 3 else (None, *item)


def _by_units(la: list[str], lb: list[str] | None, run: RunPass, spec: CKASpec, n_samples: int, distributed: bool,
              process_group: object | None) -> CKAResult:
    """unbiased-minibatch: one pass; with ``spec.halves`` units alternate between two accumulators (the
    even and the odd units), merged for the estimate."""
    u = spec.unit_size

    def accumulator() -> MinibatchCKA:
        return MinibatchCKA(la, la if lb is None else lb, keep_batches=True, gram_dtype=spec.gram_dtype, unit_size=u,
                            tol=spec.tol)

    parts = [accumulator(), accumulator()] if spec.halves else [accumulator()]
    seen = 0
    for item in run(la, [] if lb is None else lb):
        first, feats_a, feats_b = _item(item)
        if lb is None:
            feats_b = feats_a
        n = _batch_size(feats_a, la)
        if spec.halves:
            first = seen if first is None else first
            if first % u:
                raise CkaLabError(f"a batch starts at crop {first}, inside a unit of {u} crops: the half draws need "
                                  "batches that start at unit boundaries")
            for start in range(0, n, u):
                unit_a = {k: v[start:start + u] for k, v in feats_a.items()}
                unit_b = unit_a if lb is None else {k: v[start:start + u] for k, v in feats_b.items()}
                parts[((first + start) // u) % 2].update(unit_a, unit_b)
        else:
            parts[0].update(feats_a, feats_b)
        seen += n
    if distributed:
        for part in parts:
            part.all_reduce(process_group)
    else:
        _check_count(seen, n_samples)
    if not spec.halves:
        return parts[0].result(spec.level)
    counts = [part.n_units for part in parts]
    if not sum(counts):
        raise CkaLabError("no probe crop was run: give at least one batch")
    halves = tuple(part.compute().cpu().numpy() for part in parts) if all(counts) else None
    total = accumulator()
    for part in parts:
        if part.n_units:
            total.merge(part)
    return replace(total.result(spec.level), halves=halves)


def _by_grams(la: list[str], lb: list[str] | None, run: RunPass, spec: CKASpec, n_samples: int,
              feature_numel: Numel | tuple[Numel, Numel], distributed: bool, process_group: object | None) -> CKAResult:
    """biased-full: the layers in passes that fit ``spec.max_bytes``, one Gram per layer kept."""
    plan = plan_passes(la, [] if lb is None else lb, n_samples=n_samples, feature_numel=feature_numel,
                       max_bytes=spec.max_bytes, feature_bytes=spec.feature_bytes)
    n = n_samples
    names = la + ([] if lb is None else lb)
    slot = {("a", name): i for i, name in enumerate(la)}
    slot.update({("b", name): len(la) + j for j, name in enumerate(lb or [])})
    store = LayerGrams(torch.empty(len(names), n, n, dtype=torch.float64), torch.empty(len(names), dtype=torch.float64),
                       torch.empty(len(names), dtype=torch.float64))
    # the features of one pass may use what the Grams leave (checked as they arrive, in their real dtype)
    room = feature_room(len(names), n, spec.max_bytes)
    for group_a, group_b in plan:
        acc = FullBatchCKA(group_a, group_b, max_bytes=room, gram_dtype=spec.gram_dtype or torch.float64, tol=spec.tol)
        for item in run(group_a, group_b):
            _, feats_a, feats_b = _item(item)
            acc.update(feats_a, feats_b)
        if distributed:
            acc.all_reduce(process_group)
        _check_count(acc.n_samples, n)
        grams = acc.grams()
        del acc  # the features of this pass
        for k, key in enumerate([("a", x) for x in group_a] + [("b", x) for x in group_b]):
            i = slot[key]
            store.grams[i], store.square[i], store.centred[i] = grams.grams[k], grams.square[k], grams.centred[k]
        del grams
    rows = range(len(la))
    return grams_result(store, names, rows, rows if lb is None else range(len(la), len(names)), spec,
                        passes=len(plan))


def _batch_size(feats: Mapping[str, Tensor], layers: list[str]) -> int:
    return int(feats[layers[0]].shape[0]) if layers[0] in feats else 0


def _check_count(got: int | None, want: int) -> None:
    if got is not None and got != want:
        raise CkaLabError(f"a pass over the probes yielded {got} crops but n_samples={want}; give the number of crops run() yields")
