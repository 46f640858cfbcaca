"""The one CKA driver (``cka_by_passes``) gives, bit for bit, what the analysis's own keyed estimators
(``UnitCKA`` / ``full_keyed_cka``, removed when the analysis moved onto the driver) gave: the estimate,
the paired replicates, the debiased centre and the two half-draw maps, for both estimators, with and
without jackknife groups of whole images and with a constant layer. The old route is kept below as the
reference, written with the metrics package's public pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cka_lab.metrics.cka import (
    CKASpec,
    FullBatchCKA,
    LayerGrams,
    MinibatchCKA,
    cka_by_passes,
    deleted_group_inner,
    deleted_group_unbiased,
    group_bounds,
    is_constant,
    plan_passes,
)

# ---- the old route (analysis/estimators.py before the driver), as it was ---------------------------


def _ratio(xy, xx, yy, dead):
    denom = (xx.clamp(min=0).unsqueeze(-1) * yy.clamp(min=0).unsqueeze(-2)).sqrt()
    ok = (denom > 0) & ~dead.unsqueeze(-1) & ~dead.unsqueeze(-2)
    return torch.where(ok, xy / torch.where(ok, denom, torch.ones_like(denom)), torch.full_like(xy, math.nan))


def _old_units(keys, batches, unit):
    parts = [MinibatchCKA(keys, keys, keep_batches=True, unit_size=unit) for _ in range(2)]
    for first, feats in batches:
        n = next(iter(feats.values())).shape[0]
        for start in range(0, n, unit):
            u = {k: v[start:start + unit] for k, v in feats.items()}
            parts[((first + start) // unit) % 2].update(u, u)
    halves = tuple(part.compute().cpu().numpy() for part in parts)
    total = MinibatchCKA(keys, keys, keep_batches=True, unit_size=unit)
    for part in parts:
        total.merge(part)
    estimate, replicates = total.jackknife()
    return estimate.numpy(), replicates, halves, None


def _old_full(keys, batches, n, numel, unit, bounds=None, max_bytes=4 * 2**30):
    plan = plan_passes(keys, [], n_samples=n, feature_numel=numel, max_bytes=max_bytes)
    store = LayerGrams(torch.empty(len(keys), n, n, dtype=torch.float64), torch.empty(len(keys), dtype=torch.float64),
                       torch.empty(len(keys), dtype=torch.float64))
    index = {k: i for i, k in enumerate(keys)}
    for group, _ in plan:
        acc = FullBatchCKA(group, [], max_bytes=max_bytes)
        for _, feats in batches:
            acc.update({k: feats[k] for k in group}, {})
        grams = acc.grams()
        for k, name in enumerate(group):
            i = index[name]
            store.grams[i], store.square[i], store.centred[i] = grams.grams[k], grams.square[k], grams.centred[k]
    dead = is_constant(store.square, store.centred)
    bounds = group_bounds(n, 32) if bounds is None else bounds
    full, _ = deleted_group_inner(store.grams, store.grams, [(0, n)])
    estimate = _ratio(full, full.diagonal(), full.diagonal(), dead)
    u_full, u_deleted = deleted_group_unbiased(store.grams, store.grams, bounds)
    debiased = _ratio(u_full, u_full.diagonal(), u_full.diagonal(), dead).cpu().numpy()
    selfs = u_deleted.diagonal(dim1=-2, dim2=-1)
    replicates = _ratio(u_deleted, selfs, selfs, dead)
    halves = []
    idx = torch.arange(n)
    for parity in (0, 1):
        sel = idx[(idx // unit) % 2 == parity]
        g = store.grams[:, sel][:, :, sel]
        g = g - g.mean(-1, keepdim=True)
        g = g - g.mean(-2, keepdim=True)
        flat = g.reshape(g.shape[0], -1)
        inner = flat @ flat.T
        halves.append(_ratio(inner, inner.diagonal(), inner.diagonal(), dead).cpu().numpy())
    return estimate.cpu().numpy(), replicates, tuple(halves), debiased


# ---- the comparison ----------------------------------------------------------------------------------


def _features(n: int, flat: bool):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g)
    feats = {"A|0": x @ torch.randn(6, 9, generator=g), "A|1": torch.tanh(x @ torch.randn(6, 5, generator=g)),
             "B|0": torch.relu(x @ torch.randn(6, 12, generator=g)) + 0.1 * torch.randn(n, 12, generator=g),
             "B|1": torch.full((n, 4), 0.5) if flat else torch.randn(n, 4, generator=g)}
    return {k: v.float() for k, v in feats.items()}


def _equal(a, b) -> bool:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.filterwarnings("ignore:layer")
@pytest.mark.parametrize("estimator", ["unbiased-minibatch", "biased-full"])
@pytest.mark.parametrize("images", [False, True])
@pytest.mark.parametrize("flat", [False, True])
def test_the_driver_gives_the_old_keyed_estimators_numbers_bit_for_bit(estimator, images, flat):
    n, unit, bs = 64, 8, 16
    feats = _features(n, flat)
    keys = list(feats)
    batches = [(s, {k: v[s:s + bs] for k, v in feats.items()}) for s in range(0, n, bs)]
    bounds = [(s, s + 4) for s in range(0, n, 4)] if images else None  # 16 "images" of 4 crops

    def run(group, _):
        for first, f in batches:
            yield first, {k: f[k] for k in group}, {}

    numel = {k: v[0].numel() for k, v in feats.items()}
    spec = CKASpec(estimator=estimator, unit_size=unit, halves=True, groups=bounds if estimator == "biased-full" else None)
    new = cka_by_passes(keys, None, run, spec, n_samples=n, feature_numel=numel)
    if estimator == "unbiased-minibatch":
        old = _old_units(keys, batches, unit)
    else:
        old = _old_full(keys, batches, n, numel, unit, bounds)
    estimate, replicates, halves, debiased = old
    assert _equal(new.matrix, estimate) and _equal(new.replicates, replicates)
    assert _equal(new.halves[0], halves[0]) and _equal(new.halves[1], halves[1])
    assert (new.interval_estimate is None) == (debiased is None)
    if debiased is not None:
        assert _equal(new.interval_estimate, debiased)
    assert list(new.constant_a) == (["B|1"] if flat else [])


def test_a_block_of_the_keyed_map_is_the_two_model_result():
    """``layers_b`` given: the (A, B) block of the same computation, through the same accumulators."""
    n = 48
    feats = _features(n, False)
    la, lb = ["A|0", "A|1"], ["B|0", "B|1"]

    def run(group_a, group_b):
        for s in range(0, n, 16):
            yield {k: feats[k][s:s + 16] for k in group_a}, {k: feats[k][s:s + 16] for k in group_b}

    def run_keyed(group, _):
        for s in range(0, n, 16):
            yield {k: feats[k][s:s + 16] for k in group}, {}

    numel = {k: v[0].numel() for k, v in feats.items()}
    for estimator in ("unbiased-minibatch", "biased-full"):
        spec = CKASpec(estimator=estimator)
        two = cka_by_passes(la, lb, run, spec, n_samples=n, feature_numel=numel)
        keyed = cka_by_passes(la + lb, None, run_keyed, spec, n_samples=n, feature_numel=numel)
        assert two.layers_a == tuple(la) and two.layers_b == tuple(lb)
        np.testing.assert_allclose(two.matrix, keyed.matrix[:2, 2:], rtol=0, atol=1e-12)
        np.testing.assert_allclose(two.replicates, keyed.replicates[:, :2, 2:], rtol=0, atol=1e-12)
        assert two.replicates.shape[0] == two.n_units
