"""Linear CKA, checked against float64 formulas written from the papers.

References written independently here (numpy, explicit centring matrices and ones vectors):
* Song et al. (2012) HSIC_1, the unbiased estimator used by Nguyen, Raghu & Kornblith (2021);
* Kornblith et al. (2019) full-batch CKA with H = I - 11ᵀ/n.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.metrics.cka import (
    MinibatchCKA,
    centred_gram,
    gram,
    linear_cka,
    minibatch_cka,
    u_centre,
    unbiased_hsic,
    x_xt,
)

# ---- references from the papers -------------------------------------------------------------------


def song_hsic1(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """HSIC_1 = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3)), K̃ = K with zero diagonal."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    value = np.trace(kt @ lt)
    value += (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    value -= 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float(value / (n * (n - 3)))


def reference_minibatch_cka(batches_x: list[np.ndarray], batches_y: list[np.ndarray]) -> float:
    """Nguyen et al. (2021): sum HSIC_1 over batches, then the CKA ratio (float64)."""
    xy = xx = yy = 0.0
    for x, y in zip(batches_x, batches_y):
        x = x.reshape(len(x), -1).astype(np.float64)
        y = y.reshape(len(y), -1).astype(np.float64)
        k, l = x @ x.T, y @ y.T  # noqa: E741
        xy += song_hsic1(k, l)
        xx += song_hsic1(k, k)
        yy += song_hsic1(l, l)
    return xy / math.sqrt(xx * yy)


def exact_minibatch_cka(batches_x: list[torch.Tensor], batches_y: list[torch.Tensor]) -> float:
    """The same estimator in exact rational arithmetic (Python integers), for ill-conditioned inputs.

    Float32 values are exact binary fractions: scaled by a common power of two they are integers, so
    the Grams and Song's formula are computed without rounding; the scale cancels in the CKA ratio.
    """

    def integers(batches: list[torch.Tensor]) -> list[np.ndarray]:
        flat = [b.reshape(len(b), -1).double().numpy() for b in batches]
        shift = 60 - min(int(np.frexp(np.abs(f[f != 0])).__getitem__(1).min()) for f in flat)
        return [np.vectorize(lambda v: int(Fraction(float(v)) * 2**shift), otypes=[object])(f) for f in flat]

    def hsic1(k: np.ndarray, l: np.ndarray) -> Fraction:  # noqa: E741
        n = k.shape[0]
        kt, lt = k.copy(), l.copy()
        for i in range(n):
            kt[i, i] = lt[i, i] = 0
        kl = kt.dot(lt)
        value = Fraction(int(np.trace(kl)))
        value += Fraction(int(kt.sum()) * int(lt.sum()), (n - 1) * (n - 2))
        value -= Fraction(2 * int(kl.sum()), n - 2)
        return value / (n * (n - 3))

    xy = xx = yy = Fraction(0)
    for x, y in zip(integers(batches_x), integers(batches_y)):
        k, l = x.dot(x.T), y.dot(y.T)  # noqa: E741
        xy += hsic1(k, l)
        xx += hsic1(k, k)
        yy += hsic1(l, l)
    return float(xy) / math.sqrt(float(xx) * float(yy))


def kornblith_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019): HSIC_0 = tr(K H L H)/(n-1)², CKA = HSIC_0(K,L)/sqrt(HSIC_0(K,K) HSIC_0(L,L))."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T  # noqa: E741

    def hsic0(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h) / (n - 1) ** 2)

    return hsic0(k, l) / math.sqrt(hsic0(k, k) * hsic0(l, l))


# ---- data ------------------------------------------------------------------------------------------


