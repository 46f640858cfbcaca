"""One measurement of two probed models: CKA between every layer of both (A x A, B x B, A x B at once),
intervals, the probe-draw control and attention statistics, in as few passes as the estimator allows.

Hooks are entered through one :class:`contextlib.ExitStack`: if any of them fails to enter, those already
entered are removed before the error leaves. Under ``torchrun`` (``torch.distributed`` initialised) each
rank runs a contiguous block of whole batches (whole resampling units) and the results are all-reduced,
so every rank gets what one process gets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cka_lab.errors import CkaLabError
from cka_lab.features import FeatureExtractor
from cka_lab.features.layersets import resolve_layer_spec
from cka_lab.metrics.attention import AttentionDistance, attention_modules

from .controls import cka_from_terms, half_split, paired_bootstrap, probe_draw_control
from .estimators import UnitCKA, full_cka, resolve_unit_size
from .probing import IndexedBatch, ProbedModel, ProbeSequence, progress_enabled, shard_batches
from .spec import AnalysisSpec

__all__ = ["Measurement", "measure", "distributed_rank"]

A, B = "A|", "B|"
FULL_MAX_SAMPLES = 4096
"""Largest N the biased-full estimator takes here: its Grams are N x N float64 per layer."""


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class Measurement:
    """What :func:`measure` found. Blocks of the keyed matrix: ``a`` rows/cols index A's layers, ``b`` B's."""

    layers_a: list[str]
    layers_b: list[str]
    matrix: np.ndarray  # (La+Lb, La+Lb): [A|..., B|...] x [A|..., B|...]
    n_samples: int
    n_units: int
    block_ci: dict[str, tuple[np.ndarray, np.ndarray]]  # "aa", "bb", "ab" -> (low, high)
    difference_ci: tuple[np.ndarray, np.ndarray] | None  # aa - bb (same layer count only)
    control_a: np.ndarray | None  # probe-draw control of A's map, (La, La)
    control_b: np.ndarray | None
    attention_a: pd.DataFrame | None = None
    attention_b: pd.DataFrame | None = None

    @property
    def a(self) -> list[int]:
        return list(range(len(self.layers_a)))

    @property
    def b(self) -> list[int]:
        return list(range(len(self.layers_a), len(self.layers_a) + len(self.layers_b)))

    def block(self, name: str) -> np.ndarray:
        rows, cols = {"aa": (self.a, self.a), "bb": (self.b, self.b), "ab": (self.a, self.b)}[name]
        return self.matrix[np.ix_(rows, cols)]


def _feature_extractors(stack: ExitStack, probed: Sequence[ProbedModel], layers: Sequence[Sequence[str]],
                        kind: str) -> list[FeatureExtractor | None]:
    """Enter one extractor per model with layers (None for a model without any in this group)."""
    return [stack.enter_context(FeatureExtractor(p.model, list(ls), kind=kind)) if ls else None
            for p, ls in zip(probed, layers)]


def _keyed(exts: Sequence[FeatureExtractor | None]) -> dict:
    out = {}
    for prefix, ext in zip((A, B), exts):
        if ext is not None:
            out.update({prefix + k: v for k, v in ext.features.items()})
    return out


def _attention(stack: ExitStack, probed: Sequence[ProbedModel]) -> list[AttentionDistance]:
    return [stack.enter_context(AttentionDistance(p.model, task=p.task)) for p in probed]


def _all_reduce_attention(dists: Sequence[AttentionDistance]) -> None:
    for d in dists:
        reduce = getattr(d, "all_reduce", None) or getattr(d, "sync", None)
        if reduce is None:
            raise CkaLabError("attention statistics cannot be combined across ranks with this cka_lab: "
                              "run without torchrun, or with --no-attention")
        reduce()


def _bar(batches, desc: str, progress: bool | None):
    return tqdm(batches, total=len(batches), desc=desc, unit="batch",
                disable=not (progress_enabled() if progress is None else progress))


def _split(keys: Sequence[str]) -> tuple[list[str], list[str]]:
    return [k[len(A):] for k in keys if k.startswith(A)], [k[len(B):] for k in keys if k.startswith(B)]


@torch.inference_mode()
def measure(model_a: ProbedModel, model_b: ProbedModel, spec: AnalysisSpec, batches: Sequence[IndexedBatch], *,
            attention: bool = False, controls: bool = True, progress: bool | None = None,
            desc: str = "CKA") -> Measurement:
    """CKA between every layer of both probed models on ``batches`` (clean crops with global indices).

    ``spec`` decides the layers, feature kind, estimator, unit size and interval level; ``attention``
    also collects attention statistics of both models (EDT only); ``controls`` the probe-draw control.
    """
    probed = (model_a, model_b)
    layers = [resolve_layer_spec(p.model, spec.layers, p.task) for p in probed]
    if attention:
        for p in probed:
            if not attention_modules(p.model):
                raise CkaLabError(
                    f"{type(p.model).__name__} has no window-attention modules: attention statistics need an EDT "
                    "model; pass attention=False (--no-attention) to measure CKA only"
                )
    keys = [A + name for name in layers[0]] + [B + name for name in layers[1]]
    rank, world = distributed_rank()
    local = shard_batches(batches, rank, world) if world > 1 else batches
    n_total = _n_crops(batches)
    if spec.estimator == "unbiased-minibatch":
        unit = resolve_unit_size(spec.unit_size, _batch_size(batches), n_total)
        acc = UnitCKA(keys, unit)
        with ExitStack() as stack:
            exts = _feature_extractors(stack, probed, layers, spec.features)
            dists = _attention(stack, probed) if attention else []
            for batch in _bar(local, desc, progress):
                for p in probed:
                    p.feed(batch, spec.probe.seed)
                acc.update(_keyed(exts))
            if world > 1:
                acc.all_reduce()
                if dists:
                    _all_reduce_attention(dists)
            att = [d.compute() for d in dists] or [None, None]
        terms = acc.terms()
        matrix = cka_from_terms(terms.cross.sum(0), terms.self_terms.sum(0)).numpy()
        ia, ib = list(range(len(layers[0]))), list(range(len(layers[0]), len(keys)))
        blocks = [(ia, ia), (ib, ib), (ia, ib)]
        same = len(ia) == len(ib)
        cis, dcis = paired_bootstrap(terms.cross, terms.self_terms, blocks, [(0, 1)] if same else [],
                                     n_boot=1000, level=spec.confidence, seed=spec.probe.seed)
        control_a = probe_draw_control(terms.cross, terms.self_terms, ia, ia) if controls else None
        control_b = probe_draw_control(terms.cross, terms.self_terms, ib, ib) if controls else None
        return Measurement(layers[0], layers[1], matrix, terms.n_samples, terms.n_units,
                           dict(zip(("aa", "bb", "ab"), cis)), dcis[0] if same else None, control_a, control_b,
                           att[0], att[1])
    return _measure_full(probed, layers, keys, spec, batches, local, world, attention, controls, progress, desc)


def _measure_full(probed, layers, keys, spec, batches, local, world, attention, controls, progress, desc):
    """The biased-full path: several passes over the same crops, one group of layers at a time."""
    n_total = _n_crops(batches)
    if n_total > FULL_MAX_SAMPLES:
        raise CkaLabError(f"biased-full CKA takes at most {FULL_MAX_SAMPLES} crops here (its Grams are N x N per "
                          f"layer), got --n-samples {n_total}: use fewer crops or --estimator unbiased-minibatch")
    numel = _feature_numel(probed, layers, local[0] if local else batches[0], spec)

    def runner(part: Sequence[IndexedBatch]):
        def run(group: Sequence[str]) -> Iterator[dict]:
            ga, gb = _split(group)
            mine = shard_batches(part, *distributed_rank()) if world > 1 else part
            with ExitStack() as stack:
                exts = _feature_extractors(stack, probed, (ga, gb), spec.features)
                feats = []
                for batch in _bar(mine, f"{desc} ({len(group)} layers)", progress):
                    for p, ext in zip(probed, exts):
                        if ext is not None:
                            p.feed(batch, spec.probe.seed)
                    keyed = {k: v.clone() for k, v in _keyed(exts).items()}
                    if world == 1:
                        yield keyed
                    else:
                        feats.append({k: v.cpu() for k, v in keyed.items()})
            if world > 1:
                import torch.distributed as dist

                gathered: list[object] = [None] * world
                dist.all_gather_object(gathered, feats)
                for part_feats in gathered:
                    yield from part_feats  # type: ignore[union-attr]
        return run

    result = full_cka(keys, runner(batches), n_samples=n_total, feature_numel=numel)
    matrix = np.asarray(result.matrix, dtype=np.float64)
    ia, ib = list(range(len(layers[0]))), list(range(len(layers[0]), len(keys)))
    lower = np.asarray(getattr(result, "lower", np.full_like(matrix, np.nan)), dtype=np.float64)
    upper = np.asarray(getattr(result, "upper", np.full_like(matrix, np.nan)), dtype=np.float64)
    cis = {name: (lower[np.ix_(r, c)], upper[np.ix_(r, c)])
           for name, (r, c) in {"aa": (ia, ia), "bb": (ib, ib), "ab": (ia, ib)}.items()}
    dci = None
    if len(ia) == len(ib):  # conservative: the extremes of the two maps' intervals
        dci = (cis["aa"][0] - cis["bb"][1], cis["aa"][1] - cis["bb"][0])
    control_a = control_b = None
    if controls and len(batches) >= 2:
        halves = [batches[s] for s in half_split(len(batches))]
        maps = []
        for part in halves:
            n_part = _n_crops(part)
            maps.append(np.asarray(full_cka(keys, runner(part), n_samples=n_part, feature_numel=numel).matrix))
        diff = np.abs(maps[0] - maps[1])
        control_a, control_b = diff[np.ix_(ia, ia)], diff[np.ix_(ib, ib)]
    att = [None, None]
    if attention:
        with ExitStack() as stack:
            dists = _attention(stack, probed)
            for batch in _bar(local, f"{desc} (attention)", progress):
                for p in probed:
                    p.feed(batch, spec.probe.seed)
            if world > 1:
                _all_reduce_attention(dists)
            att = [d.compute() for d in dists]
    return Measurement(layers[0], layers[1], matrix, n_total, len(batches), cis, dci, control_a, control_b,
                       att[0], att[1])


def _feature_numel(probed, layers, batch: IndexedBatch, spec: AnalysisSpec) -> dict[str, int]:
    """Features per crop of every key, from one forward pass on one crop."""
    one = IndexedBatch(batch.first, batch.x[:1])
    out: dict[str, int] = {}
    with ExitStack() as stack:
        exts = _feature_extractors(stack, probed, layers, spec.features)
        for p in probed:
            p.feed(one, spec.probe.seed)
        out = {k: int(v[0].numel()) for k, v in _keyed(exts).items()}
    return out


def _n_crops(batches: Sequence[IndexedBatch]) -> int:
    if isinstance(batches, ProbeSequence):
        plan, bs = batches.batches.plan, batches.batches.batch_size
        return sum(len(plan[n * bs:(n + 1) * bs]) for n in batches.numbers)
    return sum(b.x.shape[0] for b in batches)


def _batch_size(batches: Sequence[IndexedBatch]) -> int:
    if isinstance(batches, ProbeSequence):
        return batches.batches.batch_size
    return max(b.x.shape[0] for b in batches)
