"""One measurement of two probed models: CKA between every layer of both (A x A, B x B, A x B at once),
intervals, the probe-draw control and attention statistics, in as few passes as the estimator allows.

Hooks are entered through one :class:`contextlib.ExitStack`: if any of them fails to enter, those already
entered are removed before the error leaves. Under ``torchrun`` (``torch.distributed`` initialised) each
rank runs a contiguous block of whole batches (whole resampling units) and the results are all-reduced,
so every rank gets what one process gets.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from cka_lab.metrics.cka import CKASpec, cka_by_passes

from .controls import paired_jackknife, paired_p_values, probe_draw_control, same_layer_mean_interval
from .estimators import check_units_hold_whole_images, image_groups, resolve_unit_size
from .probing import IndexedBatch, ProbedModel, ProbeSequence, crop_images, progress_enabled, resampling_label, shard_batches
from .spec import AnalysisSpec

__all__ = ["Measurement", "measure", "measure_attention", "distributed_rank"]

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
    unit: str
    block_ci: dict[str, tuple[np.ndarray, np.ndarray]]  # "aa", "bb", "ab" -> (low, high)
    difference_ci: tuple[np.ndarray, np.ndarray] | None  # aa - bb (same layer count only), paired jackknife
    control_a: np.ndarray | None  # probe-draw control of A's map, (La, La)
    control_b: np.ndarray | None
    constant: list[str]
    passes: int = 1
    attention_a: pd.DataFrame | None = None  # head tables (AttentionDistance.compute())
    attention_b: pd.DataFrame | None = None
    stages_a: pd.DataFrame | None = None  # stage tables with intervals (AttentionDistance.summary())
    stages_b: pd.DataFrame | None = None
    difference_p: np.ndarray | None = None  # (L, L) raw jackknife-t p of aa - bb (same layer count only)
    difference_centre: np.ndarray | None = None  # (L, L) aa - bb of the estimate the interval is built on
    same_layer: tuple[float, float, float] | None = None  # mean of diag(ab), its interval from paired replicates

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
    """Enter one extractor per model with layers (None for a model without any in this group); an
    extractor that fails (an unknown layer) leaves the stack to remove the hooks already entered."""
    return [stack.enter_context(FeatureExtractor(p.model, list(ls), kind=kind)) if ls else None
            for p, ls in zip(probed, layers)]


def _keyed(exts: Sequence[FeatureExtractor | None]) -> dict:
    out = {}
    for prefix, ext in zip((A, B), exts):
        if ext is not None:
            out.update({prefix + k: v for k, v in ext.features.items()})
    return out


def _attention(stack: ExitStack, probed: Sequence[ProbedModel], level: float,
               known: Sequence[object | None]) -> list[AttentionDistance | None]:
    """One recording AttentionDistance per model whose statistics are not ``known`` (None for the others:
    no hook sits on their softmax, so they run on the fused attention path)."""
    return [None if k is not None else stack.enter_context(AttentionDistance(p.model, task=p.task, confidence=level))
            for p, k in zip(probed, known)]


def _bar(batches, desc: str, progress: bool | None):
    return tqdm(batches, total=len(batches), desc=desc, unit="batch",
                disable=not (progress_enabled() if progress is None else progress))


def _split(keys: Sequence[str]) -> tuple[list[str], list[str]]:
    return [k[len(A):] for k in keys if k.startswith(A)], [k[len(B):] for k in keys if k.startswith(B)]


def _tables(dists: Sequence[AttentionDistance | None], world: int, known: Sequence[tuple | None]) -> list:
    """``[heads_a, heads_b, stages_a, stages_b]``: measured now, or ``known`` ``(heads, stages)``."""
    if not dists:
        return [None] * 4
    if world > 1:
        for d in dists:
            if d is not None:
                d.all_reduce()
    tables = [(d.compute(), d.summary()) if d is not None else k for d, k in zip(dists, known)]
    return [t[0] for t in tables] + [t[1] for t in tables]


@torch.inference_mode()
def measure(model_a: ProbedModel, model_b: ProbedModel, spec: AnalysisSpec, batches: Sequence[IndexedBatch], *,
            attention: bool = False, controls: bool = True, progress: bool | None = None,
            desc: str = "CKA", known_attention: Sequence[tuple | None] = (None, None)) -> Measurement:
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
    unit = resolve_unit_size(spec.unit_size, _batch_size(batches), n_total)
    images = crop_images(batches)  # the image of each crop: the resampling unit is the image
    # the one CKA driver of the metrics package, over every pair of keys (A x A, B x B, A x B at once)
    # with paired replicates and the two half-draw maps of the probe-draw control
    cka_spec = CKASpec(estimator=spec.estimator, unit_size=unit, level=spec.confidence, halves=True,
                       groups=image_groups(images) if images is not None and spec.estimator == "biased-full" else None,
                       **({"max_bytes": spec.max_bytes} if spec.max_bytes and spec.estimator == "biased-full" else {}))
    if spec.estimator == "unbiased-minibatch":
        if images is not None:
            check_units_hold_whole_images(images, unit)
        with ExitStack() as stack:
            exts = _feature_extractors(stack, probed, layers, spec.features)
            dists = _attention(stack, probed, spec.confidence, known_attention) if attention else []

            def run(group: Sequence[str], _: Sequence[str]):
                for batch in _bar(local, desc, progress):
                    for p in probed:
                        p.feed(batch, spec.probe.seed)
                    yield batch.first, _keyed(exts), {}

            est = cka_by_passes(keys, None, run, cka_spec, n_samples=n_total, distributed=world > 1)
        att = _tables(dists, world, known_attention)
    else:
        if n_total > FULL_MAX_SAMPLES:
            raise CkaLabError(f"biased-full CKA takes at most {FULL_MAX_SAMPLES} crops (its Grams are N x N per layer), "
                              f"got --n-samples {n_total}: use fewer crops or --estimator unbiased-minibatch")
        numel = _feature_numel(probed, layers, local[0] if len(local) else batches[0], spec)

        def run(group: Sequence[str], _: Sequence[str]):
            ga, gb = _split(group)
            with ExitStack() as stack:
                exts = _feature_extractors(stack, probed, (ga, gb), spec.features)
                for batch in _bar(local, f"{desc} ({len(group)} layers)", progress):
                    for p, ext in zip(probed, exts):
                        if ext is not None:
                            p.feed(batch, spec.probe.seed)
                    yield batch.first, {k: v.clone() for k, v in _keyed(exts).items()}, {}

        est = cka_by_passes(keys, None, run, cka_spec, n_samples=n_total, feature_numel=numel, distributed=world > 1)
        att = [None] * 4
        if attention:
            with ExitStack() as stack:
                dists = _attention(stack, probed, spec.confidence, known_attention)
                recording = [p for p, d in zip(probed, dists) if d is not None]
                for batch in _bar(local if recording else [], f"{desc} (attention)", progress):
                    for p in recording:
                        p.feed(batch, spec.probe.seed)
            att = _tables(dists, world, known_attention)
    replicates = None if est.replicates is None else torch.from_numpy(est.replicates)
    ia, ib = list(range(len(layers[0]))), list(range(len(layers[0]), len(keys)))
    blocks = [(ia, ia), (ib, ib), (ia, ib)]
    same = len(ia) == len(ib)
    centre = est.centre_estimate  # biased-full: the debiased CKA, whose jackknife covers at D >= N
    diffs = [(0, 1)] if same else []
    cis, dcis = paired_jackknife(centre, replicates, blocks, diffs, level=spec.confidence)
    pvals = paired_p_values(centre, replicates, blocks, diffs)
    control_a = probe_draw_control(est.halves, ia, ia) if controls else None
    control_b = probe_draw_control(est.halves, ib, ib) if controls else None
    unit_label = f"{est.unit}; {resampling_label(images, est.n_units, spec.estimator)}"
    if est.interval_estimate is not None:
        unit_label += ("; biased-full intervals and tests are of the debiased CKA of the same crops (unbiased "
                       "HSIC_1): the biased estimate's own jackknife does not cover at feature dimensions >= N")
    return Measurement(layers[0], layers[1], est.matrix, est.n_samples, est.n_units, unit_label,
                       dict(zip(("aa", "bb", "ab"), cis)), dcis[0] if same else None, control_a, control_b,
                       list(est.constant_a), est.passes, *att,
                       difference_p=pvals[0] if same else None,
                       difference_centre=(centre[np.ix_(ia, ia)] - centre[np.ix_(ib, ib)]) if same else None,
                       same_layer=same_layer_mean_interval(centre, replicates, ia, ib, level=spec.confidence)
                       if same else None)


@torch.inference_mode()
def measure_attention(probed: ProbedModel, spec: AnalysisSpec, batches: Sequence[IndexedBatch], *,
                      progress: bool | None = None, desc: str = "attention") -> tuple:
    """``(heads, stages)`` attention tables of one model on ``batches``, in a pass of its own (explicit path)."""
    if not attention_modules(probed.model):
        raise CkaLabError(f"{type(probed.model).__name__} has no window-attention modules: attention statistics need "
                          "an EDT model; pass attention=False (--no-attention) to measure CKA only")
    rank, world = distributed_rank()
    local = shard_batches(batches, rank, world) if world > 1 else batches
    with ExitStack() as stack:
        dists = _attention(stack, [probed], spec.confidence, [None])
        for batch in _bar(local, desc, progress):
            probed.feed(batch, spec.probe.seed)
    heads, stages = _tables(dists, world, [None])
    return heads, stages


def _feature_numel(probed, layers, batch: IndexedBatch, spec: AnalysisSpec) -> dict[str, int]:
    """Features per crop of every key, from one forward pass on one crop."""
    one = IndexedBatch(batch.first, batch.x[:1])
    with ExitStack() as stack:
        exts = _feature_extractors(stack, probed, layers, spec.features)
        for p in probed:
            p.feed(one, spec.probe.seed)
        return {k: int(v[0].numel()) for k, v in _keyed(exts).items()}


def _n_crops(batches: Sequence[IndexedBatch]) -> int:
    if isinstance(batches, ProbeSequence):
        plan, bs = batches.batches.plan, batches.batches.batch_size
        return sum(len(plan[n * bs:(n + 1) * bs]) for n in batches.numbers)
    return sum(b.x.shape[0] for b in batches)


def _batch_size(batches: Sequence[IndexedBatch]) -> int:
    if isinstance(batches, ProbeSequence):
        return batches.batches.batch_size
    return max(b.x.shape[0] for b in batches)