def related(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (n, d) float32 representations with a shared component and a common offset (like ReLU maps)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    x = z @ torch.randn(8, d, generator=g) + 0.5 * torch.randn(n, d, generator=g) + 2.0
    y = torch.tanh(z @ torch.randn(8, d + 3, generator=g)) + 0.3 * torch.randn(n, d + 3, generator=g)
    return x, y


# ---- functional core -------------------------------------------------------------------------------


def test_unbiased_hsic_matches_song_et_al_formula():
    x, y = related(20, 7, seed=1)
    k, l = gram(x.double()), gram(y.double())  # noqa: E741
    assert unbiased_hsic(k, l).item() == pytest.approx(song_hsic1(k.numpy(), l.numpy()), rel=1e-12)


def test_u_centred_gram_has_zero_diagonal_and_zero_row_sums():
    x, _ = related(12, 5, seed=2)
    u = u_centre(gram(x.double()))
    assert torch.all(u.diagonal() == 0)
    torch.testing.assert_close(u.sum(0), torch.zeros(12, dtype=torch.float64), atol=1e-9, rtol=0)


def test_linear_cka_matches_kornblith_formula_with_centering_matrix():
    x, y = related(40, 9, seed=3)
    assert linear_cka(x, y).item() == pytest.approx(kornblith_cka(x.numpy(), y.numpy()), abs=1e-12)


def test_linear_cka_of_a_representation_with_itself_is_one():
    x, _ = related(30, 6, seed=4)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_minibatch_cka_function_matches_the_direct_unbiased_formula():
    x, y = related(96, 10, seed=5)
    got = minibatch_cka(x.split(32), y.split(32)).item()
    want = reference_minibatch_cka([b.numpy() for b in x.split(32)], [b.numpy() for b in y.split(32)])
    assert got == pytest.approx(want, abs=1e-6)


# ---- the accumulator -------------------------------------------------------------------------------


def test_minibatch_result_equals_the_direct_unbiased_formula_to_1e_6():
    """Several layers of different widths (token and map shapes), several batches, float32 features."""
    g = torch.Generator().manual_seed(6)
    batches = []
    for _ in range(5):
        z = torch.randn(32, 6, generator=g)
        a0 = torch.relu(z @ torch.randn(6, 4 * 5 * 5, generator=g)).reshape(32, 4, 5, 5)  # (B, C, H, W)
        a1 = (z @ torch.randn(6, 3 * 8, generator=g) + 1.0).reshape(32, 3, 8)  # (B, L, C)
        b0 = torch.tanh(z @ torch.randn(6, 50, generator=g)) + 0.1 * torch.randn(32, 50, generator=g)
        batches.append(({"a0": a0, "a1": a1}, {"b0": b0}))
    metric = MinibatchCKA(["a0", "a1"], ["b0"])
    for feats_a, feats_b in batches:
        metric.update(feats_a, feats_b)
    got = metric.compute()
    assert got.shape == (2, 1) and got.dtype == torch.float64
    for i, name in enumerate(["a0", "a1"]):
        want = reference_minibatch_cka([fa[name].numpy() for fa, _ in batches], [fb["b0"].numpy() for _, fb in batches])
        assert got[i, 0].item() == pytest.approx(want, abs=1e-6)


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = related(64, 12, seed=7)
    metric = MinibatchCKA(["x"], ["x_again"])
    for batch in x.split(16):
        metric.update({"x": batch}, {"x_again": batch.clone()})
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-12)


def test_the_same_tensor_on_both_sides_gives_exactly_one():
    x, y = related(32, 5, seed=8)
    metric = MinibatchCKA(["x", "y"], ["x", "y"])
    metric.update({"x": x, "y": y}, {"x": x, "y": y})
    result = metric.compute()
    assert torch.all(result.diagonal() == 1.0)
    assert result[0, 1].item() == pytest.approx(result[1, 0].item(), abs=1e-15)


def test_cka_is_invariant_to_orthogonal_transforms():
    x, y = related(64, 10, seed=9)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)))
    rotated = x @ q.float()
    base, turned = MinibatchCKA(["x"], ["y"]), MinibatchCKA(["x"], ["y"])
    for xb, rb, yb in zip(x.split(16), rotated.split(16), y.split(16)):
        base.update({"x": xb}, {"y": yb})
        turned.update({"x": rb}, {"y": yb})
    assert turned.compute().item() == pytest.approx(base.compute().item(), abs=1e-6)
    assert linear_cka(rotated, y).item() == pytest.approx(linear_cka(x, y).item(), abs=1e-6)


