"""Constant layers, judged against their own scale, in both estimators.

A layer ``0.5 + 1e-7 * noise`` in float32 is constant up to rounding (its values are 0.5 ± a few
ulps). Its unbiased HSIC self term is positive, so a test for a zero self term misses it and its CKA
would be computed from rounding noise; the relative test (centred variance <= 1e-6 x mean square)
flags it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cka_lab.metrics.cka import FullBatchCKA, MinibatchCKA, is_constant, linear_cka


def features(n: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 4, generator=g)
    a = {
        "bias": 0.5 + 1e-7 * torch.randn(n, 3, 5, 5, generator=g),  # float32: constant output with bias 0.5
        "zero": torch.zeros(n, 20),
        "alive": z @ torch.randn(4, 30, generator=g),
    }
    b = {"y": torch.tanh(z @ torch.randn(4, 12, generator=g)), "bias_b": torch.full((n, 7), 0.5) + 1e-7 * torch.randn(n, 7, generator=g)}
    return a, b


def check(result, matrix) -> None:
    assert result.constant_a == ("bias", "zero") and result.constant_b == ("bias_b",)
    assert np.isnan(result.matrix[:2]).all() and np.isnan(result.matrix[:, 1]).all()
    assert math.isfinite(result.matrix[2, 0])
    assert np.isnan(matrix[:2].numpy()).all() and math.isfinite(matrix[2, 0].item())
    if result.lower is not None:
        assert np.isnan(result.lower[:2]).all() and math.isfinite(result.lower[2, 0])


def test_the_constant_bias_layer_would_pass_a_zero_self_term_test():
    a, b = features(32)
    metric = MinibatchCKA(list(a), list(b))
    metric.update(a, b)
    assert metric.hsic_aa[0].item() > 0  # rounding noise, not zero


@pytest.mark.parametrize("batch", [8, 32])
def test_minibatch_flags_constant_layers_names_them_and_gives_nan(batch):
    a, b = features(64)
    metric = MinibatchCKA(list(a), list(b), keep_batches=True, unit_size=8)
    for s in range(0, 64, batch):
        metric.update({k: v[s : s + batch] for k, v in a.items()}, {k: v[s : s + batch] for k, v in b.items()})
    with pytest.warns(UserWarning, match=r"layer 'bias', 'zero', 'bias_b' has constant features"):
        matrix = metric.compute()
    with pytest.warns(UserWarning):
        result = metric.result()
    check(result, matrix)


def test_full_batch_flags_constant_layers_names_them_and_gives_nan():
    a, b = features(64)
    metric = FullBatchCKA(list(a), list(b))
    metric.update(a, b)
    with pytest.warns(UserWarning, match=r"layer 'bias', 'zero', 'bias_b' has constant features"):
        matrix = metric.compute()
    with pytest.warns(UserWarning):
        result = metric.result()
    check(result, matrix)


def test_a_small_but_real_spread_is_not_constant():
    """Relative, not absolute: features of scale 1e-6 with a 10 % spread are alive."""
    g = torch.Generator().manual_seed(1)
    x = 1e-6 * (1 + 0.1 * torch.randn(32, 10, generator=g))
    metric = FullBatchCKA(["x"], ["y"])
    metric.update({"x": x}, {"y": torch.randn(32, 4, generator=g)})
    assert metric.result().constant_a == ()
    square = torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64)
    centred = torch.tensor([5e-6, 0.0, 1e-6], dtype=torch.float64)
    assert is_constant(square, centred).tolist() == [False, True, True]


def test_linear_cka_flags_a_constant_bias_layer_too():
    a, b = features(32)
    with pytest.warns(UserWarning, match="x is constant"):
        assert math.isnan(linear_cka(a["bias"], b["y"]).item())
    assert math.isfinite(linear_cka(a["alive"], b["y"]).item())
