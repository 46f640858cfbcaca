"""unbiased-minibatch with HSIC units decoupled from the forward batch size, and its jackknife."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import MinibatchCKA
from tests.metrics.test_cka import reference_minibatch_cka


def probe_features(n: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """float32 features of n crops: two layers of A (one with a large offset), two of B."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g)
    a = {
        "a0": torch.relu(z @ torch.randn(5, 3 * 6 * 6, generator=g)).reshape(n, 3, 6, 6),
        "a1": z @ torch.randn(5, 40, generator=g) + 0.3 * torch.randn(n, 40, generator=g) + 500.0,
    }
    b = {
        "b0": torch.tanh(z @ torch.randn(5, 24, generator=g)) + 0.2 * torch.randn(n, 24, generator=g),
        "b1": torch.randn(n, 16, generator=g),
    }
    return a, b


def run(batch_size: int, a: dict, b: dict, **kwargs) -> MinibatchCKA:
    n = next(iter(a.values())).shape[0]
    metric = MinibatchCKA(list(a), list(b), keep_batches=True, unit_size=8, **kwargs)
    for s in range(0, n, batch_size):
        metric.update({k: v[s : s + batch_size] for k, v in a.items()}, {k: v[s : s + batch_size] for k, v in b.items()})
    return metric


def test_batch_sizes_4_8_32_give_identical_cka_and_intervals():
    a, b = probe_features(96, seed=1)
    results = {bs: run(bs, a, b) for bs in (4, 8, 32, 12)}
    summary = {bs: m.result(level=0.9) for bs, m in results.items()}
    boot = {bs: m.confidence_interval(n_boot=200, seed=5) for bs, m in results.items()}
    base = summary[8]
    assert base.n_units == 12 and base.n_samples == 96
    for bs in (4, 32, 12):
        np.testing.assert_allclose(summary[bs].matrix, base.matrix, rtol=0, atol=1e-12)
        np.testing.assert_allclose(summary[bs].lower, base.lower, rtol=0, atol=1e-12)
        np.testing.assert_allclose(summary[bs].upper, base.upper, rtol=0, atol=1e-12)
        torch.testing.assert_close(boot[bs][0], boot[8][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(boot[bs][1], boot[8][1], rtol=0, atol=1e-12)


def test_units_are_the_papers_minibatches_of_consecutive_crops():
    """The reference takes a1 without its offset of 500 (HSIC_1 is exactly invariant to a common shift of
    the features; the float64 formula on the raw Gram would lose ~1e-6 to cancellation)."""
    a, b = probe_features(64, seed=2)
    metric = run(32, a, b, gram_dtype=torch.float64)
    got = metric.compute()
    shifted = {"a0": a["a0"], "a1": a["a1"].double() - 500.0}
    for i, name_a in enumerate(a):
        for j, name_b in enumerate(b):
            want = reference_minibatch_cka(
                [x.numpy() for x in shifted[name_a].split(8)], [y.numpy() for y in b[name_b].split(8)]
            )
            assert got[i, j].item() == pytest.approx(want, abs=1e-9)


def test_the_jackknife_is_the_cka_with_each_unit_left_out():
    a, b = probe_features(48, seed=3)
    metric = run(16, a, b, gram_dtype=torch.float64)
    estimate, replicates = metric.jackknife()
    assert replicates.shape == (6, 2, 2)
    keep = [k for k in range(6) if k != 2]
    units_a = [a["a0"].split(8)[k].numpy() for k in keep]
    units_b = [b["b0"].split(8)[k].numpy() for k in keep]
    assert replicates[2, 0, 0].item() == pytest.approx(reference_minibatch_cka(units_a, units_b), abs=1e-9)
    result = metric.result(level=0.95)
    from scipy.stats import t as student_t

    reps = replicates.numpy()
    se = np.sqrt(5 / 6 * ((reps - reps.mean(0)) ** 2).sum(0))
    centre = estimate.numpy() - 5 * (reps.mean(0) - estimate.numpy())
    np.testing.assert_allclose(result.lower, centre - student_t.ppf(0.975, 5) * se, rtol=0, atol=1e-12)
    assert "jackknife over 6 units" in result.interval and result.unit == "HSIC unit of 8 crops"


def test_a_trailing_partial_unit_of_four_or_more_crops_counts_and_fewer_are_dropped_with_a_warning():
    a, b = probe_features(44, seed=4)  # 5 units of 8 and 4 crops left
    metric = run(16, a, b)
    metric.compute()
    assert metric.n_units == 6 and metric.n_samples == 44
    a, b = probe_features(42, seed=4)  # 2 crops left
    metric = run(16, a, b)
    with pytest.warns(UserWarning, match="the last 2 crops"):
        metric.compute()
    assert metric.n_units == 5 and metric.n_samples == 40


def test_a_unit_size_below_four_is_an_error():
    with pytest.raises(CkaLabError, match="unit_size must be an integer >= 4"):
        MinibatchCKA(["x"], ["y"], unit_size=3)


def test_small_forward_batches_are_fine_with_units():
    """Batches of 2 crops (too small for HSIC on their own) fill units of 8."""
    a, b = probe_features(32, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = run(2, a, b).compute()
    torch.testing.assert_close(value, run(32, a, b).compute(), rtol=0, atol=1e-12)
    assert math.isfinite(value[0, 0].item())


def test_merge_keeps_this_accumulators_units_first():
    a, b = probe_features(64, seed=6)
    whole = run(16, a, b)
    first = run(16, {k: v[:32] for k, v in a.items()}, {k: v[:32] for k, v in b.items()})
    second = run(16, {k: v[32:] for k, v in a.items()}, {k: v[32:] for k, v in b.items()})
    first.merge(second)
    torch.testing.assert_close(first.compute(), whole.compute(), rtol=0, atol=1e-12)
    for got, want in zip(first.confidence_interval(n_boot=100, seed=1), whole.confidence_interval(n_boot=100, seed=1)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