def test_cka_is_invariant_to_isotropic_scaling():
    x, y = related(64, 10, seed=10)
    base, scaled = MinibatchCKA(["x"], ["y"]), MinibatchCKA(["x"], ["y"])
    for xb, yb in zip(x.split(16), y.split(16)):
        base.update({"x": xb}, {"y": yb})
        scaled.update({"x": 37.5 * xb}, {"y": 0.01 * yb})
    assert scaled.compute().item() == pytest.approx(base.compute().item(), abs=1e-7)
    x64, y64 = x.double(), y.double()
    assert linear_cka(3 * x64, y64 / 7).item() == pytest.approx(linear_cka(x64, y64).item(), abs=1e-12)


def test_minibatch_cka_stays_within_minus_one_and_one_without_clamping():
    """Cauchy-Schwarz bounds the ratio of summed inner products; tiny batches give negative values."""
    g = torch.Generator().manual_seed(11)
    metric = MinibatchCKA(["a", "b"], ["c", "d"])
    for _ in range(3):
        feats = {k: torch.randn(5, 3, generator=g) for k in "abcd"}
        metric.update({k: feats[k] for k in "ab"}, {k: feats[k] for k in "cd"})
    result = metric.compute()
    assert torch.all(result.abs() <= 1.0)
    assert (result < 0).any()  # independent features: an unbiased estimate of 0 can be negative


def test_float32_features_with_a_large_common_offset_stay_accurate():
    """Ill-conditioned float32 Grams (feature mean >> spread) are recomputed exactly."""
    x, y = related(48, 64, seed=12)
    x, y = x + 300.0, y - 200.0  # the raw Gram is ~1e4 times its centred part
    metric = MinibatchCKA(["x"], ["y"])
    for xb, yb in zip(x.split(16), y.split(16)):
        metric.update({"x": xb}, {"y": yb})
    want = exact_minibatch_cka(list(x.split(16)), list(y.split(16)))  # float64 formulas lose 1e-6 here
    assert metric.compute().item() == pytest.approx(want, abs=1e-7)


def test_u_centring_ignores_a_shift_of_the_features():
    """Why centring features first is allowed: Ũ(K) is unchanged by K_ij -> K_ij + a_i + a_j + c."""
    x, _ = related(16, 6, seed=20)
    x64 = x.double()
    torch.testing.assert_close(u_centre(centred_gram(x64)), u_centre(gram(x64)), rtol=0, atol=1e-9)


def test_an_ill_conditioned_layer_is_centred_first_from_then_on():
    x, y = related(64, 32, seed=21)
    metric = MinibatchCKA(["x"], ["y"])
    metric.update({"x": x[:32] + 1000.0}, {"y": y[:32]})
    assert metric.centred_layers == {"'x' (model A)"}
    metric.update({"x": x[32:] + 1000.0}, {"y": y[32:]})
    want = exact_minibatch_cka([x[:32] + 1000.0, x[32:] + 1000.0], [y[:32], y[32:]])
    assert metric.compute().item() == pytest.approx(want, abs=1e-7)


def test_float64_gram_option_matches_the_reference():
    x, y = related(64, 20, seed=13)
    metric = MinibatchCKA(["x"], ["y"], gram_dtype=torch.float64)
    for xb, yb in zip(x.split(32), y.split(32)):
        metric.update({"x": xb}, {"y": yb})
    want = reference_minibatch_cka([b.numpy() for b in x.split(32)], [b.numpy() for b in y.split(32)])
    assert metric.compute().item() == pytest.approx(want, abs=1e-12)


def test_merge_of_two_halves_equals_one_run():
    x, y = related(128, 10, seed=14)
    whole, first, second = (MinibatchCKA(["x"], ["y"]) for _ in range(3))
    for i, (xb, yb) in enumerate(zip(x.split(16), y.split(16))):
        whole.update({"x": xb}, {"y": yb})
        (first if i < 4 else second).update({"x": xb}, {"y": yb})
    merged = first.merge(second)
    assert merged is first and merged.n_batches == 8 and merged.n_samples == 128
    torch.testing.assert_close(merged.compute(), whole.compute(), rtol=0, atol=1e-14)


def test_state_made_in_inference_mode_can_be_merged_outside_it():
    x, y = related(32, 5, seed=15)
    first, second = MinibatchCKA(["x"], ["y"]), MinibatchCKA(["x"], ["y"])
    with torch.inference_mode():
        first.update({"x": x[:16]}, {"y": y[:16]})
        second.update({"x": x[16:]}, {"y": y[16:]})
    assert math.isfinite(first.merge(second).compute().item())


def test_reset_forgets_every_batch():
    x, y = related(32, 5, seed=16)
    metric = MinibatchCKA(["x"], ["y"])
    metric.update({"x": x}, {"y": y})
    metric.reset()
    assert metric.n_batches == 0
    with pytest.raises(CkaLabError, match="no batch"):
        metric.compute()


def test_confidence_interval_brackets_the_estimate():
    x, y = related(320, 10, seed=17)
    metric = MinibatchCKA(["x"], ["y", "x"], keep_batches=True)
    for xb, yb in zip(x.split(32), y.split(32)):
        metric.update({"x": xb}, {"y": yb, "x": xb})
    low, high = metric.confidence_interval(n_boot=300, level=0.9, seed=1)
    value = metric.compute()
    assert low.shape == high.shape == (1, 2)
    assert low[0, 0] < value[0, 0] < high[0, 0]
    assert low[0, 1].item() == pytest.approx(1.0) and high[0, 1].item() == pytest.approx(1.0)


def test_confidence_interval_needs_kept_batches():
    metric = MinibatchCKA(["x"], ["y"])
    with pytest.raises(CkaLabError, match="keep_batches=True"):
        metric.confidence_interval()


# ---- errors ----------------------------------------------------------------------------------------


def test_batch_smaller_than_four_is_an_error():
    metric = MinibatchCKA(["x"], ["y"])
    with pytest.raises(CkaLabError, match="at least 4"):
        metric.update({"x": torch.randn(3, 5)}, {"y": torch.randn(3, 5)})


def test_nan_features_error_names_the_layer():
    metric = MinibatchCKA(["clean", "broken"], ["y"])
    bad = torch.randn(8, 5)
    bad[2, 1] = math.nan
    with pytest.raises(CkaLabError, match="'broken'"):
        metric.update({"clean": torch.randn(8, 5), "broken": bad}, {"y": torch.randn(8, 5)})


def test_inf_features_are_an_error_too():
    metric = MinibatchCKA(["x"], ["y"])
    with pytest.raises(CkaLabError, match="NaN or inf"):
        metric.update({"x": torch.randn(8, 5)}, {"y": torch.full((8, 5), math.inf)})


def test_constant_layer_gives_nan_cells_with_a_warning_naming_it():
    g = torch.Generator().manual_seed(18)
    metric = MinibatchCKA(["dead", "alive"], ["y"])
    for _ in range(2):
        metric.update({"dead": torch.full((8, 6), 0.7), "alive": torch.randn(8, 6, generator=g)}, {"y": torch.randn(8, 4, generator=g)})
    with pytest.warns(UserWarning, match="'dead'"):
        result = metric.compute()
    assert math.isnan(result[0, 0].item())
    assert math.isfinite(result[1, 0].item())


def test_a_layer_that_varies_in_some_batches_is_not_constant():
    g = torch.Generator().manual_seed(19)
    metric = MinibatchCKA(["x"], ["y"])
    metric.update({"x": torch.zeros(8, 4)}, {"y": torch.randn(8, 4, generator=g)})
    metric.update({"x": torch.randn(8, 4, generator=g)}, {"y": torch.randn(8, 4, generator=g)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(metric.compute().item())


def test_mismatched_batch_sizes_between_models_are_an_error():
    metric = MinibatchCKA(["x"], ["y"])
    with pytest.raises(CkaLabError, match="batch size mismatch"):
        metric.update({"x": torch.randn(8, 5)}, {"y": torch.randn(6, 5)})


def test_missing_layer_key_is_an_error_naming_it():
    metric = MinibatchCKA(["x", "x2"], ["y"])
    with pytest.raises(CkaLabError, match="'x2'"):
        metric.update({"x": torch.randn(8, 5)}, {"y": torch.randn(8, 5)})


def test_merge_of_different_layers_is_an_error():
    with pytest.raises(CkaLabError, match="same layers"):
        MinibatchCKA(["x"], ["y"]).merge(MinibatchCKA(["x"], ["z"]))


def test_a_layer_list_given_as_a_string_is_an_error():
    with pytest.raises(CkaLabError, match="list of layer names"):
        MinibatchCKA("layers.0", ["y"])


def test_error_messages_are_one_line():
    metric = MinibatchCKA(["x"], ["y"])
    with pytest.raises(CkaLabError) as err:
        metric.update({"x": torch.randn(2, 5)}, {"y": torch.randn(2, 5)})
    assert "\n" not in str(err.value)


# ---- the Gram kernel -------------------------------------------------------------------------------


@pytest.fixture
def fresh_kernel_choice():
    """Forget which float32 Gram kernel this process chose, before and after the test."""
    from cka_lab.metrics import cka_functional as cka

    cka._onednn_linear.cache_clear()
    yield cka
    cka._onednn_linear.cache_clear()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_the_onednn_kernel_is_chosen_where_torch_has_onednn(fresh_kernel_choice):
    """The pinned torch has it: losing it would silently halve the speed of every CPU Gram."""
    assert fresh_kernel_choice._onednn_linear() is not None


def test_x_xt_of_float32_features_matches_the_float64_product():
    x = torch.rand(64, 3000, generator=torch.Generator().manual_seed(40))
    want = x.double() @ x.double().T
    got = x_xt(x)
    assert got.dtype == torch.float32 and got.shape == (64, 64)
    assert ((got.double() - want).abs().max() / want.diagonal().mean()).item() < 1e-6


def test_x_xt_accepts_non_contiguous_features():
    x = torch.randn(300, 48, generator=torch.Generator().manual_seed(41)).T  # (48, 300) view
    torch.testing.assert_close(x_xt(x).double(), x.double() @ x.double().T, rtol=1e-5, atol=1e-4)


def test_x_xt_of_float64_features_is_the_plain_product():
    x = torch.randn(20, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(42))
    assert torch.equal(x_xt(x), x @ x.T)


def test_a_gram_that_needs_gradients_still_differentiates():
    x = torch.randn(8, 5, requires_grad=True)
    gram(x).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach().sum(0, keepdim=True).expand(8, 5))


def test_a_wrong_fast_kernel_is_rejected_for_the_plain_product(fresh_kernel_choice, monkeypatch):
    monkeypatch.setattr(fresh_kernel_choice, "_onednn_candidate", lambda: lambda x, w, *rest: torch.zeros(x.shape[0], w.shape[0]))
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(43))
    assert torch.equal(x_xt(x), x @ x.T)
    assert fresh_kernel_choice._onednn_linear() is None


def test_a_missing_fast_kernel_falls_back_to_the_plain_product(fresh_kernel_choice, monkeypatch):
    def missing():
        raise AttributeError("no mkldnn::_linear_pointwise in this build")

    monkeypatch.setattr(fresh_kernel_choice, "_onednn_candidate", missing)
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(44))
    assert torch.equal(x_xt(x), x @ x.T)
